"""Plain-text corpora for MNTP: one text column from ``datasets``, tokenized into training rows.

Sources: local ``.txt`` (one text per line), ``.jsonl``/``.json``, ``.csv``/``.tsv`` or ``.parquet``
files, or a Hub dataset name (e.g. ``wikitext`` / ``wikitext-103-raw-v1`` as in llm2vec; only fetched
when the user names one). Two layouts, as in llm2vec's ``run_mntp.py``:

- grouped (default, llm2vec's non line-by-line mode): every text is tokenized with the tokenizer's
  special tokens, the token streams are concatenated and cut into blocks of exactly
  ``max_seq_length`` tokens; the remainder of each group of ``group_batch_size`` texts is dropped;
- line by line: one row per text, truncated to ``max_seq_length``.

Texts that tokenize to fewer than 2 tokens (special tokens included: e.g. an empty line that is only
a BOS) and whitespace-only texts are skipped and counted: MNTP predicts a token from the position
before it, so such a row has nothing to learn from. ``streaming=True`` processes the corpus lazily (an ``IterableDataset``).
Each output row is ``{"input_ids": [int, ...]}``, ready for :class:`st_llm2vec.recipe.mntp_masking.MNTPDataCollator`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

from datasets import Dataset, DatasetDict, Features, IterableDataset, Value, load_dataset
from datasets import Sequence as SequenceFeature
from datasets.exceptions import DatasetGenerationError

from ..errors import InputError, MissingFileError

logger = logging.getLogger(__name__)

# file extension -> (datasets builder, extra builder kwargs)
FILE_BUILDERS: dict[str, tuple[str, dict[str, Any]]] = {
    "txt": ("text", {}),
    "text": ("text", {}),
    "json": ("json", {}),
    "jsonl": ("json", {}),
    "csv": ("csv", {}),
    "tsv": ("csv", {"sep": "\t"}),
    "parquet": ("parquet", {}),
}
MIN_TOKENS = 2
OUTPUT_FEATURES = Features({"input_ids": SequenceFeature(Value("int32"))})


class EmptyDatasetError(InputError):
    """The corpus yields no training rows (no texts, all too short, or fewer tokens than one block)."""


@dataclass
class TextStats:
    """What tokenization kept and dropped (exact for in-memory datasets; running totals when streaming)."""

    texts: int = 0
    skipped_short: int = 0
    rows: int = 0

    def summary(self) -> str:
        return (
            f"{self.texts} texts, {self.skipped_short} skipped (fewer than {MIN_TOKENS} tokens), "
            f"{self.rows} training rows"
        )


def _builder_for(files: Sequence[str]) -> tuple[str, dict[str, Any]]:
    builders = set()
    for path in files:
        ext = path.rsplit(".", 1)[-1].lower() if "." in os.path.basename(path) else ""
        if ext not in FILE_BUILDERS:
            raise InputError(
                f"Unsupported data file {path!r}: use one of "
                + ", ".join(f".{e}" for e in FILE_BUILDERS)
                + " (one text per line for .txt)."
            )
        builders.add((FILE_BUILDERS[ext][0], tuple(sorted(FILE_BUILDERS[ext][1].items()))))
    if len(builders) > 1:
        raise InputError(f"Data files of different formats cannot be mixed: {list(files)}")
    name, kwargs = builders.pop()
    return name, dict(kwargs)


def _as_list(files: str | Sequence[str] | None) -> list[str]:
    if files is None:
        return []
    return [files] if isinstance(files, str) else list(files)


def load_texts(
    *,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_file: str | Sequence[str] | None = None,
    validation_file: str | Sequence[str] | None = None,
    streaming: bool = False,
    cache_dir: str | None = None,
    **load_kwargs: Any,
) -> DatasetDict | dict[str, IterableDataset]:
    """Load a raw corpus as ``{"train": ..., "validation": ...}`` (validation only where the source has one).

    Local files take precedence over ``dataset_name``. A Hub name is only contacted when given here.
    """
    train_files, validation_files = _as_list(train_file), _as_list(validation_file)
    if train_files or validation_files:
        for path in train_files + validation_files:
            if not os.path.exists(path):
                raise MissingFileError(f"Data file {path!r} does not exist.")
        for split, files in (("train", train_files), ("validation", validation_files)):
            if files and all(os.path.getsize(path) == 0 for path in files):
                raise EmptyDatasetError(f"The {split} data file(s) {files} are empty: no texts to train MNTP on.")
        builder, builder_kwargs = _builder_for(train_files + validation_files)
        data_files = {}
        if train_files:
            data_files["train"] = train_files
        if validation_files:
            data_files["validation"] = validation_files
        if builder == "text":
            builder_kwargs.setdefault("keep_linebreaks", False)
        try:
            raw = load_dataset(
                builder, data_files=data_files, streaming=streaming, cache_dir=cache_dir, **builder_kwargs, **load_kwargs
            )
        except DatasetGenerationError as error:
            raise InputError(f"Could not read {train_files + validation_files} as {builder!r} data: {error.__cause__ or error}") from error
    elif dataset_name:
        raw = load_dataset(dataset_name, dataset_config_name, streaming=streaming, cache_dir=cache_dir, **load_kwargs)
    else:
        raise InputError("Need a corpus: set train_file (txt/jsonl/csv/tsv/parquet) or dataset_name.")
    return raw


def text_column_of(dataset: Dataset | IterableDataset, text_column: str | None = None) -> str:
    """``text_column`` if given, else ``"text"`` if present, else the only string column.

    With several string columns and none named ``text`` (e.g. an ``id`` and a ``body``), guessing could
    train on the wrong one: that is an error asking for ``text_column``. The column used is logged.
    """
    features = dataset.features
    if features is None and isinstance(dataset, IterableDataset):
        features = Features({k: Value("string") if isinstance(v, str) else Value("null") for k, v in next(iter(dataset)).items()})
    names = list(features or {})
    if text_column is not None:
        if text_column not in names:
            raise InputError(f"text_column {text_column!r} is not a column of the dataset; columns: {names}")
        column = text_column
    elif "text" in names:
        column = "text"
    else:
        strings = [
            name for name in names
            if isinstance(features[name], Value) and features[name].dtype in ("string", "large_string")
        ]
        if not strings:
            raise InputError(f"The dataset has no text (string) column; columns: {names}. Set text_column.")
        if len(strings) > 1:
            raise InputError(
                f"The dataset has several string columns {strings} and none named 'text': set text_column "
                "to the one to train on."
            )
        column = strings[0]
    logger.info("Training text comes from the %r column (columns: %s).", column, names)
    return column


def tokenize_corpus(
    dataset: Dataset | IterableDataset,
    tokenizer: Any,
    max_seq_length: int,
    *,
    line_by_line: bool = False,
    text_column: str | None = None,
    group_batch_size: int = 1000,
    num_proc: int | None = None,
    load_from_cache_file: bool = True,
    stats: TextStats | None = None,
    desc: str = "train",
) -> Dataset | IterableDataset:
    """Tokenize one split into ``{"input_ids"}`` rows: ``max_seq_length`` blocks, or one row per text.

    Raises :class:`EmptyDatasetError` for an in-memory split that yields no row. A streaming split is
    checked on its first row (see :func:`check_not_empty`).
    """
    if max_seq_length is None or int(max_seq_length) < MIN_TOKENS:
        raise InputError(f"max_seq_length must be an integer >= {MIN_TOKENS}, got {max_seq_length!r}")
    max_seq_length = int(max_seq_length)
    stats = stats if stats is not None else TextStats()
    streaming = isinstance(dataset, IterableDataset)
    column = text_column_of(dataset, text_column)
    remove = list(dataset.column_names or next(iter(dataset)).keys())

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        texts = ["" if t is None else str(t) for t in batch[column]]
        if line_by_line:
            encoded = tokenizer(texts, truncation=True, max_length=max_seq_length, return_attention_mask=False)
        else:
            encoded = tokenizer(texts, return_attention_mask=False, verbose=False)
        # whitespace-only texts count as empty (llm2vec's line-by-line mode drops them too)
        ids = [list(x) for t, x in zip(texts, encoded["input_ids"]) if t.strip() and len(x) >= MIN_TOKENS]
        return {"input_ids": ids}

    def tokenize_counting(batch: dict[str, list]) -> dict[str, list]:
        out = tokenize(batch)
        stats.texts += len(batch[column])
        stats.skipped_short += len(batch[column]) - len(out["input_ids"])
        return out

    if streaming:
        kept = dataset.map(tokenize_counting, batched=True, remove_columns=remove, features=OUTPUT_FEATURES)
    else:
        n_texts = len(dataset)
        if n_texts == 0:
            raise EmptyDatasetError(f"The {desc} dataset has no texts.")
        kept = dataset.map(
            tokenize,
            batched=True,
            remove_columns=remove,
            num_proc=num_proc,
            load_from_cache_file=load_from_cache_file,
            desc=f"Tokenizing {desc} texts",
        )
        skipped = n_texts - len(kept)
        stats.texts += n_texts
        stats.skipped_short += skipped
        if skipped:
            logger.warning("%d of %d %s texts have fewer than %d tokens and were skipped.", skipped, n_texts, desc, MIN_TOKENS)
        if len(kept) == 0:
            raise EmptyDatasetError(f"All {n_texts} {desc} texts are shorter than {MIN_TOKENS} tokens: nothing to train MNTP on.")

    if line_by_line:
        result = kept
    else:

        def group(batch: dict[str, list]) -> dict[str, list]:
            stream = list(chain.from_iterable(batch["input_ids"]))
            usable = (len(stream) // max_seq_length) * max_seq_length
            return {"input_ids": [stream[i : i + max_seq_length] for i in range(0, usable, max_seq_length)]}

        group_kwargs: dict[str, Any] = {"batched": True, "batch_size": group_batch_size}
        if streaming:
            group_kwargs["features"] = OUTPUT_FEATURES
        else:
            group_kwargs.update(
                num_proc=num_proc, load_from_cache_file=load_from_cache_file, desc=f"Grouping {desc} tokens into blocks of {max_seq_length}"
            )
        result = kept.map(group, **group_kwargs)
        if not streaming and len(result) == 0:
            total = sum(len(x) for x in kept["input_ids"])
            raise EmptyDatasetError(
                f"The {desc} corpus has {total} tokens in total (per group of {group_batch_size} texts at most), "
                f"fewer than one block of max_seq_length={max_seq_length}: lower max_seq_length, add text, "
                "or set line_by_line=True."
            )
    if not streaming:
        stats.rows += len(result)
    return result


def check_not_empty(dataset: Dataset | IterableDataset, desc: str = "train") -> None:
    """Raise :class:`EmptyDatasetError` if ``dataset`` has no row (reads one row of a streaming dataset)."""
    if isinstance(dataset, IterableDataset):
        try:
            next(iter(dataset))
        except StopIteration:
            raise EmptyDatasetError(
                f"The streaming {desc} corpus yields no training rows: no texts, all shorter than {MIN_TOKENS} "
                "tokens, or fewer tokens than one max_seq_length block."
            ) from None
    elif len(dataset) == 0:
        raise EmptyDatasetError(f"The {desc} dataset has no rows.")


def split_validation(
    raw: DatasetDict | dict[str, Any], percentage: int | float, seed: int | None = None
) -> tuple[Any, Any]:
    """(train, validation): the source's validation split, else the first ``percentage`` % of train.

    llm2vec's rule (``train[:p%]`` / ``train[p%:]``); a streaming corpus needs its own validation split.
    """
    train = raw["train"] if "train" in raw else None
    if train is None:
        raise InputError(f"The corpus has no 'train' split; splits: {list(raw)}")
    if "validation" in raw:
        return train, raw["validation"]
    if not percentage:
        return train, None
    if isinstance(train, IterableDataset):
        raise InputError("A streaming corpus without a validation split cannot be split by percentage: set validation_file.")
    n_val = int(len(train) * float(percentage) / 100)
    if n_val == 0:
        logger.warning("validation_split_percentage=%s of %d texts is 0 texts: no validation set.", percentage, len(train))
        return train, None
    return train.select(range(n_val, len(train))), train.select(range(n_val))
