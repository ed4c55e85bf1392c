"""The recipe's stages, one entry each, in the order the recipe runs them: the command that runs a stage from a
config (``st-llm2vec <name>``), the module that holds its keys and training, and its line in ``st-llm2vec --help``.
The command line reads this table; a new stage is an entry here and a ``stage_<name>.py`` module that defines
``parents_<name>()`` (its options) and ``run_<name>(args)``.

Importing this is cheap: ``st-llm2vec --help`` lists the stages from it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RecipeStage:
    """One stage: ``st-llm2vec <name>``, run by ``module``; ``help`` says what it trains."""

    name: str
    module: str
    help: str


STAGES: dict[str, RecipeStage] = {
    stage.name: stage
    for stage in (
        RecipeStage("mntp", "st_llm2vec.recipe.stage_mntp", "masked next-token prediction training from a JSON/YAML config"),
        RecipeStage("simcse", "st_llm2vec.recipe.stage_contrastive", "unsupervised SimCSE training from a JSON/YAML config"),
        RecipeStage("supervised", "st_llm2vec.recipe.stage_contrastive", "supervised contrastive training with hard negatives"),
    )
}
