"""A recipe key, declared once, and how a value of it is checked.

A recipe key is a field of a stage's arguments dataclass, declared with :func:`key`: its type (the
annotation), default, help, llm2vec alias and range or choices, all in that one place. From it come the
dataclass, the check (:func:`keys_of` → :class:`~st_llm2vec.schema.Key`, the schema mechanism of every file
st_llm2vec reads; :func:`check_value`) and the command-line option (:func:`add_options`). Numbers written as
strings (YAML reads ``1e-4`` as a string) and ``"true"`` / ``"false"`` are converted; anything else of the wrong
type is refused.

Importing this is cheap: a stage's ``--help`` is built from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from .. import schema
from ..errors import InputError
from ..schema import Key, expected


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
        item = (typing.get_args(lists[0]) or (str,))[0]
        return {int: "list_int", float: "list_float"}.get(item, "list_str"), nullable
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


def add_options(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """``--KEY VALUE`` for every key of ``cls`` (and its aliases), each without a default, so that only the
    options given override the config file; values are checked as the file's are.

    Written here rather than with transformers' ``HfArgumentParser``: importing transformers costs more than
    the one second ``st-llm2vec STAGE --help`` may take, and the values need the config's checks anyway.
    Keys in ``skip`` get no option (a command that takes one as a positional argument).
    """
    specs = keys_of(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        meta = declaration(cls, field.name)
        spec = specs[field.name]
        names = [f"--{field.name}"] + [f"--{a}" for a in meta.get("aliases", ())]
        if "_" in field.name:
            names.insert(1, f"--{field.name.replace('_', '-')}")
        options: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS, "metavar": field.name.upper()}
        if spec.kind in ("list_str", "strs", "list_int", "list_float"):
            options["nargs"] = "+"
        elif spec.kind == "dict":
            options["type"] = json.loads
        options.update(meta.get("cli") or {})
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
        text = meta.get("help") or ""
        text = f"{text}{'; ' if text else ''}{expected(spec)}; default {default!r}"
        parser.add_argument(*names, help=text.replace("%", "%%"), **options)


def check_value(key: str, value: Any, spec: Key) -> Any:
    """``value`` checked against ``spec`` as a recipe value: written as text in YAML or on the command line, so
    numeric strings and "true" / "false" convert (:func:`st_llm2vec.schema.check_value`)."""
    return schema.check_value(key, value, spec, text_values=True)


def check_keys(values: Mapping[str, Any], specs: Mapping[str, Key]) -> tuple[dict[str, Any], list[str]]:
    """(checked copy of ``values``, error lines) for the recipe keys of ``values`` (:func:`check_value`)."""
    return schema.check_keys(values, specs, text_values=True)


def read_mapping(cls: type, value: Any, name: str) -> Any:
    """A config key whose value is a mapping of keys declared in dataclass ``cls`` (with :func:`key`), as a ``cls``:
    unknown keys refused, every value checked as a top-level key's is (errors name ``name.KEY``), then the
    dataclass's own ``check()`` across its keys. One InputError lists every bad value. ``name`` "": the keys are
    options of a command, named alone."""
    if not isinstance(value, Mapping):
        raise InputError(f"{name}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(cls))}, "
                         f"got {value!r}")
    specs = keys_of(cls)
    unknown = sorted(set(value) - set(specs))
    if unknown:
        raise InputError(f"{name}: unknown key(s) {unknown}; expected some of {sorted(specs)}")
    out, errors = {}, []
    for sub, raw in value.items():
        try:
            out[sub] = check_value(f"{name}.{sub}" if name else sub, raw, specs[sub])
        except ValueError as exc:
            errors.append(str(exc))
    if errors:
        raise InputError("; ".join(errors))
    instance = cls(**out)
    check = getattr(instance, "check", None)
    if check is not None:
        try:
            check()
        except (ValueError, TypeError) as exc:
            raise InputError(f"{name}: {exc}" if name else str(exc)) from None
    return instance


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
