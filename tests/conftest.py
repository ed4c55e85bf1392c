"""Shared test helpers: tiny random decoder LLMs with a locally trained tokenizer (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SENTENCES = [
    "A man is playing a guitar on the street.",
    "Two dogs are running through a field of grass.",
    "The children are building a sand castle at the beach.",
    "A woman is slicing tomatoes in the kitchen.",
    "Nobody is riding the bicycle down the hill.",
    "The cat sleeps on a warm windowsill in the afternoon.",
    "Retrieve semantically similar text: query passage document instruction.",
] * 4

TINY = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=256,
)


def _config(arch: str, vocab_size: int, bos: int, eos: int):
    import transformers as tf

    common = dict(TINY, vocab_size=vocab_size, bos_token_id=bos, eos_token_id=eos, pad_token_id=None,
                  tie_word_embeddings=False)
    if arch == "llama":
        return tf.LlamaConfig(**common)
    if arch == "mistral":
        return tf.MistralConfig(**common, sliding_window=None)
    if arch == "qwen2":
        return tf.Qwen2Config(**common, use_sliding_window=False)
    if arch == "qwen3":
        return tf.Qwen3Config(**common, head_dim=8, use_sliding_window=False)
    if arch == "gemma":
        return tf.GemmaConfig(**common, head_dim=8)
    if arch == "gemma3_text":
        return tf.Gemma3TextConfig(**common, head_dim=8, sliding_window=16)
    if arch == "stablelm":
        common["num_key_value_heads"] = common["num_attention_heads"]
        return tf.StableLmConfig(**common)
    raise ValueError(arch)


def build_tokenizer(out_dir: Path, add_bos: bool = True):
    """A small byte-level BPE tokenizer with BOS/EOS, trained on SENTENCES."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(SENTENCES, trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(out_dir)
    return fast


def make_tiny_llm(out_dir: Path, arch: str = "llama", seed: int = 0, add_bos: bool = True) -> Path:
    """Save a tiny random causal LM of ``arch`` with its tokenizer into ``out_dir``."""
    from transformers import AutoModelForCausalLM

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(out_dir, add_bos=add_bos)
    config = _config(arch, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models gain nothing from threads; on a busy 2-core machine two threads spin (~50x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory):
    """Factory: ``tiny_llm(arch)`` → path of a cached tiny causal-LM checkpoint."""
    cache: dict[str, Path] = {}

    def make(arch: str = "llama", add_bos: bool = True) -> Path:
        key = f"{arch}-{add_bos}"
        if key not in cache:
            cache[key] = make_tiny_llm(tmp_path_factory.mktemp(key), arch, add_bos=add_bos)
        return cache[key]

    return make


def fixtures_dir() -> Path | None:
    """The llm2vec reference fixtures: $ST_LLM2VEC_FIXTURES or ../shared/fixtures/llm2vec."""
    path = Path(os.environ.get("ST_LLM2VEC_FIXTURES", REPO.parent / "shared" / "fixtures" / "llm2vec"))
    return path if path.is_dir() else None
