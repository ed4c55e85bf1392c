"""The recipe layer the three training stages (MNTP, SimCSE, supervised) share: typed config, the run
around the trainer, the start model, the model card and the command line.

A stage is a :class:`RecipeArguments` subclass (its own keys, key checks and defaults) plus one
function that builds its data, loss and trainer (``stage_mntp.py``, ``stage_contrastive.py``); all the
rest is here, written once:

- config: llm2vec's ``train_configs`` JSON / YAML (or a dict) → ``(arguments, training kwargs)``.
  transformers' ``HfArgumentParser`` builds the dataclass (``parse_dict``) and the command-line options;
  every key that is not the stage's own must be a ``SentenceTransformerTrainingArguments`` field, and
  every value is checked (:mod:`.config_check`) before anything loads. llm2vec's key names are read as
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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ..cards import LLM2VEC_CITATION
from .config import (
    Key,
    check_keys,
    check_output_dir,
    check_training_args,
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

    Class-level settings a stage overrides: ``STAGE`` (its name), ``TITLE`` (in messages), ``KEYS`` (type
    and range of its own keys, merged over the bases), ``TRAINING_DEFAULTS`` (trainer defaults of the
    stage, e.g. its learning rate), ``IGNORED_KEYS`` (llm2vec keys without effect here), ``PATH_KEYS``
    (paths looked up beside the config file, part of the run fingerprint), ``RESULT_FILE``.
    """

    STAGE: ClassVar[str] = ""
    TITLE: ClassVar[str] = ""
    KEYS: ClassVar[dict[str, Key]] = {
        "model_name_or_path": Key("str", nullable=False),
        "torch_dtype": Key("any", check=torch_dtype_check),
        "attn_implementation": Key("str"),
        "pooling_mode": Key("str", check=pooling_check),
        "format": Key("str", nullable=False, choices=FORMATS),
        "max_seq_length": Key("int", low=1),
        "max_train_samples": Key("int", low=1),
        "lora_r": Key("int", nullable=False, low=1),
        "lora_alpha": Key("float", low=0, low_open=True),
        "lora_dropout": Key("float", nullable=False, low=0, high=1, high_open=True),
        "lora_target_modules": Key("list_str"),
        "stop_after_n_steps": Key("int", low=0),
        "overwrite_output_dir": Key("bool", nullable=False),
        "resume_from_checkpoint": Key("any", check=resume_value),
    }
    TRAINING_DEFAULTS: ClassVar[dict[str, Any]] = {}
    IGNORED_KEYS: ClassVar[frozenset[str]] = frozenset()
    PATH_KEYS: ClassVar[tuple[str, ...]] = ("model_name_or_path",)
    RESULT_FILE: ClassVar[str] = ""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "a causal-LM checkpoint (Hub id or dir) or a saved st_llm2vec model dir"}
    )
    torch_dtype: str | None = field(default=None, metadata={"help": "bfloat16, float16, float32 or auto"})
    attn_implementation: str | None = field(default=None, metadata={"help": "sdpa, eager, flash_attention_2, ..."})
    pooling_mode: str | None = field(default=None, metadata={"help": "mean, weighted_mean, eos_token, bos_token"})
    format: str = field(
        default="auto", metadata={"help": "saved format: portable (stock ST modules), exact (llm2vec's semantics), auto"}
    )
    max_seq_length: int | None = field(default=None, metadata={"help": "training token limit"})
    max_train_samples: int | None = None
    lora_r: int = 16
    lora_alpha: float | None = field(default=None, metadata={"help": "default 2 * lora_r (llm2vec)"})
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = field(default=None, metadata={"aliases": ["--lora_modules"]})
    stop_after_n_steps: int | None = field(
        default=None, metadata={"help": "end training at this step (the LR schedule still spans the whole run)"}
    )
    overwrite_output_dir: bool = False
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"nargs": "?", "const": "latest",
                  "help": "a checkpoint dir, or (no value) the last complete one in output_dir"},
    )

    def check(self, training: Mapping[str, Any]) -> None:
        """What the stage refuses beyond one key at a time (``training``: the trainer kwargs)."""

    def unmerged_output(self) -> bool:
        """The stage saves its LoRA adapter unmerged (so the output is not a standalone portable model)."""
        return False

    @classmethod
    def keys(cls) -> dict[str, Key]:
        """The key table of the stage: its own ``KEYS`` over its bases'."""
        merged: dict[str, Key] = {}
        for klass in reversed(cls.__mro__):
            merged.update(vars(klass).get("KEYS", {}))
        return merged

    @classmethod
    def aliases(cls) -> dict[str, str]:
        """llm2vec's other names for our keys (the fields' ``aliases`` metadata, which is also the CLI's)."""
        return {a.lstrip("-"): f.name for f in fields(cls) for a in f.metadata.get("aliases", [])}


def training_argument_names() -> set[str]:
    from sentence_transformers import SentenceTransformerTrainingArguments

    return {f.name for f in fields(SentenceTransformerTrainingArguments) if f.init}


def read_arguments(
    cls: type[A], config: Mapping[str, Any] | str | os.PathLike, overrides: Mapping[str, Any] | None = None
) -> tuple[A, dict[str, Any]]:
    """(the stage's arguments, ``SentenceTransformerTrainingArguments`` kwargs) from a config dict or a
    JSON / YAML file, ``overrides`` on top. Unknown keys are refused and every value is checked before
    anything loads; a bad one raises a :class:`~st_llm2vec.train.config.ConfigError` naming the file."""
    from transformers import HfArgumentParser

    source, base_dir = None, None
    if isinstance(config, Mapping):
        data = dict(config)
    else:
        source = os.fspath(config)
        data = read_config_file(source, f"{cls.TITLE} config")
        base_dir = Path(source).resolve().parent
    data.update(overrides or {})
    training: dict[str, Any] = dict(data.pop("training_args", None) or {})  # a nested block is read too
    own_names, aliases, training_names = {f.name for f in fields(cls)}, cls.aliases(), training_argument_names()
    own: dict[str, Any] = {}
    unknown = []
    for key, value in data.items():
        key = aliases.get(key, TRAINING_ARG_ALIASES.get(key, key))
        if key in own_names:
            own[key] = value
        elif key in training_names:
            training[key] = value
        elif key in cls.IGNORED_KEYS:
            logger.warning("Ignoring llm2vec key %r: st_llm2vec does not use it.", key)
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"Unknown {cls.TITLE} config key(s) {sorted(unknown)}: neither a recipe key ({sorted(own_names)}) "
            "nor a SentenceTransformerTrainingArguments field."
        )
    if base_dir is not None:
        for key in cls.PATH_KEYS:
            if key in own:
                own[key] = _beside(own[key], base_dir)
    if not own.get("model_name_or_path"):
        raise ValueError(f"The {cls.TITLE} config needs model_name_or_path (a causal-LM checkpoint or an st_llm2vec model dir).")

    if not training.get("output_dir"):
        raise ValueError(f"The {cls.TITLE} config needs output_dir.")
    own, errors = check_keys(own, cls.keys())
    training, more = check_training_args({**cls.TRAINING_DEFAULTS, **training})
    raise_errors(errors + more, source)
    check_output_dir(training["output_dir"], source)
    (arguments,) = HfArgumentParser(cls).parse_dict(own)
    arguments.check(training)
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
):
    """The model a stage starts from, any earlier LoRA merged into its weights; ``(model, StartModel)``.

    ``model_name_or_path`` is a causal-LM checkpoint (made an embedding model with
    :func:`st_llm2vec.from_llm`) or a saved st_llm2vec model dir (either format, e.g. the MNTP output);
    ``peft_model_name_or_path`` an adapter trained on that backbone (llm2vec's MNTP adapters), merged.
    Bidirectionality is proven once, on the final weights.
    """
    from peft import PeftModel

    from ..build import from_llm, load_model, model_kwargs
    from ..instructions import normalize_pooling_mode

    kwargs = model_kwargs(torch_dtype, attn_implementation)
    merged = False
    if os.path.isfile(os.path.join(model_name_or_path, "modules.json")):
        model = load_model(model_name_or_path, format=format, device="cpu", **kwargs)
        if pooling_mode is not None:
            _set_pooling(model, normalize_pooling_mode(pooling_mode), model_name_or_path)
        merged = _merge_injected_adapters(model[0].model)
    else:
        model = from_llm(
            model_name_or_path, pooling_mode or "mean", bidirectional=bidirectional, format=format, device="cpu", **kwargs
        )
    if peft_model_name_or_path:
        adapted = PeftModel.from_pretrained(model[0].model, peft_model_name_or_path)
        model[0].set_backbone(adapted.merge_and_unload(), probe=False)
        merged = True
    if merged:
        model[0].set_backbone(model[0].model)  # re-prove bidirectionality once, on the final merged weights
    return model, StartModel(model_name_or_path, peft_model_name_or_path, merged)


def _set_pooling(model: Any, mode: str, source: str) -> None:
    pooling = model[1]
    if getattr(pooling, "pooling_mode", mode) == mode:
        return
    if "eos_token" in (mode, pooling.pooling_mode):
        raise ValueError(
            f"{source} pools with {pooling.pooling_mode!r}; switching to {mode!r} changes the text suffix too. "
            "Build the model with st_llm2vec.from_llm(..., pooling_mode=...) instead."
        )
    logger.warning("pooling_mode %r replaces the model's %r", mode, pooling.pooling_mode)
    pooling.pooling_mode = mode


def _merge_injected_adapters(hf_model: Any) -> bool:
    """Fold LoRA layers that transformers' PEFT integration injected at load time (an ST dir saved as base +
    adapter) into the weights. Returns True if there were any."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    parents = {}
    for name, module in hf_model.named_modules():
        for child_name, child in module.named_children():
            if isinstance(child, BaseTunerLayer):
                parents[f"{name}.{child_name}" if name else child_name] = (module, child_name, child)
    for module, child_name, child in parents.values():
        child.merge()
        setattr(module, child_name, child.get_base_layer())
    if parents and hasattr(hf_model, "peft_config"):
        del hf_model.peft_config
        hf_model._hf_peft_config_loaded = False
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
    )
    reason = exact_output_reason(model, arguments)
    if reason:
        logger.warning("%s: the trained model will be saved in the exact format (loading it needs st-llm2vec): %s",
                       arguments.TITLE, reason)
    return model, start


def exact_output_reason(model: Any, arguments: RecipeArguments) -> str | None:
    """Why a stage's output will not be portable, known before training (None: it will be, if the save-time
    proof passes). ``format: portable`` with a model that cannot be has already raised when it was built."""
    from ..portable import PORTABLE, why_not_portable

    if arguments.unmerged_output():
        return "the output keeps its LoRA adapter unmerged (merge_lora: false / save_mode: adapter)"
    if model[0].format == PORTABLE:
        return None
    if arguments.format == "exact":
        return "format: exact was asked for"
    return why_not_portable(model) or "the start model is in the exact format"


def add_lora(model: Any, arguments: RecipeArguments) -> None:
    """A fresh LoRA on the backbone (llm2vec: rank ``lora_r``, alpha 2r, dropout 0.05, all projections)."""
    from ..train import lora

    lora.add_lora(model, lora.lora_config(arguments.lora_r, arguments.lora_alpha, arguments.lora_dropout,
                                          arguments.lora_target_modules))


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
    (built by ``HfArgumentParser`` from the dataclass; only keys given override the file), ``--output-dir``,
    and ``--set KEY=VALUE`` for anything else (trainer arguments)."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(cls, add_help=False)
    # Only the options given may override the config file, so none has a default. (set_defaults cannot do it:
    # a child parser built with parents= copies those into the namespace as values.)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    parser.add_argument("config", help=f"JSON or YAML config with llm2vec's train_configs/{cls.STAGE} keys")
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
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
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
