"""``st-llm2vec search OUT "query"``: the nearest rows of an embed output — the first proof a user runs, and the
example of how to read OUT.

The query is embedded with the model, precision, dimension and normalisation the manifest records, under the
model's "query" prompt (or ``--prompt-name`` / ``--prompt``); the model's files must still be the ones that made
the vectors (their fingerprint is compared). Scores are exact inner products (cosine when the vectors are
normalized), computed shard by shard with a running top k, so memory holds one shard: faiss's exact search
(``faiss.knn``) when faiss is installed and a shard is large, numpy otherwise (both are BLAS matrix-vector
products; faiss avoids the full score array of a big shard).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, MissingFileError
from . import shards as shard_files
from .encoding import ModelSettings, embed_texts, load
from .manifest import MANIFEST, Manifest, fingerprint_files, model_files

FAISS_ROWS = 50_000  # shards from this size on go through faiss, when it is installed


@dataclass
class SearchResult:
    """The hits (id, score) best first, the prompt put before the query (name, text), what was searched."""

    hits: list[tuple[str, float]]
    prompt: tuple[str | None, str | None]
    rows: int
    shards: int
    normalized: bool
    complete: bool


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def top_k(out: Path, manifest: Manifest, query: np.ndarray, k: int) -> tuple[list[tuple[str, float]], int]:
    """The ``k`` best (id, inner product) over every shard the manifest lists, one shard in memory at a time."""
    faiss = _faiss()
    best_ids: list[str] = []
    best_scores = np.zeros(0, dtype=np.float32)
    rows = 0
    for entry in manifest.shards:
        table = shard_files.read_columns(out, entry, ["id", "embedding"])
        vectors = shard_files.vectors_of(table)
        rows += len(vectors)
        n = min(k, len(vectors))
        if n == 0:
            continue
        if faiss is not None and len(vectors) >= FAISS_ROWS:
            scores, found = faiss.knn(query[None, :], np.ascontiguousarray(vectors), n, metric=faiss.METRIC_INNER_PRODUCT)
            scores, found = scores[0], found[0]
        else:
            all_scores = vectors @ query
            found = np.argpartition(-all_scores, n - 1)[:n]
            scores = all_scores[found]
        ids = table.column("id").take(found).to_pylist()
        merged_scores = np.concatenate([best_scores, scores.astype(np.float32)])
        merged_ids = best_ids + ids
        keep = np.argsort(-merged_scores, kind="stable")[:k]
        best_scores, best_ids = merged_scores[keep], [merged_ids[i] for i in keep]
    return list(zip(best_ids, best_scores.tolist())), rows


def search(output: str, query: str, k: int = 10, *, prompt_name: str | None = None, prompt: str | None = None,
           device: str | None = None, threads: int | None = None) -> SearchResult:
    """The ``k`` rows of OUT nearest to ``query`` (see the module docstring)."""
    out = Path(output).expanduser()
    if not (out / MANIFEST).is_file():
        raise MissingFileError(f"{out} has no {MANIFEST}: not an st-llm2vec embed output (make one with "
                               "`st-llm2vec embed MODEL INPUT OUT`).")
    if k < 1:
        raise InputError(f"-k must be a positive integer, got {k}")
    manifest = Manifest.load(out)
    path = Path(manifest.model["path"])
    if not path.is_dir():
        raise MissingFileError(f"the model that made {out} is no longer at {path}; search needs it to embed the query.")
    fingerprint, _ = fingerprint_files(model_files(path), manifest.model.get("files"))
    if fingerprint != manifest.model["fingerprint"]:
        raise InputError(f"the model files at {path} changed since {out} was embedded: the query's vector would not "
                         "match the corpus's. Embed the corpus again with this model (st-llm2vec embed --overwrite).")
    chosen = _prompt(manifest, path, prompt_name, prompt)
    vectors = manifest.vectors
    settings = ModelSettings(str(path), chosen[1], threads, normalize=vectors["normalize"], batch_size=1,
                             dim=vectors.get("requested_dim"), precision=vectors.get("precision", "float32"),
                             device=device)
    vector = embed_texts(load(settings), [query], settings)[0]
    hits, rows = top_k(out, manifest, vector.astype(np.float32), k)
    return SearchResult(hits, chosen, rows, len(manifest.shards), vectors["normalize"], manifest.complete)


def _prompt(manifest: Manifest, path: Path, prompt_name: str | None, prompt: str | None) -> tuple[str | None, str | None]:
    if prompt is not None:
        return None, prompt or None
    if prompt_name is not None:
        from .encoding import choose_prompt

        return choose_prompt(path, prompt_name, None)
    recorded = manifest.vectors.get("query_prompt") or {}
    return recorded.get("name"), recorded.get("text")


def describe(result: SearchResult, output: str) -> str:
    """What ``st-llm2vec search`` prints: the prompt used, what was searched, then rank, score and id a line."""
    name, text = result.prompt
    if text is None:
        prompt = "query prompt: none (the model has no 'query' prompt; --prompt TEXT sets one)"
    else:
        prompt = f"query prompt: {name!r} = {text!r}" if name else f"query prompt: {text!r}"
    score = "cosine" if result.normalized else "inner product"
    lines = [prompt, f"searched {result.rows} rows in {result.shards} shards of {output} ({score}, exact)"
             + ("" if result.complete else "; OUT is incomplete: run its embed command again to finish it")]
    lines += [f"{rank:>3}  {score_:.4f}  {row_id}" for rank, (row_id, score_) in enumerate(result.hits, start=1)]
    return "\n".join(lines)
