"""st_llm2vec/console.py: every command quiet by default (one line per stage, no bars off a terminal, no library
noise), loud with --verbose; real commands on a tiny model, and the exact lines they print."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import subprocess
import sys

import pytest
import tqdm

from conftest import REPO
from st_llm2vec import cli, console
from st_llm2vec import devdata as devsets

BAR = re.compile(r"\d+%\|| it/s\]|s/it\]")


def _simcse(tmp_path, tiny_llm, monkeypatch, capfd, *flags: str) -> int:
    monkeypatch.setattr(devsets, "find_shared_data", lambda path=None: None)
    model = tiny_llm("llama")
    capfd.readouterr()  # what building the tiny model printed: not the command's
    return cli.main(["simcse", str(REPO / "training" / "simcse" / "tiny.json"), "--model_name_or_path",
                     str(model), "--output-dir", str(tmp_path / "out"), "--set", "max_steps=2",
                     "--set", "logging_steps=1", "--set", "evaluator=none", "--set", "save_strategy=no", *flags])


def test_a_training_command_prints_one_line_per_stage_and_no_loss_dicts_or_bars(tmp_path, tiny_llm, monkeypatch, capfd):
    assert _simcse(tmp_path, tiny_llm, monkeypatch, capfd) == 0
    out, err = capfd.readouterr()
    out_dir = tmp_path / "out"
    assert out.splitlines() == [f"simcse model saved to {out_dir} (summary: {out_dir / 'st_llm2vec_stage.json'})"]
    lines = err.splitlines()
    assert lines[0] == "training simcse: 2 steps"
    assert re.fullmatch(r"simcse: 2 steps in \d+ s, loss \d+\.\d{3} → \d+\.\d{3}", lines[1]), lines
    assert lines[2] == f"saving {out_dir} and proving it loads in stock sentence-transformers (a fresh process)"
    assert len(lines) == 3, lines  # no log dicts, no bars (stderr is not a terminal), no library warnings


def test_verbose_shows_the_per_step_losses_and_the_summary(tmp_path, tiny_llm, monkeypatch, capfd):
    assert _simcse(tmp_path, tiny_llm, monkeypatch, capfd, "--verbose") == 0
    out, err = capfd.readouterr()
    assert sum("'loss':" in line for line in (out + err).splitlines()) >= 2  # the trainer's dict per logging step
    assert '"global_step": 2' in out  # the whole summary as JSON


def test_bars_are_drawn_only_on_a_terminal_and_never_with_no_progress():
    class Stream:
        def __init__(self, tty: bool) -> None:
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    assert console.wants_progress(False, Stream(True))
    assert not console.wants_progress(True, Stream(True))
    assert not console.wants_progress(False, Stream(False))


def test_a_session_puts_the_libraries_back_when_the_command_ends(tmp_path, capsys):
    before = tqdm.tqdm.__init__, logging.getLogger("transformers").level, logging.getLogger("mteb").level
    args = cli.build_parser("quickstart").parse_args(["--no-progress"])
    with console.console_session(args) as session:
        assert not session.progress and not session.verbose and args.no_progress
        assert tqdm.tqdm([1]).disable  # a bar created during the command is off
        assert logging.getLogger("mteb").level == logging.ERROR
        assert console.current() is session and not console.verbose()
    assert (tqdm.tqdm.__init__, logging.getLogger("transformers").level, logging.getLogger("mteb").level) == before
    assert console.current() is None and console.verbose()  # a library call keeps the stock behaviour


def test_every_command_has_no_progress_and_verbose():
    for name in cli.COMMANDS:
        options = {o for action in cli.build_parser(name)._actions for o in action.option_strings}
        assert {"--no-progress", "--verbose"} <= options, name


def test_the_bitsandbytes_kernels_notice_is_dropped_and_nothing_else():
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Keep()
    logger.addHandler(handler)
    try:
        console.silence_import_notices()
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
                       "`pip install kernels` and the kernels >= 0.11.1", ModuleNotFoundError("No module named 'kernels'"))
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s.", RuntimeError("version 0.9"))
        logger.warning("something else")
    finally:
        logger.removeHandler(handler)
    assert seen == ["Failed to load CPU gemm_4bit_forward from kernels-community: version 0.9.", "something else"]


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
def test_importing_the_stack_after_st_llm2vec_prints_no_bitsandbytes_notice():
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")

    def stderr(code: str) -> str:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stderr

    if "gemm_4bit_forward" not in stderr("import peft"):
        pytest.skip("this CPU (no AVX512-BF16) or bitsandbytes version does not log the notice")
    assert "gemm_4bit_forward" not in stderr("import st_llm2vec, peft")
