"""st_llm2vec/files.py: a write goes through a temp dir beside its target; the next writer removes the temp dirs of
killed processes and keeps those of live ones."""

from __future__ import annotations

import os
import subprocess
import sys


def test_a_killed_converts_temp_dir_is_cleaned_by_the_next_one(tmp_path):
    from st_llm2vec import files

    output = tmp_path / "model"
    ctx = files.atomic_dir(output, False)  # a convert that gets SIGKILLed: no cleanup runs
    tmp = ctx.__enter__()
    (tmp / "weights").write_text("x")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has exited
    assert f"-{os.getpid()}." in tmp.name and tmp.name.startswith(".model.") and tmp.name.endswith(".partial")
    tmp.rename(tmp.with_name(tmp.name.replace(f"-{os.getpid()}.", f"-{dead_pid}.")))
    live = tmp_path / tmp.name  # a convert of this (live) process at work: kept
    live.mkdir()
    other = tmp_path / ".model.abc123.partial"  # no pid in the name: not ours to judge, kept
    other.mkdir()
    with files.atomic_dir(output, False) as new:
        (new / "weights").write_text("y")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".model.abc123.partial", "model", live.name])


def test_a_killed_saves_temp_dir_is_removed_by_the_next_save_and_a_live_ones_is_kept(tmp_path):
    """save_portable builds in ``files.temp_dir_beside``: a SIGKILLed save's leftover does not stay forever."""
    from st_llm2vec.files import temp_dir_beside, temp_tag

    target = tmp_path / "model"
    dead = tmp_path / f".model.{temp_tag().rsplit('-', 1)[0]}-999999999.x.partial"
    live = tmp_path / f".model.{temp_tag()}.y.partial"  # this process: alive
    dead.mkdir(), live.mkdir()
    fresh = temp_dir_beside(target)
    assert not dead.exists() and live.is_dir() and fresh.name.startswith(f".model.{temp_tag()}.")
