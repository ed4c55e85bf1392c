"""A stage's config, typed and checked before anything loads: llm2vec's ``train_configs`` JSON / YAML (or a dict)
→ ``(arguments, training kwargs)``.

A stage is a :class:`RecipeArguments` subclass (its own keys, key checks and defaults). Each recipe key is
declared once (:func:`~st_llm2vec.recipe.keys.key`), from which come the dataclass, its check and its
command-line option; every key that is not the stage's own must be a ``SentenceTransformerTrainingArguments``
field, and every value is checked (:mod:`.config`). llm2vec's key names are read as aliases
(``evaluation_strategy``, ``lora_modules``); relative paths are looked up beside the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ..errors import InputError
from ..instructions import FORMATS
from ..lowbit import QUANTIZATIONS
from .config import check_output_dir, check_training_args, raise_errors, read_config_file
from .keys import aliases_of, check_keys, key, keys_of, pooling_check, resume_value, torch_dtype_check

logger = logging.getLogger(__name__)

# llm2vec's configs were written for transformers 4; its renamed TrainingArguments fields.
TRAINING_ARG_ALIASES = {"evaluation_strategy": "eval_strategy"}

A = TypeVar("A", bound="RecipeArguments")


@dataclass
class RecipeArguments:
    """The keys every stage reads (llm2vec's model / LoRA / run keys); a stage subclasses it with its own.

    Every key is declared once, as a field made by :func:`~st_llm2vec.recipe.keys.key` (type, default,
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
    # how the model card and st_llm2vec_recipe.json name what was used (they describe the run, not train it)
    model_label: str | None = key(None, help="the start model's name in the model card (default: model_name_or_path "
                                             "as given, or the start dir's own recorded start model)")
    data_label: str | None = key(None, help="the training data's name in the model card (default: the dataset "
                                            "name or files as given)")

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
    anything loads; a bad one raises a :class:`~st_llm2vec.recipe.config.ConfigError` naming the file."""
    source, base_dir = None, None
    if isinstance(config, Mapping):
        data = dict(config)
    else:
        source = os.fspath(config)
        data = read_config_file(source, f"{cls.TITLE} config")
        base_dir = Path(source).resolve().parent
    data.update(overrides or {})
    training_args = data.pop("training_args", None) or {}  # a nested block is read too
    if not isinstance(training_args, Mapping):
        raise_errors([f"training_args: expected a mapping of trainer arguments, got {training_args!r}"], source)
    training: dict[str, Any] = dict(training_args)
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

