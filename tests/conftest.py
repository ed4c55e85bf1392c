"""Shared test helpers: tiny random decoder LLMs with a locally trained tokenizer (no downloads), and the
fixtures and helpers that the tests of several modules use (saved model dirs, training configs, a checkpoint stack).

Test files import helpers with ``from conftest import ...`` (tests/ stays flat for that); a file whose tests
were written against a shorter local name imports the helper under that name."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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


def _config(arch: str, vocab_size: int, bos: int, eos: int, **overrides):
    import transformers as tf

    common = dict(TINY, **overrides, vocab_size=vocab_size, bos_token_id=bos, eos_token_id=eos, pad_token_id=None,
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


def make_tiny_llm(out_dir: Path, arch: str = "llama", seed: int = 0, add_bos: bool = True, **overrides) -> Path:
    """Save a tiny random causal LM of ``arch`` with its tokenizer into ``out_dir`` (``overrides``: config sizes)."""
    from transformers import AutoModelForCausalLM

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(out_dir, add_bos=add_bos)
    config = _config(arch, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out_dir)
    return out_dir


def save_stock_model(llm: Path, out: Path, max_seq_length: int = 64) -> Path:
    """A stock Sentence Transformers model (Transformer + mean Pooling, nothing of st-llm2vec) over a tiny LLM,
    saved to ``out``: a retriever or teacher from outside the project."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    word = Transformer(str(llm), max_seq_length=max_seq_length)
    word.tokenizer.pad_token = word.tokenizer.eos_token
    SentenceTransformer(modules=[word, Pooling(word.get_embedding_dimension(), "mean")]).save(str(out))
    return out


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


# --------------------------------------------------------------------------- fresh interpreters (test_imports, test_cli)


def run_python(code: str, timeout: float = 300) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout


# --------------------------------------------------------------------------- exact-format models and saved dirs
# (test_encoder, test_pooling, test_instructions, test_bidirectional)


@pytest.fixture(scope="module")
def llama_model(tiny_llm):
    """llm2vec's exact semantics (the portable format's are in tests/test_portable.py)."""
    import st_llm2vec

    return st_llm2vec.from_llm(str(tiny_llm("llama")), format="exact")


@pytest.fixture(scope="module")
def exact_model(tiny_llm):
    """The same model as ``llama_model``, as its own instance (the tests of each were written against their own)."""
    import st_llm2vec

    return st_llm2vec.from_llm(str(tiny_llm("llama")), format="exact")


@pytest.fixture(scope="module")
def saved_dir(tiny_llm, tmp_path_factory):
    """A model saved with our module classes (sentence_bert_config.json + 1_LLM2VecPooling/config.json)."""
    import st_llm2vec

    path = tmp_path_factory.mktemp("saved") / "model"
    st_llm2vec.from_llm(str(tiny_llm("llama")), format="exact").save(str(path))
    assert (path / "1_LLM2VecPooling" / "config.json").is_file()
    return path


def copy_model_dir(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def edit_json(path: Path, **changes) -> None:
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


# --------------------------------------------------------------------------- MNTP's tiny Llama and corpus
# (test_train_mntp, test_train_data, test_train_config, test_train_trainer)

CORPUS = REPO / "training" / "mntp" / "tiny_corpus.txt"


def corpus_lines() -> list[str]:
    return [line.strip() for line in CORPUS.read_text().splitlines() if line.strip()]


def make_tokenizer(path: Path, texts: list[str], vocab_size: int = 300, mask_token: str | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<unk>", "<s>", "</s>"] + ([mask_token] if mask_token else [])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    kwargs = {"mask_token": mask_token} if mask_token else {}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", **kwargs)
    fast.save_pretrained(path)
    return fast


def make_tiny_llama(path: Path, *, tied: bool = False, causal_lm: bool = True, seed: int = 0) -> Path:
    """A random 2-layer Llama (hidden 32) saved as a causal-LM checkpoint with a BPE tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

    tok = make_tokenizer(path, corpus_lines())
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(seed)
    (LlamaForCausalLM if causal_lm else LlamaModel)(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


def mntp_recipe(model: Path, output_dir: Path, **overrides) -> dict:
    """An MNTP config on the tiny corpus: 20 steps, no checkpoints, a fresh output_dir."""
    config = {
        "model_name_or_path": str(model),
        "train_file": str(CORPUS),
        "max_seq_length": 32,
        "per_device_train_batch_size": 8,
        "learning_rate": 1e-2,
        "lora_r": 8,
        "max_steps": 20,
        "stop_after_n_steps": 20,
        "logging_steps": 1,
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 7,
        "output_dir": str(output_dir),
        "overwrite_output_dir": True,
    }
    config.update(overrides)
    return config


def mntp_history(output_dir: Path) -> list[tuple[int, float]]:
    log = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [(entry["step"], entry["loss"]) for entry in log if "loss" in entry]


# --------------------------------------------------------------------------- short training runs
# (test_train_runs, test_train_config, test_train_mntp, test_train_data, test_cli)

RUN_SENTENCES = [
    "A man is playing a guitar on the street.", "Two dogs are running through a field of grass.",
    "The children are building a sand castle at the beach.", "A woman is slicing tomatoes in the kitchen.",
    "Nobody is riding the bicycle down the hill.", "The cat sleeps on a warm windowsill in the afternoon.",
    "A chef is tasting the soup.", "The train to the city was late this morning.",
]


def mntp_config(model: Path, out: Path, **overrides) -> dict:
    """An MNTP run of 4 steps with a checkpoint every 2, resumable (no overwrite)."""
    config = dict(
        model_name_or_path=str(model), train_file=str(CORPUS), max_seq_length=32, per_device_train_batch_size=4,
        learning_rate=1e-2, lora_r=4, max_steps=4, logging_steps=1, save_strategy="steps", save_steps=2,
        use_cpu=True, disable_tqdm=True, seed=7, output_dir=str(out), overwrite_output_dir=False,
    )
    config.update(overrides)
    return config


def simcse_config(model: Path, out: Path, corpus: Path, **overrides) -> dict:
    """A SimCSE run of 4 steps on ``corpus`` with a checkpoint every 2."""
    config = dict(
        model_name_or_path=str(model), output_dir=str(out), use_cpu=True, disable_tqdm=True, lora_r=4,
        max_seq_length=32, evaluator="none", logging_steps=1, seed=7, dataset_name="Wiki1M",
        dataset_file_path=str(corpus), per_device_train_batch_size=4, learning_rate=1e-3, max_steps=4,
        save_strategy="steps", save_steps=2,
    )
    config.update(overrides)
    return config


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "wiki.txt"
    path.write_text("\n".join(RUN_SENTENCES * 2) + "\n")
    return path


# --------------------------------------------------------------------------- contrastive stages
# (test_train_contrastive, test_train_data, test_train_recipe, test_train_trainer)

PAIR_SENTENCES = [
    "A man is playing a guitar on the street.",
    "Two dogs are running through a field of grass.",
    "The children are building a sand castle at the beach.",
    "A woman is slicing tomatoes in the kitchen.",
    "Nobody is riding the bicycle down the hill.",
    "The cat sleeps on a warm windowsill in the afternoon.",
    "A chef is tasting the soup.",
    "The train to the city was late this morning.",
    "A girl is painting a picture of a horse.",
    "The old man is feeding pigeons in the park.",
    "Two people are dancing on the stage.",
    "A boy is kicking a ball against the wall.",
]


def contrastive_config(model: Path, out: Path, **kw) -> dict:
    """A contrastive stage's config without data: no evaluator, no checkpoints."""
    config = dict(
        model_name_or_path=str(model), output_dir=str(out), use_cpu=True, disable_tqdm=True, lora_r=8,
        max_seq_length=64, evaluator="none", save_strategy="no", logging_steps=1, seed=7,
    )
    config.update(kw)
    return config


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def triplets(n: int, tag: str) -> list[dict]:
    """``n`` {query, positive, negative} rows over PAIR_SENTENCES, the queries tagged with ``tag``."""
    return [
        {"query": f"{tag} question {i} about {PAIR_SENTENCES[i % 12]}", "positive": PAIR_SENTENCES[i % 12],
         "negative": PAIR_SENTENCES[(i + 5) % 12]}
        for i in range(n)
    ]


# --------------------------------------------------------------------------- an llm2vec checkpoint stack
# (test_export_convert, test_checkpoints)

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def save_lora(model, out: Path, seed: int, base_ref: str) -> None:
    """A LoRA adapter over ``model`` with random non-zero weights, naming its base as llm2vec's do."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, lora_dropout=0.0))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    peft_model.save_pretrained(out)
    config = json.loads((out / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base_ref
    (out / "adapter_config.json").write_text(json.dumps(config))
    (out / "README.md").unlink(missing_ok=True)
    return peft_model.merge_and_unload()


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    """An llm2vec checkpoint layout: base/, mntp/ (over base), supervised/ (over base+mntp, with llm2vec_config.json)."""
    from transformers import AutoModel

    root = tmp_path_factory.mktemp("stack")
    make_tiny_llm(root / "base", "llama")
    model = AutoModel.from_pretrained(root / "base")
    model = save_lora(model, root / "mntp", seed=1, base_ref="base")
    save_lora(model, root / "supervised", seed=2, base_ref="base")
    settings = {"pooling_mode": "mean", "max_length": 512, "doc_max_length": 400, "skip_instruction": True}
    (root / "supervised" / "llm2vec_config.json").write_text(json.dumps(settings))
    return root


@pytest.fixture(scope="module")
def full(stack, tmp_path_factory) -> Path:
    """base+mntp+supervised converted once through the CLI (shared by read-only tests)."""
    import contextlib

    from st_llm2vec.cli import main as cli

    out = tmp_path_factory.mktemp("full") / "model"
    with contextlib.chdir(stack):
        assert cli(["convert", "base", str(out), "--adapter", "mntp", "--adapter", "supervised", "--prompt", "query=Find:", "--format", "exact"]) == 0
    return out


def copy_writable(src: Path, dst: Path) -> Path:
    """A copy of a checkpoint dir with the modes 0755 / 0644 (to damage or edit it)."""
    shutil.copytree(src, dst)
    for path in [dst, *dst.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return dst
