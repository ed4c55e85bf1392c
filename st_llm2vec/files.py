"""Writing files so that nothing half-written is ever seen and no two runs mix: atomic JSON, temp dirs beside
their target that become it in one rename, the leftovers of killed processes, the modes the umask gives, and
the lock that keeps one run per output dir.

Everything st_llm2vec writes goes through these (model dirs, conversions, exports, run records, checkpoints,
evaluation results).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import InputError, OutputExistsError

logger = logging.getLogger(__name__)

# The lock file of a run's output dir (:class:`OutputLock`) keeps the modes its holder gave it.
LOCK_FILE = ".st_llm2vec.lock"


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def normalize_permissions(root: str | os.PathLike, recursive: bool = True) -> None:
    """Give ``root`` and (``recursive``) everything under it the modes the umask gives new files.

    safetensors and ``tempfile`` create owner-only (0600 / 0700) files; this makes a training output
    readable like any other file the user writes. Entries we may not chmod are left alone.
    """
    mask = current_umask()
    root = Path(root)
    paths = [root] + (list(root.rglob("*")) if recursive and root.is_dir() else [])
    for path in paths:
        if path.is_symlink() or path.name == LOCK_FILE:
            continue
        try:
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
        except OSError:
            pass


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON to ``path`` via a temp file and a rename (readers see the old or the new file, never half)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: str | os.PathLike) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None if it is missing or not a complete JSON object."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def jsonl_rows(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSON Lines file; an :class:`InputError` naming the file
    and line of the first line that is not a JSON object."""
    with open(path, encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise InputError(f"{path}:{lineno}: not a JSON object ({getattr(exc, 'msg', exc)}): "
                                 f"{line.strip()[:120]!r}") from exc
            if not isinstance(row, dict):
                raise InputError(f"{path}:{lineno}: expected a JSON object, got {line.strip()[:120]!r}")
            yield lineno, row


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, ValueError, OverflowError):
        return False
    return True


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())


def temp_tag() -> str:
    """This host and pid, in the names of temp dirs, so that a later run can tell a dead one's leftovers."""
    return f"st-{_host_tag()}-{os.getpid()}"


def clean_stale_temp_dirs(output: Path) -> None:
    """Remove ``.OUTPUT.st-HOST-PID.*.partial`` dirs of dead processes on this host; restore a stale ``.old``
    (a save killed between moving the old OUTPUT aside and moving the new one in) if OUTPUT is missing,
    else remove it. Dirs of live processes, of other hosts, and without a pid tag are left alone."""
    pattern = re.compile(rf"^\.{re.escape(output.name)}\.st-{re.escape(_host_tag())}-(\d+)\.[^/]+\.(partial|old)$")
    try:
        entries = list(output.parent.iterdir())
    except OSError:
        return
    for entry in sorted(entries, key=lambda p: p.name):
        match = pattern.match(entry.name)
        if not match or not entry.is_dir() or pid_alive(int(match.group(1))):
            continue
        if match.group(2) == "old" and not output.exists():
            os.rename(entry, output)
            logger.warning("Restored %s from %s, left by an interrupted save.", output, entry.name)
            continue
        shutil.rmtree(entry, ignore_errors=True)
        logger.warning("Removed %s, left by an interrupted save (pid %s).", entry, match.group(1))


def temp_dir_beside(output: Path, suffix: str = ".partial") -> Path:
    """A new hidden temp dir next to ``output`` (``.OUTPUT.st-HOST-PID.XXXX.partial``), after removing the ones
    dead processes left there (a SIGKILL runs no cleanup): everything we write atomically is built in one."""
    output.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temp_dirs(output)
    return Path(tempfile.mkdtemp(prefix=f".{output.name}.{temp_tag()}.", suffix=suffix, dir=output.parent))


def check_output(output: Path, overwrite: bool) -> None:
    """``output`` may be written: absent, or ``overwrite`` and a directory."""
    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output} already exists; pass --overwrite (overwrite=True) to replace it, or choose another OUTPUT.")
    if output.exists() and not output.is_dir():
        raise OutputExistsError(f"{output} exists and is not a directory; remove it or choose another OUTPUT.")


@contextlib.contextmanager
def atomic_dir(output: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temp dir next to ``output``; on success it becomes ``output``, on any failure it vanishes.

    The temp dir's name carries this host and pid (``.OUTPUT.st-HOST-PID.XXXX.partial``), so the leftovers
    of a convert that was killed (SIGKILL: no cleanup ran) are removed by the next one.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(output, ".partial")
    try:
        yield tmp
        publish(tmp, output, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish(tmp: Path, output: Path, overwrite: bool) -> None:
    """Rename ``tmp`` to ``output``; an existing ``output`` is moved aside first and deleted only after."""
    if not output.exists():
        os.rename(tmp, output)
        return
    if not overwrite:
        raise OutputExistsError(f"{output} appeared while converting; pass --overwrite to replace it.")
    old = Path(tempfile.mkdtemp(prefix=f".{output.name}.{temp_tag()}.", suffix=".old", dir=output.parent))
    os.rmdir(old)
    os.rename(output, old)
    try:
        os.rename(tmp, output)
    except BaseException:
        os.rename(old, output)
        raise
    shutil.rmtree(old, ignore_errors=True)


def move_into(source: Path, target: Path, stale: tuple[str, ...] = ()) -> None:
    """Move every entry of ``source`` into ``target`` (replacing same-named ones), after removing ``stale`` entries."""
    target.mkdir(parents=True, exist_ok=True)
    for name in stale:
        old = target / name
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        elif old.exists() or old.is_symlink():
            old.unlink()
    for entry in source.iterdir():
        destination = target / entry.name
        if destination.is_dir() and not destination.is_symlink():
            shutil.rmtree(destination)
        elif destination.exists() or destination.is_symlink():
            destination.unlink()
        os.replace(entry, destination)


class RunError(InputError):
    """A run (training, evaluation) that cannot go ahead as configured; the message says why and what to do."""


class OutputDirLockedError(RunError):
    """Another live run holds the output directory."""


def timestamp() -> str:
    """Now, local time with its offset, to the second (ISO 8601): what run records and locks write."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


# --------------------------------------------------------------------------- the lock


class OutputLock:
    """An exclusive ``flock`` on ``output_dir/.st_llm2vec.lock`` (creates ``output_dir``).

    ``release`` removes the lock file, and ``output_dir`` itself if this lock created it and it is
    still empty. Where ``fcntl`` is missing (Windows) no lock is taken. ``holder`` names what holds it and
    ``mixes`` what two of them would mix, for the refusal's message (training runs; ``st-llm2vec eval``).
    """

    def __init__(self, output_dir: str | os.PathLike, holder: str = "training run",
                 mixes: str = "their checkpoints and saved models") -> None:
        self.holder, self.mixes = holder, mixes
        self.dir = Path(output_dir)
        self.path = self.dir / LOCK_FILE
        self._fd: int | None = None
        self._created_dir = False

    def acquire(self) -> OutputLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            logger.warning("No fcntl on this platform: %s is not locked against a second run.", self.dir)
            return self
        if self.dir.exists() and not self.dir.is_dir():
            raise RunError(f"output_dir {str(self.dir)!r} exists and is not a directory; remove it or choose another output_dir.")
        if not self.dir.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            self._created_dir = True
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_fd(fd)
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    raise
                self._cleanup_dir()
                raise OutputDirLockedError(
                    f"output_dir {str(self.dir)!r} is in use by another {self.holder} ({_describe_holder(holder)}). "
                    f"Two of them in one output_dir would mix {self.mixes}: wait for that one "
                    "to finish, or choose another output_dir."
                ) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file while we waited for it: lock the new one
        else:  # pragma: no cover - only under constant contention
            raise OutputDirLockedError(f"Could not lock {self.path}: it keeps being replaced by another run.")
        previous = _read_fd(fd)
        if previous.get("pid"):
            same_host = previous.get("host") == socket.gethostname()
            if not same_host or not pid_alive(int(previous["pid"])):
                logger.warning("Taking over the stale lock of %s (%s): that run is no longer running.",
                               self.dir, _describe_holder(previous))
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": timestamp(), "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                os.unlink(self.path)
        except OSError:
            pass
        os.close(fd)
        self._cleanup_dir()

    def _cleanup_dir(self) -> None:
        if self._created_dir:
            with contextlib.suppress(OSError):
                self.dir.rmdir()  # only if empty: a run that failed before writing anything leaves no trace
            self._created_dir = False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_fd(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 65536, 0).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe_holder(holder: Mapping[str, Any]) -> str:
    if not holder.get("pid"):
        return "another process"
    text = f"pid {holder['pid']} on host {holder.get('host', '?')}"
    if holder.get("started"):
        text += f", started {holder['started']}"
    if holder.get("command"):
        text += f": {holder['command']}"
    return text
