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

Also here: SimCSE sentence sets (llm2vec's ``Wiki1M`` text file, or the shared dev data) and
supervised sets built from the shared data (SICK entailment triplets, MSR paraphrase pairs).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset
from datasets.exceptions import DatasetGenerationError

from ..errors import InputError, MissingFileError

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


def join_instruction(instruction: str) -> str:
    """llm2vec's training join: ``instruction + "; "``; the encoder strips it and adds one space."""
    return f"{instruction}; "


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
        return "negative" in self.dataset.column_names

    def prompts(self) -> dict[str, str]:
        """Per-column prompts (Sentence Transformers' ``prompts`` format) for this dataset."""
        if not self.instruction:
            return {}
        prompt = join_instruction(self.instruction)
        columns = self.dataset.column_names if self.symmetric else ["query"]
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
            kind = "triplets" if s.has_negatives else "pairs"
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


# --------------------------------------------------------------------------- rows


def _text(value) -> str | None:
    """A usable text, or None for missing / non-string / blank values."""
    if isinstance(value, str) and value.strip():
        return value
    return None


def rows_to_dataset(name: str, rows: Iterable[Mapping], counts: dict[str, int] | None = None) -> Dataset:
    """Clean ``{"query", "positive"[, "negative"]}`` rows into a Dataset; dropped rows are counted in ``counts``.

    A dataset has hard negatives if any row has one; then rows without one are dropped too.
    """
    counts = counts if counts is not None else {}
    counts.setdefault("empty query/positive", 0)
    counts.setdefault("without negative", 0)
    kept: list[tuple[str, str, str | None]] = []
    for row in rows:
        query, positive = _text(row.get("query")), _text(row.get("positive"))
        if query is None or positive is None:
            counts["empty query/positive"] += 1
            continue
        kept.append((query, positive, _text(row.get("negative"))))
    with_negatives = any(neg is not None for _, _, neg in kept)
    if with_negatives:
        before = len(kept)
        kept = [r for r in kept if r[2] is not None]
        counts["without negative"] += before - len(kept)
    if any(counts.values()):
        logger.warning("%s: dropped %s", name, ", ".join(f"{n} rows {why}" for why, n in counts.items() if n))
    columns = {"query": [r[0] for r in kept], "positive": [r[1] for r in kept]}
    if with_negatives:
        columns["negative"] = [r[2] for r in kept]
    return Dataset.from_dict(columns)


def _read_jsonl(path: Path) -> list[dict]:
    """The rows of one ``<dataset>.jsonl`` file, read by ``datasets``; an empty or blank file has none."""
    try:
        return load_dataset("json", data_files=str(path), split="train").to_list()
    except (DatasetGenerationError, StopIteration, ValueError) as error:
        # datasets names a bad line only as a block-relative pyarrow row, and fails on an empty or blank
        # file (StopIteration / "corresponds to no data"): only on this path is the file scanned, to say which.
        refusal = _why_unreadable(path, error)
        if refusal is not None:
            raise refusal from error
        return []


def _why_unreadable(path: Path, error: Exception) -> ValueError | None:
    """The refusal naming the first line of ``path`` that is not a JSON object, or None if it has no rows."""
    from ..errors import InputError
    from ..files import jsonl_rows

    try:
        rows = sum(1 for _ in jsonl_rows(path))
    except InputError as exc:
        return exc
    if rows:
        return ValueError(
            f"Could not read {path} as JSON Lines ({error.__cause__ or error}): write one JSON object with "
            "query, positive and optionally negative per line."
        )
    return None


def _variants(instruction: str | Sequence[str]) -> list[str]:
    return [instruction] if isinstance(instruction, str) else list(instruction)


def _build_subsets(
    name: str,
    rows: list[dict],
    instruction: str | Sequence[str] | None,
    symmetric: Sequence[bool],
    source: str,
    dropped: dict[str, dict[str, int]],
) -> list[PairSubset]:
    """One subset per instruction variant: row i goes to variant i % n (llm2vec's alternation)."""
    if instruction is None:
        counts = dropped.setdefault(name, {})
        return [PairSubset(name, rows_to_dataset(name, rows, counts), None, False, source)]
    variants = _variants(instruction)
    if len(variants) == 1:
        counts = dropped.setdefault(name, {})
        return [PairSubset(name, rows_to_dataset(name, rows, counts), variants[0], symmetric[0], source)]
    subsets = []
    for k, text in enumerate(variants):
        sub_name = f"{name}_split{k + 1}"
        counts = dropped.setdefault(sub_name, {})
        subset_rows = rows[k :: len(variants)]
        subsets.append(PairSubset(sub_name, rows_to_dataset(sub_name, subset_rows, counts), text, symmetric[k], source))
    return subsets


def read_pair_folder(
    path: str | os.PathLike,
    *,
    instructions: Mapping[str, str | Sequence[str]] | None = None,
    symmetric: Iterable[str] | None = None,
    symmetric_instructions: bool = True,
    datasets: Sequence[str] | None = None,
) -> PairData:
    """Read an E5 / echo-data folder of ``<dataset>.jsonl`` files (any subset of llm2vec's datasets).

    Args:
        path: the folder.
        instructions: extra or overriding entries for the instruction table (dataset -> instruction, or a
            list of instructions to alternate). An empty string trains that dataset without instruction.
        symmetric: dataset / split names whose documents get the instruction too (default: llm2vec's marks).
        symmetric_instructions: False puts instructions on queries only, everywhere.
        datasets: read only these datasets (file stems); default: every ``.jsonl`` in the folder.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise MissingFileError(f"{folder} is not a folder of <dataset>.jsonl files (llm2vec's echo-data layout).")
    table: dict[str, str | Sequence[str]] = {**E5_INSTRUCTIONS, **dict(instructions or {})}
    marks = set(SYMMETRIC_SPLITS if symmetric is None else symmetric) if symmetric_instructions else set()
    files = {p.stem: p for p in sorted(folder.glob("*.jsonl"))}
    if datasets is not None:
        missing = [d for d in datasets if d not in files]
        if missing:
            raise MissingFileError(f"No {', '.join(m + '.jsonl' for m in missing)} in {folder}; found: {sorted(files)}")
        files = {d: files[d] for d in datasets}
    if not files:
        raise MissingFileError(f"No .jsonl files in {folder}.")
    # llm2vec reads allnli.jsonl (alternating instructions) and ignores its older split files.
    for split, (base, _) in SPLITS.items():
        if split in files and base in files and split not in table:
            logger.info("%s: using %s.jsonl, ignoring %s.jsonl (as llm2vec does)", folder, base, split)
            del files[split]

    def instruction_for(stem: str):
        if stem in table:
            return table[stem]
        if stem in SPLITS:
            base, k = SPLITS[stem]
            if base in table:
                return _variants(table[base])[k]
        return None

    unknown = [stem for stem in files if instruction_for(stem) is None]
    if unknown:
        raise InputError(
            f"No instruction for dataset(s) {unknown} in {folder}. Known datasets: {sorted(E5_INSTRUCTIONS)} "
            f"(and the splits {sorted(SPLITS)}). Add them to `instructions` in the config "
            '(e.g. {"my_set": "Given a question, retrieve passages that answer it"}; "" for none), '
            "or leave them out with `datasets`."
        )

    subsets: list[PairSubset] = []
    dropped: dict[str, dict[str, int]] = {}
    for stem, file in files.items():
        instruction = instruction_for(stem) or None  # "" -> no instruction
        n = 1 if instruction is None or isinstance(instruction, str) else len(instruction)
        if n == 1:
            sym = [stem in marks]
        else:
            sym = [f"{stem}_split{k + 1}" in marks or stem in marks for k in range(n)]
        subsets += _build_subsets(stem, _read_jsonl(file), instruction, sym, str(file), dropped)
    subsets = [s for s in subsets if len(s.dataset)]
    if not subsets:
        raise InputError(f"No usable rows in {folder}: every row lacks a query or a positive.")
    return PairData(subsets, dropped)


def pair_data_from_rows(
    rows_by_dataset: Mapping[str, Iterable[Mapping]],
    instructions: Mapping[str, str | Sequence[str] | None] | None = None,
    symmetric: Iterable[str] = (),
) -> PairData:
    """A mixture from in-memory rows (``{"query", "positive"[, "negative"]}`` dicts) per dataset."""
    instructions = dict(instructions or {})
    marks = set(symmetric)
    subsets: list[PairSubset] = []
    dropped: dict[str, dict[str, int]] = {}
    for name, rows in rows_by_dataset.items():
        instruction = instructions.get(name) or None
        n = 1 if instruction is None or isinstance(instruction, str) else len(instruction)
        sym = [name in marks or f"{name}_split{k + 1}" in marks for k in range(n)]
        subsets += _build_subsets(name, list(rows), instruction, sym, "memory", dropped)
    return PairData([s for s in subsets if len(s.dataset)], dropped)


# --------------------------------------------------------------------------- shared dev data


def shared_pair_data(
    data_dir: str | os.PathLike | None = None,
    sets: Sequence[str] = ("sick", "msr"),
    *,
    instructions: Mapping[str, str] | None = None,
    symmetric_instructions: bool = True,
) -> PairData:
    """Supervised sets from the shared dev data: ``sick`` = SICK train (anchor, entailed hypothesis,
    contradicting hard negative), ``msr`` = MSR train paraphrase pairs (no hard negative)."""
    from .. import devdata

    table = {**SHARED_INSTRUCTIONS, **dict(instructions or {})}
    rows: dict[str, list[dict]] = {}
    for name in sets:
        if name == "sick":
            rows[name] = [{"query": a, "positive": p, "negative": n} for a, p, n in devdata.sick_triplets(data_dir)]
        elif name == "msr":
            rows[name] = [{"query": a, "positive": b} for a, b in devdata.msr_pairs(data_dir)]
        else:
            raise InputError(f"Unknown shared set {name!r}; choose from 'sick', 'msr'.")
    marks = SHARED_SYMMETRIC if symmetric_instructions else ()
    return pair_data_from_rows(rows, {n: table.get(n) for n in sets}, marks)


# --------------------------------------------------------------------------- SimCSE


def read_sentences(path: str | os.PathLike) -> list[str]:
    """llm2vec's Wiki1M format: one sentence per line (stripped); blank lines are dropped and counted."""
    sentences, blank = [], 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            text = line.strip()
            if text:
                sentences.append(text)
            else:
                blank += 1
    if blank:
        logger.warning("%s: dropped %d blank lines", path, blank)
    if not sentences:
        raise InputError(f"{path} has no sentences.")
    return sentences


def simcse_dataset(sentences: Sequence[str]) -> Dataset:
    """SimCSE pairs: each sentence with itself (the two views differ only by dropout)."""
    return Dataset.from_dict({"anchor": list(sentences), "positive": list(sentences)})
