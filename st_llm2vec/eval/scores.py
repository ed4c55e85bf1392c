"""Scoring a model on dev tasks and naming the scores: the quick start's and the benchmarks' tables.

The scores come from ``st-llm2vec eval``'s own path (:func:`st_llm2vec.eval.runner.evaluate_model`: mteb tasks,
mteb's metrics), so a quick-start table and an ``eval`` table of the same model on the same pairs are the same
numbers. The training stages' in-loop dev STS keeps Sentence Transformers' evaluators (the trainer runs
``SentenceEvaluator`` objects; :class:`~st_llm2vec.instructed_evaluator.InstructedSequentialEvaluator`); ``tests/test_eval_agreement.py`` holds
both to the same scores (≤ 0.01 points).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..instructed_evaluator import InstructedSequentialEvaluator  # noqa: F401  (the training stages' evaluator)


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
