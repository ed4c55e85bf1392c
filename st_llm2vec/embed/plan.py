"""The shard plan: one checking pass over the input, then shard ``k`` = the ``k``-th block of
``rows_per_shard`` good rows in input order (files sorted, rows in file order).

A shard is therefore a pure function of the input: a rerun after a kill finds the same blocks, skips those the
manifest lists and computes only the others, with the same batches (see ``encoding.embed_texts``). The checking
pass (:func:`scan`) reads every row before anything is embedded: a bad row (malformed JSON, a missing or
non-string text, non-UTF-8 bytes, an empty file, a duplicate id) stops the job naming its file and line, or with
``--skip-bad`` goes to ``rejected.jsonl`` with its reason. A rejected row still counts in its block (the blocks
do not move); a block then holds fewer rows.

What the pass keeps is small and fixed per row: a 16-byte hash of each id (the duplicate check; a candidate
duplicate is confirmed on the ids themselves), 16 bytes of text hash more with ``--update``, and a restart point
every 256 rows (file, byte offset, line), from which a shard is read by itself (:func:`read_shard`): the texts
are never all in memory.

``--update`` (``update.py``) plans the new and changed rows with :func:`plan_shards` (``new``, ``base``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, NamedTuple

import numpy as np

from ..errors import InputError
from .inputs import Fields, InputFile, Row, read_rows

CHECKPOINT_EVERY = 256
SKIP_BAD_HINT = " (--skip-bad embeds the other rows and lists the bad ones in OUT/rejected.jsonl)"


def text_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def id_hash(row_id: str) -> bytes:
    return hashlib.blake2b(row_id.encode("utf-8"), digest_size=16, person=b"st-llm2vec-id").digest()


class Checkpoint(NamedTuple):
    """Where good row ``ordinal`` starts: file index, offset and line to restart the reader at."""

    ordinal: int
    file: int
    offset: int
    line: int


@dataclass
class Scan:
    """What the checking pass learnt: the good rows' count and restart points, their id (and text) hashes, the
    good rows rejected as duplicate ids, and how many rows were rejected in all."""

    files: list[InputFile]
    fields: Fields
    rows: int = 0
    checkpoints: list[Checkpoint] = field(default_factory=list)
    id_hashes: bytearray = field(default_factory=bytearray)
    text_hashes: bytearray | None = None
    excluded: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    rejected: int = 0

    def keys(self) -> np.ndarray:
        """(id hash, text hash) of every good row as 32-byte keys, by ordinal (``--update`` only)."""
        ids = np.frombuffer(bytes(self.id_hashes), dtype=np.uint8).reshape(-1, 16)
        texts = np.frombuffer(bytes(self.text_hashes), dtype=np.uint8).reshape(-1, 16)
        return np.ascontiguousarray(np.hstack([ids, texts])).view("V32").ravel()


class ShardSpec(NamedTuple):
    """One shard to compute: its index (file ``part-INDEX.parquet``), the restart point before its block, the
    block's first good-row ordinal and length, and which of the block's rows it holds (None: all)."""

    index: int
    checkpoint: Checkpoint
    start: int
    count: int
    take: tuple[int, ...] | None
    rows: int


class Rejects:
    """Rejected rows, one JSON object a line, into an open file (None: count only)."""

    def __init__(self, sink: IO[str] | None) -> None:
        self.sink, self.count = sink, 0

    def add(self, where: str, reason: str, row_id: str | None = None) -> None:
        self.count += 1
        if self.sink is not None:
            self.sink.write(json.dumps({"where": where, "id": row_id, "reason": reason}, ensure_ascii=False) + "\n")


def scan(files: list[InputFile], fields: Fields, *, skip_bad: bool, rejects: Rejects,
         text_hashes: bool = False) -> Scan:
    """The checking pass (see the module docstring); raises an InputError naming the first bad row unless
    ``skip_bad``."""
    result = Scan(files, fields, text_hashes=bytearray() if text_hashes else None)
    for number, file in enumerate(files):
        seen = 0
        for row in read_rows(file, fields):
            seen += 1
            if row.error is not None:
                if not skip_bad:
                    raise InputError(f"{row.where}: {row.error}{SKIP_BAD_HINT}")
                rejects.add(row.where, row.error, row.id)
                continue
            if result.rows % CHECKPOINT_EVERY == 0:
                result.checkpoints.append(Checkpoint(result.rows, number, row.offset, row.line))
            result.id_hashes += id_hash(row.id)
            if result.text_hashes is not None:
                result.text_hashes += text_hash(row.text)
            result.rows += 1
        if seen == 0:
            if not skip_bad:
                raise InputError(f"{file.path}: empty file (no rows){SKIP_BAD_HINT}")
            rejects.add(file.path, "empty file (no rows)")
    _exclude_duplicates(result, skip_bad, rejects)
    result.rejected = rejects.count
    if result.rows - len(result.excluded) == 0:
        raise InputError(f"no row to embed in the input: {rejects.count} rejected, none left (see the reasons with "
                         "--skip-bad in OUT/rejected.jsonl, or run without it for the first one).")
    return result


def _exclude_duplicates(result: Scan, skip_bad: bool, rejects: Rejects) -> None:
    """Later rows with an id seen before: an InputError naming both places, or (``skip_bad``) rejected."""
    hashes = np.frombuffer(bytes(result.id_hashes), dtype="V16")
    order = np.argsort(hashes, kind="stable")
    same = hashes[order][1:] == hashes[order][:-1]
    if not same.any():
        return
    candidates = set(order[1:][same].tolist()) | set(order[:-1][same].tolist())
    first: dict[str, str] = {}
    later: list[int] = []
    for ordinal, row in good_rows(result, 0, result.rows, only=candidates):
        if row.id in first:
            if not skip_bad:
                raise InputError(f"{row.where}: duplicate id {row.id!r} (first at {first[row.id]}){SKIP_BAD_HINT}")
            rejects.add(row.where, f"duplicate id (first at {first[row.id]})", row.id)
            later.append(ordinal)
        else:
            first[row.id] = row.where
    result.excluded = np.array(sorted(later), dtype=np.int64)


def good_rows(result: Scan, start: int, count: int, checkpoint: Checkpoint | None = None,
              only: set[int] | None = None) -> Iterator[tuple[int, Row]]:
    """(ordinal, row) for the good rows ``start`` … ``start + count - 1`` (``only``: just those ordinals)."""
    if checkpoint is None:
        checkpoint = result.checkpoints[start // CHECKPOINT_EVERY]
    yield from _good_rows(result.files, result.fields, checkpoint, start, count, only)


def _good_rows(files: list[InputFile], fields: Fields, checkpoint: Checkpoint, start: int, count: int,
               only: set[int] | None = None) -> Iterator[tuple[int, Row]]:
    ordinal, end = checkpoint.ordinal, start + count
    for number in range(checkpoint.file, len(files)):
        first = number == checkpoint.file
        for row in read_rows(files[number], fields, checkpoint.offset if first else 0, checkpoint.line if first else 0):
            if row.error is not None:
                continue
            if ordinal >= start and (only is None or ordinal in only):
                yield ordinal, row
            ordinal += 1
            if ordinal >= end:
                return


def plan_shards(result: Scan, rows_per_shard: int, *, base: int = 0, new: np.ndarray | None = None) -> list[ShardSpec]:
    """The shards of the input: block ``k`` of ``rows_per_shard`` good rows is shard ``base + k``, holding its
    rows that are not duplicates (and, ``new`` given, those it marks); blocks left with no row have no shard."""
    keep = np.ones(result.rows, dtype=bool)
    keep[result.excluded] = False
    if new is not None:
        keep &= new
    specs = []
    for k, start in enumerate(range(0, result.rows, rows_per_shard)):
        count = min(rows_per_shard, result.rows - start)
        block = keep[start:start + count]
        rows = int(block.sum())
        if rows == 0:
            continue
        take = None if rows == count else tuple(np.flatnonzero(block).tolist())
        specs.append(ShardSpec(base + k, result.checkpoints[start // CHECKPOINT_EVERY], start, count, take, rows))
    return specs


class ShardRows(NamedTuple):
    ids: list[str]
    texts: list[str]


def read_shard(files: list[InputFile], fields: Fields, spec: ShardSpec) -> ShardRows:
    """The ids and texts of one shard, read from its restart point (what both engines embed)."""
    take = None if spec.take is None else {spec.start + offset for offset in spec.take}
    ids, texts = [], []
    for _, row in _good_rows(files, fields, spec.checkpoint, spec.start, spec.count, take):
        ids.append(row.id)
        texts.append(row.text)
    if len(ids) != spec.rows:
        raise InputError(f"shard {spec.index}: read {len(ids)} rows where the plan has {spec.rows}: the input "
                         "changed while the job ran; run the same command again.")
    return ShardRows(ids, texts)
