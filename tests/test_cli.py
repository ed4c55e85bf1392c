"""st_llm2vec/cli.py: the one error path of every command — a user error (a bad config, a locked output_dir, a full
disk) is one line with exit status 2 — and a --help that answers at once."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from st_llm2vec.cli import COMMANDS
from st_llm2vec.recipe.config import ConfigError
from st_llm2vec.files import OutputLock
from conftest import mntp_config, simcse_config
from conftest import run_python as _python


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


# --------------------------------------------------------------------------- --help


def test_cli_help_answers_fast_and_lists_the_commands():
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "st_llm2vec.cli", "--help"], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    assert all(name in done.stdout for name in COMMANDS)
    assert elapsed < 3, f"st-llm2vec --help took {elapsed:.1f} s"


def test_every_subcommands_help_imports_neither_torch_nor_transformers_nor_sentence_transformers():
    """``st-llm2vec COMMAND --help`` must answer at once: its options are built without the heavy stack."""
    code = (
        "import json, sys, contextlib, io\n"
        "from st_llm2vec.cli import COMMANDS, main\n"
        "heavy = {}\n"
        "for name in COMMANDS:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main([name, '--help'])\n"
        "    heavy[name] = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'sentence_transformers'})\n"
        "print(json.dumps(heavy))\n"
    )
    heavy = json.loads(_python(code))
    assert set(heavy) == set(COMMANDS)
    assert {name: mods for name, mods in heavy.items() if mods} == {}
