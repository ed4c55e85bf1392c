"""A whole training config checked before any model or data loads: the recipe keys (:mod:`.keys`), the
``SentenceTransformerTrainingArguments`` fields (checked against that dataclass's type hints, plus the ranges in
:data:`TRAINING_ARG_RANGES`), the output dir and the data files; and the JSON / YAML file itself. A bad value is
reported with the config file and key (``mntp.json: lora_r: expected an integer >= 1, got 'abc'``), all bad keys at
once, as a :class:`ConfigError`.
"""

from __future__ import annotations

import enum
import functools
import json
import os
import types
import typing
from collections.abc import Mapping
from typing import Any

from ..errors import InputError, MissingFileError
from .keys import Key, check_value


class ConfigError(InputError):
    """A config file or value that cannot be used; the message names the file and the key."""


# --------------------------------------------------------------------------- training arguments

# Ranges for the SentenceTransformerTrainingArguments fields a recipe commonly sets (types come from the dataclass).
TRAINING_ARG_RANGES: dict[str, Key] = {
    "learning_rate": Key("float", nullable=False, low=0),
    "per_device_train_batch_size": Key("int", nullable=False, low=1),
    "per_device_eval_batch_size": Key("int", nullable=False, low=1),
    "gradient_accumulation_steps": Key("int", nullable=False, low=1),
    "num_train_epochs": Key("float", nullable=False, low=0, low_open=True),
    "max_steps": Key("int", nullable=False, low=-1),
    "warmup_steps": Key("float", nullable=False, low=0),
    "warmup_ratio": Key("float", low=0, high=1),
    "weight_decay": Key("float", nullable=False, low=0),
    "max_grad_norm": Key("float", nullable=False, low=0),
    "adam_epsilon": Key("float", nullable=False, low=0),
    "seed": Key("int", nullable=False, low=0),
    "save_steps": Key("float", nullable=False, low=0, low_open=True),
    "logging_steps": Key("float", nullable=False, low=0, low_open=True),
    "eval_steps": Key("float", low=0, low_open=True),
    "save_total_limit": Key("int", low=1),
    "dataloader_num_workers": Key("int", nullable=False, low=0),
    "output_dir": Key("str", nullable=False),
}


@functools.lru_cache(maxsize=None)
def _training_arg_hints() -> dict[str, Any]:
    from sentence_transformers import SentenceTransformerTrainingArguments

    return typing.get_type_hints(SentenceTransformerTrainingArguments)


def _spec_from_hint(hint: Any) -> tuple[Key | None, tuple[type, ...]]:
    """A Key for simple hints (bool/int/float/str, optionally | None), and the enum types a str must name."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    nullable = type(None) in args
    args = tuple(a for a in args if a is not type(None))
    enums = tuple(a for a in args if isinstance(a, type) and issubclass(a, enum.Enum))
    if len(args) == 1 and args[0] in (bool, int, float, str):
        return Key(args[0].__name__, nullable=nullable), ()
    if enums and set(args) - set(enums) == {str}:
        return Key("str", nullable=nullable), enums
    return None, ()


def check_training_args(values: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(checked and converted copy of ``values``, error lines) for SentenceTransformerTrainingArguments kwargs."""
    hints = _training_arg_hints()
    out, errors = dict(values), []
    for key, value in values.items():
        spec, enums = _spec_from_hint(hints[key]) if key in hints else (None, ())
        spec = TRAINING_ARG_RANGES.get(key, spec)
        if spec is None or isinstance(value, enum.Enum):
            continue
        try:
            out[key] = check_value(key, value, spec)
        except ValueError as exc:
            errors.append(str(exc))
            continue
        if enums and isinstance(out[key], str):
            allowed = sorted({str(m.value) for e in enums for m in e})
            if out[key] not in allowed:
                errors.append(f"{key}: expected one of {', '.join(map(repr, allowed))}, got {value!r}")
    return out, errors


def raise_errors(errors: list[str], source: str | None) -> None:
    """One ConfigError naming ``source`` (the config file, or "config") and every bad key."""
    if not errors:
        return
    where = source or "config"
    if len(errors) == 1:
        raise ConfigError(f"{where}: {errors[0]}")
    raise ConfigError(f"{where}: {len(errors)} invalid values: " + "; ".join(errors))


def check_output_dir(output_dir: Any, source: str | None = None) -> str:
    """``output_dir`` as a path that can be a directory (it may not exist yet)."""
    if not isinstance(output_dir, (str, os.PathLike)) or not str(output_dir):
        raise ConfigError(f"{source or 'config'}: output_dir: expected a directory path, got {output_dir!r}")
    path = os.fspath(output_dir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(
            f"{source or 'config'}: output_dir {path!r} exists and is not a directory; remove it or choose another output_dir."
        )
    return path


def check_files_exist(values: Mapping[str, Any], keys: tuple[str, ...], source: str | None = None) -> None:
    """Every local data file named by ``keys`` exists (a missing one is reported before anything loads)."""
    for key in keys:
        value = values.get(key)
        for path in [value] if isinstance(value, str) else list(value or []):
            if isinstance(path, str) and path and not os.path.exists(path):
                raise MissingFileError(f"{source or 'config'}: {key}: {path!r} does not exist.")


# --------------------------------------------------------------------------- config files


def read_config_file(path: str | os.PathLike, what: str = "config") -> dict[str, Any]:
    """A JSON or YAML config file as a dict; a syntax error names the file, line and column."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(f"{what} {path!r} does not exist." if not os.path.isdir(path) else f"{what} {path!r} is a directory, not a file.")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {what} must hold a mapping of keys to values, not {type(data).__name__}.")
    return data
