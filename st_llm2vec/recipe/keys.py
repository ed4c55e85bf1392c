"""A recipe key, declared once, and how a value of it is checked.

A recipe key is a field of a stage's arguments dataclass, declared with :func:`key`: its type (the
annotation), default, help, llm2vec alias and range or choices, all in that one place. From it come the
dataclass, the check (:func:`keys_of` → :class:`Key`, :func:`check_value`) and the command-line option
(:func:`add_options`). Numbers written as strings (YAML reads ``1e-4`` as a string) and ``"true"`` /
``"false"`` are converted; anything else of the wrong type is refused.

Importing this is cheap: a stage's ``--help`` is built from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InputError


@dataclass(frozen=True)
class Key:
    """What one recipe key accepts: ``kind`` int/float/bool/bool_or_auto/str/strs (a str or a list of
    str)/list_str/dict/any, with ``None`` when ``nullable``, within [``low``, ``high``] (``low_open``/``high_open``: exclusive)
    or one of ``choices``; ``check`` may raise ValueError for anything else."""

    kind: str
    nullable: bool = True
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], Any] | None = None


def key(
    default: Any = dataclasses.MISSING,
    *,
    help: str = "",
    aliases: tuple[str, ...] = (),
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    choices: tuple[Any, ...] | None = None,
    check: Callable[[Any], Any] | None = None,
    kind: str | None = None,
    nullable: bool | None = None,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    cli: dict[str, Any] | None = None,
) -> Any:
    """A recipe key as a dataclass field: default, ``help``, llm2vec's other names (``aliases``) and the
    range / choices / ``check`` its values must meet. The kind (int, list of str, ...) and whether null is
    allowed come from the annotation unless ``kind`` / ``nullable`` say otherwise; ``cli`` holds extra
    argparse settings for its option (``nargs``, ``const``)."""
    metadata = {"help": help, "aliases": tuple(aliases), "key": dict(
        low=low, high=high, low_open=low_open, high_open=high_open, choices=choices, check=check, kind=kind,
        nullable=nullable), "cli": dict(cli or {})}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def _kind_of(hint: Any) -> tuple[str, bool]:
    """(kind, nullable) for an annotation: ``int | None`` → ("int", True), ``str | list[str]`` → ("strs", …)."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    nullable = type(None) in args
    args = tuple(a for a in args if a is not type(None))
    lists = [a for a in args if typing.get_origin(a) is list]
    if len(args) == 1 and args[0] in (bool, int, float, str):
        return args[0].__name__, nullable
    if len(args) == 1 and lists:
        return "list_str", nullable
    if set(args) - set(lists) == {str} and lists:
        return "strs", nullable
    if len(args) == 1 and (args[0] is dict or typing.get_origin(args[0]) is dict):
        return "dict", nullable
    return "any", nullable


def keys_of(cls: type) -> dict[str, Key]:
    """The :class:`Key` of every field of a stage's arguments dataclass. A subclass that only changes a
    field's default keeps the base's declaration (help, range, aliases); one that re-declares it with
    :func:`key` replaces it."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Key] = {}
    for field in dataclasses.fields(cls):
        meta = declaration(cls, field.name)
        spec = dict(meta.get("key") or {})
        kind, nullable = _kind_of(hints[field.name])
        kind = spec.pop("kind", None) or kind
        nullable = nullable if spec.get("nullable") is None else spec["nullable"]
        spec.pop("nullable", None)
        out[field.name] = Key(kind, nullable=nullable, **spec)
    return out


def declaration(cls: type, name: str) -> Mapping[str, Any]:
    """The metadata of field ``name`` as :func:`key` declared it, from the most derived class that did."""
    for klass in cls.__mro__:
        own = vars(klass).get("__dataclass_fields__", {}).get(name)
        if own is not None and own.metadata.get("key") is not None:
            return own.metadata
    return {}


def aliases_of(cls: type) -> dict[str, str]:
    """llm2vec's other names for the stage's keys: alias → key."""
    return {alias: f.name for f in dataclasses.fields(cls) for alias in declaration(cls, f.name).get("aliases", ())}


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """``--KEY VALUE`` for every key of ``cls`` (and its aliases), each without a default, so that only the
    options given override the config file; values are checked as the file's are.

    Written here rather than with transformers' ``HfArgumentParser``: importing transformers costs more than
    the one second ``st-llm2vec STAGE --help`` may take, and the values need the config's checks anyway.
    """
    specs = keys_of(cls)
    for field in dataclasses.fields(cls):
        meta = declaration(cls, field.name)
        spec = specs[field.name]
        names = [f"--{field.name}"] + [f"--{a}" for a in meta.get("aliases", ())]
        if "_" in field.name:
            names.insert(1, f"--{field.name.replace('_', '-')}")
        options: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS, "metavar": field.name.upper()}
        if spec.kind in ("list_str", "strs"):
            options["nargs"] = "+"
        elif spec.kind == "dict":
            options["type"] = json.loads
        options.update(meta.get("cli") or {})
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
        text = meta.get("help") or ""
        text = f"{text}{'; ' if text else ''}{_expected(spec)}; default {default!r}"
        parser.add_argument(*names, help=text.replace("%", "%%"), **options)


def _range_text(spec: Key) -> str:
    parts = []
    if spec.low is not None:
        parts.append(f"{'>' if spec.low_open else '>='} {spec.low:g}")
    if spec.high is not None:
        parts.append(f"{'<' if spec.high_open else '<='} {spec.high:g}")
    return " and ".join(parts)


_KIND_TEXT = {
    "int": "an integer", "float": "a number", "bool": "true or false", "bool_or_auto": "true, false or 'auto'",
    "str": "a string",
    "strs": "a string or a list of strings", "list_str": "a list of strings", "dict": "a mapping",
}


def _expected(spec: Key) -> str:
    text = _KIND_TEXT.get(spec.kind, spec.kind)
    if spec.choices is not None:
        text = "one of " + ", ".join(repr(c) for c in spec.choices)
    limits = _range_text(spec)
    if limits:
        text += " " + limits
    if spec.nullable:
        text += " (or null)"
    return text


def _coerce(value: Any, kind: str) -> Any:
    """``value`` as ``kind``, or raise ValueError. Numeric strings and "true"/"false" are converted."""
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ValueError
    if kind == "bool_or_auto":
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        return _coerce(value, "bool")
    if kind in ("int", "float"):
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, str):
            text = value.strip()
            try:
                value = int(text) if kind == "int" and text.lstrip("+-").isdigit() else float(text)
            except ValueError:
                raise ValueError from None
        if not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
            raise ValueError
        if isinstance(value, float) and kind == "int":
            if not value.is_integer():
                raise ValueError
            return int(value)
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise ValueError
        return value
    if kind == "strs":
        if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return value
        raise ValueError
    if kind == "list_str":
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ValueError
    if kind == "dict":
        if isinstance(value, Mapping):
            return value
        raise ValueError
    return value


def check_value(key: str, value: Any, spec: Key) -> Any:
    """``value`` checked (and converted) against ``spec``; ValueError with the expectation otherwise."""
    if value is None:
        if spec.nullable:
            return None
        raise InputError(f"{key}: expected {_expected(spec)}, got null")
    try:
        out = _coerce(value, spec.kind)
    except ValueError:
        raise InputError(f"{key}: expected {_expected(spec)}, got {value!r}") from None
    if spec.choices is not None and out not in spec.choices:
        raise InputError(f"{key}: expected {_expected(spec)}, got {value!r}")
    if isinstance(out, (int, float)) and not isinstance(out, bool):
        too_low = spec.low is not None and (out <= spec.low if spec.low_open else out < spec.low)
        too_high = spec.high is not None and (out >= spec.high if spec.high_open else out > spec.high)
        if too_low or too_high:
            raise InputError(f"{key}: expected {_expected(spec)}, got {value!r}")
    if spec.check is not None:
        try:
            spec.check(out)
        except (ValueError, TypeError) as exc:
            text = str(exc)
            raise InputError(text if text.startswith(key) else f"{key}: {text}") from None
    return out


def check_keys(values: Mapping[str, Any], specs: Mapping[str, Key]) -> tuple[dict[str, Any], list[str]]:
    """(checked and converted copy of ``values``, error lines) for the keys of ``values`` that ``specs`` lists."""
    out, errors = dict(values), []
    for key, spec in specs.items():
        if key not in values:
            continue
        try:
            out[key] = check_value(key, values[key], spec)
        except ValueError as exc:
            errors.append(str(exc))
    return out, errors



def nonempty(value: Any) -> None:
    if not value:
        raise InputError(f"expected a non-empty value, got {value!r}")


def resume_value(value: Any) -> None:
    if value is not None and not isinstance(value, (str, bool, os.PathLike)):
        raise InputError(f"expected a checkpoint path, true or false, got {value!r}")


def torch_dtype_check(value: Any) -> None:
    from ..build import parse_dtype

    parse_dtype(value)


def pooling_check(value: Any) -> None:
    from ..pooling_modes import normalize_pooling_mode

    normalize_pooling_mode(value)
