"""The corpus as rows: which files INPUT names, and each file's rows (id, text) with where they come from.

INPUT is a file, a folder (every supported file under it, hidden ones left out) or a glob. Files are taken
in the sorted order of their names relative to the input root, rows in file order: the stable order in which
the shard plan cuts the corpus into blocks. Formats: ``.jsonl`` (a JSON object a line), ``.json`` (an array
of objects, or JSON Lines), ``.csv`` (a header row), ``.parquet``, ``.txt`` (one text a line; a blank line is
an empty text, which is embedded like any other).

Each row says where it is (``file:line``, or ``file:row N`` with N counted from 0 for Parquet and JSON
arrays) and where a read can start again (a byte offset for the line formats, a row index otherwise), so
one shard can be read by itself (what the Ray engine's read tasks do). A row without an id gets the stable
id ``NAME:LINE`` (``NAME:N`` for Parquet and JSON arrays), NAME being the file's path relative to the input
root. A bad row is a :class:`Row` with an ``error`` (the reason), never an exception: the planner decides
whether it stops the job or goes to ``rejected.jsonl`` (``--skip-bad``). A ``.json`` array is parsed whole
each time it is read: use JSON Lines for large corpora.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import InputError, MissingFileError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")
_BOM = b"\xef\xbb\xbf"
# csv refuses fields over 131072 characters by default; a corpus's documents can be longer (the limit is global to
# the csv module: raised once, never lowered).
_CSV_FIELD_LIMIT = 2**31 - 1
_MISSING = object()


class InputFile(NamedTuple):
    """One file of the corpus: its path as the user reaches it, and its name relative to the input root
    (the ``NAME`` of default ids: stable when the corpus folder moves)."""

    path: str
    name: str


class Fields(NamedTuple):
    """Which field of a row holds the text and which the id."""

    text: str = "text"
    id: str = "id"


class Row(NamedTuple):
    """A row as read: ``where`` (``file:line``), ``offset`` (where a read restarts at this row), ``line`` (its
    line or row number), and either ``id`` + ``text`` or ``error`` (why it cannot be embedded)."""

    where: str
    offset: int
    line: int
    id: str | None
    text: str | None
    error: str | None = None


# --------------------------------------------------------------------------- finding the files


def find_inputs(spec: str) -> tuple[Path, list[InputFile]]:
    """The input root (a folder) and the files INPUT names, in the stable order the plan reads them."""
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise InputError(f"{spec}: unsupported file type {path.suffix or '(none)'!r}; INPUT takes "
                             f"{', '.join(SUFFIXES)} files, a folder of them or a glob.")
        return path.parent, [InputFile(str(path), path.name)]
    if path.is_dir():
        found = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
                 and not any(part.startswith(".") for part in p.relative_to(path).parts)]
        if not found:
            raise InputError(f"{spec} holds no {', '.join(SUFFIXES)} file; point INPUT at the corpus files.")
        return path, _ordered(path, found)
    if glob.has_magic(spec):
        found = [Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True)]
        found = [p for p in found if p.is_file() and p.suffix.lower() in SUFFIXES]
        if not found:
            raise MissingFileError(f"no {', '.join(SUFFIXES)} file matches {spec!r}.")
        return _glob_root(spec), _ordered(_glob_root(spec), found)
    raise MissingFileError(f"INPUT {spec!r} does not exist (looked relative to {os.getcwd()!r}): pass a file, a "
                           "folder or a glob of .jsonl/.json/.csv/.parquet/.txt files.")


def _glob_root(spec: str) -> Path:
    parts = Path(os.path.expanduser(spec)).parts
    fixed = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _ordered(root: Path, files: list[Path]) -> list[InputFile]:
    named = {p.relative_to(root).as_posix() if p.is_relative_to(root) else p.name: p for p in files}
    return [InputFile(str(named[name]), name) for name in sorted(named)]


# --------------------------------------------------------------------------- reading rows


def read_rows(file: InputFile, fields: Fields, offset: int = 0, line: int = 0) -> Iterator[Row]:
    """The rows of ``file``, good and bad, from ``offset`` / ``line`` (a :class:`Row`'s own, to restart there;
    0 / 0 for the start). A file that cannot be read at all yields one row with its error."""
    suffix = Path(file.path).suffix.lower()
    reader = {".jsonl": _jsonl, ".json": _json, ".csv": _csv, ".parquet": _parquet, ".txt": _txt}[suffix]
    try:
        yield from reader(file, fields, offset, line)
    except OSError as exc:
        raise MissingFileError(f"{file.path}: cannot read ({exc.strerror or exc})") from exc


def _lines(file: InputFile, offset: int, line: int) -> Iterator[tuple[int, int, int, bytes]]:
    """(start offset, end offset, 1-based line number, raw line) from ``offset``; a UTF-8 BOM at the very start
    of the file is dropped from the line (not from the offsets)."""
    line = line or 1
    with open(file.path, "rb") as fh:
        fh.seek(offset)
        for raw in fh:
            start, offset = offset, offset + len(raw)
            yield start, offset, line, raw[len(_BOM):] if start == 0 and raw.startswith(_BOM) else raw
            line += 1


def _decode(raw: bytes) -> tuple[str | None, str | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", bool: "a boolean", int: "a number", float: "a number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _row_from_object(obj: Any, fields: Fields, where: str, offset: int, line: int, default_id: str) -> Row:
    if not isinstance(obj, dict):
        return Row(where, offset, line, None, None, f"expected a JSON object, got {_json_type(obj)}")
    text = obj.get(fields.text, _MISSING)
    if text is _MISSING:
        names = ", ".join(map(repr, list(obj)[:8])) or "none"
        return Row(where, offset, line, None, None, f"no {fields.text!r} field (fields: {names}); --text-field names it")
    if not isinstance(text, str):
        return Row(where, offset, line, None, None, f"{fields.text!r} is {_json_type(text)}, not a string")
    row_id, error = _id_of(obj.get(fields.id), fields, default_id)
    return Row(where, offset, line, row_id, text if error is None else None, error)


def _id_of(value: Any, fields: Fields, default_id: str) -> tuple[str | None, str | None]:
    if value is None:
        return default_id, None
    if isinstance(value, str):
        return value, None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value), None
    return None, f"{fields.id!r} is {_json_type(value)}, not a string or an integer"


def _jsonl(file: InputFile, fields: Fields, offset: int, line: int) -> Iterator[Row]:
    for start, _, lineno, raw in _lines(file, offset, line):
        where = f"{file.path}:{lineno}"
        text, error = _decode(raw)
        if error:
            yield Row(where, start, lineno, None, None, error)
            continue
        text = text.strip()
        if not text:
            continue
        try:
            obj = json.loads(text)
        except ValueError as exc:
            yield Row(where, start, lineno, None, None,
                      f"not valid JSON ({getattr(exc, 'msg', exc)} at column {getattr(exc, 'colno', '?')})")
            continue
        yield _row_from_object(obj, fields, where, start, lineno, f"{file.name}:{lineno}")


def _txt(file: InputFile, fields: Fields, offset: int, line: int) -> Iterator[Row]:
    for start, _, lineno, raw in _lines(file, offset, line):
        where = f"{file.path}:{lineno}"
        text, error = _decode(raw.rstrip(b"\n").rstrip(b"\r"))
        yield Row(where, start, lineno, None if error else f"{file.name}:{lineno}", text, error)


def _json(file: InputFile, fields: Fields, offset: int, line: int) -> Iterator[Row]:
    data = Path(file.path).read_bytes()
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    if not data.lstrip().startswith(b"["):  # JSON Lines in a .json file
        yield from _jsonl(file, fields, offset, line)
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = data[:exc.start].count(b"\n") + 1
        yield Row(f"{file.path}:{at}", 0, 0, None, None, f"not UTF-8 (byte 0x{data[exc.start]:02x})")
        return
    try:
        items = json.loads(text)
    except ValueError as exc:
        yield Row(f"{file.path}:{getattr(exc, 'lineno', '?')}", 0, 0, None, None,
                  f"not valid JSON ({getattr(exc, 'msg', exc)} at column {getattr(exc, 'colno', '?')})")
        return
    for index in range(offset, len(items)):
        where = f"{file.path}:row {index}"
        item = items[index]
        if isinstance(item, str):  # an array of texts
            yield Row(where, index, index, f"{file.name}:{index}", item)
        else:
            yield _row_from_object(item, fields, where, index, index, f"{file.name}:{index}")


def _csv(file: InputFile, fields: Fields, offset: int, line: int) -> Iterator[Row]:
    """CSV with a header row. A record may span lines (a quoted newline): its offset is where it starts (the
    csv module reads no further than the record it returns), its ``where`` the line it starts on."""
    state: dict[str, Any] = {"end": 0, "bad": None}

    def decoded(lines: Iterator[tuple[int, int, int, bytes]]) -> Iterator[str]:
        for _, end, _, raw in lines:
            state["end"] = end
            text, error = _decode(raw)
            if error and state["bad"] is None:
                state["bad"] = error
            yield raw.decode("utf-8", "replace") if text is None else text

    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    header_reader = csv.reader(decoded(_lines(file, 0, 0)))
    header = next(header_reader, None)
    if header is None:
        return  # an empty file: the planner reports it
    if state["bad"] or fields.text not in header:
        reason = (f"header {state['bad']}" if state["bad"] else f"no {fields.text!r} column (columns: "
                  f"{', '.join(map(repr, header[:12]))}); --text-field names it")
        yield Row(f"{file.path}:1", 0, 1, None, None, reason)
        return
    text_at, id_at = header.index(fields.text), header.index(fields.id) if fields.id in header else None
    if offset == 0:
        offset, line = state["end"], header_reader.line_num + 1
    reader = csv.reader(decoded(_lines(file, offset, line)))
    start, lineno = offset, line
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # a record the csv module cannot parse: the reader goes on at the next line
            record, state["bad"] = None, state["bad"] or f"not valid CSV ({exc})"
        bad, state["bad"] = state["bad"], None
        if record or bad:  # csv yields [] for a blank line: no row
            where = f"{file.path}:{lineno}"
            if bad:
                yield Row(where, start, lineno, None, None, bad)
            elif len(record) <= text_at:
                yield Row(where, start, lineno, None, None,
                          f"no {fields.text!r} value ({len(record)} of {len(header)} columns)")
            else:
                value = record[id_at] if id_at is not None and id_at < len(record) and record[id_at] else None
                yield Row(where, start, lineno, value or f"{file.name}:{lineno}", record[text_at])
        start, lineno = state["end"], line + reader.line_num


def _parquet(file: InputFile, fields: Fields, offset: int, line: int) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(file.path)
    except (pa.ArrowException, OSError) as exc:
        yield Row(file.path, 0, 0, None, None, f"not a readable Parquet file ({exc})")
        return
    schema = parquet.schema_arrow
    if fields.text not in schema.names:
        yield Row(file.path, 0, 0, None, None, f"no {fields.text!r} column (columns: "
                  f"{', '.join(map(repr, schema.names[:12]))}); --text-field names it")
        return
    text_type = schema.field(fields.text).type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
        yield Row(file.path, 0, 0, None, None, f"column {fields.text!r} is {text_type}, not a string column")
        return
    columns = [fields.text] + ([fields.id] if fields.id in schema.names else [])
    if len(columns) == 2:
        id_type = schema.field(fields.id).type
        if not (pa.types.is_string(id_type) or pa.types.is_large_string(id_type) or pa.types.is_integer(id_type)):
            yield Row(file.path, 0, 0, None, None, f"column {fields.id!r} is {id_type}, not strings or integers")
            return
    first, groups = 0, []
    for group in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        if first + rows > offset:
            groups.append(group)
        elif not groups:
            first += rows
    index = first
    for batch in parquet.iter_batches(batch_size=4096, row_groups=groups, columns=columns):
        texts = batch.column(0).to_pylist()
        ids = batch.column(1).to_pylist() if len(columns) == 2 else [None] * len(texts)
        for text, row_id in zip(texts, ids):
            if index >= offset:
                where = f"{file.path}:row {index}"
                if text is None:
                    yield Row(where, index, index, None, None, f"{fields.text!r} is null")
                else:
                    yield Row(where, index, index, f"{file.name}:{index}" if row_id is None else str(row_id), text)
            index += 1
