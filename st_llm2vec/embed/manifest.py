"""``OUT/manifest.json``: what made the vectors, what they were made from, and which shards hold them.

Two identities decide what a rerun may do with an existing OUT (:func:`differences`):
- the vectors' — the model's files (a fingerprint of their contents), the prompt text, normalisation, the
  dimension asked for and the precision: any difference means vectors that cannot sit beside the old ones;
- the input's — the input files' contents, the text and id fields and the rows per shard (which cut the shard
  plan): a difference means other rows.
The same identities resume a killed job (both equal), refuse a mismatch naming each difference, and let
``--update`` refresh an OUT whose vectors' identity is equal.

Fingerprints hash file contents (SHA-256): a copied or re-downloaded model with the same bytes is the same
model, a re-saved one with other weights is not. Each file's hash is kept with its size and mtime, so a rerun
hashes again only the files that changed (resuming a job over a large model or corpus stays quick).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..files import read_json, write_json_atomic

MANIFEST = "manifest.json"
FORMAT = "st-llm2vec-embeddings/1"
# Files of a model dir that do not change its vectors: left out of its fingerprint.
_NOT_WEIGHTS = {"README.md", ".gitattributes"}


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def fingerprint_files(files: list[tuple[str, str]], known: dict[str, list] | None = None) -> tuple[str, dict[str, list]]:
    """``("sha256:…", {name: [size, mtime_ns, sha256]})`` over (name, path) pairs; a file whose size and
    mtime match ``known`` (an earlier result) is not read again."""
    known = known or {}
    table: dict[str, list] = {}
    whole = hashlib.sha256()
    for name, path in sorted(files):
        st = os.stat(path)
        old = known.get(name)
        if old and old[0] == st.st_size and old[1] == st.st_mtime_ns:
            digest = old[2]
        else:
            with open(path, "rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
        table[name] = [st.st_size, st.st_mtime_ns, digest]
        whole.update(f"{name}\0{digest}\n".encode())
    return "sha256:" + whole.hexdigest(), table


def model_files(directory: str | os.PathLike) -> list[tuple[str, str]]:
    """The files of a model dir that make its vectors (hidden files and the model card left out)."""
    root = Path(directory)
    return [(p.relative_to(root).as_posix(), str(p)) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in _NOT_WEIGHTS
            and not any(part.startswith(".") for part in p.relative_to(root).parts)]


@dataclass(frozen=True)
class VectorIdentity:
    """What makes two vectors comparable: the same model files, prompt, normalisation, dimension and precision."""

    model: str
    prompt: str | None
    normalize: bool
    dim: int | None  # asked for (--dim); None: the model's own
    precision: str


@dataclass(frozen=True)
class InputIdentity:
    """What makes two jobs embed the same rows into the same shards."""

    fingerprint: str
    text_field: str
    id_field: str
    rows_per_shard: int | None  # None: not asked for (a resume keeps the manifest's)


_LABELS = {"model": "model files", "prompt": "prompt", "normalize": "normalisation", "dim": "--dim",
           "precision": "precision", "fingerprint": "input files", "text_field": "--text-field",
           "id_field": "--id-field", "rows_per_shard": "--rows-per-shard"}


def differences(old: Any, new: Any) -> list[str]:
    """``label (old → new)`` for each field of two identities that differs (None in ``new.rows_per_shard``: any)."""
    diffs = []
    for key, value in asdict(new).items():
        before = getattr(old, key)
        if before == value or (key == "rows_per_shard" and value is None):
            continue
        if key in ("model", "fingerprint"):
            diffs.append(f"{_LABELS[key]} ({str(before)[7:19]}… → {str(value)[7:19]}…)")
        else:
            diffs.append(f"{_LABELS[key]} ({json.dumps(before)} → {json.dumps(value)})")
    return diffs


@dataclass
class Manifest:
    """The manifest as written: each section a plain JSON object (see the README's "Embed a corpus")."""

    model: dict[str, Any]
    vectors: dict[str, Any]
    input: dict[str, Any]
    rows_per_shard: int
    shards: list[dict[str, Any]] = field(default_factory=list)
    rejected: int = 0
    complete: bool = False
    engine: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    update: dict[str, Any] | None = None
    created: str = field(default_factory=now)
    updated: str = field(default_factory=now)
    format: str = FORMAT

    @property
    def rows(self) -> int:
        return sum(int(entry["rows"]) for entry in self.shards)

    def vector_identity(self) -> VectorIdentity:
        v = self.vectors
        return VectorIdentity(self.model["fingerprint"], v["prompt"]["text"], v["normalize"], v["requested_dim"],
                              v["precision"])

    def input_identity(self, fingerprint: str | None = None) -> InputIdentity:
        i = self.input
        return InputIdentity(fingerprint or i["fingerprint"], i["text_field"], i["id_field"], self.rows_per_shard)

    def add_shard(self, entry: dict[str, Any]) -> None:
        self.shards = sorted([e for e in self.shards if e["index"] != entry["index"]] + [entry],
                             key=lambda e: e["index"])

    def save(self, out: Path) -> None:
        self.updated = now()
        write_json_atomic(out / MANIFEST, {"format": self.format, **{k: v for k, v in asdict(self).items()
                                                                     if k != "format"}, "rows": self.rows})

    @classmethod
    def load(cls, out: Path) -> Manifest | None:
        """The manifest of ``out``; None when there is none; an InputError when it cannot be one of ours."""
        path = out / MANIFEST
        if not path.exists():
            return None
        data = read_json(path)
        if data is None or data.get("format") != FORMAT:
            raise InputError(f"{path} is not an st-llm2vec embeddings manifest ({FORMAT}); choose another OUT, or "
                             "pass --overwrite to replace what is there.")
        data.pop("rows", None)
        try:
            return cls(**data)
        except TypeError as exc:
            raise InputError(f"{path} is damaged ({exc}); pass --overwrite to embed again from scratch.") from exc


def library_versions(*extra: str) -> dict[str, str]:
    """Versions of the libraries that make and write the vectors."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("st-llm2vec", "sentence-transformers", "transformers", "torch", "pyarrow", *extra):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions
