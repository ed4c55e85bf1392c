"""How a command runs on this machine: how many torch threads to use and whether the CPU computes bf16 natively
(what a command's console shows is :mod:`st_llm2vec.console`).

Every command that runs a model reads these (the quick start, ``st-llm2vec eval``, training's bf16 autocast,
the precision plan's "auto"), so that they all decide the same way on the same machine.
"""

from __future__ import annotations

import os

from .errors import InputError


def parse_threads(requested: int | str | None) -> int | None:
    """``requested`` as a thread count (None for "auto" / None); anything else than a positive whole number is an
    :class:`~st_llm2vec.errors.InputError` in one line (``--threads abc`` is the user's typo, not a bug)."""
    if requested in (None, "auto"):
        return None
    if isinstance(requested, bool):
        threads = None
    elif isinstance(requested, int):
        threads = requested
    else:
        text = str(requested).strip()
        threads = int(text) if text.isdigit() else None
    if threads is None or threads < 1:
        raise InputError(f"--threads must be a positive whole number or 'auto', got {requested!r}")
    return threads


def choose_threads(requested: int | str | None = "auto", *, own_load: float = 0.0) -> int:
    """Torch intra-op threads: ``requested``, or for "auto" the cores not already busy (at least 1).

    With OpenMP's default busy-waiting, two threads on two cores that other processes also use can run
    several times slower than one thread; "auto" reads the 1-minute load average to avoid that
    (``own_load``: the part of it this process caused, e.g. its threads when asked mid-run).
    Results can differ in the last float bits between thread counts; pass a number to pin it.
    """
    cores = os.cpu_count() or 1
    if requested not in (None, "auto"):
        threads = parse_threads(requested)
        assert threads is not None
        return threads
    try:
        load = max(0.0, os.getloadavg()[0] - own_load)
    except (AttributeError, OSError):
        return cores
    return max(1, min(cores, cores - int(round(load))))


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX): bf16 then runs faster than float32
    (training autocast, the bf16-mixed precision plan); elsewhere bf16 is emulated and slower, so "auto" stays float32.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_bf16(requested: bool | str | None = "auto") -> bool:
    """bf16 autocast for training: True/False as given ("on" / "off" and the like too), "auto" → :func:`cpu_has_bf16`."""
    if requested in (None, "auto"):
        return cpu_has_bf16()
    if isinstance(requested, str):
        return requested.lower() in ("1", "true", "yes", "on")
    return bool(requested)
