"""The README as data: its code blocks (with the marks that say why one is not run) and its figure tables.

Used by tests/test_readme.py. A block runs unless the HTML comment right above it says
``<!-- readme-test: skip REASON -->`` with a REASON from :data:`SKIP_REASONS`. A table of figures that a
command prints is marked ``<!-- readme-figures: NAME ±TOL -->`` right above it: NAME is the label of the block
whose output holds the same table (``<!-- readme-test: label NAME -->`` above that block), TOL the largest
difference allowed per number, written in the README beside the table.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"

# The only reasons a README block may be left out of the run (issue 29: the Hub or a GPU), plus a cluster and the
# test command itself (the docs test runs inside it).
SKIP_REASONS = {
    "hub": "downloads from the Hugging Face Hub",
    "gpu": "needs a GPU",
    "cluster": "needs a running multi-node Ray cluster",
    "ci": "is the command CI runs (.ci/run): the test suite itself",
}

_MARK = re.compile(r"^<!--\s*readme-(test|figures):\s*(.*?)\s*-->\s*$")
_FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass
class Block:
    """One fenced code block of the README."""

    lang: str
    code: str
    line: int  # 1-based line of its opening fence
    skip: str | None = None  # a key of SKIP_REASONS
    label: str | None = None
    marks: list[str] = field(default_factory=list)


@dataclass
class FigureTable:
    """A Markdown table of figures in the README that some block's output must reproduce."""

    source: str  # the label of the block whose output holds the table
    tolerance: float
    line: int
    rows: dict[str, list[str]]  # first cell -> the other cells
    header: list[str] = field(default_factory=list)  # the output's table with this header (its first cells) holds them


def _marks_above(lines: list[str], index: int) -> list[tuple[str, str]]:
    """The readme-test / readme-figures comments directly above line ``index`` (blank lines allowed)."""
    found = []
    j = index - 1
    while j >= 0 and (not lines[j].strip() or _MARK.match(lines[j])):
        match = _MARK.match(lines[j])
        if match:
            found.append((match.group(1), match.group(2)))
        j -= 1
    return found


def blocks(text: str | None = None) -> list[Block]:
    lines = (README.read_text(encoding="utf-8") if text is None else text).splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        block = Block(fence.group(1), "\n".join(lines[i + 1:end]) + "\n", i + 1)
        for kind, value in _marks_above(lines, i):
            if kind != "test":
                continue
            block.marks.append(value)
            word, _, rest = value.partition(" ")
            if word == "skip":
                block.skip = rest.strip()
            elif word == "label":
                block.label = rest.strip()
        out.append(block)
        i = end + 1
    return out


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def markdown_tables(text: str) -> list[tuple[int, list[list[str]]]]:
    """Every Markdown table in ``text``: (line of its header, rows as cells, separator row left out)."""
    lines = text.splitlines()
    tables = []
    i = 0
    while i < len(lines):
        if lines[i].lstrip().startswith("|") and i + 1 < len(lines) and re.match(r"^\s*\|[\s:|-]+\|\s*$", lines[i + 1]):
            start, rows = i, [_cells(lines[i])]
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            tables.append((start + 1, rows))
        else:
            i += 1
    return tables


def figure_tables(text: str | None = None) -> list[FigureTable]:
    text = README.read_text(encoding="utf-8") if text is None else text
    lines = text.splitlines()
    out = []
    for line, rows in markdown_tables(text):
        for kind, value in _marks_above(lines, line - 1):
            if kind == "figures":
                name, _, tol = value.partition(" ")
                tolerance = float(tol.strip().lstrip("±+-") or 0)
                out.append(FigureTable(name, tolerance, line, {r[0]: r[1:] for r in rows[1:]}, header=rows[0]))
    return out


def numbers(cells: list[str]) -> list[float | None]:
    """The number in each cell (None where a cell holds none, e.g. "—")."""
    found = []
    for cell in cells:
        match = re.search(r"-?\d+(?:\.\d+)?", cell.replace(",", ""))
        found.append(float(match.group()) if match else None)
    return found


def commands(code: str) -> list[list[str]]:
    """The ``st-llm2vec …`` command lines of a bash block, each split as the shell would (continuations joined,
    ``&&`` chains cut, comments dropped)."""
    joined = re.sub(r"\\\n\s*", " ", code)
    found = []
    for line in joined.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split, lexer.commenters = True, "#"
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token and set(token) <= set(";&|"):
                if words and words[0] == "st-llm2vec":
                    found.append(words[1:])
                words = []
            else:
                words.append(token)
    return found


def pip_extras(code: str) -> list[str]:
    """The extras named by ``pip install … -e ".[a,b]"`` lines of a bash block."""
    return [extra.strip() for group in re.findall(r'-e\s+"?\.\[([^\]]*)\]', code) for extra in group.split(",")]
