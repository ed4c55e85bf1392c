"""One embed job, start to finish: what OUT already holds, the checking pass, the shard plan, an engine, the
writer, the manifest.

Order of work (each step can be killed; the next run picks up from what is on disk):
1. lock OUT (one job per OUT: a second one is refused while the first runs);
2. read OUT's manifest and decide: a fresh job, a resume (same vectors' and input's identity), nothing to do
   (complete), an ``--update`` (same vectors' identity, other input), or a refusal naming what differs;
3. the checking pass over the input (``plan.scan``): a bad row stops here, before anything is written (a new
   OUT is removed again: nothing half-written is left);
4. the manifest is written (incomplete), leftovers of a killed run are deleted (temp files, shards the manifest
   does not list), then ``rejected.jsonl``;
5. each pending shard: embedded by the engine, written (temp name → rename), entered in the manifest;
6. the manifest says complete; a one-line summary says what is where and how to read it.

Test hook: ``ST_LLM2VEC_EMBED_TEST_HANG=renamed:N`` or ``committed:N`` makes the job print a line to stderr and
sleep after the N-th shard of this run is renamed into place (before its manifest entry) or committed, so that
a test can kill it at exactly that point.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, OutputExistsError
from ..files import OutputLock
from ..runtime import choose_threads
from . import shards as shard_files
from .encoding import (EncodeOptions, ModelSettings, ModelSource, choose_prompt, estimated_dim, load, query_prompt,
                       resolve_model)
from .inputs import Fields, InputFile, find_inputs
from .manifest import (MANIFEST, InputIdentity, Manifest, VectorIdentity, differences, fingerprint_files,
                       library_versions, model_files)
from .plan import Rejects, ShardSpec, plan_shards, scan
from .update import apply_update

ENGINES = ("local", "ray")
REJECTED = "rejected.jsonl"
SHARD_BYTES = 100 * 2**20  # default shard size: rows_per_shard = SHARD_BYTES // bytes per row
MAX_ROWS_PER_SHARD = 100_000  # the length-sorting window is a shard: keep its texts' memory bounded too


@dataclass(frozen=True)
class EmbedConfig(EncodeOptions):
    """Everything ``st-llm2vec embed`` is asked (the CLI's options, one for one; the encoding ones keyword-only)."""

    model: str
    input: str
    output: str
    text_field: str = "text"
    id_field: str = "id"
    prompt_name: str | None = None
    prompt: str | None = None
    threads: int | str = "auto"
    rows_per_shard: int | None = None
    skip_bad: bool = False
    overwrite: bool = False
    update: bool = False
    engine: str = "local"
    workers: int = 1
    gpus_per_worker: float = 0.0
    ray_address: str | None = None
    progress: bool = True

    def check(self) -> None:
        for name in ("batch_size", "dim", "rows_per_shard", "workers"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.engine not in ENGINES:
            raise InputError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.overwrite and self.update:
            raise InputError("--overwrite embeds everything again and --update only what changed: pass one of them")
        if self.prompt is not None and self.prompt_name is not None:
            raise InputError("pass --prompt-name or --prompt, not both")
        if self.gpus_per_worker < 0:
            raise InputError(f"--gpus-per-worker must be 0 or more, got {self.gpus_per_worker}")


@dataclass
class EmbedReport:
    """What a job did (``embedded`` this run; ``kept`` / ``dropped`` by --update) and what OUT holds now."""

    output: Path
    rows: int
    shards: int
    dim: int | None
    normalize: bool
    embedded: int = 0
    kept: int = 0
    dropped: int = 0
    rejected: int = 0
    mode: str = "fresh"
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: what was written, where, and how to read it."""
        out = str(self.output)
        what = {"done": f"{out} is already complete, nothing to embed:",
                "update": f"updated {out}: {self.embedded} new or changed rows embedded, {self.dropped} dropped, "
                          f"{self.kept} kept as they were;"}.get(self.mode, f"embedded {self.embedded} rows "
                                                                          f"in {self.seconds:.1f}s;")
        rejected = f", {self.rejected} bad rows listed in {out}/{REJECTED}" if self.rejected else ""
        return (f"{what} {self.rows} rows in {self.shards} shards of {self.dim}-dim float32 vectors"
                f"{' (normalized)' if self.normalize else ''} in {out}/part-*.parquet (manifest.json{rejected}); "
                f"read them with: python -c \"import glob, pandas as pd; "
                f"df = pd.read_parquet(sorted(glob.glob('{out}/part-*.parquet'))); print(df)\"")


def default_rows_per_shard(dim: int, rows: int, workers: int | None = None) -> int:
    """Rows that make a shard of about 100 MB (4 bytes a dimension, plus the id and text hash), at most 100 000;
    ``workers`` (the Ray engine): also at least 4 shards per worker, so every actor has work and the writer keeps
    pace. Recorded in the manifest: a resume keeps it whichever engine resumes."""
    size = max(256, min(MAX_ROWS_PER_SHARD, SHARD_BYTES // (4 * dim + 100)))
    if workers:
        size = min(size, max(1, -(-rows // (4 * workers))))
    return size


def embed(config: EmbedConfig) -> EmbedReport:
    """Run the job ``config`` describes (see the module docstring); an EmbedReport of what it did."""
    config.check()
    if config.engine == "ray":
        from .ray_engine import require_ray

        require_ray()  # before anything is read or written
    root, files = find_inputs(config.input)
    out = Path(config.output).expanduser()
    _refuse_output_in_input(out, root, Path(config.input).expanduser().is_file())
    source = resolve_model(config.model)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"OUT {out} exists and is not a directory; choose another OUT.")
    with OutputLock(out, holder="st-llm2vec embed job", mixes="their shards and manifest"):
        return _Job(config, root, files, source, out).run()


def _refuse_output_in_input(out: Path, root: Path, single_file: bool) -> None:
    """OUT inside an input folder (or a glob's folder) would be read as input by the next run."""
    if single_file:
        return
    try:
        inside = out.resolve().is_relative_to(root.resolve())
    except OSError:
        inside = False
    if inside:
        raise InputError(f"OUT {out} is inside the input folder {root}: its shards would be read as input next "
                         "time. Choose an OUT outside it.")


def _hook(point: str, count: int) -> None:
    """The test hook of the module docstring."""
    wanted = os.environ.get("ST_LLM2VEC_EMBED_TEST_HANG", "")
    if wanted == f"{point}:{count}":
        print(f"st-llm2vec embed: test hang after {point} shard {count}", file=sys.stderr, flush=True)
        time.sleep(3600)


class _Job:
    def __init__(self, config: EmbedConfig, root: Path, files: list[InputFile], source: ModelSource, out: Path):
        self.config, self.root, self.files, self.source, self.out = config, root, files, source, out
        self.fields = Fields(config.text_field, config.id_field)
        self.threads = choose_threads(config.threads)
        self.committed = 0

    # -- 2. what OUT holds ----------------------------------------------------------------------------

    def _previous(self) -> Manifest | None:
        try:
            previous = Manifest.load(self.out)
        except InputError:
            if not self.config.overwrite:
                raise
            previous = None
        if previous is None:
            names = [p.name for p in self.out.iterdir() if not p.name.startswith(".")]
            foreign = [n for n in names if not (shard_files.is_shard(n) or n in (MANIFEST, REJECTED))]
            if foreign or (names and not self.config.overwrite):
                listed = ", ".join((foreign or names)[:3]) + (", …" if len(foreign or names) > 3 else "")
                raise OutputExistsError(f"OUT {self.out} is not empty and holds no {MANIFEST} ({listed}): choose another "
                                        "OUT or empty it" + ("" if foreign else "; --overwrite replaces those shards")
                                        + ".")
        return previous

    def _identities(self, previous: Manifest | None) -> None:
        from ..precision import resolve

        config, same_model = self.config, previous is not None and previous.model.get("path") == str(self.source.path)
        self.model_fingerprint, self.model_files = fingerprint_files(
            model_files(self.source.path), previous.model.get("files") if same_model else None)
        self.prompt_name, self.prompt = choose_prompt(self.source.path, config.prompt_name, config.prompt)
        self.precision = resolve(config.precision)
        same_input = previous is not None and previous.input.get("root") == str(self.root.resolve())
        self.input_fingerprint, self.input_files = fingerprint_files(
            [(f.name, f.path) for f in self.files], previous.input.get("files") if same_input else None)
        self.vector_identity = VectorIdentity(self.model_fingerprint, self.prompt, config.normalize, config.dim,
                                              self.precision)
        self.input_identity = InputIdentity(self.input_fingerprint, config.text_field, config.id_field,
                                            config.rows_per_shard)

    def _mode(self, previous: Manifest | None) -> str:
        if previous is None or self.config.overwrite:
            return "fresh"
        vectors = differences(previous.vector_identity(), self.vector_identity)
        inputs = differences(previous.input_identity(), self.input_identity)
        if vectors:
            extra = " (--update keeps vectors only of the same model, prompt, normalisation, --dim and precision)"
            raise OutputExistsError(
                f"OUT {self.out} holds vectors of another job: {', '.join(vectors + inputs)} differ. Pass --overwrite "
                f"to replace them, or choose another OUT{extra if self.config.update else ''}.")
        if self.config.update and (inputs or previous.update is not None):
            return "update"
        if previous.update is not None:  # its shards no longer follow one input's blocks: only --update goes on
            raise OutputExistsError(f"an --update of OUT {self.out} was interrupted: run the command again with --update "
                                    "(and the input OUT should reflect) to finish it.")
        if not inputs:
            return "done" if previous.complete else "resume"
        raise OutputExistsError(
            f"OUT {self.out} was embedded from another input: {', '.join(inputs)} differ. Pass --update to embed only "
            "new and changed rows (and drop rows that are gone), --overwrite to embed everything again, or choose "
            "another OUT.")

    # -- the run --------------------------------------------------------------------------------------

    def run(self) -> EmbedReport:
        started = time.perf_counter()
        previous = self._previous()
        self._identities(previous)
        mode = self._mode(previous)
        if mode == "done":
            return self._report(previous, mode, 0, started)
        tmp = self.out / f".{REJECTED}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") if self.config.skip_bad else contextlib.nullcontext() as sink:
                found = scan(self.files, self.fields, skip_bad=self.config.skip_bad, rejects=Rejects(sink),
                             text_hashes=mode == "update")
            manifest, specs, counts = self._prepare(previous, mode, found)
            if found.rejected:
                os.replace(tmp, self.out / REJECTED)
            else:
                (self.out / REJECTED).unlink(missing_ok=True)
        finally:
            tmp.unlink(missing_ok=True)
        self._embed(manifest, specs)
        if manifest.update is not None:
            manifest.input, manifest.update = manifest.update, None
        manifest.complete = True
        manifest.save(self.out)
        return self._report(manifest, mode, sum(spec.rows for spec in specs), started, **counts)

    def _settings(self) -> ModelSettings:
        c = self.config
        return ModelSettings(str(self.source.path), self.prompt, self.threads, normalize=c.normalize,
                             batch_size=c.batch_size, dim=c.dim, precision=c.precision, device=c.device)

    def _prepare(self, previous: Manifest | None, mode: str, found: Any) -> tuple[Manifest, list[ShardSpec], dict]:
        """Steps 4 and the update's rewrites: the manifest on disk, leftovers gone, the shards still to compute."""
        config, counts = self.config, {}
        input_section = {"path": config.input, "root": str(self.root.resolve()), "fingerprint": self.input_fingerprint,
                         "files": self.input_files, "text_field": config.text_field, "id_field": config.id_field,
                         "rows": found.rows}
        engine = ({"name": "local", "threads": self.threads} if config.engine == "local" else
                  {"name": "ray", "workers": config.workers, "threads": self.threads,
                   "gpus_per_worker": config.gpus_per_worker, "address": config.ray_address})
        if mode == "fresh":
            self.model = load(self._settings()) if config.engine == "local" else None
            dim = self.model.get_embedding_dimension() if self.model is not None else None
            rows_per_shard = config.rows_per_shard or default_rows_per_shard(
                dim or estimated_dim(self.source.path, config.dim), found.rows,
                config.workers if config.engine == "ray" else None)
            q_name, q_text = query_prompt(self.source.path)
            manifest = Manifest(
                model={"id": config.model, "path": str(self.source.path), "revision": self.source.revision,
                       "fingerprint": self.model_fingerprint, "files": self.model_files},
                vectors={"dim": dim, "requested_dim": config.dim, "dtype": "float32", "normalize": config.normalize,
                         "prompt": {"name": self.prompt_name, "text": self.prompt},
                         "query_prompt": {"name": q_name, "text": q_text}, "precision": self.precision,
                         "precision_applied": getattr(self.model, "st_llm2vec_embed_precision", None)},
                input=input_section, rows_per_shard=rows_per_shard)
            specs = plan_shards(found, rows_per_shard)
        else:
            manifest = previous
            for entry in list(manifest.shards):
                if not shard_files.intact(self.out, entry):
                    manifest.shards.remove(entry)  # missing or damaged: computed again
            self.model = None
        manifest.engine, manifest.versions = engine, library_versions(*(["ray"] if config.engine == "ray" else []))
        manifest.rejected, manifest.complete = found.rejected, False
        if mode == "resume":
            manifest.input["rows"] = found.rows
            done = {entry["index"] for entry in manifest.shards}
            specs = [s for s in plan_shards(found, manifest.rows_per_shard) if s.index not in done]
        manifest.save(self.out)
        shard_files.clean(self.out, {entry["file"] for entry in manifest.shards})
        if mode == "update":
            manifest.rows_per_shard = config.rows_per_shard or manifest.rows_per_shard
            manifest.update = input_section
            manifest.save(self.out)
            specs, counts = apply_update(self.out, manifest, found)
        if specs and self.model is None and config.engine == "local":
            self.model = load(self._settings())
        return manifest, specs, counts

    # -- 5. the shards --------------------------------------------------------------------------------

    def _commit(self, manifest: Manifest, spec: ShardSpec, ids: list[str], hashes: list[bytes], vectors: Any) -> None:
        dim = manifest.vectors.get("dim")
        if vectors.ndim != 2 or len(vectors) != len(ids) or (dim is not None and vectors.shape[1] != dim):
            raise RuntimeError(f"shard {spec.index}: got vectors of shape {vectors.shape} for {len(ids)} rows of "
                               f"dimension {dim}")
        manifest.vectors["dim"] = int(vectors.shape[1])
        table = shard_files.make_table(ids, [h.hex() for h in hashes], vectors)
        entry = shard_files.write_shard(self.out, spec.index, table)
        self.committed += 1
        _hook("renamed", self.committed)
        manifest.add_shard({**entry, "engine": self.config.engine})
        manifest.save(self.out)
        _hook("committed", self.committed)

    def _embed(self, manifest: Manifest, specs: list[ShardSpec]) -> None:
        from tqdm.auto import tqdm

        total = sum(spec.rows for spec in specs)
        shown = self.config.progress and sys.stderr.isatty() and total > 0
        with tqdm(total=total, unit="rows", desc="embed", disable=not shown, dynamic_ncols=True) as bar:
            def commit(spec: ShardSpec, ids: list[str], hashes: list[bytes], vectors: Any) -> None:
                self._commit(manifest, spec, ids, hashes, vectors)

            if self.config.engine == "local":
                from .local import run_local

                run_local(specs, self.files, self.fields, self.model, self._settings(), commit, bar.update)
            else:
                from .ray_engine import RayOptions, run_ray

                options = RayOptions(self.config.workers, self.threads, self.config.gpus_per_worker,
                                     self.config.ray_address)
                run_ray(specs, self.files, self.fields, self._settings(), options, commit, bar.update)

    def _report(self, manifest: Manifest, mode: str, embedded: int, started: float, **counts: int) -> EmbedReport:
        return EmbedReport(self.out, manifest.rows, len(manifest.shards), manifest.vectors.get("dim"),
                           manifest.vectors["normalize"], embedded=embedded, rejected=manifest.rejected, mode=mode,
                           seconds=time.perf_counter() - started, **counts)
