"""What a file we read (or a config) may hold, declared once per file type, and the one check of a value against it.

A :class:`Key` says what one value accepts: its kind, whether null is allowed, a range or choices, and for an
``object`` / ``list`` / ``map`` what its fields or items hold. Numbers must be finite. A file type is an
``object`` Key declared beside the code that reads it (``model_files.MODULES``, ``embed.manifest.SCHEMA``,
``recipe.run_record.RUN_SCHEMA``, …); the recipe's keys (``recipe/keys.py``) are Keys too.

:func:`read_json_file` reads a file as bytes, UTF-8, JSON (no ``NaN`` / ``Infinity``, which Python's parser
would take) and checks it; every problem is a :class:`SchemaError` (an ``InputError``) naming the file, the
field (``prompts.query``, ``shards[3].rows``) and the fix. Values written as text (YAML, CSV cells, the command
line: ``text_values=True``) may give numbers and booleans as strings; JSON files may not.

Written here rather than with pydantic / jsonschema: the recipe's key table, its command-line options and their
help already rest on these Keys, and one mechanism serves every file with it; the checks are a page long.
Importing this is cheap (no torch).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InputError, MissingFileError, NotPermittedError

OBJECT, LIST, MAP = "object", "list", "map"


class SchemaError(InputError):
    """A file or value that does not hold what its schema says; the message names the file, the field and the fix."""


@dataclass(frozen=True)
class Key:
    """What one value accepts. ``kind``: int / float / bool / bool_or_auto / str / text (a str that is valid
    Unicode: no lone surrogate) / strs (a str or a list of str) / list_str / list_int / list_float (a non-empty
    list; ``low`` / ``high`` bound every number) / dict / any, or ``object``
    (``fields``; ``required`` of them; ``extra``: other fields allowed), ``list`` (each ``item``), ``map``
    (str keys, each value an ``item``). ``None`` passes when ``nullable``; numbers lie within [``low``,
    ``high``] (``low_open`` / ``high_open``: exclusive); ``choices`` lists the allowed values; ``check`` may
    raise ValueError for anything else."""

    kind: str
    nullable: bool = True
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], Any] | None = None
    item: Key | None = None
    fields: Mapping[str, Key] | None = None
    required: tuple[str, ...] = ()
    extra: bool = True


def obj(fields: Mapping[str, Key], required: tuple[str, ...] = (), *, extra: bool = True,
        nullable: bool = False) -> Key:
    """An ``object`` Key: a JSON object with these ``fields`` (the ``required`` ones must be there)."""
    return Key(OBJECT, nullable=nullable, fields=dict(fields), required=tuple(required), extra=extra)


def _range_text(spec: Key) -> str:
    parts = []
    if spec.low is not None:
        parts.append(f"{'>' if spec.low_open else '>='} {spec.low:g}")
    if spec.high is not None:
        parts.append(f"{'<' if spec.high_open else '<='} {spec.high:g}")
    return " and ".join(parts)


_KIND_TEXT = {
    "int": "an integer", "float": "a number", "bool": "true or false", "bool_or_auto": "true, false or 'auto'",
    "str": "a string", "text": "a string", "strs": "a string or a list of strings", "list_str": "a list of strings",
    "list_int": "a list of integers", "list_float": "a list of numbers",
    "dict": "a mapping", OBJECT: "an object", LIST: "a list", MAP: "a mapping",
}


def expected(spec: Key) -> str:
    """What ``spec`` accepts, in words ("an integer >= 1 (or null)")."""
    text = _KIND_TEXT.get(spec.kind, spec.kind)
    if spec.kind in (LIST, MAP) and spec.item is not None:
        text += f" of {expected(Key(spec.item.kind, nullable=False, item=spec.item.item))}"
    if spec.choices is not None:
        text = "one of " + ", ".join(repr(c) for c in spec.choices)
    limits = _range_text(spec)
    if limits:
        text += " " + limits
    if spec.nullable:
        text += " (or null)"
    return text


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def unicode_problem(text: str) -> str | None:
    """Why ``text`` is not valid Unicode (a lone surrogate, which no tokenizer or UTF-8 file can hold), or None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"a lone surrogate {text[exc.start]!r} at character {exc.start}, which is not valid Unicode"
    return None


def _coerce(value: Any, kind: str, text_values: bool) -> Any:
    """``value`` as ``kind``, or raise ValueError; with ``text_values``, numeric strings and "true"/"false" convert."""
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if text_values and isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ValueError
    if kind == "bool_or_auto":
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        return _coerce(value, "bool", text_values)
    if kind in ("int", "float"):
        if isinstance(value, bool):
            raise ValueError
        if text_values and isinstance(value, str):
            text = value.strip()
            value = int(text) if kind == "int" and text.lstrip("+-").isdigit() else float(text)
        if not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
            raise ValueError
        if isinstance(value, float) and kind == "int":
            if not value.is_integer():
                raise ValueError
            return int(value)
        return value
    if kind in ("str", "text"):
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
    if kind in ("list_int", "list_float"):
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError
        return [_coerce(v, kind[5:], text_values) for v in value]
    if kind in ("dict", OBJECT, MAP):
        if isinstance(value, Mapping):
            return value
        raise ValueError
    if kind == LIST:
        if isinstance(value, (list, tuple)):
            return value
        raise ValueError
    return value


def check_value(key: str, value: Any, spec: Key, *, text_values: bool = False) -> Any:
    """``value`` checked (and converted) against ``spec``; an :class:`InputError` "``key``: expected …, got …"
    otherwise (``key`` is the field's path: ``prompts.query``, ``shards[3].rows``)."""
    if value is None:
        if spec.nullable:
            return None
        raise InputError(f"{key}: expected {expected(spec)}, got null")
    try:
        out = _coerce(value, spec.kind, text_values)
    except (ValueError, OverflowError):
        raise InputError(f"{key}: expected {expected(spec)}, got {_shown(value)}") from None
    if spec.choices is not None and out not in spec.choices:
        raise InputError(f"{key}: expected {expected(spec)}, got {_shown(value)}")
    for number in out if spec.kind in ("list_int", "list_float") else [out]:
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            too_low = spec.low is not None and (number <= spec.low if spec.low_open else number < spec.low)
            too_high = spec.high is not None and (number >= spec.high if spec.high_open else number > spec.high)
            if too_low or too_high:
                raise InputError(f"{key}: expected {expected(spec)}, got {_shown(value)}")
    if spec.kind == "text" and unicode_problem(out):
        raise InputError(f"{key}: holds {unicode_problem(out)}")
    if spec.kind == OBJECT:
        out = _check_object(key, out, spec, text_values)
    elif spec.kind == LIST and spec.item is not None:
        out = [check_value(f"{key}[{i}]", v, spec.item, text_values=text_values) for i, v in enumerate(out)]
    elif spec.kind == MAP and spec.item is not None:
        out = {_map_key(key, k): check_value(f"{key}.{k}", v, spec.item, text_values=text_values) for k, v in out.items()}
    if spec.check is not None:
        try:
            spec.check(out)
        except (ValueError, TypeError) as exc:
            text = str(exc)
            raise InputError(text if text.startswith(key) else f"{key}: {text}") from None
    return out


def _map_key(key: str, name: Any) -> str:
    if not isinstance(name, str):
        raise InputError(f"{key}: keys must be strings, got {_shown(name)}")
    return name


def _check_object(key: str, value: Mapping[str, Any], spec: Key, text_values: bool) -> dict[str, Any]:
    fields = spec.fields or {}
    prefix = f"{key}." if key else ""
    missing = [name for name in spec.required if name not in value]
    if missing:
        raise InputError(f"{prefix}{missing[0]}: missing (expected {expected(fields[missing[0]])})")
    if not spec.extra:
        unknown = sorted(str(name) for name in value if name not in fields)
        if unknown:
            raise InputError(f"{key or 'the file'}: unknown field(s) {unknown} (a typo, or a file from a newer "
                             f"st_llm2vec?); known fields: {sorted(fields)}")
    out = dict(value)
    for name, field_spec in fields.items():
        if name in value:
            out[name] = check_value(f"{prefix}{name}", value[name], field_spec, text_values=text_values)
    return out


def check_keys(values: Mapping[str, Any], specs: Mapping[str, Key], *,
               text_values: bool = False) -> tuple[dict[str, Any], list[str]]:
    """(checked and converted copy of ``values``, error lines) for the keys of ``values`` that ``specs`` lists."""
    out, errors = dict(values), []
    for key, spec in specs.items():
        if key not in values:
            continue
        try:
            out[key] = check_value(key, values[key], spec, text_values=text_values)
        except ValueError as exc:
            errors.append(str(exc))
    return out, errors


# --------------------------------------------------------------------------- JSON files


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (write a finite number)")


def loads(text: str | bytes) -> Any:
    """JSON as the standard allows it: ``NaN`` / ``Infinity`` (which Python's parser takes) refused; nesting too
    deep to parse is a ValueError like any other invalid JSON."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def parse_json(data: bytes, where: str, fix: str) -> Any:
    """``data`` (a file's bytes, UTF-8 with or without BOM) as JSON; a :class:`SchemaError` naming ``where`` (and
    the line and column) and ``fix`` otherwise."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SchemaError(f"{where}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); {fix}") from None
    try:
        return loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{where}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg}); {fix}") from None
    except ValueError as exc:
        raise SchemaError(f"{where}: not valid JSON ({exc}); {fix}") from None


def read_bytes(path: str | os.PathLike, what: str) -> bytes:
    """The bytes of ``path``; a missing file, a directory or an unreadable file named as one of our errors."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise MissingFileError(f"{path}: no such file ({what})") from None
    except IsADirectoryError:
        raise MissingFileError(f"{path} is a directory, not {what}") from None
    except PermissionError:
        raise NotPermittedError(f"{path}: permission denied (cannot read {what})") from None


def check_document(data: Any, spec: Key, where: str, fix: str, *, text_values: bool = False) -> Any:
    """``data`` (a whole file's contents) checked against ``spec``; a :class:`SchemaError` "``where``: field …; ``fix``"."""
    try:
        return check_value("", data, spec, text_values=text_values)
    except InputError as exc:
        detail = str(exc)
        detail = detail[2:] if detail.startswith(": ") else f"field {detail}" if not detail.startswith("the file") else detail
        raise SchemaError(f"{where}: {detail}; {fix}") from None


def read_json_file(path: str | os.PathLike, spec: Key | None, *, what: str, fix: str,
                   missing_ok: bool = False) -> Any:
    """The checked contents of the JSON file ``path`` (``what`` it is, e.g. "the model's prompts"); None when it
    is missing and ``missing_ok``. Every problem names the file, the field and ``fix``."""
    if missing_ok and not os.path.lexists(path):
        return None
    data = parse_json(read_bytes(path, what), str(path), fix)
    return data if spec is None else check_document(data, spec, str(path), fix)


@dataclass(frozen=True)
class FileType:
    """One kind of file st_llm2vec reads, declared once: its ``name`` in its folder, ``what`` it holds (for
    messages), its ``spec`` (None: any JSON) and the ``fix`` a message offers when it is bad."""

    name: str
    what: str
    spec: Key | None
    fix: str

    def read(self, folder: str | os.PathLike, *, missing_ok: bool = False) -> Any:
        """The checked contents of ``folder/name`` (None when it is missing and ``missing_ok``)."""
        return self.read_file(os.path.join(folder, self.name), missing_ok=missing_ok)

    def read_file(self, path: str | os.PathLike, *, missing_ok: bool = False) -> Any:
        """The checked contents of ``path``, a file of this type under another name."""
        return read_json_file(path, self.spec, what=self.what, fix=self.fix, missing_ok=missing_ok)

    def read_whole(self, folder: str | os.PathLike) -> Any:
        """As :meth:`read`, but None for a file that is missing or not whole JSON: for records that are written
        last (a checkpoint's marker: without a whole one the checkpoint is incomplete). A whole file that does not
        hold what the schema says is still an error naming it."""
        path = os.path.join(folder, self.name)
        try:
            data = parse_json(read_bytes(path, self.what), path, self.fix)
        except (SchemaError, MissingFileError):
            return None
        return self.check(data, path)

    def check(self, data: Any, where: str) -> Any:
        """``data`` (this file's contents, already parsed) checked; errors name ``where``."""
        return data if self.spec is None else check_document(data, self.spec, where, self.fix)
