"""Which instruction each evaluation task gets, the llm2vec way, and how it becomes Sentence Transformers prompts.

llm2vec evaluates MTEB with one instruction per task (``llm2vec_instructions.json``, copied from llm2vec's
repository, source and licence inside): the queries of retrieval and reranking tasks get it, their documents
none; every text of the other tasks (STS, classification, clustering, pair classification, summarization)
gets it. Here each instruction becomes an ST prompt under the key mteb looks up first for that task
(``"<task>-query"``, or ``"<task>"`` for both sides), stored the way st-llm2vec stores prompts
(:func:`st_llm2vec.portable.prompt_for`). A task not in the table gets, in this order: ``--instruction``;
the instruction of the task it supersedes (``STSBenchmark.v2`` -> ``STSBenchmark``); for the shared dev
tasks and local files, llm2vec's STS instruction or its MS MARCO one; else the task's own mteb prompt,
ending in ":" as llm2vec's mteb script and mteb's llm2vec wrapper make it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from ..errors import InputError

if TYPE_CHECKING:
    from mteb.abstasks.abstask import AbsTask

LLM2VEC, MODEL, NONE = "llm2vec", "model", "none"
MODES = {
    LLM2VEC: "llm2vec's per-task instruction (query side; every text of symmetric tasks), the model's own prompts "
             "where the table has none",
    MODEL: "only the prompts the model carries (config_sentence_transformers.json), as mteb applies them",
    NONE: "no instruction at all: raw texts",
}
TABLE_FILE = "llm2vec_instructions.json"
# llm2vec's instruction for every STS task (STS12 ... STSBenchmark, SICK-R): the shared STS sets and STS files get it.
STS_INSTRUCTION = "Retrieve semantically similar text:"
# llm2vec's MS MARCO instruction (its README's example): retrieval and reranking files without --instruction get it.
RETRIEVAL_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query:"
# llm2vec's table has no TREC-QA answer selection task; written for st-llm2vec in the table's style.
ANSWER_INSTRUCTION = "Given a question, retrieve sentences that answer the question:"


@dataclass(frozen=True)
class TaskInstruction:
    """The instruction a task gets (None: none), where it comes from, and whether both sides get it."""

    task: str
    instruction: str | None
    source: str
    symmetric: bool

    def prompt_key(self) -> str:
        """The ST prompt name mteb looks up first for this task: ``<task>`` (both sides) or ``<task>-query``."""
        return self.task if self.symmetric else f"{self.task}-query"


@lru_cache(maxsize=1)
def llm2vec_table() -> dict[str, Any]:
    """The llm2vec instruction table with its provenance (``source``, ``license``, ``instructions``)."""
    return json.loads(resources.files(__package__).joinpath(TABLE_FILE).read_text(encoding="utf-8"))


def llm2vec_instruction(text: str) -> str:
    """An instruction as llm2vec's mteb script uses it: ending in ":" (a final "." replaced)."""
    text = text.strip()
    if text and not text.endswith(":"):
        text = text.strip(".") + ":"
    return text


def is_symmetric(task: AbsTask) -> bool:
    """Both sides get the instruction unless the task retrieves documents for queries (retrieval, reranking)."""
    return task.metadata.simplified_task_type != "retrieval"


def is_local(task: AbsTask) -> bool:
    return str(task.metadata.dataset.get("path", "")).startswith("local:")


def _superseded_instruction(name: str, table: Mapping[str, str]) -> tuple[str, str] | None:
    """(instruction, old name) of a table task that ``name`` supersedes (mteb names the successor)."""
    import mteb

    for old in table:
        try:
            if mteb.get_task(old).superseded_by == name:
                return table[old], old
        except KeyError:
            continue
    return None


def task_instruction(task: AbsTask, overrides: Mapping[str, str] | None = None) -> TaskInstruction:
    """The instruction llm2vec's protocol gives ``task`` (see the module doc for the order)."""
    name, symmetric = task.metadata.name, is_symmetric(task)
    table = llm2vec_table()["instructions"]
    if overrides and name in overrides:
        return TaskInstruction(name, overrides[name] or None, "--instruction", symmetric)
    if name in table:
        return TaskInstruction(name, table[name], "llm2vec", symmetric)
    if is_local(task):
        if task.metadata.type == "STS":
            return TaskInstruction(name, STS_INSTRUCTION, "llm2vec (its STS instruction)", symmetric)
        from .tasks import SHARED_TASKS

        if name in SHARED_TASKS:
            return TaskInstruction(name, ANSWER_INSTRUCTION, "st-llm2vec (llm2vec has no TREC-QA task)", symmetric)
        return TaskInstruction(name, RETRIEVAL_INSTRUCTION, "llm2vec (its MS MARCO instruction)", symmetric)
    found = _superseded_instruction(name, table)
    if found is not None:
        return TaskInstruction(name, found[0], f"llm2vec (as {found[1]}, which this task supersedes)", symmetric)
    prompt = task.metadata.prompt
    if isinstance(prompt, dict):
        prompt = prompt.get("query")
    if prompt:
        return TaskInstruction(name, llm2vec_instruction(prompt), "mteb (the task's own prompt)", symmetric)
    return TaskInstruction(name, None, "none (neither llm2vec nor mteb has one)", symmetric)


def parse_overrides(items: list[str] | None) -> dict[str, str]:
    """``--instruction TASK=TEXT`` items as a dict (an empty TEXT: no instruction for that task)."""
    overrides: dict[str, str] = {}
    for item in items or ():
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--instruction takes TASK=TEXT (e.g. sts12='Retrieve semantically similar text:'), "
                             f"got {item!r}")
        overrides[name.strip()] = text.strip()
    return overrides
