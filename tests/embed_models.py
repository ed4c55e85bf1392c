"""Models and corpora for the embed tests (tests/test_embed*.py): built once per session, shared by both files.

- :func:`portable_dir`: a tiny random Llama saved by st_llm2vec in the portable format (our model, stock modules);
- :func:`stock_dir`: a tiny random BERT as a stock Sentence Transformers model (Transformer + mean Pooling +
  Normalize) with a "query" prompt — what a user brings from the Hub, built offline;
- :func:`corpus_rows` / :func:`write_jsonl`: JSON Lines rows of mixed length, with repeated texts and an empty one;
- :func:`run` (a job in this process), :func:`kill_after` (a job in a fresh interpreter, SIGKILLed at a test
  hook), :func:`read_out`, :func:`reference` (``SentenceTransformer(dir).encode``), :func:`assert_same_vectors`.
"""

from __future__ import annotations

import glob
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import SENTENCES, build_tokenizer, make_tiny_llm
from st_llm2vec.embed.job import EmbedConfig, embed

WORDS = ("the a cat dog runs over lazy fox quick brown house tree river mountain city car music plays "
         "children beach kitchen guitar street field grass").split()


def _cached(tmp_path_factory, name: str) -> tuple[Path, bool]:
    path = tmp_path_factory.getbasetemp() / "embed-models" / name
    return path, (path / "modules.json").is_file()


def portable_dir(tmp_path_factory) -> Path:
    """The files ``save()`` writes for a portable model, without its proof in a fresh interpreter (tests/
    test_portable.py proves that; here it would cost a second torch import)."""
    import st_llm2vec
    from st_llm2vec.portable_save import write_portable

    path, ready = _cached(tmp_path_factory, "portable")
    if not ready:
        llm = make_tiny_llm(path.parent / "llm", "llama")
        path.mkdir(parents=True)
        write_portable(st_llm2vec.from_llm(str(llm), prompts={"query": "Find the passage: "}), path)
    return path


def stock_dir(tmp_path_factory) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    path, ready = _cached(tmp_path_factory, "stock")
    if not ready:
        backbone = path.parent / "bert"
        tokenizer = build_tokenizer(backbone, add_bos=False)
        tokenizer.pad_token = "<unk>"
        tokenizer.save_pretrained(backbone)
        torch.manual_seed(0)
        BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=256)).save_pretrained(backbone)
        transformer = models.Transformer(str(backbone))
        model = SentenceTransformer(modules=[transformer, models.Pooling(transformer.get_embedding_dimension()),
                                             models.Normalize()], prompts={"query": "query: "})
        model.save(str(path))
    return path


def corpus_rows(n: int, seed: int = 0) -> list[dict]:
    """``n`` rows ``{"id": "d<i>", "text": …}``: 0–40 words, every 7th text repeats an earlier one, one empty."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        if i % 7 == 6:
            text = rows[i // 2]["text"]
        elif i == 3:
            text = ""
        else:
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40)))
        rows.append({"id": f"d{i}", "text": text})
    rows[5]["text"] = SENTENCES[0]
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_out(out: Path) -> tuple[list[str], np.ndarray]:
    table = pq.read_table(sorted(glob.glob(f"{out}/part-*.parquet")))
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    return table.column("id").to_pylist(), vectors


def reference(model_dir: Path, texts: list[str], **kwargs) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    truncate_dim = kwargs.pop("truncate_dim", None)
    return SentenceTransformer(str(model_dir), truncate_dim=truncate_dim).encode(
        texts, normalize_embeddings=True, **kwargs)


def assert_same_vectors(ours: np.ndarray, theirs: np.ndarray, min_cosine: float = 0.99999) -> None:
    """Row by row: cosine >= min_cosine, or both zero vectors (a text with no pooled token)."""
    assert ours.shape == theirs.shape and ours.dtype == np.float32
    norms = np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1)
    both_zero = (np.linalg.norm(ours, axis=1) == 0) & (np.linalg.norm(theirs, axis=1) == 0)
    cosine = np.where(norms > 0, (ours * theirs).sum(1) / np.maximum(norms, 1e-30), 0.0)
    assert np.all(both_zero | (cosine >= min_cosine)), cosine.min()


def run(model: Path, input_: Path, out: Path, **kwargs):
    kwargs.setdefault("threads", 1)
    kwargs.setdefault("progress", False)
    return embed(EmbedConfig(str(model), str(input_), str(out), **kwargs))


def kill_after(point: str, args: list[str], cwd: Path) -> list[str]:
    """Run ``st-llm2vec embed ARGS`` in a fresh interpreter, SIGKILL it (and its process group) when the test hook
    says it reached ``point``; what it printed to stderr before that."""
    env = dict(os.environ, ST_LLM2VEC_EMBED_TEST_HANG=point, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "st_llm2vec.cli", "embed", *args, "--no-progress"], cwd=cwd,
                            env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    printed = []
    try:
        for line in proc.stderr:
            if "test hang" in line:
                break
            printed.append(line)
        else:
            pytest.fail(f"the job ended before {point} (exit {proc.wait()}): {''.join(printed)}")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return printed
