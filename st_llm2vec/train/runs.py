"""One training run per ``output_dir``, resuming only its own, complete checkpoints.

Both training stages (MNTP, SimCSE / supervised) go through a :class:`TrainingRun`:

- a lock (:class:`~st_llm2vec.files.OutputLock`): ``output_dir/.st_llm2vec.lock``, held with ``fcntl.flock``
  for the whole run and recording the holder's pid and host. A second run into the same ``output_dir`` is
  refused while the first is alive; the kernel drops the lock of a dead process, so a stale lock file is
  simply taken over;
- a fingerprint: a hash of the config without its run-control keys (:data:`RUN_CONTROL_KEYS`: where
  to write, whether to resume, when to stop, logging, saving, evaluation), with the model and data
  paths replaced by their files' identity (name, size, modification time). It is written into every
  checkpoint (``st_llm2vec_checkpoint.json``, the last file of a checkpoint: a checkpoint without it
  was cut short while saving) and into ``output_dir/st_llm2vec_run.json``, which also records whether
  the run finished;
- resume: an explicit checkpoint, the latest one (``True`` / ``"latest"``) or, unless
  ``overwrite_output_dir``, automatically the latest one. Incomplete checkpoints are skipped (logged);
  a checkpoint of another fingerprint is refused with both fingerprints and the keys that differ;
  ``overwrite_output_dir`` without resume removes the old checkpoints before training starts;
- a run that already finished with this fingerprint is not trained again (:class:`RunAlreadyComplete`);
- files get the modes the umask gives (some savers create owner-only files).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import MissingFileError
from ..files import LOCK_FILE, OutputLock, RunError, normalize_permissions, read_json, timestamp, write_json_atomic

logger = logging.getLogger(__name__)

RUN_FILE = "st_llm2vec_run.json"
CHECKPOINT_MARKER = "st_llm2vec_checkpoint.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json",
                "adapter_model.bin", "pytorch_model.bin", "pytorch_model.bin.index.json")
OWN_FILES = frozenset({RUN_FILE, LOCK_FILE, CHECKPOINT_MARKER})

# Keys that say where and how a run is driven, not what it trains: left out of the fingerprint.
RUN_CONTROL_KEYS = frozenset({
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "stop_after_n_steps",
    "logging_dir", "logging_steps", "logging_strategy", "logging_first_step", "logging_nan_inf_filter",
    "log_level", "log_level_replica", "log_on_each_node", "disable_tqdm", "report_to", "run_name", "project",
    "save_steps", "save_strategy", "save_total_limit", "save_only_model", "save_safetensors", "save_on_each_node",
    "eval_steps", "eval_strategy", "eval_delay", "eval_on_start", "per_device_eval_batch_size",
    "eval_accumulation_steps", "evaluator", "eval_data_dir", "eval_max_pairs", "eval_instruction",
    "max_eval_samples", "validation_file", "dataloader_num_workers", "dataloader_pin_memory",
    "dataloader_persistent_workers", "dataloader_prefetch_factor", "use_cpu", "ddp_backend", "ddp_timeout",
    "push_to_hub", "hub_model_id", "hub_strategy", "hub_token", "hub_private_repo", "hub_always_push",
    "hub_revision", "preprocessing_num_workers", "overwrite_cache", "merge_lora", "save_mode",
    "skip_memory_metrics", "include_num_input_tokens_seen",
    # memory / speed only: the same training either way
    "gradient_checkpointing", "gradient_checkpointing_kwargs", "mini_batch_size", "torch_compile",
    "torch_compile_backend", "torch_compile_mode",
})


class RunMismatchError(RunError):
    """A checkpoint (or output directory) belongs to a run with another fingerprint."""


class RunAlreadyComplete(RunError):
    """The output directory holds a finished run of this very config: there is nothing to train."""

    def __init__(self, message: str, record: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.record = dict(record)


# --------------------------------------------------------------------------- small helpers


def is_main_process() -> bool:
    """Global rank 0 (torchrun / accelerate set RANK); the only process that writes run files."""
    return int(os.environ.get("RANK", "0") or 0) == 0


# --------------------------------------------------------------------------- fingerprint


def path_identity(value: Any) -> Any:
    """A local file or directory as (name, size, mtime) of its files; anything else (a Hub id) as it is."""
    if isinstance(value, (list, tuple)):
        return [path_identity(v) for v in value]
    if not isinstance(value, (str, os.PathLike)) or not str(value) or not os.path.exists(value):
        return value
    path = Path(value)

    def entry(p: Path) -> list[Any]:
        st = p.stat()
        return [p.name, st.st_size, st.st_mtime_ns]

    if path.is_file():
        return {"file": entry(path)}
    files = sorted(
        (p for p in path.iterdir() if p.is_file() and p.name not in OWN_FILES and not p.name.startswith(".")),
        key=lambda p: p.name,
    )
    return {"dir": path.name, "files": [entry(p) for p in files]}


def run_fingerprint(config: Mapping[str, Any], path_keys: Iterable[str] = ()) -> dict[str, Any]:
    """``{"hash": 16 hex digits, "config": what was hashed}`` for a flat config mapping."""
    path_keys = set(path_keys)
    parts: dict[str, Any] = {}
    for key in sorted(config):
        if key in RUN_CONTROL_KEYS:
            continue
        value = config[key]
        parts[key] = path_identity(value) if key in path_keys else value
    text = json.dumps(parts, sort_keys=True, default=str)
    parts = json.loads(text)
    return {"hash": hashlib.sha256(text.encode("utf-8")).hexdigest()[:16], "config": parts}


def describe_difference(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str:
    """``key (old → new), ...`` for the keys whose values differ."""
    if not old:
        return "(the other run recorded no settings)"
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if a != b:
            text_a, text_b = json.dumps(a, default=str), json.dumps(b, default=str)
            if len(text_a) > 60 or len(text_b) > 60:
                diffs.append(f"{key} (its files changed)" if isinstance(b, (dict, list)) else f"{key}")
            else:
                diffs.append(f"{key} ({text_a} → {text_b})")
    return ", ".join(diffs) if diffs else "(nothing that was recorded)"


# --------------------------------------------------------------------------- checkpoints


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of the ``checkpoint-N`` directories in ``output_dir``, newest (highest step) first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = CHECKPOINT_RE.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def _safetensors_problem(path: Path) -> str | None:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated"
            n = int.from_bytes(head, "little")
            if n <= 0 or 8 + n > size:
                return f"{path.name} is truncated"
            header = json.loads(f.read(n))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        if ends and 8 + n + max(ends) > size:
            return f"{path.name} is truncated"
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return f"{path.name} is unreadable"
    return None


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why a checkpoint without completion marker cannot be resumed (None: it looks complete)."""
    path = Path(path)
    state = read_json(path / "trainer_state.json")
    if state is None or "global_step" not in state:
        return "its trainer_state.json is missing or incomplete"
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        return "it holds no model weights"
    for weights in sorted(path.glob("*.safetensors")):
        problem = _safetensors_problem(weights)
        if problem:
            return problem
    return None


def write_checkpoint_marker(checkpoint_dir: str | os.PathLike, fingerprint: Mapping[str, Any] | None, step: int) -> None:
    """Mark ``checkpoint_dir`` complete (call after every other file of it is written)."""
    data = {"global_step": step, "saved": timestamp()}
    if fingerprint:
        data.update(fingerprint=fingerprint["hash"], config=fingerprint["config"])
    write_json_atomic(Path(checkpoint_dir) / CHECKPOINT_MARKER, data)


def remove_checkpoint_marker(checkpoint_dir: str | os.PathLike) -> None:
    """Unmark a checkpoint about to be (re)written: until the new marker lands it counts as incomplete."""
    with contextlib.suppress(OSError):
        os.unlink(Path(checkpoint_dir) / CHECKPOINT_MARKER)


def checkpoint_step(checkpoint_dir: str | os.PathLike) -> int | None:
    state = read_json(Path(checkpoint_dir) / "trainer_state.json")
    return int(state["global_step"]) if state and "global_step" in state else None


# --------------------------------------------------------------------------- the run


def _resume_mode(resume: Any, overwrite: bool) -> str:
    if resume in (None, False, ""):
        return "none" if overwrite else "auto"
    if resume is True or (isinstance(resume, str) and resume.lower() in ("true", "latest", "last", "auto")):
        return "latest"
    return "path"


class TrainingRun:
    """The run-control side of one training stage; see the module docstring.

    Use: ``run.acquire()`` (lock; before loading anything), ``run.check_finished()``,
    ``run.resolve_resume()``, ``run.start(trainer)`` right before training, ``run.finish(step, max_steps)``
    after the final save, ``run.release()`` (always).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        fingerprint: Mapping[str, Any],
        *,
        overwrite: bool = False,
        resume: Any = None,
        do_train: bool = True,
        max_steps: int | None = None,
        stop_after_n_steps: int | None = None,
        what: str = "training",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.fingerprint = dict(fingerprint)
        self.overwrite = bool(overwrite)
        self.resume = resume
        self.mode = _resume_mode(resume, self.overwrite)
        self.do_train = do_train
        self.max_steps = max_steps if max_steps and max_steps > 0 else None
        self.stop_after_n_steps = stop_after_n_steps or None
        self.what = what
        self.lock = OutputLock(output_dir)
        self.resume_path: str | None = None
        self.trainer: Any = None
        self._skipped: list[Path] = []

    # -- lock

    def acquire(self) -> TrainingRun:
        if is_main_process():
            self.lock.acquire()
        return self

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> TrainingRun:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # -- state of the output dir

    @property
    def record(self) -> dict[str, Any] | None:
        return read_json(self.output_dir / RUN_FILE)

    def _target(self, record: Mapping[str, Any]) -> int | None:
        target = self.max_steps or record.get("max_steps")
        if self.stop_after_n_steps:
            target = min(target, self.stop_after_n_steps) if target else self.stop_after_n_steps
        return int(target) if target else None

    def check_finished(self) -> None:
        """Raise :class:`RunAlreadyComplete` if ``output_dir`` holds this run, finished; :class:`RunMismatchError`
        if it holds another run and nothing says to resume or overwrite it."""
        if not self.do_train or self.mode in ("none", "path"):
            return
        record = self.record
        if not record or "fingerprint" not in record:
            return
        if record["fingerprint"] != self.fingerprint["hash"]:
            if self.mode == "auto":
                raise RunMismatchError(
                    f"output_dir {str(self.output_dir)!r} holds another {self.what} run (fingerprint "
                    f"{record['fingerprint']}, this config {self.fingerprint['hash']}); they differ in "
                    f"{describe_difference(record.get('config'), self.fingerprint['config'])}. Set "
                    "overwrite_output_dir: true to replace it (its checkpoints are removed), or choose another output_dir."
                )
            return
        target = self._target(record)
        step = record.get("global_step")
        if record.get("status") == "finished" and step is not None and target is not None and step >= target:
            raise RunAlreadyComplete(
                f"{self.what} in {str(self.output_dir)!r} is already complete (step {step} of {target}, same "
                f"config, fingerprint {self.fingerprint['hash']}): nothing to train, nothing re-saved. Set "
                "overwrite_output_dir: true to train it again.",
                {**record, "output_dir": str(self.output_dir)},
            )

    def _check_marker(self, marker: Mapping[str, Any], path: Path) -> None:
        theirs = marker.get("fingerprint")
        if theirs is not None and theirs != self.fingerprint["hash"]:
            raise RunMismatchError(
                f"Checkpoint {str(path)!r} belongs to another run (fingerprint {theirs}) than this config "
                f"(fingerprint {self.fingerprint['hash']}); they differ in "
                f"{describe_difference(marker.get('config'), self.fingerprint['config'])}. A run only resumes its "
                "own checkpoints: set overwrite_output_dir: true (without resume_from_checkpoint) to start over, "
                "or choose another output_dir."
            )

    def resolve_resume(self) -> str | None:
        """The checkpoint to resume from (None: start from scratch); see the module docstring."""
        if not self.do_train or self.mode == "none":
            return None
        if self.mode == "path":
            path = Path(str(self.resume))
            if not path.is_dir():
                raise MissingFileError(f"resume_from_checkpoint {str(path)!r} is not a directory.")
            marker = read_json(path / CHECKPOINT_MARKER)
            if marker is None:
                problem = checkpoint_problem(path)
                if problem:
                    raise RunError(f"Cannot resume from {str(path)!r}: {problem} (was the run stopped while saving it?).")
                logger.warning("%s has no st-llm2vec completion marker: cannot check that it belongs to this run.", path)
            else:
                self._check_marker(marker, path)
            self.resume_path = str(path)
            return self.resume_path
        strict = self.record is not None  # our run dir: every complete checkpoint carries a marker
        found = None
        for step, path in list_checkpoints(self.output_dir):
            marker = read_json(path / CHECKPOINT_MARKER)
            if marker is None:
                problem = "no completion marker" if strict else checkpoint_problem(path)
                if problem:
                    logger.warning("Skipping incomplete checkpoint %s (%s: the run was stopped while saving it).", path, problem)
                    self._skipped.append(path)
                    continue
                logger.warning("%s has no st-llm2vec completion marker: cannot check that it belongs to this run.", path)
            else:
                self._check_marker(marker, path)
            found = path
            break
        if found is None:
            if self.mode == "latest":
                skipped = f" (skipped incomplete: {', '.join(p.name for p in self._skipped)})" if self._skipped else ""
                raise RunError(
                    f"resume_from_checkpoint={self.resume!r} but {str(self.output_dir)!r} holds no complete "
                    f"checkpoint-N directory{skipped}."
                )
            return None
        if self._skipped:
            logger.warning("Resuming from %s, the last complete checkpoint.", found)
        elif self.mode == "auto":
            logger.warning("Checkpoint detected, resuming training at %s (set overwrite_output_dir: true to start over).", found)
        self.resume_path = str(found)
        return self.resume_path

    # -- training

    def start(self, trainer: Any = None) -> None:
        """Right before training: clear what this run replaces, record it, and hand the fingerprint to the trainer."""
        self.trainer = trainer
        if trainer is not None:
            trainer.st_llm2vec_run = self.fingerprint
        if not self.do_train or not is_main_process():
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        stale = []
        if self.resume_path is None and self.overwrite:
            stale = [path for _, path in list_checkpoints(self.output_dir)]
        elif self.record is not None:  # our run dir: unmarked checkpoints are leftovers of a killed save
            stale = [p for p in self._skipped if p.is_dir()]
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        if stale:
            logger.warning("Removed %d checkpoint(s) this run replaces: %s", len(stale), ", ".join(p.name for p in stale))
        write_json_atomic(self.output_dir / RUN_FILE, {
            "fingerprint": self.fingerprint["hash"], "config": self.fingerprint["config"], "status": "running",
            "started": timestamp(), "resumed_from": self.resume_path, "pid": os.getpid(), "host": socket.gethostname(),
        })

    def finish(self, global_step: int, max_steps: int | None = None) -> None:
        """After the final save: record the run as finished and give its files the umask's modes."""
        if not self.do_train or not is_main_process():
            return
        record = self.record or {"fingerprint": self.fingerprint["hash"], "config": self.fingerprint["config"]}
        record.update(status="finished", finished=timestamp(), global_step=int(global_step),
                      max_steps=int(max_steps) if max_steps else None)
        write_json_atomic(self.output_dir / RUN_FILE, record)
        normalize_permissions(self.output_dir)
