"""Shard files: ``OUT/part-NNNNN.parquet`` with the columns ``id`` (string), ``text_hash`` (the hex BLAKE2b-128 of
the text, what ``--update`` compares) and ``embedding`` (fixed-size list of float32).

A shard is written under a hidden temp name, synced, then renamed into place, and only then entered in the
manifest (with its row count, size and SHA-256). So a reader never sees half a file, and a job killed between
the rename and the manifest leaves a shard the manifest does not list: the next run deletes it and computes
it again (:func:`clean`), never trusting it blindly nor keeping it twice. Hidden names also keep temp files out
of ``glob("OUT/*.parquet")`` and of pyarrow's dataset discovery.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

_SHARD = re.compile(r"^part-(\d{5,})\.parquet$")
_TEMP = re.compile(r"^\.(part-\d{5,}\.parquet|rejected\.jsonl)\..+\.tmp$")


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def make_table(ids: list[str], text_hashes: list[str], vectors: np.ndarray) -> pa.Table:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), type=pa.float32()), vectors.shape[1])
    return pa.table({"id": pa.array(ids, type=pa.string()), "text_hash": pa.array(text_hashes, type=pa.string()),
                     "embedding": embedding})


def write_shard(out: Path, index: int, table: pa.Table) -> dict[str, Any]:
    """Write ``table`` as shard ``index`` (temp name, fsync, rename); its manifest entry."""
    name = shard_name(index)
    tmp = out / f".{name}.{os.getpid()}.tmp"
    try:
        pq.write_table(table, tmp, compression="snappy", use_dictionary=False, write_statistics=["id"])
        with open(tmp, "rb+") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
            os.fsync(fh.fileno())
        size = tmp.stat().st_size
        os.replace(tmp, out / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"file": name, "index": index, "rows": table.num_rows, "bytes": size, "sha256": digest}


def read_columns(out: Path, entry: dict[str, Any], columns: list[str]) -> pa.Table:
    return pq.read_table(out / entry["file"], columns=columns)


def vectors_of(table: pa.Table) -> np.ndarray:
    """The ``embedding`` column as an (n, dim) float32 array (no copy where arrow allows)."""
    column = table.column("embedding").combine_chunks()
    return column.values.to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)


def intact(out: Path, entry: dict[str, Any], check_sum: bool = False) -> bool:
    """The shard file the manifest lists is there with its size (and, ``check_sum``, its SHA-256)."""
    path = out / entry["file"]
    try:
        if path.stat().st_size != entry["bytes"]:
            return False
        if check_sum:
            with open(path, "rb") as fh:
                return hashlib.file_digest(fh, "sha256").hexdigest() == entry["sha256"]
    except OSError:
        return False
    return True


def clean(out: Path, listed: set[str]) -> list[str]:
    """Delete temp files and shard files the manifest does not list (left by a killed job; this process's own temp
    files excepted); their names."""
    removed, own = [], f".{os.getpid()}.tmp"
    for path in sorted(out.iterdir()):
        if (_TEMP.match(path.name) and not path.name.endswith(own)) or (_SHARD.match(path.name) and path.name not in listed):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    if removed:
        logger.info("Removed %d file(s) an interrupted job left in %s: %s", len(removed), out, ", ".join(removed))
    return removed


def is_shard(name: str) -> bool:
    return bool(_SHARD.match(name))
