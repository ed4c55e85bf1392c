"""``--update``: an OUT brought to a changed input (same model and prompt) without embedding again what it has.

An old shard whose rows are all still in the input with the same text (same id, same BLAKE2b-128 of the text)
is kept as it is — the same file; one with rows gone or changed is rewritten without them under a new index
(the kept rows copied byte for byte), then the old file is deleted; one with no row left is deleted. The new
and changed rows are then embedded into new shards after the old ones (blocks of the input, as ever, holding
only those rows). Each step is entered in the manifest as it is done, the old shards first: an update killed
at any point leaves no id twice, and ``--update`` run again goes on from what is on disk (the manifest's
``update`` says one is under way; nothing else may touch OUT until it is finished).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import shards as shard_files
from .manifest import Manifest
from .plan import Scan, ShardSpec, id_hash, plan_shards


def old_keys(table: Any) -> np.ndarray:
    """The 32-byte (id hash, text hash) keys of a shard's ``id`` and ``text_hash`` columns."""
    ids = table.column("id").to_pylist()
    hashes = table.column("text_hash").to_pylist()
    raw = b"".join(id_hash(i) + bytes.fromhex(h) for i, h in zip(ids, hashes))
    return np.frombuffer(raw, dtype="V32")


def _member(values: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    if len(sorted_keys) == 0 or len(values) == 0:
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_keys, values), len(sorted_keys) - 1)
    return sorted_keys[at] == values


@dataclass
class UpdateActions:
    """What ``--update`` does with the old shards: keep (index list), rewrite ({index: mask of rows kept}), drop;
    and the keys of every row kept, from which the new rows are found."""

    keep: list[int] = field(default_factory=list)
    rewrite: dict[int, np.ndarray] = field(default_factory=dict)
    drop: list[int] = field(default_factory=list)
    kept_keys: list[np.ndarray] = field(default_factory=list)

    def new_rows(self, result: Scan) -> np.ndarray:
        """For each good row of the input: True when no kept row has its id and text."""
        kept = np.sort(np.concatenate(self.kept_keys)) if self.kept_keys else np.zeros(0, dtype="V32")
        return ~_member(result.keys(), kept)


def update_actions(result: Scan, shards: list[tuple[int, np.ndarray]]) -> UpdateActions:
    """Compare each old shard's (index, keys) with the input's rows (duplicates excluded)."""
    keys = result.keys()
    if len(result.excluded):
        keys = np.delete(keys, result.excluded)
    keys = np.sort(keys)
    actions = UpdateActions()
    for index, old in shards:
        present = _member(old, keys)
        if present.all():
            actions.keep.append(index)
            actions.kept_keys.append(old)
        elif not present.any():
            actions.drop.append(index)
        else:
            actions.rewrite[index] = present
            actions.kept_keys.append(old[present])
    return actions


def apply_update(out: Path, manifest: Manifest, found: Scan) -> tuple[list[ShardSpec], dict[str, int]]:
    """Keep, rewrite or drop the old shards (each step in the manifest); the new rows' shards, and the counts
    (``kept``, ``dropped``) for the report."""
    import pyarrow.parquet as pq

    olds = [(e["index"], old_keys(shard_files.read_columns(out, e, ["id", "text_hash"]))) for e in manifest.shards]
    actions = update_actions(found, olds)
    before = manifest.rows
    next_index = max((e["index"] for e in manifest.shards), default=-1) + 1
    entries = {e["index"]: e for e in manifest.shards}
    for index in actions.drop + list(actions.rewrite):
        entry = entries[index]
        manifest.shards.remove(entry)
        if index in actions.rewrite:
            table = pq.read_table(out / entry["file"]).filter(actions.rewrite[index])
            manifest.add_shard({**shard_files.write_shard(out, next_index, table), "engine": "update"})
            next_index += 1
        manifest.save(out)
        (out / entry["file"]).unlink(missing_ok=True)
    specs = plan_shards(found, manifest.rows_per_shard, base=next_index, new=actions.new_rows(found))
    return specs, {"kept": manifest.rows, "dropped": before - manifest.rows}
