"""Mined hard negatives: each dataset's queries searched against its documents with a retriever, and the closest
documents that are not the query's positive kept as its negatives (NV-Retriever's "TopK-PercPos" with a
``relative_margin``), dropping candidates that score too close to the positive (likely unlabelled positives).

Sentence Transformers' ``util.mine_hard_negatives`` does the mining (embedding, search, ranges, margins,
sampling); written here is only what it lacks: one dataset at a time (a batch comes from one dataset, and so do
its negatives), each side with the prompt the supervised stage trains with (:mod:`.scorer`), the given negatives
offered as candidates, our row layout (``negative``, or ``negative_1..n``), and a summary that counts what was
dropped — ST only prints those counts (:func:`_counts_from_report`).

The settings are declared once (:class:`MiningSettings`): the supervised stage's ``hard_negatives`` mapping and
``st-llm2vec mine``'s options both come from it. Importing this is cheap.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .keys import key
from .pair_data import PairData, PairSubset, negative_columns
from .scorer import INSTRUCTION_MODES, SELF

logger = logging.getLogger(__name__)


@dataclass
class MiningSettings:
    """How negatives are mined (the ``hard_negatives`` mapping of the supervised stage; ``st-llm2vec mine``'s options)."""

    mine_with: str = key(SELF, nullable=False, help="the retriever: a Sentence Transformers model dir or Hub id, or "
                                                    "'self' (the model being trained, as it starts)")
    num_negatives: int = key(1, low=1, nullable=False, help="negatives per query (more than 1: columns negative_1..n)")
    range_min: int = key(0, low=0, nullable=False, help="skip this many closest candidates")
    range_max: int | None = key(None, low=1, help="consider only this many closest candidates (default: enough)")
    margin: float | None = key(None, help="drop a candidate scoring above positive − margin (likely a positive)")
    relative_margin: float | None = key(None, low=0, high=1, high_open=True,
                                        help="drop a candidate scoring above positive − |positive| × relative_margin")
    max_score: float | None = key(None, help="drop a candidate scoring above this cosine")
    sampling_strategy: str = key("top", choices=("top", "random"), help="the closest kept candidates, or random ones")
    instructions: str = key("auto", choices=INSTRUCTION_MODES,
                            help="prompts while mining: data (each dataset's instruction, as trained), model (the "
                                 "retriever's own query/document prompts), none; auto: data for self, else model")
    batch_size: int = key(32, low=1, nullable=False, help="texts per encode batch")

    def check(self) -> None:
        if self.margin is not None and self.relative_margin is not None:
            raise ValueError("set margin or relative_margin, not both")
        if self.range_max is not None:
            if self.range_max <= self.range_min:
                raise ValueError(f"range_max {self.range_max} must be larger than range_min {self.range_min}")
            if self.num_negatives > self.range_max - self.range_min:
                raise ValueError(f"num_negatives {self.num_negatives} is more than the {self.range_max - self.range_min} "
                                 "candidates between range_min and range_max")

    def fingerprint(self) -> dict[str, Any]:
        """What changes the mined rows, besides the retriever's weights and the data."""
        return {k: v for k, v in asdict(self).items() if k not in ("batch_size", "mine_with")}


@dataclass
class MinedSet:
    """What mining did to one dataset."""

    rows_in: int
    rows_out: int
    given_negatives: int  # rows that came with a negative (now a candidate, not kept as such)
    dropped_likely_positives: dict[str, int] = field(default_factory=dict)  # candidates, by the setting that dropped them
    rows_without_enough_negatives: int = 0
    report: str = ""  # ST's statistics table (positive vs negative scores)


# ST's mine_hard_negatives prints what it dropped (its lines "Skipped 1,234 potential negatives (5.00%) due to the
# relative_margin of 0.05." and "Could not find enough negatives for 12 samples") and returns only the dataset.
_SKIPPED = re.compile(r"Skipped ([\d,]+) potential negatives \([\d.]+%\) due to the (\w+) of")
_SHORT = re.compile(r"Could not find enough negatives for ([\d,]+) samples")
_TABLE = re.compile(r"^(Metric|Count|Mean|Median|Std|Min|25%|50%|75%|Max)\s", re.M)


def _counts_from_report(text: str) -> tuple[dict[str, int], int, str]:
    """(candidates dropped per setting, rows short of negatives, the statistics table) from ST's printout."""
    dropped = {name: int(n.replace(",", "")) for n, name in _SKIPPED.findall(text)}
    short = sum(int(n.replace(",", "")) for n in _SHORT.findall(text))
    table = "\n".join(line for line in text.splitlines() if _TABLE.match(line))
    return dropped, short, table


def mine_subset(subset: Any, model: Any, settings: MiningSettings, mode: str) -> tuple[Any, MinedSet]:
    """One dataset (:class:`~.pair_data.PairSubset`) with mined negatives instead of its given ones, which join
    the candidates."""
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    from .scorer import subset_prompts

    ds = subset.dataset
    given = negative_columns(ds.column_names)
    candidates = list(dict.fromkeys(text for column in given for text in ds[column]))
    prompts = subset_prompts(subset, mode)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        mined = mine_hard_negatives(
            Dataset.from_dict({"query": ds["query"], "positive": ds["positive"]}), model,
            anchor_column_name="query", positive_column_name="positive", corpus=candidates or None,
            range_min=settings.range_min, range_max=settings.range_max, max_score=settings.max_score,
            absolute_margin=settings.margin, relative_margin=settings.relative_margin,
            num_negatives=settings.num_negatives, sampling_strategy=settings.sampling_strategy,
            query_prompt=prompts["query"], corpus_prompt=prompts["document"],
            output_format="triplet" if settings.num_negatives == 1 else "n-tuple",
            batch_size=settings.batch_size, verbose=True)
    dropped, short, table = _counts_from_report(printed.getvalue())
    report = MinedSet(len(ds), len(mined), len(ds) if given else 0, dropped, short, table)
    return PairSubset(subset.name, mined, subset.instruction, subset.symmetric, subset.source), report


def mine_pair_data(data: Any, model: Any, settings: MiningSettings, mode: str | None = None) -> tuple[Any, dict[str, MinedSet]]:
    """Every dataset of ``data`` (:class:`~.pair_data.PairData`) mined with ``model``; datasets left without rows
    are dropped (and reported)."""
    from .scorer import resolve_mode

    mode = resolve_mode(mode or settings.instructions, settings.mine_with)
    subsets, reports = [], {}
    was_training = model.training
    model.eval()
    try:
        for subset in data.subsets:
            mined, reports[subset.name] = mine_subset(subset, model, settings, mode)
            if len(mined.dataset):
                subsets.append(mined)
            logger.info("mined %s: %s", subset.name, describe(reports[subset.name]))
    finally:
        model.train(was_training)
    return PairData(subsets, data.dropped), reports


def describe(report: MinedSet) -> str:
    """One line: rows in → out and what was dropped."""
    dropped = sum(report.dropped_likely_positives.values())
    why = ", ".join(f"{n} by {name}" for name, n in report.dropped_likely_positives.items())
    return (f"{report.rows_in} rows → {report.rows_out}; {dropped} candidates dropped as likely positives"
            + (f" ({why})" if why else "") + f"; {report.rows_without_enough_negatives} rows without enough negatives")
