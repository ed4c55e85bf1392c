"""The contrastive stages' training data read into :class:`~.pair_data.PairData`: llm2vec's E5 folder of
``<dataset>.jsonl`` files (or rows in memory), supervised sets from the shared dev data, and SimCSE's sentences
(llm2vec's ``Wiki1M`` text file). Rows whose query or positive is empty, or without the hard negative their
dataset has, are dropped and counted; an unreadable file is named with the line that breaks it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from datasets import Dataset, load_dataset
from datasets.exceptions import DatasetGenerationError

from ..errors import InputError, MissingFileError
from .pair_data import (
    E5_INSTRUCTIONS,
    SHARED_INSTRUCTIONS,
    SHARED_SYMMETRIC,
    SPLITS,
    SYMMETRIC_SPLITS,
    PairData,
    PairSubset,
    negative_columns,
)

logger = logging.getLogger(__name__)


def _text(value) -> str | None:
    """A usable text, or None for missing / non-string / blank values."""
    if isinstance(value, str) and value.strip():
        return value
    return None


def _negatives(value) -> list[str] | None:
    """A row's hard negatives: one text, or a list of them (mined data: ``negative: [...]``); None if it has none
    (or any of them is unusable)."""
    texts = value if isinstance(value, list) else [value]
    kept = [_text(t) for t in texts]
    return kept if kept and all(t is not None for t in kept) else None


def rows_to_dataset(name: str, rows: Iterable[Mapping], counts: dict[str, int] | None = None) -> Dataset:
    """Clean ``{"query", "positive"[, "negative"]}`` rows into a Dataset; dropped rows are counted in ``counts``.

    A dataset has hard negatives if any row has one; then rows without one are dropped too. ``negative`` may be a
    list (``st-llm2vec mine`` with ``num_negatives`` > 1): then every row needs as many, in columns ``negative_1..n``.
    """
    counts = counts if counts is not None else {}
    counts.setdefault("empty query/positive", 0)
    counts.setdefault("without negative", 0)
    kept: list[tuple[str, str, list[str] | None]] = []
    for row in rows:
        query, positive = _text(row.get("query")), _text(row.get("positive"))
        if query is None or positive is None:
            counts["empty query/positive"] += 1
            continue
        kept.append((query, positive, _negatives(row.get("negative"))))
    with_negatives = any(neg is not None for _, _, neg in kept)
    if with_negatives:
        before = len(kept)
        kept = [r for r in kept if r[2] is not None]
        counts["without negative"] += before - len(kept)
    if any(counts.values()):
        logger.warning("%s: dropped %s", name, ", ".join(f"{n} rows {why}" for why, n in counts.items() if n))
    columns = {"query": [r[0] for r in kept], "positive": [r[1] for r in kept]}
    widths = {len(r[2]) for r in kept if r[2] is not None}
    if len(widths) > 1:
        raise InputError(f"{name}: rows hold {sorted(widths)} negatives; every row of a dataset needs as many.")
    width = widths.pop() if widths else 0
    if width == 1:
        columns["negative"] = [r[2][0] for r in kept]
    for k in range(width if width > 1 else 0):
        columns[f"negative_{k + 1}"] = [r[2][k] for r in kept]
    return Dataset.from_dict(columns)


def _read_rows(path: Path) -> list[dict]:
    """The rows of one ``<dataset>.jsonl`` (read by ``datasets``; an empty or blank file has none) or
    ``<dataset>.parquet`` file (``st-llm2vec mine --format parquet``)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as error:  # pyarrow raises several kinds for a file that is not Parquet
            raise InputError(f"Could not read {path} as Parquet: {error}") from error
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
    """Read an E5 / echo-data folder of ``<dataset>.jsonl`` (or ``.parquet``) files (any subset of llm2vec's datasets).

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
    for parquet in sorted(folder.glob("*.parquet")):
        if parquet.stem in files:
            raise InputError(f"{folder} holds both {parquet.stem}.jsonl and {parquet.name}: keep one of them.")
        files[parquet.stem] = parquet
    if datasets is not None:
        missing = [d for d in datasets if d not in files]
        if missing:
            raise MissingFileError(f"No {', '.join(m + '.jsonl' for m in missing)} in {folder}; found: {sorted(files)}")
        files = {d: files[d] for d in datasets}
    if not files:
        raise MissingFileError(f"No .jsonl or .parquet files in {folder}.")
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
        subsets += _build_subsets(stem, _read_rows(file), instruction, sym, str(file), dropped)
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


def subset_rows(subset: PairSubset) -> list[dict]:
    """A dataset's rows in the layout :func:`read_pair_folder` reads: ``{"query", "positive"[, "negative"]}``, with
    ``negative`` a list when there are several (``negative_1..n``); other columns (a teacher's ``label``) kept."""

    ds = subset.dataset
    negatives = negative_columns(ds.column_names)
    rows = []
    for row in ds:
        out = {k: v for k, v in row.items() if k not in negatives}
        if negatives:
            out["negative"] = row["negative"] if negatives == ["negative"] else [row[c] for c in negatives]
        rows.append(out)
    return rows


def write_pair_folder(data: PairData, folder: str | os.PathLike, fmt: str = "jsonl") -> list[Path]:
    """Each dataset of ``data`` as ``<name>.jsonl`` or ``<name>.parquet`` in ``folder`` (which must exist); an
    instruction variant (``allnli_split1``) keeps its split name, which :func:`read_pair_folder` reads back."""
    import json

    paths = []
    for subset in data.subsets:
        path = Path(folder) / f"{subset.name}.{fmt}"
        rows = subset_rows(subset)
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), path)
        else:
            with open(path, "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        paths.append(path)
    return paths


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
