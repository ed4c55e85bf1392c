"""What a newcomer reads is what a newcomer gets (issue 29): every README command parses with today's options,
every extra it installs exists, every block runs in a fresh copy of the tree without ``../shared`` (slow), and
every figure table marked as a command's output is what that command prints there, within the stated tolerance
(slow: ``python -m pytest -m slow tests/test_readme.py``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from readme_doc import README, SKIP_REASONS, blocks, commands, figure_tables, markdown_tables, numbers, pip_extras

from st_llm2vec.cli import COMMANDS, build_parser

ROOT = README.parent


def test_every_block_runs_or_says_why_not():
    found = blocks()
    assert len(found) >= 8, "the README's code blocks were not found"
    for block in found:
        assert block.lang in ("bash", "python"), f"README.md:{block.line}: a {block.lang or 'plain'} block"
        if block.skip is not None:
            assert block.skip in SKIP_REASONS, (f"README.md:{block.line}: skip reason {block.skip!r}; allowed: "
                                                f"{sorted(SKIP_REASONS)}")


def test_every_readme_command_parses_with_todays_options():
    parsed = 0
    for block in blocks():
        if block.lang != "bash":
            continue
        for words in commands(block.code):
            assert words and words[0] in COMMANDS, f"README.md:{block.line}: unknown command st-llm2vec {words}"
            try:
                build_parser(words[0]).parse_args(words[1:])
            except SystemExit as exc:
                pytest.fail(f"README.md:{block.line}: `st-llm2vec {' '.join(words)}` does not parse (exit {exc.code})")
            parsed += 1
    assert parsed >= 8


def test_every_extra_the_readme_installs_exists():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    named = [extra for block in blocks() if block.lang == "bash" for extra in pip_extras(block.code)]
    assert {"quickstart", "test"} <= set(named)
    for extra in named:
        assert extra in declared, f"README installs .[{extra}], which pyproject.toml does not declare"


def test_every_python_block_compiles():
    for block in blocks():
        if block.lang == "python":
            compile(block.code, f"README.md:{block.line}", "exec")


def test_every_figure_table_names_a_labelled_block():
    labels = {block.label for block in blocks() if block.label}
    tables = figure_tables()
    assert tables, "no README table is marked as a command's output"
    for table in tables:
        assert table.source in labels, f"README.md:{table.line}: figures of {table.source!r}, no block has that label"


def test_figure_tables_compare_cell_by_cell():
    """The comparison itself: a table pasted from an output matches it; a changed figure does not."""
    out = "noise\n| step | a | b |\n|---|---:|---:|\n| causal | 52.1 | 3.0 |\n| SimCSE | 63.6 | — |\n"
    readme = "<!-- readme-figures: demo ±0.5 -->\n| step | a | b |\n|---|---:|---:|\n| causal | 52.4 | 3.0 |\n"
    (table,) = figure_tables(readme)
    assert table.tolerance == 0.5 and table.source == "demo"
    assert _differences(table, out) == []
    # another table of the output with the same row names but another header is not read
    assert _differences(table, out + "\n| step | STS12 | STS13 |\n|---|---:|---:|\n| causal | 1.0 | 9.0 |\n") == []
    table.rows["causal"][0] = "53.0"
    assert _differences(table, out) == ["causal: 53.0 vs 52.1"]
    table.rows["bidirectional"] = ["1", "2"]
    assert "bidirectional: not in the output" in _differences(table, out)


def _differences(table, output: str) -> list[str]:
    printed = {}
    for _, rows in markdown_tables(output):
        if not table.header or rows[0][:len(table.header)] == table.header:
            printed.update({row[0]: row[1:] for row in rows[1:]})
    problems = []
    for label, cells in table.rows.items():
        if label not in printed:
            problems.append(f"{label}: not in the output")
            continue
        for want, got, text in zip(numbers(cells), numbers(printed[label]), cells):
            if want is not None and (got is None or abs(want - got) > table.tolerance + 1e-9):
                problems.append(f"{label}: {text} vs {got}")
    return problems


def _fresh_copy(tmp: Path) -> Path:
    """The tracked tree, as a clone would have it, in a folder with no ``../shared`` beside it."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    clone = tmp / "clone"
    for name in filter(None, listed.decode().split("\0")):
        target = clone / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, target)
    assert not (tmp / "shared").exists()
    return clone


def _without_install(line: str) -> str:
    """A README shell line without its leading ``pip install … &&`` (what follows it still runs)."""
    if not line.lstrip().startswith("pip install"):
        return line
    _, sep, rest = line.partition("&&")
    return rest.strip() if sep else ""


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory) -> dict[str, str]:
    """Run every block that is not marked skip, top to bottom, in one fresh copy; label -> its output."""
    clone = _fresh_copy(tmp_path_factory.mktemp("readme"))
    env = {k: v for k, v in os.environ.items() if k != "ST_LLM2VEC_DATA"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    outputs: dict[str, str] = {}
    for block in blocks():
        if block.skip:
            continue
        if block.lang == "bash":
            # The installs are what the test environment already did (.ci/run runs them on a clean clone).
            code = "\n".join(_without_install(line) for line in block.code.splitlines())
            cmd = ["bash", "-euo", "pipefail", "-c", code]
        else:
            cmd = [sys.executable, "-c", block.code]
        done = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True, timeout=1800)
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"README.md:{block.line} failed (exit {done.returncode}):\n{output[-4000:]}"
        outputs[block.label or f"line {block.line}"] = output
    return outputs


@pytest.mark.slow
def test_readme_runs_top_to_bottom_in_a_fresh_copy(readme_run):
    assert readme_run


@pytest.mark.slow
def test_readme_figures_are_what_the_commands_print(readme_run):
    for table in figure_tables():
        assert table.source in readme_run, f"README.md:{table.line}: {table.source!r} was not run"
        problems = _differences(table, readme_run[table.source])
        assert not problems, (f"README.md:{table.line}: figures differ by more than ±{table.tolerance} from what "
                              f"{table.source!r} printed: {problems}")


def test_no_placeholder_is_left_in_the_readme():
    text = README.read_text(encoding="utf-8")
    for mark in ("⟨", "TODO", "<repo>", "/tmp/exp"):
        assert mark not in text, f"README.md holds {mark!r} at line {text[:text.index(mark)].count(chr(10)) + 1}"
