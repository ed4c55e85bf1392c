"""The default engine: every pending shard, in order, in this process — read from its restart point, embedded
(``encoding.embed_texts``), handed to the writer. No server, no worker process; memory holds one shard."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .encoding import ModelSettings, embed_texts
from .inputs import Fields, InputFile
from .plan import ShardSpec, read_shard, text_hash

# commit(spec, ids, text hashes, vectors): the writer's side (job.py), shared with the Ray engine.
Commit = Callable[[ShardSpec, list[str], list[bytes], Any], None]


def run_local(specs: list[ShardSpec], files: list[InputFile], fields: Fields, model: Any, settings: ModelSettings,
              commit: Commit, advance: Callable[[int], None]) -> None:
    """Embed ``specs`` one after the other with ``model``; ``advance(n)`` after each batch of n rows."""
    for spec in specs:
        rows = read_shard(files, fields, spec)
        hashes = [text_hash(text) for text in rows.texts]
        vectors = embed_texts(model, rows.texts, settings, hashes, on_batch=advance)
        commit(spec, rows.ids, hashes, vectors)
