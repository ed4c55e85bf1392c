"""One training run per ``output_dir``, resuming only its own, complete checkpoints.

Both training stages (MNTP, SimCSE / supervised) go through a :class:`TrainingRun`:

- a lock (:class:`~st_llm2vec.files.OutputLock`): ``output_dir/.st_llm2vec.lock``, held with ``fcntl.flock``
  for the whole run and recording the holder's pid and host. A second run into the same ``output_dir`` is
  refused while the first is alive; the kernel drops the lock of a dead process, so a stale lock file is
  simply taken over;
- a fingerprint (:mod:`.run_record`): a hash of the config without its run-control keys (where to write,
  whether to resume, when to stop, logging, saving, evaluation), with the model and data
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

import logging
import os
import shutil
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import MissingFileError
from ..files import OutputLock, RunError, normalize_permissions, read_json, timestamp, write_json_atomic
from .run_record import (
    CHECKPOINT_MARKER,
    RUN_FILE,
    checkpoint_problem,
    describe_difference,
    list_checkpoints,
)

logger = logging.getLogger(__name__)

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
