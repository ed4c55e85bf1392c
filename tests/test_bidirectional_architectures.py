"""st_llm2vec/bidirectional.py per architecture: the decoders llm2vec users ask for, each under eager and sdpa attention.

For every (architecture, attn_implementation) the table below states what ``st_llm2vec.from_llm`` does
with a tiny random checkpoint (hidden 32, 2 layers, local tokenizer):
- BIDIRECTIONAL: the load-time probe proves bidirectional attention, and ``encode`` agrees (the first
  token's embedding moves when only the last word changes);
- REFUSED: loading fails with a ValueError naming the architecture and what to try instead.

A second table documents what *stock* sentence-transformers does with the same backbone saved with
``is_causal: false`` (and ``use_bidirectional_attention: true`` where the config has it) in
config.json: measured on transformers 5.23 / sentence-transformers 6.2, so a change of upstream
behaviour shows up here as a failing test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import st_llm2vec
from conftest import TINY, build_tokenizer

BIDIRECTIONAL = "bidirectional"
STAYS_CAUSAL = "stays causal"
REFUSED = "refused"

# Two texts that differ in their last word only (asserted to tokenize to the same length).
TEXT, TEXT_CHANGED_AT_END = "A man is playing a guitar on the street.", "A man is playing a guitar on the beach."
MIN_SHIFT = 1e-4  # a causal model moves the first token by exactly 0.0; the weakest here (Granite) by ~2e-3
MAX_PADDING_MISMATCH = 1e-5  # fp32: observed < 3e-7

# Llama 3.2's rope scaling (original_max_position_embeddings shrunk so that 8-token inputs are scaled).
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
GRANITE_SCALES = dict(embedding_multiplier=12.0, attention_multiplier=0.125, residual_multiplier=0.22,
                      logits_scaling=8.0)


def _config(arch: str, vocab_size: int, bos: int, eos: int):
    import transformers as tf

    c = dict(TINY, vocab_size=vocab_size, bos_token_id=bos, eos_token_id=eos, pad_token_id=None,
             tie_word_embeddings=False)
    if arch == "phi3":
        return tf.Phi3Config(**c)
    if arch == "granite":
        return tf.GraniteConfig(**c, **GRANITE_SCALES)
    if arch == "granitemoe":
        return tf.GraniteMoeConfig(**c, **GRANITE_SCALES, num_local_experts=4, num_experts_per_tok=2)
    if arch == "olmo2":
        return tf.Olmo2Config(**c)
    if arch == "mixtral":
        return tf.MixtralConfig(**c, num_local_experts=4, num_experts_per_tok=2, sliding_window=None)
    if arch == "gemma2":  # layer_types alternate sliding / full attention
        return tf.Gemma2Config(**c, head_dim=8, query_pre_attn_scalar=8, sliding_window=4)
    if arch == "cohere":
        return tf.CohereConfig(**c)
    if arch == "stablelm":
        c["num_key_value_heads"] = c["num_attention_heads"]
        return tf.StableLmConfig(**c)
    if arch == "smollm3":  # layer 1 without RoPE (NoPE), as every 4th layer of the real model
        return tf.SmolLM3Config(**c, no_rope_layer_interval=2)
    if arch == "qwen3_moe":
        return tf.Qwen3MoeConfig(**c, head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
    if arch == "llama3_rope":
        return tf.LlamaConfig(**c)  # rope_scaling goes into config.json below, the way Llama 3.2 ships it
    raise ValueError(arch)


def _write_legacy_rope_scaling(out_dir: Path) -> None:
    """config.json as Llama-3.2 checkpoints have it: top-level ``rope_theta`` + ``rope_scaling``."""
    path = out_dir / "config.json"
    config = json.loads(path.read_text())
    config.pop("rope_parameters", None)
    config["rope_theta"] = 500000.0
    config["rope_scaling"] = dict(LLAMA3_ROPE)
    path.write_text(json.dumps(config, indent=2))


@pytest.fixture(scope="module")
def arch_llm(tmp_path_factory):
    """Factory: ``arch_llm(arch)`` → dir of a cached tiny random causal LM with its tokenizer."""
    from transformers import AutoModelForCausalLM

    cache: dict[str, Path] = {}

    def make(arch: str) -> Path:
        if arch not in cache:
            out = tmp_path_factory.mktemp(arch)
            tokenizer = build_tokenizer(out)
            torch.manual_seed(0)
            config = _config(arch, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
            AutoModelForCausalLM.from_config(config).save_pretrained(out)
            if arch == "llama3_rope":
                _write_legacy_rope_scaling(out)
            cache[arch] = out
        return cache[arch]

    return make


def _first_token_shift(model) -> float:
    """Relative change of the first token's embedding when only the last word of the text changes."""
    tokenizer = model.tokenizer
    assert len(tokenizer(TEXT)["input_ids"]) == len(tokenizer(TEXT_CHANGED_AT_END)["input_ids"])
    a, b = model.encode([TEXT, TEXT_CHANGED_AT_END], output_value="token_embeddings", convert_to_tensor=False)
    assert a.shape == b.shape
    return ((a[0] - b[0]).norm() / a[0].norm()).item()


def _case(arch, impl, outcome, match=None):
    return pytest.param(arch, impl, outcome, match, id=f"{arch}-{impl}")


GEMMA2_SDPA = r'Gemma2Model does not support .*scaled_dot_product_attention.*attn_implementation="eager"'

# st_llm2vec.from_llm: expected outcome per architecture and attention implementation.
FROM_LLM_CASES = [
    _case("phi3", "eager", BIDIRECTIONAL), _case("phi3", "sdpa", BIDIRECTIONAL),
    _case("granite", "eager", BIDIRECTIONAL), _case("granite", "sdpa", BIDIRECTIONAL),
    _case("granitemoe", "eager", BIDIRECTIONAL), _case("granitemoe", "sdpa", BIDIRECTIONAL),
    _case("olmo2", "eager", BIDIRECTIONAL), _case("olmo2", "sdpa", BIDIRECTIONAL),
    _case("mixtral", "eager", BIDIRECTIONAL), _case("mixtral", "sdpa", BIDIRECTIONAL),
    _case("gemma2", "eager", BIDIRECTIONAL),
    # transformers 5.23 has no SDPA path for Gemma2 (attention logit softcapping) and refuses at load
    # time, naming the model and attn_implementation="eager" as the fix.
    _case("gemma2", "sdpa", REFUSED, GEMMA2_SDPA),
    _case("cohere", "eager", BIDIRECTIONAL), _case("cohere", "sdpa", BIDIRECTIONAL),
    _case("stablelm", "eager", BIDIRECTIONAL),
    _case("stablelm", "sdpa", BIDIRECTIONAL),  # thanks to the per-module is_causal switch
    _case("smollm3", "eager", BIDIRECTIONAL), _case("smollm3", "sdpa", BIDIRECTIONAL),
    _case("qwen3_moe", "eager", BIDIRECTIONAL), _case("qwen3_moe", "sdpa", BIDIRECTIONAL),
    _case("llama3_rope", "eager", BIDIRECTIONAL), _case("llama3_rope", "sdpa", BIDIRECTIONAL),
]


@pytest.mark.parametrize("arch, impl, outcome, match", FROM_LLM_CASES)
def test_from_llm_proves_each_architecture_bidirectional_or_refuses(arch_llm, arch, impl, outcome, match):
    path = str(arch_llm(arch))
    if outcome == REFUSED:
        with pytest.raises(ValueError, match=match):  # BidirectionalityError is a ValueError too
            st_llm2vec.from_llm(path, attn_implementation=impl)
        return

    model = st_llm2vec.from_llm(path, attn_implementation=impl)
    backbone = model[0].model
    assert backbone.config._attn_implementation == impl
    assert backbone.config.model_type == ("llama" if arch == "llama3_rope" else arch)
    if arch == "llama3_rope":  # the legacy rope_scaling of config.json reached the rotary embedding
        assert backbone.config.rope_parameters["rope_type"] == "llama3"
        assert backbone.rotary_emb.rope_type == "llama3"
    probe = model[0].probe
    assert probe["early_token_shift"] > MIN_SHIFT
    assert probe["padding_mismatch"] < MAX_PADDING_MISMATCH
    assert _first_token_shift(model) > MIN_SHIFT  # and the encode path agrees with the probe


# Stock sentence-transformers with is_causal=false in config.json (no st_llm2vec involved): what
# transformers 5.23 + sentence-transformers 6.2 do today. StableLM's SDPA path ignores the config flag
# (its attention never receives is_causal=False and the module flag stays True), so it stays causal.
STOCK_CASES = [
    _case(arch, impl, BIDIRECTIONAL)
    for arch in ["phi3", "granite", "granitemoe", "olmo2", "mixtral", "cohere", "smollm3", "qwen3_moe",
                 "llama3_rope"]
    for impl in ["eager", "sdpa"]
] + [
    _case("gemma2", "eager", BIDIRECTIONAL),
    _case("gemma2", "sdpa", REFUSED, GEMMA2_SDPA),
    _case("stablelm", "eager", BIDIRECTIONAL),
    _case("stablelm", "sdpa", STAYS_CAUSAL),
]


@pytest.mark.parametrize("arch, impl, outcome, match", STOCK_CASES)
def test_stock_sentence_transformers_with_config_flag(arch_llm, tmp_path, arch, impl, outcome, match):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import AutoModel, AutoTokenizer

    source = arch_llm(arch)
    backbone = AutoModel.from_pretrained(source)
    backbone.config.is_causal = False
    if hasattr(backbone.config, "use_bidirectional_attention"):
        backbone.config.use_bidirectional_attention = True
    backbone.save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.pad_token = tokenizer.eos_token  # stock ST pads every batch
    tokenizer.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["is_causal"] is False
    assert saved.get("use_bidirectional_attention", True) is True

    if outcome == REFUSED:
        with pytest.raises(ValueError, match=match):
            Transformer(str(tmp_path), model_kwargs={"attn_implementation": impl})
        return
    transformer = Transformer(str(tmp_path), model_kwargs={"attn_implementation": impl})
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean")])
    assert model[0].model.config._attn_implementation == impl
    assert model[0].model.config.is_causal is False
    shift = _first_token_shift(model)
    if outcome == BIDIRECTIONAL:
        assert shift > MIN_SHIFT
    else:
        assert shift == 0.0  # exactly causal despite is_causal=false in config.json
