"""Distillation from a teacher's scores (the supervised stage's ``teacher`` key, with ``loss_class`` MarginMSELoss or
DistillKLDivLoss): the teacher — any Sentence Transformers model, stock or st-llm2vec's — scores each row's
candidates once, cosine(query, positive) and cosine(query, negative_k), and the student learns those scores (their
margins, or their softmax over the candidates; :mod:`.losses`).

The scores are computed once and cached with the data they score: one Parquet file per dataset (its rows plus the
``label`` column of scores) under ``teacher_cache_dir``, named by a key of the teacher's fingerprint
(:func:`~.scorer.scorer_fingerprint`), the prompts it encoded with and the rows themselves. A rerun, another
student or another seed on the same data and teacher loads the teacher not at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from ..errors import InputError
from .pair_data import TEACHER_COLUMN, negative_columns

logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    from ..smollm2 import default_cache_dir as st_llm2vec_cache

    return st_llm2vec_cache() / "teacher_scores"


def check_candidates(data: Any, loss_class: str) -> None:
    """Every dataset carries negatives: the teacher's scores are over (positive, negatives), so rows without one give
    a distillation loss nothing to learn (MarginMSE: no margin; KL: one candidate)."""
    bare = [s.name for s in data.subsets if not s.has_negatives]
    if bare:
        raise InputError(
            f"loss_class {loss_class} learns the teacher's scores over each row's positive and hard negatives, but "
            f"dataset(s) {bare} have no negatives: give them negatives, mine them (hard_negatives), or train them "
            "with MultipleNegativesRankingLoss in another run.")


def _key(subset: Any, teacher: str, prompts: dict[str, Any]) -> str:
    blob = json.dumps({"teacher": teacher, "prompts": prompts, "similarity": "cosine", "rows": subset.digest()},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def score_rows(teacher: Any, subset: Any, prompts: dict[str, Any], batch_size: int = 32) -> list[list[float]]:
    """The teacher's cosine of each row's query with its positive and each negative: ``[[pos, neg_1, ...], ...]``.
    Every distinct text is encoded once."""
    import torch


    ds = subset.dataset
    documents = ["positive", *negative_columns(ds.column_names)]
    queries = list(dict.fromkeys(ds["query"]))
    texts = list(dict.fromkeys(t for column in documents for t in ds[column]))
    q = teacher.encode_query(queries, prompt=prompts["query"], batch_size=batch_size, convert_to_tensor=True,
                             normalize_embeddings=True, show_progress_bar=False)
    d = teacher.encode_document(texts, prompt=prompts["document"], batch_size=batch_size, convert_to_tensor=True,
                                normalize_embeddings=True, show_progress_bar=False)
    q_index = {t: i for i, t in enumerate(queries)}
    d_index = {t: i for i, t in enumerate(texts)}
    rows = torch.tensor([q_index[t] for t in ds["query"]])
    scores = [(q[rows] * d[torch.tensor([d_index[t] for t in ds[column]])]).sum(-1) for column in documents]
    return torch.stack(scores, dim=1).float().cpu().tolist()


def with_teacher_scores(data: Any, teacher_spec: str, instructions: str = "auto", cache_dir: str | None = None,
                        batch_size: int = 32) -> tuple[Any, dict[str, str]]:
    """``data`` with the teacher's scores in a ``label`` column of every dataset (from the cache when it holds them;
    the teacher loads only for datasets it does not); also {dataset: cache file}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .pair_data import PairData, PairSubset
    from .scorer import load_scorer, resolve_mode, scorer_fingerprint, subset_prompts

    mode = resolve_mode(instructions, teacher_spec)
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    fingerprint = scorer_fingerprint(teacher_spec)
    teacher, subsets, files = None, [], {}
    for subset in data.subsets:
        rows = subset.dataset.remove_columns([c for c in subset.dataset.column_names if c == TEACHER_COLUMN])
        subset = PairSubset(subset.name, rows, subset.instruction, subset.symmetric, subset.source)
        prompts = subset_prompts(subset, mode)
        path = folder / f"{subset.name}-{_key(subset, fingerprint, prompts)}.parquet"
        if path.is_file():
            labels = pq.read_table(path, columns=[TEACHER_COLUMN]).column(TEACHER_COLUMN).to_pylist()
            logger.info("teacher scores of %s: %s (cached)", subset.name, path)
        else:
            if teacher is None:
                teacher = load_scorer(teacher_spec)
            labels = score_rows(teacher, subset, prompts, batch_size)
            folder.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
            pq.write_table(pa.Table.from_pylist(rows.to_list()).append_column(TEACHER_COLUMN, pa.array(labels)), partial)
            os.replace(partial, path)  # whole or absent: a killed run leaves no half-written scores
            logger.info("teacher scores of %s: computed with %s, cached in %s", subset.name, teacher_spec, path)
        if len(labels) != len(rows):
            raise InputError(f"{path} holds {len(labels)} scores for {len(rows)} rows: delete it to recompute.")
        files[subset.name] = str(path)
        subsets.append(PairSubset(subset.name, rows.add_column(TEACHER_COLUMN, labels), subset.instruction,
                                  subset.symmetric, subset.source))
    del teacher
    return PairData(subsets, data.dropped), files
