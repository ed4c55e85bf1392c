"""st_llm2vec/recipe/training_run.py, run_record.py: one training run per output_dir, only a run's own complete checkpoints are resumed, a
finished run is not trained again, and outputs get the umask's file modes.

Tiny random models; runs are cut short ("interrupted") to skip the final save."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from st_llm2vec.recipe.stage_contrastive import train_simcse
from st_llm2vec.recipe.stage_mntp import train_mntp
from st_llm2vec.files import OutputDirLockedError, OutputLock
from st_llm2vec.recipe.run_record import CHECKPOINT_MARKER, RUN_FILE
from st_llm2vec.recipe.training_run import RunMismatchError
from conftest import RUN_SENTENCES as SENTENCES
from conftest import mntp_config, simcse_config


class Interrupted(BaseException):
    """Stands in for SIGKILL / Ctrl-C: nothing after it runs (no final save)."""


def interrupt(monkeypatch, *, after_step: int | None = None, while_saving_step: int | None = None) -> None:
    """Stop training right after the checkpoint of ``after_step``, or in the middle of writing the checkpoint
    of ``while_saving_step`` (after the weights and optimizer, before the RNG and trainer state)."""
    from st_llm2vec.recipe.trainer import LLM2VecTrainer

    cls = LLM2VecTrainer
    if after_step is not None:
        original = cls._maybe_log_save_evaluate

        def stop_after(self, *args, **kwargs):
            original(self, *args, **kwargs)
            if self.state.global_step == after_step:
                raise Interrupted(f"after step {after_step}")

        monkeypatch.setattr(cls, "_maybe_log_save_evaluate", stop_after)
    if while_saving_step is not None:
        original_rng = cls._save_rng_state

        def die_while_saving(self, output_dir):
            if self.state.global_step == while_saving_step:
                raise Interrupted(f"killed while saving step {while_saving_step}")
            return original_rng(self, output_dir)

        monkeypatch.setattr(cls, "_save_rng_state", die_while_saving)


def losses(state_file: Path) -> list[tuple[int, float]]:
    log = json.loads(state_file.read_text())["log_history"]
    return [(entry["step"], entry["loss"]) for entry in log if "loss" in entry]


# --------------------------------------------------------------------------- one run per output_dir


def test_a_second_run_into_a_locked_output_dir_is_refused_in_both_stages(tiny_llm, tmp_path, corpus):
    out = tmp_path / "out"
    with OutputLock(out):  # another live run holds it
        with pytest.raises(OutputDirLockedError, match=rf"in use by another training run \(pid {os.getpid()} on host"):
            train_mntp(mntp_config(tiny_llm(), out))
        with pytest.raises(OutputDirLockedError, match="in use by another training run"):
            train_simcse(simcse_config(tiny_llm(), out, corpus))
    assert not out.exists()  # the lock was ours; released, nothing left


def test_the_lock_is_held_across_processes_and_a_dead_holders_lock_is_taken_over(tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, json, os, socket, sys, time\n"
         f"fd = os.open({str(out / '.st_llm2vec.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "os.write(fd, json.dumps({'pid': os.getpid(), 'host': socket.gethostname()}).encode())\n"
         "print('locked', flush=True)\n"
         "time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputDirLockedError, match=f"pid {holder.pid} on host {socket.gethostname()}"):
            OutputLock(out).acquire()
    finally:
        holder.kill()  # SIGKILL: the lock file stays behind, the kernel drops the lock
        holder.wait()
    assert (out / ".st_llm2vec.lock").exists()
    with caplog.at_level(logging.WARNING, logger="st_llm2vec.files"):
        lock = OutputLock(out).acquire()
    assert "Taking over the stale lock" in caplog.text and str(holder.pid) in caplog.text
    lock.release()
    assert not (out / ".st_llm2vec.lock").exists()


# --------------------------------------------------------------------------- only a run's own checkpoints


def test_overwrite_clears_an_old_runs_checkpoints_and_resume_takes_the_new_runs_own(tiny_llm, tmp_path, monkeypatch):
    out = tmp_path / "out"
    with monkeypatch.context() as m:  # run A: checkpoints 2 and 4
        interrupt(m, after_step=4)
        with pytest.raises(Interrupted):
            train_mntp(mntp_config(tiny_llm(), out))
    assert (out / "checkpoint-4").is_dir()
    new = dict(learning_rate=5e-3, overwrite_output_dir=True)
    with monkeypatch.context() as m:  # run B (new settings, overwrite): interrupted after its checkpoint-2
        interrupt(m, after_step=2)
        with pytest.raises(Interrupted):
            train_mntp(mntp_config(tiny_llm(), out, **new))
    assert not (out / "checkpoint-4").exists()  # A's checkpoints went when B started
    with monkeypatch.context() as m:  # B resumed: continues from its own checkpoint-2
        interrupt(m, after_step=4)
        with pytest.raises(Interrupted):
            train_mntp(mntp_config(tiny_llm(), out, resume_from_checkpoint=True, **new))
    assert json.loads((out / RUN_FILE).read_text())["resumed_from"] == str(out / "checkpoint-2")
    history = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4]
    assert history[0]["learning_rate"] == pytest.approx(5e-3)  # B's schedule throughout


def test_resuming_another_runs_checkpoint_is_refused_with_both_fingerprints(tiny_llm, tmp_path, monkeypatch, corpus):
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        interrupt(m, after_step=2)
        with pytest.raises(Interrupted):
            train_mntp(mntp_config(tiny_llm(), out))
    # automatic resume of a changed config (before: resumed the old run's state under the new settings)
    with pytest.raises(RunMismatchError, match=r"fingerprint [0-9a-f]{16}.*learning_rate \(0\.01 → 0\.02\)"):
        train_mntp(mntp_config(tiny_llm(), out, learning_rate=2e-2))
    # explicit resume with another lora_r (before: a size-mismatch RuntimeError after loading the model)
    with pytest.raises(RunMismatchError, match=r"checkpoint-2.*another run \(fingerprint [0-9a-f]{16}\).*lora_r \(4 → 8\)"):
        train_mntp(mntp_config(tiny_llm(), out, lora_r=8, resume_from_checkpoint=str(out / "checkpoint-2")))
    # the same for a contrastive stage
    simcse_out = tmp_path / "simcse"
    with monkeypatch.context() as m:
        interrupt(m, after_step=2)
        with pytest.raises(Interrupted):
            train_simcse(simcse_config(tiny_llm(), simcse_out, corpus))
    assert (simcse_out / "checkpoint-2" / CHECKPOINT_MARKER).is_file()
    with pytest.raises(RunMismatchError, match=r"lora_r \(4 → 8\)"):
        train_simcse(simcse_config(tiny_llm(), simcse_out, corpus, lora_r=8, resume_from_checkpoint=True))


# --------------------------------------------------------------------------- half-written checkpoints


def test_a_checkpoint_cut_short_while_saving_is_skipped(tiny_llm, tmp_path, monkeypatch, caplog):
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    with monkeypatch.context() as m:
        interrupt(m, after_step=4)
        with pytest.raises(Interrupted):
            train_mntp(mntp_config(tiny_llm(), straight, max_steps=6))
    with monkeypatch.context() as m:
        interrupt(m, while_saving_step=4)
        with pytest.raises(Interrupted, match="killed while saving"):
            train_mntp(mntp_config(tiny_llm(), cut, max_steps=6))
    assert (cut / "checkpoint-4").is_dir() and not (cut / "checkpoint-4" / CHECKPOINT_MARKER).exists()
    with monkeypatch.context() as m, caplog.at_level(logging.WARNING):
        interrupt(m, after_step=4)
        with pytest.raises(Interrupted):
            train_mntp(mntp_config(tiny_llm(), cut, max_steps=6))
    assert "Skipping incomplete checkpoint" in caplog.text and "checkpoint-4" in caplog.text
    assert json.loads((cut / RUN_FILE).read_text())["resumed_from"] == str(cut / "checkpoint-2")
    resumed, reference = losses(cut / "checkpoint-4" / "trainer_state.json"), losses(straight / "checkpoint-4" / "trainer_state.json")
    assert [s for s, _ in resumed] == [1, 2, 3, 4]
    assert [v for _, v in resumed] == pytest.approx([v for _, v in reference], rel=1e-5)


# --------------------------------------------------------------------------- a finished run is finished


def test_a_finished_run_is_not_trained_further_and_outputs_follow_the_umask(tiny_llm, tmp_path, monkeypatch):
    out = tmp_path / "out"
    old_umask = os.umask(0o022)
    try:
        with monkeypatch.context() as m:  # stopped after the last checkpoint, before the final save
            interrupt(m, after_step=2)
            with pytest.raises(Interrupted):
                train_mntp(mntp_config(tiny_llm(), out, max_steps=2))
        first = train_mntp(mntp_config(tiny_llm(), out, max_steps=2))  # resumes at the end: saves, trains nothing
    finally:
        os.umask(old_umask)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]  # before: checkpoint-3 too
    assert not first.already_complete
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
    assert json.loads((out / RUN_FILE).read_text())["status"] == "finished"
    modes = {str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in out.rglob("*")}
    assert {k: v for k, v in modes.items() if v not in (0o644, 0o755)} == {}
    assert modes["checkpoint-2/adapter_model.safetensors"] == 0o644  # before: 0600

    files = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.rglob("*") if p.is_file()}
    again = train_mntp(mntp_config(tiny_llm(), out, max_steps=2))
    assert again.already_complete and again.metrics == first.metrics
    assert {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.rglob("*") if p.is_file()} == files


@pytest.mark.slow
def test_a_finished_simcse_run_is_not_trained_further(tiny_llm, tmp_path, monkeypatch, corpus):
    out = tmp_path / "simcse"
    with monkeypatch.context() as m:
        interrupt(m, after_step=2)
        with pytest.raises(Interrupted):
            train_simcse(simcse_config(tiny_llm(), out, corpus, max_steps=2))
    first = train_simcse(simcse_config(tiny_llm(), out, corpus, max_steps=2))
    assert first.global_step == 2 and not first.already_complete
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    again = train_simcse(simcse_config(tiny_llm(), out, corpus, max_steps=2))
    assert again.already_complete and again.global_step == 2 and again.loss_after == first.loss_after
    assert abs(again.model.encode(SENTENCES[:2]) - first.model.encode(SENTENCES[:2])).max() < 1e-5
