"""The recipe layer the three training stages (MNTP, SimCSE, supervised) share: typed config, the run
around the trainer, the start model, the model card and the command line.

A stage is a :class:`RecipeArguments` subclass (its own keys, key checks and defaults) plus one
function that builds its data, loss and trainer (``stage_mntp.py``, ``stage_contrastive.py``); all the
rest is here, written once:

- config: llm2vec's ``train_configs`` JSON / YAML (or a dict) → ``(arguments, training kwargs)``. Each
  recipe key is declared once (:func:`~st_llm2vec.train.config.key`), from which come the dataclass, its
  check and its command-line option; every key that is not the stage's own must be a
  ``SentenceTransformerTrainingArguments`` field, and every value is checked (:mod:`.config`) before
  anything loads. llm2vec's key names are read as
  aliases (``evaluation_strategy``, ``lora_modules``); relative paths are looked up beside the file;
- run: one training run per ``output_dir`` (lock, fingerprint, complete-checkpoint resume: :mod:`.runs`);
- model: the start model (a causal LM, or a saved st_llm2vec dir, with optional llm2vec LoRA merged);
- card: the LLM2Vec settings and citation added to ST's generated model card;
- CLI: ``st-llm2vec STAGE CONFIG [--KEY VALUE ...] [--set KEY=VALUE ...]``, and the torchrun launchers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ..cards import LLM2VEC_CITATION
from ..errors import InputError
from ..lowbit import QUANTIZATIONS
from .config import (
    add_options,
    aliases_of,
    check_keys,
    check_output_dir,
    check_training_args,
    key,
    keys_of,
    pooling_check,
    raise_errors,
    read_config_file,
    resume_value,
    torch_dtype_check,
)

logger = logging.getLogger(__name__)

# llm2vec's configs were written for transformers 4; its renamed TrainingArguments fields.
TRAINING_ARG_ALIASES = {"evaluation_strategy": "eval_strategy"}
FORMATS = ("auto", "portable", "exact")

A = TypeVar("A", bound="RecipeArguments")


@dataclass
class RecipeArguments:
    """The keys every stage reads (llm2vec's model / LoRA / run keys); a stage subclasses it with its own.

    Every key is declared once, as a field made by :func:`~st_llm2vec.train.config.key` (type, default,
    help, llm2vec alias, range): the config check, the command-line option and the dataclass come from it.
    Class-level settings a stage overrides: ``STAGE`` (its name), ``TITLE`` (in messages),
    ``TRAINING_DEFAULTS`` (trainer defaults of the stage, e.g. its learning rate), ``IGNORED_KEYS``
    (llm2vec keys without effect here), ``PATH_KEYS`` (paths looked up beside the config file, part of the
    run fingerprint), ``RESULT_FILE``.
    """

    STAGE: ClassVar[str] = ""
    TITLE: ClassVar[str] = ""
    TRAINING_DEFAULTS: ClassVar[dict[str, Any]] = {}
    IGNORED_KEYS: ClassVar[frozenset[str]] = frozenset()
    PATH_KEYS: ClassVar[tuple[str, ...]] = ("model_name_or_path",)
    RESULT_FILE: ClassVar[str] = ""

    model_name_or_path: str | None = key(
        None, nullable=False, help="a causal-LM checkpoint (Hub id or dir) or a saved st_llm2vec model dir")
    torch_dtype: str | None = key(None, kind="any", check=torch_dtype_check, help="bfloat16, float16, float32 or auto")
    attn_implementation: str | None = key(None, help="sdpa, eager, flash_attention_2, ...")
    pooling_mode: str | None = key(None, check=pooling_check, help="mean, weighted_mean, eos_token, bos_token")
    format: str = key("auto", choices=FORMATS,
                      help="saved format: portable (stock ST modules), exact (llm2vec's semantics), auto")
    quantization: str | None = key(None, choices=QUANTIZATIONS,
                                   help="QLoRA: train the LoRA over a frozen nf4 / fp4 / int8 base (bitsandbytes); "
                                        "the saved model is the adapter merged into the float32 start weights")
    max_seq_length: int | None = key(None, low=1, help="training token limit")
    max_train_samples: int | None = key(None, low=1, help="use at most this many training rows")
    lora_r: int = key(16, low=1, help="LoRA rank")
    lora_alpha: float | None = key(None, low=0, low_open=True, help="LoRA alpha; default 2 * lora_r (llm2vec)")
    lora_dropout: float = key(0.05, low=0, high=1, high_open=True, help="LoRA dropout")
    lora_target_modules: list[str] | None = key(None, aliases=("lora_modules",),
                                                help="modules to adapt; default every projection")
    stop_after_n_steps: int | None = key(
        None, low=0, help="end training at this step (the LR schedule still spans the whole run)")
    overwrite_output_dir: bool = key(False, help="train afresh, removing old checkpoints")
    resume_from_checkpoint: str | None = key(
        None, kind="any", check=resume_value, cli={"nargs": "?", "const": "latest"},
        help="a checkpoint dir, or (no value) the last complete one in output_dir")

    def check(self, training: Mapping[str, Any]) -> None:
        """What the stage refuses beyond one key at a time (``training``: the trainer kwargs)."""

    def unmerged_output(self) -> bool:
        """The stage saves its LoRA adapter unmerged (so the output is not a standalone portable model)."""
        return False


def training_argument_names() -> set[str]:
    from sentence_transformers import SentenceTransformerTrainingArguments

    return {f.name for f in fields(SentenceTransformerTrainingArguments) if f.init}


def read_arguments(
    cls: type[A], config: Mapping[str, Any] | str | os.PathLike, overrides: Mapping[str, Any] | None = None
) -> tuple[A, dict[str, Any]]:
    """(the stage's arguments, ``SentenceTransformerTrainingArguments`` kwargs) from a config dict or a
    JSON / YAML file, ``overrides`` on top. Unknown keys are refused and every value is checked before
    anything loads; a bad one raises a :class:`~st_llm2vec.train.config.ConfigError` naming the file."""
    source, base_dir = None, None
    if isinstance(config, Mapping):
        data = dict(config)
    else:
        source = os.fspath(config)
        data = read_config_file(source, f"{cls.TITLE} config")
        base_dir = Path(source).resolve().parent
    data.update(overrides or {})
    training: dict[str, Any] = dict(data.pop("training_args", None) or {})  # a nested block is read too
    own_names, aliases, training_names = {f.name for f in fields(cls)}, aliases_of(cls), training_argument_names()
    own: dict[str, Any] = {}
    unknown = []
    for name, value in data.items():
        name = aliases.get(name, TRAINING_ARG_ALIASES.get(name, name))
        if name in own_names:
            own[name] = value
        elif name in training_names:
            training[name] = value
        elif name in cls.IGNORED_KEYS:
            logger.warning("Ignoring llm2vec key %r: st_llm2vec does not use it.", name)
        else:
            unknown.append(name)
    if unknown:
        raise InputError(
            f"Unknown {cls.TITLE} config key(s) {sorted(unknown)}: neither a recipe key ({sorted(own_names)}) "
            "nor a SentenceTransformerTrainingArguments field."
        )
    if base_dir is not None:
        for name in cls.PATH_KEYS:
            if name in own:
                own[name] = _beside(own[name], base_dir)
    if not own.get("model_name_or_path"):
        raise InputError(f"The {cls.TITLE} config needs model_name_or_path (a causal-LM checkpoint or an st_llm2vec model dir).")

    if not training.get("output_dir"):
        raise InputError(f"The {cls.TITLE} config needs output_dir.")
    own, errors = check_keys(own, keys_of(cls))
    training, more = check_training_args({**cls.TRAINING_DEFAULTS, **training})
    raise_errors(errors + more, source)
    check_output_dir(training["output_dir"], source)
    arguments = cls(**own)
    arguments.check(training)
    if arguments.quantization and (arguments.unmerged_output() or not getattr(arguments, "use_lora", True)):
        raise InputError(
            f"quantization {arguments.quantization!r} (QLoRA) trains a LoRA over frozen low-bit weights and saves it "
            "merged into the float32 start weights: it needs use_lora: true and a merged output "
            "(merge_lora: true / save_mode: merged)."
        )
    return arguments, training


def _beside(value: Any, base_dir: Path) -> Any:
    """A relative path that does not exist from the working directory but does beside the config file."""
    if isinstance(value, list):
        return [_beside(v, base_dir) for v in value]
    if isinstance(value, str) and value and not os.path.isabs(value) and not os.path.exists(value):
        candidate = base_dir / value
        if candidate.exists():
            return str(candidate)
    return value


def jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with anything JSON cannot hold (enums, dtypes) as its ``str``."""
    return {k: (v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v)) for k, v in values.items()}


def training_arguments(training: Mapping[str, Any]):
    """``SentenceTransformerTrainingArguments`` with the defaults every stage uses (no trackers; non-reentrant
    checkpointing, which LoRA on a frozen backbone needs)."""
    from sentence_transformers import SentenceTransformerTrainingArguments

    kwargs = dict(training)
    kwargs.setdefault("report_to", "none")
    if kwargs.get("gradient_checkpointing"):
        kwargs.setdefault("gradient_checkpointing_kwargs", {"use_reentrant": False})
    return SentenceTransformerTrainingArguments(**kwargs)


# --------------------------------------------------------------------------- the run


def start_run(arguments: RecipeArguments, training: Mapping[str, Any], do_train: bool = True):
    """Lock ``output_dir`` for this config's run (:class:`~st_llm2vec.train.runs.TrainingRun`); raises
    :class:`~st_llm2vec.train.runs.RunAlreadyComplete` if it holds this run finished. The files named by
    ``PATH_KEYS`` (model, data) join the run fingerprint by their identity."""
    from .runs import TrainingRun, run_fingerprint

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
    from .runs import RunAlreadyComplete

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


# --------------------------------------------------------------------------- the start model


@dataclass
class StartModel:
    """Where a stage started from, and whether that state exists on disk as is."""

    model_name_or_path: str
    peft_model_name_or_path: str | None
    merged_in_memory: bool


def load_start_model(
    model_name_or_path: str,
    peft_model_name_or_path: str | None = None,
    *,
    pooling_mode: str | None = None,
    bidirectional: bool = True,
    torch_dtype: Any = None,
    attn_implementation: str | None = None,
    format: str = "auto",
    quantization: str | None = None,
):
    """The model a stage starts from, any earlier LoRA merged into its weights; ``(model, StartModel)``.

    ``model_name_or_path`` is a causal-LM checkpoint (made an embedding model with
    :func:`st_llm2vec.from_llm`) or a saved st_llm2vec model dir (either format, e.g. the MNTP output);
    ``peft_model_name_or_path`` an adapter trained on that backbone (llm2vec's MNTP adapters), merged.
    Bidirectionality is proven once, on the final weights. ``quantization`` loads the weights low-bit
    (:mod:`st_llm2vec.lowbit`) for QLoRA; an adapter cannot be merged into those, so that start must be merged on disk.
    """
    from peft import PeftModel

    from ..build import from_llm, load_model, model_kwargs
    from ..pooling_modes import pooling_mode as canonical_mode

    kwargs = model_kwargs(torch_dtype, attn_implementation)
    if quantization and peft_model_name_or_path:
        raise InputError(
            f"quantization {quantization!r} with peft_model_name_or_path: an adapter merged into low-bit weights is "
            "not the model it was trained on. Merge it on disk first (a stage's merged output, or st-llm2vec convert) "
            "and start from that dir.")
    merged = False
    if os.path.isfile(os.path.join(model_name_or_path, "modules.json")):
        model = load_model(model_name_or_path, format=format, device="cpu", quantization=quantization, **kwargs)
        if pooling_mode is not None:
            _set_pooling(model, canonical_mode(pooling_mode), model_name_or_path)
        merged = _merge_injected_adapters(model[0].model, quantization)
    else:
        model = from_llm(
            model_name_or_path, pooling_mode or "mean", bidirectional=bidirectional, format=format, device="cpu",
            quantization=quantization, **kwargs
        )
    if peft_model_name_or_path:
        adapted = PeftModel.from_pretrained(model[0].model, peft_model_name_or_path)
        model[0].set_backbone(adapted.merge_and_unload(), probe=False)
        merged = True
    if merged:
        model[0].set_backbone(model[0].model)  # re-prove bidirectionality once, on the final merged weights
    return model, StartModel(model_name_or_path, peft_model_name_or_path, merged)


def _set_pooling(model: Any, mode: Any, source: str) -> None:
    """The saved model's pooling replaced by ``mode`` (a :class:`~st_llm2vec.pooling_modes.PoolingMode`)."""
    pooling = model[1]
    if getattr(pooling, "pooling_mode", mode.name) == mode.name:
        return
    if mode.eos_suffix or pooling.mode.eos_suffix:
        raise InputError(
            f"{source} pools with {pooling.pooling_mode!r}; switching to {mode.name!r} changes the text suffix too. "
            "Build the model with st_llm2vec.from_llm(..., pooling_mode=...) instead."
        )
    logger.warning("pooling_mode %r replaces the model's %r", mode.name, pooling.pooling_mode)
    pooling.pooling_mode = mode


def _merge_injected_adapters(hf_model: Any, quantization: str | None = None) -> bool:
    """Fold LoRA layers that transformers' PEFT integration injected at load time (an ST dir saved as base +
    adapter) into the weights. Returns True if there were any."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from ..upstream import forget_injected_adapters

    parents = {}
    for name, module in hf_model.named_modules():
        for child_name, child in module.named_children():
            if isinstance(child, BaseTunerLayer):
                parents[f"{name}.{child_name}" if name else child_name] = (module, child_name, child)
    if parents and quantization:
        raise InputError(f"quantization {quantization!r}: this start dir holds an unmerged LoRA adapter, which cannot be "
                         "merged into low-bit weights. Start from a merged dir (save_mode: merged / merge_lora: true).")
    for module, child_name, child in parents.values():
        child.merge()
        setattr(module, child_name, child.get_base_layer())
    if parents:
        forget_injected_adapters(hf_model)
    return bool(parents)


def start_model(arguments: RecipeArguments, peft_model_name_or_path: str | None = None, bidirectional: bool = True):
    """:func:`load_start_model` with a stage's arguments; says before training when the output cannot be portable."""
    model, start = load_start_model(
        arguments.model_name_or_path,
        peft_model_name_or_path,
        pooling_mode=arguments.pooling_mode,
        bidirectional=bidirectional,
        torch_dtype=arguments.torch_dtype,
        attn_implementation=arguments.attn_implementation,
        format=arguments.format,
        quantization=arguments.quantization,
    )
    reason = exact_output_reason(model, arguments)
    if reason:
        logger.warning("%s: the trained model will be saved in the exact format (loading it needs st-llm2vec): %s",
                       arguments.TITLE, reason)
    return model, start


def exact_output_reason(model: Any, arguments: RecipeArguments) -> str | None:
    """Why a stage's output will not be portable, known before training (None: it will be, if the save-time
    proof passes). ``format: portable`` with a model that cannot be has already raised when it was built."""
    from ..instructions import PORTABLE
    from ..portable import why_not_portable

    if arguments.unmerged_output():
        return "the output keeps its LoRA adapter unmerged (merge_lora: false / save_mode: adapter)"
    if model[0].format == PORTABLE:
        return None
    if arguments.format == "exact":
        return "format: exact was asked for"
    return why_not_portable(model) or "the start model is in the exact format"


def add_lora(model: Any, arguments: RecipeArguments) -> None:
    """A fresh LoRA on the backbone (llm2vec: rank ``lora_r``, alpha 2r, dropout 0.05, all projections)."""
    from .. import lowbit
    from ..train import lora

    if lowbit.is_quantized(model[0].model):  # QLoRA: peft's k-bit preparation first
        model[0].set_backbone(lowbit.prepare_for_training(model[0].model, gradient_checkpointing=False), probe=False)
    lora.add_lora(model, lora.lora_config(arguments.lora_r, arguments.lora_alpha, arguments.lora_dropout,
                                          arguments.lora_target_modules))


def merge_trained_lora(model: Any, arguments: RecipeArguments) -> None:
    """Fold the trained LoRA into the weights; after QLoRA into the float32 start weights (reloaded), not the
    low-bit ones (:func:`st_llm2vec.lowbit.merge_into_full_precision`)."""
    from .. import lowbit
    from ..train.lora import merge_lora

    if lowbit.is_quantized(model[0].model):
        full, _ = load_start_model(arguments.model_name_or_path, pooling_mode=arguments.pooling_mode,
                                   torch_dtype=arguments.torch_dtype, attn_implementation=arguments.attn_implementation,
                                   format=arguments.format)
        model[0].set_backbone(lowbit.merge_into_full_precision(model[0].model, full[0].model))
        return
    merge_lora(model)


# --------------------------------------------------------------------------- the model card


def describe_in_card(model: Any, arguments: RecipeArguments, start: StartModel, extra: Mapping[str, Any] = ()) -> None:
    """Add the LLM2Vec stage, its settings and the paper to ST's model card (which has data, loss, trainer args)."""
    card = model.model_card_data
    card.tags = sorted(set((card.tags or []) + ["llm2vec", "st-llm2vec", arguments.STAGE]))
    start_name = start.model_name_or_path
    if not card.model_name or card.model_name == card.get_default_model_name():
        card.model_name = f"LLM2Vec {arguments.STAGE} model from {Path(start_name).name or start_name}"
    if not os.path.exists(start_name) and "/" in start_name:
        card.base_model = start_name  # a Hub id
    recipe = {
        "llm2vec_stage": arguments.STAGE,
        "start_model": start_name,
        "start_adapter_merged": start.peft_model_name_or_path,
        "lora_r": arguments.lora_r,
        "lora_alpha": arguments.lora_alpha if arguments.lora_alpha is not None else 2 * arguments.lora_r,
        "lora_dropout": arguments.lora_dropout,
        "train_max_seq_length": arguments.max_seq_length,
        **dict(extra),
    }
    recipe = {k: v for k, v in recipe.items() if v is not None}
    card.non_default_hyperparameters = {**recipe, **(card.non_default_hyperparameters or {})}
    card.all_hyperparameters = {**recipe, **(card.all_hyperparameters or {})}
    card.citations = {**(card.citations or {}), "LLM2Vec": LLM2VEC_CITATION}


# --------------------------------------------------------------------------- command line


def parent_parser(cls: type[RecipeArguments]) -> argparse.ArgumentParser:
    """The options of ``st-llm2vec STAGE``: the config file, every recipe key of the stage as ``--KEY VALUE``
    (from its declaration; only keys given override the file), ``--output-dir``, and ``--set KEY=VALUE``
    for anything else (trainer arguments)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("config", help=f"JSON or YAML config with llm2vec's train_configs/{cls.STAGE} keys")
    add_options(parser, cls)
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", default=argparse.SUPPRESS,
                        help="override output_dir")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key (VALUE parsed as JSON when possible), repeatable")
    return parser


def overrides_from_cli(cls: type[RecipeArguments], args: argparse.Namespace) -> dict[str, Any]:
    """The keys given on the command line (``--set`` ones first, named options over them)."""
    overrides: dict[str, Any] = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key.strip().lstrip("-")] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip().lstrip("-")] = value
    for name in [f.name for f in fields(cls)] + ["output_dir"]:
        if hasattr(args, name):
            overrides[name] = getattr(args, name)
    return overrides


def run_cli(cls: type[RecipeArguments], args: argparse.Namespace, train: Callable[..., Any]) -> int:
    """``st-llm2vec STAGE``: train from the config and options; print the result on the main process."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    result = train(args.config, overrides_from_cli(cls, args))
    if int(os.environ.get("RANK", "0")) == 0:
        if result.already_complete:
            print(f"The {cls.TITLE} run in {result.output_dir} is already complete: nothing trained, nothing re-saved")
        else:
            print(json.dumps(result.summary(), indent=2, default=str))
    return 0
