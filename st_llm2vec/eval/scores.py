"""Scoring a model on dev tasks and naming the scores: the quick start's and the benchmarks' tables.

The scores come from ``st-llm2vec eval``'s own path (:func:`st_llm2vec.eval.runner.evaluate_model`: mteb tasks,
mteb's metrics), so a quick-start table and an ``eval`` table of the same model on the same pairs are the same
numbers. The training stages' in-loop dev STS keeps Sentence Transformers' evaluators (the trainer runs
``SentenceEvaluator`` objects: :mod:`st_llm2vec.instructed_evaluator`); ``tests/test_eval_agreement.py`` holds
both to the same scores (≤ 0.01 points). Importing this is cheap (mteb is imported when scoring starts).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..devdata import WANG_DEV


def evaluate(model, tasks: Sequence[Any], *, instruction: str | None = None, progress: bool = True) -> dict[str, float]:
    """Score ``model`` on dev tasks (:func:`st_llm2vec.eval.tasks.dev_tasks`) through mteb; ×100 under the keys of
    the tables and result files: ``<task>`` = cosine Spearman of an STS task, ``<task>_map`` / ``<task>_mrr@10``
    of a reranking task, ``<task>`` = nDCG@10 of a retrieval task, and ``sts_mean``.

    ``instruction`` is given to every text of the STS tasks and to the queries of the others (llm2vec's way);
    without it each text gets only the prompts the model carries, as Sentence Transformers' evaluators apply them.
    """
    from .instructions import LLM2VEC, MODEL
    from .runner import evaluate_model

    overrides = {task.metadata.name: instruction for task in tasks} if instruction else None
    results = evaluate_model(model, tasks, instructions=LLM2VEC if instruction else MODEL, overrides=overrides,
                             progress=progress)
    scores: dict[str, float] = {}
    sts: list[float] = []
    for task in tasks:
        result = results[task.metadata.name]
        if task.metadata.type == "Reranking":
            scores[f"{result.task}_map"] = result.metric("map_at_1000")
            scores[f"{result.task}_mrr@10"] = result.metric("mrr_at_10")
        else:
            scores[result.task] = result.value
            if task.metadata.type == "STS":
                sts.append(result.value)
    if sts:
        scores["sts_mean"] = sum(sts) / len(sts)
    return scores


# --------------------------------------------------------------------------- the tables


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]], *, digits: int = 1) -> str:
    """A markdown table: ``columns`` = (key, header); numbers rounded and right-aligned, missing cells "–"."""
    def cell(value: Any) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.{digits}f}"
        return str(value)

    def numeric(key: str) -> bool:
        values = [row.get(key) for row in rows if row.get(key) is not None]
        return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)

    header = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---:" if numeric(k) else "---" for k, _ in columns) + "|"
    body = ["| " + " | ".join(cell(row.get(k)) for k, _ in columns) + " |" for row in rows]
    return "\n".join([header, rule, *body])


def score_columns(score_keys: Sequence[str]) -> list[tuple[str, str]]:
    """Table columns for the score keys present, in a fixed order."""
    headers = {
        "sts12": "STS12", "sts13": "STS13", "sick-trial": "SICK trial", "builtin-sts": "built-in STS",
        "sts_mean": "STS mean", f"{WANG_DEV}_map": "wang MAP", f"{WANG_DEV}_mrr@10": "wang MRR@10",
    }
    return [(k, headers[k]) for k in headers if k in score_keys]


def spearman_noise(pairs: int, score: float) -> float:
    """Half-width (×100) of the 95% interval of a Spearman correlation ``score`` (×100) measured on ``pairs``
    pairs (Fisher z, standard error 1.06 / sqrt(n - 3)): what one dev score can move by chance."""
    if pairs <= 3:
        return float("inf")
    r = max(min(score / 100.0, 0.999), -0.999)
    z = math.atanh(r)
    half = 1.96 * 1.06 / math.sqrt(pairs - 3)
    return 100.0 * (math.tanh(z + half) - math.tanh(z - half)) / 2.0
