"""The evaluation runner: models × tasks through mteb, resumable, one code path for every model.

:func:`evaluate_models` is ``st-llm2vec eval``: each model (:mod:`.models`) on each task (:mod:`.tasks`) with the
instructions of :mod:`.instructions`, by ``mteb.evaluate``. Its output dir holds:

- ``results/``: mteb's own result files (``ResultCache``: ``<model>/<revision>/experiments/<settings>/<task>.json``),
  where the revision is the model's content fingerprint (or Hub commit) and the settings name what changes the
  scores (instructions, max_seq_length, dtype, device): a run of another model or config never reuses them.
  Finished tasks are skipped (mteb's ``only-missing``), so an interrupted run resumes; a model whose tasks are
  all done is not even loaded. ``st_llm2vec_eval.json`` beside each model's results records each task's
  instruction, prompts and data revision; a cached result for other data or another instruction is refused
  unless ``overwrite``;
- ``embeddings/``: each distinct text's embedding per model, settings and prompt (see :class:`.cached_encoder.EvalEncoder`);
- ``summary.md``, ``summary.csv``, ``summary.json``, ``summary.png``: this invocation's table (:mod:`.report`).

:func:`evaluate_model` runs one in-memory model with nothing written (the quick start, the benchmarks).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError, MissingFileError, OutputExistsError
from ..files import OutputLock, write_json_atomic
from ..schema import MAP, FileType, Key, obj
from . import require_mteb

require_mteb()

import mteb  # noqa: E402  (after the check that names the extra to install)
from mteb.abstasks.abstask import AbsTask  # noqa: E402
from mteb.models.model_meta import ModelMeta  # noqa: E402
from mteb.results import TaskResult  # noqa: E402
from mteb.types import PromptType  # noqa: E402

from .cached_encoder import EvalEncoder  # noqa: E402
from .instructions import LLM2VEC, TaskInstruction, task_instruction  # noqa: E402
from .models import ModelSource, load, plan_fingerprint, precision_of, prompts_for, resolve_model  # noqa: E402
from .results import EvalConfig, EvalRun, TaskScore  # noqa: E402

logger = logging.getLogger(__name__)

MARKER = "st_llm2vec_eval.json"  # in the output dir: what it is; beside each model's results: its tasks' prompts
# The marker as it is read back, declared once (:mod:`st_llm2vec.schema`): each task's record of its setup.
MARKER_SCHEMA = FileType(MARKER, "st-llm2vec eval's record", obj({
    "written_by": Key("str"), "layout": Key("int"),
    "tasks": Key(MAP, item=obj({"dataset_revision": Key("any"), "instruction": Key("any")})),
}), "delete it to evaluate again, or choose another --output")


# --------------------------------------------------------------------------- results


class _ResultCache(mteb.ResultCache):
    """mteb's result cache, reading an unreadable result file (a run killed while mteb wrote it in place) as
    missing, so the task is evaluated again instead of the next run failing on it."""

    def load_task_result(self, task_name, model_name, *args: Any, **kwargs: Any):
        try:
            return super().load_task_result(task_name, model_name, *args, **kwargs)
        except (OSError, ValueError) as exc:
            logger.warning("Evaluating %s again: its result file could not be read (%s).", task_name, exc)
            return None


def _meta(name: str, revision: str, experiment: Mapping[str, Any], model=None) -> ModelMeta:
    """The ModelMeta mteb files results under: our label, revision and settings (mteb would take the card's)."""
    base = ModelMeta.from_sentence_transformer_model(model) if model is not None else ModelMeta.create_empty()
    return base.model_copy(update={"name": name, "revision": revision, "experiment_kwargs": dict(experiment) or None})


def _results_dir(cache: mteb.ResultCache, meta: ModelMeta) -> Path:
    """Where mteb files this model's results for these settings (the dir of its ``<task>.json`` files)."""
    return cache.get_task_result_path("task", meta).parent


def _complete(result: TaskResult | None, task: AbsTask) -> bool:
    return result is not None and not result.get_missing_evaluations(task)


def _task_record(task: AbsTask, item: TaskInstruction, prompts: dict[str, str] | None) -> dict[str, Any]:
    return {"instruction": item.instruction, "source": item.source, "symmetric": item.symmetric,
            "dataset_revision": task.metadata.revision, **({"prompts": prompts} if prompts is not None else {})}


def _same_setup(recorded: Mapping[str, Any] | None, task: AbsTask, item: TaskInstruction) -> str | None:
    """Why a cached result cannot stand for this task and instruction (None: it can)."""
    if recorded is None:
        return "no record of its instruction"
    if recorded.get("dataset_revision") != task.metadata.revision:
        return f"other data (revision {recorded.get('dataset_revision')} -> {task.metadata.revision})"
    if recorded.get("instruction") != item.instruction:
        return f"another instruction ({recorded.get('instruction')!r} -> {item.instruction!r})"
    return None


def _side_prompts(encoder: EvalEncoder, task: AbsTask) -> dict[str, str]:
    """The prompt each side of ``task`` gets: ``query`` / ``document`` for retrieval, else ``text`` (both sides)."""
    if task.metadata.simplified_task_type == "retrieval":
        return {"query": encoder.prompt(task.metadata, PromptType.query),
                "document": encoder.prompt(task.metadata, PromptType.document)}
    sides = {getattr(task, "input1_prompt_type", None), getattr(task, "input2_prompt_type", None)}
    return {(side.value if side else "text"): encoder.prompt(task.metadata, side) for side in sides}


def _score(label: str, task: AbsTask, result: TaskResult, record: Mapping[str, Any], cached: bool) -> TaskScore:
    splits = [s for s in task.eval_splits if s in result.scores]
    first = result.scores[splits[0]][0]
    names = [k for k, v in first.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    scores = {k: float(result.get_score(splits=splits, getter=lambda s, k=k: s[k])) for k in names}
    main = task.metadata.main_score
    return TaskScore(label, task.metadata.name, main, 100.0 * scores.get("main_score", scores.get(main, float("nan"))),
                     scores, dict(record), cached, float(result.evaluation_time or 0.0))


def _load_data(task: AbsTask) -> None:
    """Load a task's data, saying in one line how to get it when it is not in the cache and the Hub is out of reach."""
    try:
        task.load_data()
    except (ConnectionError, OSError) as exc:
        if isinstance(exc, FileNotFoundError) and str(task.metadata.dataset.get("path", "")).startswith("local:"):
            raise
        dataset = task.metadata.dataset
        raise MissingFileError(
            f"task {task.metadata.name}: its data ({dataset.get('path')} @ {str(dataset.get('revision'))[:12]}) is not in "
            f"the Hugging Face cache and the Hub cannot be reached ({type(exc).__name__}: {exc}). Get it where there is "
            f"network: python -c \"import mteb; mteb.get_task('{task.metadata.name}').load_data()\", then copy "
            "~/.cache/huggingface here (or set HF_HOME to that copy); or drop the task.") from exc


# --------------------------------------------------------------------------- running


def _check_output(output: Path, overwrite: bool) -> None:
    """``output`` is new, empty, or an earlier ``st-llm2vec eval`` output: anything else is refused."""
    if output.exists() and not output.is_dir():
        raise OutputExistsError(f"{output} exists and is not a directory; choose another --output.")
    if output.is_dir() and any(output.iterdir()) and MARKER_SCHEMA.read_whole(output) is None:
        raise OutputExistsError(f"{output} is not empty and was not written by st-llm2vec eval (no {MARKER}): "
                                "choose another --output, so nothing of it is mixed with evaluation results.")


def evaluate_models(models: Sequence[str], tasks: Sequence[str | AbsTask], config: EvalConfig = EvalConfig()) -> EvalRun:
    """Evaluate every model (dir or Hub id) on every task (a name, a local path, or an mteb task) through mteb,
    writing results, embeddings and a summary under ``config.output_dir`` (see the module doc); returns the run.

    Everything that can be checked is checked before any model loads: the task names and files, the models (a
    dir without modules.json is refused), the output dir, and each cached result against its recorded data
    revision and instruction.
    """
    from .report import write_summary
    from .tasks import resolve_tasks

    if not models:
        raise InputError("no model to evaluate")
    if not tasks:
        raise InputError("no task to evaluate (--tasks)")
    # the models first: a model path that does not exist is the error to name, before any task data is looked for
    sources = _unique_labels([resolve_model(m) for m in models])
    precisions = {s.label: precision_of(s, config.load.precision) for s in sources}
    task_list = resolve_tasks([t for t in tasks if isinstance(t, str)], config.data_dir) + \
        [t for t in tasks if not isinstance(t, str)]
    instructions = {t.metadata.name: task_instruction(t, config.overrides) for t in task_list}
    unknown = set(config.overrides) - set(instructions)
    if unknown:
        raise InputError(f"--instruction names tasks not evaluated: {', '.join(sorted(unknown))}")
    output = config.output_dir
    if output is None:
        raise InputError("evaluate_models writes its results: give config.output_dir (evaluate_model writes nothing)")
    output = Path(output)
    _check_output(output, config.overwrite)
    with OutputLock(output, holder="st-llm2vec eval", mixes="their result files and embedding caches"):
        write_json_atomic(output / MARKER, {"written_by": "st-llm2vec eval", "layout": 1})
        cache = _ResultCache(output)
        scores: list[TaskScore] = []
        run = EvalRun([s.label for s in sources], [t.metadata.name for t in task_list], scores, config)
        loaded: set[str] = set()
        try:
            for source in sources:
                scores += _evaluate_source(source, task_list, instructions, config, cache, output, loaded, run,
                                           precisions[source.label])
        finally:
            for task in task_list:
                if task.metadata.name in loaded:
                    task.unload_data()
        run.files = write_summary(run, output, chart=config.chart)
    return run


def _unique_labels(sources: list[ModelSource]) -> list[ModelSource]:
    """Two models named alike (``a/model``, ``b/model``) get their parent dir in the label; one given twice is one."""
    from dataclasses import replace

    unique: dict[tuple[str, str], ModelSource] = {}
    for source in sources:
        unique.setdefault((str(source.path), source.revision), source)
    sources = list(unique.values())
    counts: dict[str, int] = {}
    for source in sources:
        counts[source.label] = counts.get(source.label, 0) + 1
    return [replace(s, label=f"{s.path.parent.name}/{s.label}") if counts[s.label] > 1 and s.path is not None else s
            for s in sources]


def _evaluate_source(source: ModelSource, task_list: list[AbsTask], instructions: Mapping[str, TaskInstruction],
                     config: EvalConfig, cache: _ResultCache, output: Path, loaded: set[str], run: EvalRun,
                     precision: str = "float32") -> list[TaskScore]:
    from tqdm.auto import tqdm

    experiment = config.experiment(precision)
    meta = _meta(source.label, source.revision, experiment)
    record_path = _results_dir(cache, meta) / MARKER
    records: dict[str, Any] = (MARKER_SCHEMA.read_whole(record_path.parent) or {}).get("tasks") or {}
    todo: list[AbsTask] = []
    done: dict[str, TaskResult] = {}
    for task in task_list:
        name = task.metadata.name
        result = cache.load_task_result(name, meta)
        if result is not None:
            why = _same_setup(records.get(name), task, instructions[name])
            if why is not None and not config.overwrite:
                raise OutputExistsError(
                    f"{cache.get_task_result_path(name, meta)} holds {source.label}'s result on {name} for {why}: pass "
                    "--overwrite to evaluate it again and replace it, or choose another --output.")
            if why is not None:
                result = None
        if _complete(result, task) and not config.overwrite:
            done[name] = result
        else:
            todo.append(task)
    scores: list[TaskScore] = []
    encoder = None
    if todo:
        for task in todo:
            if task.metadata.name not in loaded:
                _load_data(task)
                loaded.add(task.metadata.name)
        model = load(source, config.load, precision)
        full_meta = _meta(source.label, source.revision, experiment, model)
        # the embeddings of a precision plan are kept apart per plan (which layers stay float32 is measured at load)
        plan = plan_fingerprint(model)
        cache_dir = (output / "embeddings" / full_meta.model_name_as_path() / source.revision
                     / ((full_meta.experiment_name or "default") + (f"-plan-{plan}" if plan else "")))
        encoder = EvalEncoder(model, full_meta, prompts_for(model, instructions, config.instructions), cache_dir)
        encoder.precision = {"precision": precision, "plan": _plan_description(model)}
    bar = tqdm(task_list, desc=source.label, unit="task", disable=not config.progress)
    try:
        for task in bar:
            name = task.metadata.name
            bar.set_postfix_str(name)
            if name in done:
                scores.append(_score(source.label, task, done[name], records.get(name, {}), cached=True))
                continue
            # recorded before mteb writes the task's result, so a result never lacks the instruction it was made with
            records[name] = {**_task_record(task, instructions[name], _side_prompts(encoder, task)),
                             **encoder.precision}
            record_path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(record_path, {"model": source.spec, "revision": source.revision, "settings": experiment,
                                            "tasks": records})
            result = _run_task(encoder, task, config, cache)
            scores.append(_score(source.label, task, result, records[name], cached=False))
    finally:
        bar.close()
        if encoder is not None:
            encoder.close()
            run.encoded[source.label], run.reused[source.label] = encoder.encoded, encoder.reused
    return scores


def _plan_description(model) -> str | None:
    """The precision plan ``model`` runs under, in one line (None: float32)."""
    from ..precision import plan_of

    plan = plan_of(getattr(model[0], "model", None))
    return plan.describe() if plan is not None else None


def _run_task(encoder: EvalEncoder, task: AbsTask, config: EvalConfig, cache: mteb.ResultCache | None) -> TaskResult:
    """One task through ``mteb.evaluate`` (``only-missing``: a partly finished task continues; ``always`` to redo it)."""
    encode_kwargs = {"batch_size": config.batch_size, "show_progress_bar": config.progress}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # mteb warns (and logs) about superseded tasks
        start = time.perf_counter()
        result = mteb.evaluate(encoder, task, encode_kwargs=encode_kwargs, cache=cache, co2_tracker=False,
                               overwrite_strategy="always" if config.overwrite else "only-missing",
                               show_progress_bar=False)
    if result.exceptions:
        raise RuntimeError(f"mteb failed on {task.metadata.name}: {result.exceptions[0].exception}")
    [task_result] = result.task_results
    logger.info("%s: %.1f s", task.metadata.name, time.perf_counter() - start)
    return task_result


def evaluate_model(model, tasks: Sequence[AbsTask], *, instructions: str = LLM2VEC,
                   overrides: Mapping[str, str] | None = None, batch_size: int = 32, progress: bool = True,
                   label: str = "model") -> dict[str, TaskScore]:
    """One in-memory model on ``tasks`` through the same mteb path, writing nothing (no result files, embeddings
    kept in memory for this call only): the quick start's and the benchmarks' scores."""
    overrides = dict(overrides or {})
    items = {t.metadata.name: task_instruction(t, overrides) for t in tasks}
    meta = _meta(label, "in-memory", {"instructions": instructions}, model)
    encoder = EvalEncoder(model, meta, prompts_for(model, items, instructions), cache_dir=None)
    config = EvalConfig(output_dir=None, instructions=instructions, batch_size=batch_size, progress=progress)
    out: dict[str, TaskScore] = {}
    for task in tasks:
        record = _task_record(task, items[task.metadata.name], _side_prompts(encoder, task))
        out[task.metadata.name] = _score(label, task, _run_task(encoder, task, config, None), record, cached=False)
    return out
