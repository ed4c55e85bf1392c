"""``--engine ray``: the same shard plan on Ray Data, for when one process is not enough.

The pending shards become a Ray dataset through a datasource with one read task per shard (each reads its
block from its restart point, as the local engine does: INPUT must be at the same path on every node); the
dataset is embedded with ``map_batches`` of a callable class on ``ray.data.ActorPoolStrategy(size=workers)``,
``num_gpus=gpus_per_worker``: each actor loads the model once and embeds whole shards with the local engine's
``embed_texts`` (so the same batches, hence the same vectors). The results stream back to this process, which
writes every shard and the manifest with the same writer as the local engine: OUT only needs to be writable
here.

No address: a local Ray is started with as many CPUs as the local engine would use threads, each actor taking
``threads // workers`` of them (so both engines use the same cores); it is shut down at the end. With
``--ray-address`` (or inside a running Ray), the job joins that cluster and leaves it running. Ray stays quiet:
no dashboard, no worker logs forwarded, no Ray Data progress bars (the job draws its own).
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError, MissingExtraError, UserError
from .encoding import ModelSettings, embed_texts, load
from .inputs import Fields, InputFile
from .local import Commit
from .plan import ShardSpec, read_shard

INSTALL = 'pip install -e ".[ray]"  (or: pip install "ray[data]>=2.51" pyarrow)'


def require_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(f"--engine ray needs Ray Data, which is not installed: {INSTALL}") from exc
    return ray


@dataclass(frozen=True)
class RayOptions:
    workers: int = 1
    threads: int = 1  # in all: each worker gets threads // workers
    gpus_per_worker: float = 0.0
    address: str | None = None

    @property
    def threads_per_worker(self) -> int:
        return max(1, self.threads // self.workers)


def _read_task(files: list[InputFile], fields: Fields, spec: ShardSpec) -> list[Any]:
    import pyarrow as pa

    rows = read_shard(files, fields, spec)
    return [pa.table({"shard": pa.array([spec.index] * spec.rows, type=pa.int64()),
                      "pos": pa.array(range(spec.rows), type=pa.int64()),
                      "id": pa.array(rows.ids, type=pa.string()), "text": pa.array(rows.texts, type=pa.string())})]


def _datasource(files: list[InputFile], fields: Fields, specs: list[ShardSpec]) -> Any:
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class ShardSource(Datasource):
        """One read task per pending shard: a block is a shard."""

        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list[ReadTask]:
            return [ReadTask(functools.partial(_read_task, files, fields, spec),
                             BlockMetadata(num_rows=spec.rows, size_bytes=None, exec_stats=None, input_files=None))
                    for spec in specs]

    return ShardSource()


class ShardEmbedder:
    """The Ray actor: loads the model once, then embeds each batch (one shard, or several grouped by shard)."""

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self.model = load(settings)

    def __call__(self, batch: Any) -> dict[str, np.ndarray]:
        from .plan import text_hash

        shards = batch.column("shard").to_numpy()
        ids = batch.column("id").to_pylist()
        texts = batch.column("text").to_pylist()
        hashes = [text_hash(t) for t in texts]
        vectors = [None] * len(texts)
        for index in dict.fromkeys(shards.tolist()):  # each shard embedded by itself: the local engine's batches
            rows = np.flatnonzero(shards == index)
            part = embed_texts(self.model, [texts[i] for i in rows], self.settings, [hashes[i] for i in rows])
            for i, vector in zip(rows, part):
                vectors[i] = vector
        return {"shard": shards, "pos": batch.column("pos").to_numpy(), "id": np.array(ids, dtype=object),
                "text_hash": np.array(hashes, dtype=object),
                "embedding": np.stack(vectors).astype(np.float32, copy=False)}


def _quiet_ray_data(ray: Any) -> None:
    context = ray.data.DataContext.get_current()
    for name in ("enable_progress_bars", "enable_operator_progress_bars", "print_on_execution_start",
                 "enable_auto_log_stats", "verbose_stats_logs"):
        if hasattr(context, name):
            setattr(context, name, False)
    for name in ("ray", "ray.data", "ray._private", "ray.util"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _connect(ray: Any, options: RayOptions) -> bool:
    """Join ``options.address`` or a Ray already initialised, else start a local one; True when we started it."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # Ray 2.5x's FutureWarning about it
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    if options.address:
        ray.init(address=options.address, **kwargs)
    else:
        ray.init(num_cpus=options.threads_per_worker * options.workers, **kwargs)
    return True


def _user_error(exc: BaseException) -> UserError | None:
    """The UserError inside a Ray task error (a bad read, a model that cannot load), to report as one line."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, UserError):
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return None


def run_ray(specs: list[ShardSpec], files: list[InputFile], fields: Fields, settings: ModelSettings,
            options: RayOptions, commit: Commit, advance: Callable[[int], None]) -> None:
    """Embed ``specs`` on Ray Data; each shard is committed here as soon as all its rows are back."""
    ray = require_ray()
    if not specs:
        return
    started = _connect(ray, options)
    _quiet_ray_data(ray)
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        if started and options.gpus_per_worker * options.workers > gpus:  # the actors would wait forever
            raise InputError(f"--workers {options.workers} × --gpus-per-worker {options.gpus_per_worker:g} needs "
                             f"{options.gpus_per_worker * options.workers:g} GPUs; this machine has {gpus:g}.")
        settings = ModelSettings(**{**settings.__dict__, "threads": options.threads_per_worker})
        # One block per shard: with fewer read tasks than Ray Data's default parallelism it splits each block
        # (250 rows came to the actors as 10-row pieces: 1.8x slower, no shard done before the end, and batches
        # other than the local engine's). override_num_blocks = the read tasks turns that split off.
        dataset = ray.data.read_datasource(_datasource(files, fields, specs), num_cpus=0,
                                           override_num_blocks=len(specs))
        with warnings.catch_warnings():
            # No actor restarts: a failed job is resumed by running it again, and Ray's default (restart forever,
            # retry forever) would loop on a shard that kills its actor each time. ``max_restarts=0`` is how Ray
            # Data's own code says to turn them off; 2.60 warns that such extra remote args are deprecated in favour
            # of named parameters, which do not include max_restarts (yet).
            warnings.filterwarnings("ignore", message=r".*ray_remote_args.*deprecated")
            dataset = dataset.map_batches(
                ShardEmbedder, fn_constructor_args=(settings,), batch_size=None, batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=options.workers), num_cpus=options.threads_per_worker,
                num_gpus=options.gpus_per_worker or None, max_restarts=0)
        by_index = {spec.index: spec for spec in specs}
        parts: dict[int, list[dict[str, np.ndarray]]] = {}
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                for index in dict.fromkeys(batch["shard"].tolist()):
                    rows = batch["shard"] == index
                    parts.setdefault(index, []).append({k: v[rows] for k, v in batch.items()})
                    if sum(len(p["shard"]) for p in parts[index]) == by_index[index].rows:
                        done = parts.pop(index)
                        order = np.argsort(np.concatenate([p["pos"] for p in done]), kind="stable")
                        done = [{k: np.concatenate([p[k] for p in done])[order] for k in done[0]}]
                        ids = [i for p in done for i in p["id"].tolist()]
                        hashes = [h for p in done for h in p["text_hash"].tolist()]
                        commit(by_index[index], ids, hashes, np.concatenate([p["embedding"] for p in done]))
                        advance(by_index[index].rows)
        except Exception as exc:
            error = _user_error(exc)
            if error is not None:
                raise error from None
            raise
    finally:
        if started:
            ray.shutdown()
