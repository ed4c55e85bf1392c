"""Training data for the contrastive stages, in the layouts llm2vec uses.

Supervised (llm2vec's ``E5`` dataset, the "echo-data" release): a folder of ``<dataset>.jsonl`` files,
one ``{"query", "positive", "negative"}`` object per line, plus a table of per-dataset instructions.
llm2vec's semantics, reproduced here:

- an instruction is joined as ``instruction + "; "`` in front of the query (the encoder then joins it
  with a space, so the text seen is ``"<instruction>; <query>"``, exactly llm2vec's);
- ``allnli`` and ``quora_duplicates`` have two instructions, alternated row by row (row ``i`` gets
  instruction ``i % 2``). llm2vec's earlier data had one file per instruction (``allnli_split1``,
  ``allnli_split2``, ``quora_duplicates_split1/2``); both layouts are read. When ``allnli.jsonl`` is
  present its split files are ignored, as llm2vec does;
- instructions go to queries only, except for the symmetric splits llm2vec marks (``allnli_split2``,
  ``quora_duplicates_split1``, ``quora_duplicates_split2``), whose positives and negatives get the same
  instruction. llm2vec's current code keys that mark on the split-file names and so never applies it
  to the alternating ``allnli.jsonl`` layout; here the mark follows the instruction variant in both
  layouts (``symmetric_instructions=False`` gives queries-only everywhere);
- a batch is drawn from one dataset at a time.

Each instruction variant becomes its own sub-dataset (``allnli_split1`` / ``allnli_split2``) so that
Sentence Transformers' per-dataset ``prompts`` can carry it: a batch then holds one instruction, where
llm2vec's allnli batches mix the two. Rows whose query or positive is empty are dropped and counted;
in a dataset with hard negatives, rows without one are dropped and counted too.

Here: the tables and the data a stage trains on (:class:`PairData`); reading it, and SimCSE's sentences and the
supervised sets of the shared data (SICK entailment triplets, MSR paraphrase pairs): :mod:`.pair_files`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from datasets import Dataset, DatasetDict

from ..errors import InputError

logger = logging.getLogger(__name__)

# llm2vec 0.2.3 (llm2vec/dataset/E5Data.py): dataset -> instruction, or the two alternated instructions.
E5_INSTRUCTIONS: dict[str, str | tuple[str, str]] = {
    "allnli": (
        "Given a premise, retrieve a hypothesis that is entailed by the premise",
        "Retrieve semantically similar text",
    ),
    "dureader": "Given a Chinese search query, retrieve web passages that answer the question",
    "eli5_question_answer": "Provided a user question, retrieve the highest voted answers on Reddit ELI5 forum",
    "fever": "Given a claim, retrieve documents that support or refute the claim",
    "hotpot_qa": "Given a multi-hop question, retrieve documents that can help answer the question",
    "miracl": "Given a question, retrieve Wikipedia passages that answer the question",
    "mrtydi": "Given a question, retrieve Wikipedia passages that answer the question",
    "msmarco_passage": "Given a web search query, retrieve relevant passages that answer the query",
    "msmarco_document": "Given a web search query, retrieve relevant documents that answer the query",
    "nq": "Given a question, retrieve Wikipedia passages that answer the question",
    "quora_duplicates": (
        "Given a question, retrieve questions that are semantically equivalent to the given question",
        "Find questions that have the same meaning as the input question",
    ),
    "squad": "Retrieve Wikipedia passages that answer the question",
    "t2ranking": "Given a Chinese search query, retrieve web passages that answer the question",
    "trivia_qa": "Retrieve Wikipedia passages that answer the question",
}

# The instruction variants of llm2vec's split files: split name -> (dataset, variant index).
SPLITS: dict[str, tuple[str, int]] = {
    "allnli_split1": ("allnli", 0),
    "allnli_split2": ("allnli", 1),
    "quora_duplicates_split1": ("quora_duplicates", 0),
    "quora_duplicates_split2": ("quora_duplicates", 1),
}
# The splits llm2vec gives instructions on both sides (symmetric tasks).
SYMMETRIC_SPLITS: frozenset[str] = frozenset({"allnli_split2", "quora_duplicates_split1", "quora_duplicates_split2"})

# Instructions for the sets built from the shared dev data (same wording as llm2vec's allnli / MTEB STS).
SHARED_INSTRUCTIONS: dict[str, str] = {
    "sick": "Given a premise, retrieve a hypothesis that is entailed by the premise",
    "msr": "Retrieve semantically similar text",
}
SHARED_SYMMETRIC: frozenset[str] = frozenset({"msr"})
# The column of a teacher's scores (distillation: [positive, negative_1, ...] per row), a label to the ST trainer.
TEACHER_COLUMN = "label"


def join_instruction(instruction: str) -> str:
    """llm2vec's training join: ``instruction + "; "``; the encoder strips it and adds one space."""
    return f"{instruction}; "


def negative_columns(column_names: list[str]) -> list[str]:
    """The negative columns of a pair dataset, in order: ``negative`` or ``negative_1..n``."""
    return [c for c in column_names if c == "negative" or re.fullmatch(r"negative_\d+", c)]


@dataclass
class PairSubset:
    """One dataset of a supervised mixture: rows, the instruction for it and where it applies."""

    name: str
    dataset: Dataset
    instruction: str | None = None
    symmetric: bool = False
    source: str = ""

    @property
    def has_negatives(self) -> bool:
        return bool(negative_columns(self.dataset.column_names))

    def digest(self) -> str:
        """A hash of the rows (every column, in order) with the instruction and where it applies: what keys the
        data's part of a cache entry (mined negatives, a teacher's scores)."""
        import hashlib
        import json

        digest = hashlib.sha256(json.dumps([self.instruction, self.symmetric, self.dataset.column_names]).encode())
        for column in self.dataset.column_names:
            digest.update(json.dumps(list(self.dataset[column]), ensure_ascii=False).encode())
        return digest.hexdigest()

    def prompts(self) -> dict[str, str]:
        """Per-column prompts (Sentence Transformers' ``prompts`` format) for this dataset."""
        if not self.instruction:
            return {}
        prompt = join_instruction(self.instruction)
        texts = [c for c in self.dataset.column_names if c != TEACHER_COLUMN]
        columns = texts if self.symmetric else ["query"]
        return {column: prompt for column in columns}


@dataclass
class PairData:
    """A mixture of datasets, each batch to be drawn from one of them; what was dropped, and why."""

    subsets: list[PairSubset]
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [s.name for s in self.subsets]
        if len(set(names)) != len(names):
            raise InputError(f"Duplicate dataset names in the mixture: {names}")

    def __len__(self) -> int:
        return sum(len(s.dataset) for s in self.subsets)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.subsets]

    def to_dataset_dict(self) -> DatasetDict:
        return DatasetDict({s.name: s.dataset for s in self.subsets})

    def prompts(self) -> dict[str, dict[str, str]]:
        """Nested per-dataset, per-column prompts for ``SentenceTransformerTrainingArguments.prompts``."""
        return {s.name: s.prompts() for s in self.subsets if s.prompts()}

    def summary(self) -> str:
        lines = []
        for s in self.subsets:
            where = "all columns" if s.symmetric else "query"
            instr = f"{s.instruction!r} on {where}" if s.instruction else "no instruction"
            negatives = len(negative_columns(s.dataset.column_names))
            kind = "pairs" if not s.has_negatives else "triplets" if negatives == 1 else f"rows with {negatives} negatives"
            lines.append(f"  {s.name}: {len(s.dataset)} {kind}, {instr}")
        for name, counts in self.dropped.items():
            reasons = ", ".join(f"{n} {why}" for why, n in counts.items() if n)
            if reasons:
                lines.append(f"  {name}: dropped {reasons}")
        return "\n".join(lines)

    def limit(self, max_rows_per_dataset: int | None) -> PairData:
        """Keep at most that many rows (the first ones) of each dataset."""
        if max_rows_per_dataset is None:
            return self
        subsets = [
            PairSubset(s.name, s.dataset.select(range(min(len(s.dataset), max_rows_per_dataset))), s.instruction,
                       s.symmetric, s.source)
            for s in self.subsets
        ]
        return PairData(subsets, self.dropped)

    def check_batch_size(self, global_batch_size: int, skip_small: bool = False) -> PairData:
        """Every batch holds ``global_batch_size`` rows of one dataset (incomplete batches are dropped, as in
        llm2vec), so a smaller dataset would never be trained on: raise, or with ``skip_small`` drop it."""
        small = {s.name: len(s.dataset) for s in self.subsets if len(s.dataset) < global_batch_size}
        if not small:
            return self
        listing = ", ".join(f"{name} ({n} rows)" for name, n in small.items())
        if not skip_small or len(small) == len(self.subsets):
            raise InputError(
                f"The global batch size is {global_batch_size} (per-device batch size × processes) and every "
                f"batch comes from a single dataset, but these datasets have fewer rows: {listing}. Lower "
                "per_device_train_batch_size, drop them from `datasets`, or set skip_small_datasets: true "
                "to train without them."
            )
        logger.warning("Skipping datasets smaller than the global batch size %d: %s", global_batch_size, listing)
        return PairData([s for s in self.subsets if s.name not in small], self.dropped)

    def check_in_batch_negatives(self, global_batch_size: int, simcse: bool = False) -> None:
        """Refuse batches a contrastive loss cannot learn from: with in-batch negatives only, a batch of one row
        gives its query a single candidate (the loss is exactly 0); and batches never hold a text twice, so a
        SimCSE set with fewer distinct sentences than one batch yields no batch at all (0 training steps)."""
        without_negatives = [s.name for s in self.subsets if not s.has_negatives]
        if global_batch_size < 2 and (simcse or without_negatives):
            what = "SimCSE needs" if simcse else f"Datasets without hard negatives ({', '.join(without_negatives)}) need"
            raise InputError(
                f"{what} at least 2 rows per batch: the other rows are the negatives, so with a global batch "
                f"of {global_batch_size} (per_device_train_batch_size × processes) the loss is always 0. Set "
                "per_device_train_batch_size to 2 or more (llm2vec uses 128 for SimCSE)."
            )
        if not simcse:
            return
        for subset in self.subsets:
            distinct = len(set(subset.dataset["anchor"] if "anchor" in subset.dataset.column_names
                               else subset.dataset[subset.dataset.column_names[0]]))
            if distinct < global_batch_size:
                raise InputError(
                    f"{subset.source or subset.name} has {distinct} distinct sentences ({len(subset.dataset)} rows), "
                    f"fewer than one batch of {global_batch_size}: a batch never holds a sentence twice, so SimCSE "
                    "would train 0 steps. Add sentences, or lower per_device_train_batch_size."
                )
