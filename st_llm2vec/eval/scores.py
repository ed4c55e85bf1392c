"""Running evaluators on a model and naming their scores: the one evaluation path of the quick start, the
training stages' dev STS and the benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sentence_transformers.base.evaluation import SequentialEvaluator

from ..portable import prompt_for


class InstructedSequentialEvaluator(SequentialEvaluator):
    """Runs its evaluators with ``instruction`` as the prompt of every text (llm2vec evaluates STS so);
    the main score is the mean of theirs."""

    def __init__(self, evaluators, instruction: str | None = None) -> None:
        super().__init__(evaluators, main_score_function=_mean)
        self.instruction = instruction or None

    def __call__(self, model, output_path=None, epoch: int = -1, steps: int = -1):
        if self.instruction is None:
            return super().__call__(model, output_path, epoch, steps)
        saved = (dict(model.prompts or {}), model.default_prompt_name)
        model.prompts = {**saved[0], "st_llm2vec_eval": prompt_for(model, self.instruction)}
        model.default_prompt_name = "st_llm2vec_eval"
        try:
            return super().__call__(model, output_path, epoch, steps)
        finally:
            model.prompts, model.default_prompt_name = saved


def _mean(scores: Sequence[float]) -> float:
    return sum(scores) / len(scores)


def evaluate(
    model, evaluators: Sequence[Any], *, instruction: str | None = None, progress: bool = True
) -> dict[str, float]:
    """Run the dev-set evaluators (:func:`st_llm2vec.eval.devsets.dev_evaluators`) on ``model``; their scores ×100
    under the keys of the tables and result files: ``<set>`` = cosine Spearman of an STS set,
    ``<set>_map`` / ``<set>_mrr@10`` of a reranking set, and ``sts_mean``.

    ``instruction`` is the prompt of every text (llm2vec evaluates instructed STS so).
    """
    from sentence_transformers.sentence_transformer.evaluation import RerankingEvaluator

    for evaluator in evaluators:
        evaluator.show_progress_bar = progress
    metrics = InstructedSequentialEvaluator(list(evaluators), instruction)(model)
    scores: dict[str, float] = {}
    sts: list[float] = []
    for evaluator in evaluators:
        if isinstance(evaluator, RerankingEvaluator):
            for metric in ("map", f"mrr@{evaluator.at_k}"):
                scores[f"{evaluator.name}_{metric}"] = 100.0 * metrics[f"{evaluator.name}_{metric}"]
        else:
            scores[evaluator.name] = 100.0 * metrics[evaluator.primary_metric]
            sts.append(scores[evaluator.name])
    if sts:
        scores["sts_mean"] = sum(sts) / len(sts)
    return scores
