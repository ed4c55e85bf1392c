"""The one lifecycle of every stage: one training run per ``output_dir`` (lock, fingerprint, complete-checkpoint
resume: :mod:`.training_run`) around the trainer, and what a finished run saved about itself."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TypeVar

from .arguments import jsonable

if TYPE_CHECKING:
    from .arguments import RecipeArguments

logger = logging.getLogger(__name__)


def start_run(arguments: RecipeArguments, training: Mapping[str, Any], do_train: bool = True):
    """Lock ``output_dir`` for this config's run (:class:`~st_llm2vec.recipe.training_run.TrainingRun`); raises
    :class:`~st_llm2vec.recipe.training_run.RunAlreadyComplete` if it holds this run finished. The files named by
    ``PATH_KEYS`` (model, data) join the run fingerprint by their identity."""
    from .run_record import run_fingerprint
    from .training_run import TrainingRun

    fingerprint = run_fingerprint(
        {"stage": arguments.STAGE, **asdict(arguments), **jsonable(training)},
        path_keys=arguments.PATH_KEYS,
    )
    run = TrainingRun(
        training["output_dir"],
        fingerprint,
        overwrite=arguments.overwrite_output_dir,
        resume=arguments.resume_from_checkpoint,
        do_train=do_train,
        max_steps=training.get("max_steps"),
        stop_after_n_steps=arguments.stop_after_n_steps,
        what=f"{arguments.TITLE} training",
    )
    run.acquire()
    try:
        run.check_finished()
    except BaseException:
        run.release()
        raise
    return run


def finish_run(run: Any, trainer: Any) -> None:
    """Record the run as finished at the trainer's step (a later identical config is not trained again)."""
    if trainer is not None:
        run.finish(trainer.state.global_step, trainer.state.max_steps)


R = TypeVar("R")


def run_lifecycle(
    arguments: RecipeArguments,
    training: Mapping[str, Any],
    train: Callable[[Any], tuple[R, Any]],
    finished: Callable[[Mapping[str, Any]], R],
    *,
    do_train: bool = True,
    run: Any = None,
) -> R:
    """The one lifecycle of every stage: lock ``output_dir`` for this config's run (or take ``run``, already
    started); if it holds this run finished, return ``finished(record)`` without training; else
    ``train(run)`` → ``(result, trainer)``, record the run as finished, and release the lock whatever happens."""
    from .training_run import RunAlreadyComplete

    if run is None:
        try:
            run = start_run(arguments, training, do_train=do_train)
        except RunAlreadyComplete as done:
            logger.warning("%s", done)
            return finished(done.record)
    try:
        result, trainer = train(run)
        finish_run(run, trainer)
        return result
    finally:
        run.release()


def stop_callbacks(arguments: RecipeArguments) -> list[Any]:
    """llm2vec's ``stop_after_n_steps`` as a callback (which also saves a checkpoint at that step)."""
    from .trainer import StopAfterNSteps

    return [StopAfterNSteps(arguments.stop_after_n_steps)] if arguments.stop_after_n_steps else []


def read_result(output_dir: str, result_file: str) -> dict[str, Any]:
    """What a finished run saved about itself (``{}`` if nothing)."""
    from ..files import read_json

    return read_json(os.path.join(output_dir, result_file)) or {}


def write_result(output_dir: str, result_file: str, data: Mapping[str, Any]) -> None:
    with open(os.path.join(output_dir, result_file), "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str)

