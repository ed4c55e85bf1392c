"""The dev evaluators run with an instruction on every text, as llm2vec evaluates STS: the training stages'
in-loop dev STS (``tests/test_eval_agreement.py`` holds it to ``st-llm2vec eval``'s scores)."""

from __future__ import annotations

from sentence_transformers.base.evaluation import SequentialEvaluator

from .instructions import prompt_for


class InstructedSequentialEvaluator(SequentialEvaluator):
    """Runs its evaluators with ``instruction`` as the prompt of every text (llm2vec evaluates STS so), given the
    way the model takes prompts (:func:`~st_llm2vec.instructions.prompt_for`); the main score is the mean of theirs."""

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


def _mean(scores) -> float:
    return sum(scores) / len(scores)
