"""Training reliability: one run per output_dir, only a run's own complete checkpoints are resumed, a
finished run is not trained again, bad input is refused up front with a clear message, and outputs get
the umask's file modes. Tiny random models; runs are cut short ("interrupted") to skip the final save."""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from st_llm2vec.train.config import ConfigError
from st_llm2vec.train.stage_contrastive import train_simcse
from st_llm2vec.train.stage_mntp import train_mntp
from st_llm2vec.train.runs import (
    CHECKPOINT_MARKER,
    RUN_FILE,
    OutputDirLockedError,
    OutputLock,
    RunMismatchError,
)

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "training" / "mntp" / "tiny_corpus.txt"
SENTENCES = [
    "A man is playing a guitar on the street.", "Two dogs are running through a field of grass.",
    "The children are building a sand castle at the beach.", "A woman is slicing tomatoes in the kitchen.",
    "Nobody is riding the bicycle down the hill.", "The cat sleeps on a warm windowsill in the afternoon.",
    "A chef is tasting the soup.", "The train to the city was late this morning.",
]


class Interrupted(BaseException):
    """Stands in for SIGKILL / Ctrl-C: nothing after it runs (no final save)."""


def interrupt(monkeypatch, *, after_step: int | None = None, while_saving_step: int | None = None) -> None:
    """Stop training right after the checkpoint of ``after_step``, or in the middle of writing the checkpoint
    of ``while_saving_step`` (after the weights and optimizer, before the RNG and trainer state)."""
    from st_llm2vec.train.trainer import LLM2VecTrainer

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


def mntp_config(model: Path, out: Path, **overrides) -> dict:
    config = dict(
        model_name_or_path=str(model), train_file=str(CORPUS), max_seq_length=32, per_device_train_batch_size=4,
        learning_rate=1e-2, lora_r=4, max_steps=4, logging_steps=1, save_strategy="steps", save_steps=2,
        use_cpu=True, disable_tqdm=True, seed=7, output_dir=str(out), overwrite_output_dir=False,
    )
    config.update(overrides)
    return config


def simcse_config(model: Path, out: Path, corpus: Path, **overrides) -> dict:
    config = dict(
        model_name_or_path=str(model), output_dir=str(out), use_cpu=True, disable_tqdm=True, lora_r=4,
        max_seq_length=32, evaluator="none", logging_steps=1, seed=7, dataset_name="Wiki1M",
        dataset_file_path=str(corpus), per_device_train_batch_size=4, learning_rate=1e-3, max_steps=4,
        save_strategy="steps", save_steps=2,
    )
    config.update(overrides)
    return config


def losses(state_file: Path) -> list[tuple[int, float]]:
    log = json.loads(state_file.read_text())["log_history"]
    return [(entry["step"], entry["loss"]) for entry in log if "loss" in entry]


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "wiki.txt"
    path.write_text("\n".join(SENTENCES * 2) + "\n")
    return path


# --------------------------------------------------------------------------- 1. one run per output_dir


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
    with caplog.at_level(logging.WARNING, logger="st_llm2vec.train.runs"):
        lock = OutputLock(out).acquire()
    assert "Taking over the stale lock" in caplog.text and str(holder.pid) in caplog.text
    lock.release()
    assert not (out / ".st_llm2vec.lock").exists()


# --------------------------------------------------------------------------- 2. only a run's own checkpoints


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


# --------------------------------------------------------------------------- 3. half-written checkpoints


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


# --------------------------------------------------------------------------- 4. a finished run is finished


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


# --------------------------------------------------------------------------- 9, 10, 13. data that cannot train


def test_simcse_refuses_batches_it_cannot_learn_from_before_loading_the_model(tmp_path):
    repeated = tmp_path / "repeated.txt"
    repeated.write_text("\n".join(SENTENCES[:3] * 4) + "\n")  # 12 lines, 3 distinct sentences
    missing_model = tmp_path / "no-model-here"  # loading it would fail with another error
    with pytest.raises(ValueError, match="3 distinct sentences .12 rows., fewer than one batch of 4"):
        train_simcse(simcse_config(missing_model, tmp_path / "a", repeated))
    with pytest.raises(ValueError, match="SimCSE needs at least 2 rows per batch.*the loss is always 0"):
        train_simcse(simcse_config(missing_model, tmp_path / "b", repeated, per_device_train_batch_size=1))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_an_ambiguous_text_column_must_be_named(tiny_llm, tmp_path, caplog):
    from transformers import AutoTokenizer

    from st_llm2vec.train.text_data import load_texts, tokenize_corpus

    tokenizer = AutoTokenizer.from_pretrained(tiny_llm())
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": f"doc-{i}", "body": s}) + "\n" for i, s in enumerate(SENTENCES)))
    raw = load_texts(train_file=str(path))["train"]
    with pytest.raises(ValueError, match=r"several string columns \['id', 'body'\].*set text_column"):
        tokenize_corpus(raw, tokenizer, 8, line_by_line=True)
    with caplog.at_level(logging.INFO, logger="st_llm2vec.train.text_data"):
        rows = tokenize_corpus(raw, tokenizer, 64, line_by_line=True, text_column="body")
    assert rows[0]["input_ids"] == tokenizer(SENTENCES[0])["input_ids"]
    assert "'body' column" in caplog.text


def test_no_eval_tokens_is_reported_not_a_zero_loss(tiny_llm, tmp_path):
    import st_llm2vec
    from st_llm2vec.train.mntp import MNTPDataCollator, MNTPEvaluator, MNTPLoss
    from st_llm2vec.train.text_data import EmptyDatasetError

    model = st_llm2vec.from_llm(str(tiny_llm()))
    rows = [{"input_ids": [1, 40], "labels": [-100, -100]}] * 3  # nothing masked
    metrics = MNTPEvaluator(MNTPLoss(model), rows, MNTPDataCollator(model[0].tokenizer))(model)
    assert math.isnan(metrics["mntp_loss"]) and math.isnan(metrics["mntp_accuracy"])  # before: 0.0

    one_token = tmp_path / "valid.txt"
    one_token.write_text("</s>\n" * 6)  # BOS + one token that is never masked, line by line
    with pytest.raises(EmptyDatasetError, match="No eval tokens"):
        train_mntp(mntp_config(tiny_llm(), tmp_path / "out", line_by_line=True, do_eval=True,
                               validation_file=str(one_token), eval_strategy="steps", eval_steps=1))


# --------------------------------------------------------------------------- bad config, CLI


def test_the_config_is_checked_before_anything_loads(tmp_path, corpus):
    missing_model = str(tmp_path / "no-model-here")
    config = tmp_path / "mntp.json"
    config.write_text(json.dumps(mntp_config(Path(missing_model), tmp_path / "out", lora_r="abc", learning_rate="fast")))
    with pytest.raises(ConfigError, match=r"mntp\.json: 2 invalid values: lora_r: expected an integer >= 1, got 'abc'; "
                                          r"learning_rate: expected a number >= 0, got 'fast'"):
        train_mntp(str(config))
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match=r"^config: lora_dropout: expected a number >= 0 and < 1"):
        train_simcse(simcse_config(Path(missing_model), tmp_path / "out", corpus, lora_dropout=1.5))
    yaml_config = tmp_path / "simcse.yaml"
    yaml_config.write_text("model_name_or_path: m\noutput_dir: o\nlearning_rate: 1e-4\nmax_steps: [3\n")
    with pytest.raises(ConfigError, match=r"simcse\.yaml:5:1: invalid YAML"):
        train_simcse(str(yaml_config))
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "model_name_or_path": "m",\n  "lora_r": 4,\n}\n')
    with pytest.raises(ConfigError, match=r"broken\.json:4:1: invalid JSON"):
        train_mntp(str(broken))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="output_dir .* exists and is not a directory"):
        train_mntp(mntp_config(Path(missing_model), a_file))
    with pytest.raises(FileNotFoundError, match="train_file"):
        train_mntp(mntp_config(Path(missing_model), tmp_path / "out", train_file=str(tmp_path / "missing.txt")))


def test_cli_reports_user_errors_in_one_line_with_exit_status_2(tiny_llm, tmp_path, capsys, corpus, monkeypatch):
    from st_llm2vec.cli import main

    config = tmp_path / "mntp.json"
    config.write_text(json.dumps(mntp_config(tiny_llm(), tmp_path / "out", lora_r="abc")))
    capsys.readouterr()
    # the console script calls main() without argv
    monkeypatch.setattr(sys, "argv", ["st-llm2vec", "mntp", str(config)])
    assert main() == 2
    assert capsys.readouterr().err.strip().startswith("st-llm2vec mntp: error: ")
    assert main(["mntp", str(config)], report_errors=True) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("st-llm2vec mntp: error:") and "lora_r" in err and "\n" not in err
    with pytest.raises(ConfigError):
        main(["mntp", str(config), "--debug"], report_errors=True)
    simcse = tmp_path / "simcse.json"
    simcse.write_text(json.dumps(simcse_config(tiny_llm(), tmp_path / "s", corpus)))
    with OutputLock(tmp_path / "s"):
        assert main(["simcse", str(simcse)], report_errors=True) == 2
    err = capsys.readouterr().err.strip()
    assert "in use by another training run" in err and "\n" not in err


# --------------------------------------------------------------------------- convert: full disk, killed runs


def test_convert_on_a_full_disk_is_one_line(tiny_llm, tmp_path, monkeypatch, capsys):
    import transformers.modeling_utils
    from safetensors import SafetensorError

    from st_llm2vec.cli import main

    def disk_full(*args, **kwargs):  # what safetensors raises on ENOSPC
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", disk_full)
    monkeypatch.setattr("safetensors.torch.save_file", disk_full)
    assert main(["convert", str(tiny_llm()), str(tmp_path / "m")], report_errors=True) == 2
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("st-llm2vec")]  # (progress bars aside)
    assert len(ours) == 1 and "No space left on device (os error 28)" in ours[0] and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


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
