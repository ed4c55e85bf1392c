"""What the supervised stage's options do to its pairs before training, in order: mined hard negatives
(``hard_negatives``: :mod:`.mining`), then a teacher's scores (``teacher``: :mod:`.distill`).

Each step runs as soon as it can: mining with another model and the teacher's scores before the student loads
(a large teacher and the student are never in memory together), mining with ``self`` once it has. The mined
rows are kept in ``output_dir/hard_negatives/`` (with ``summary.json``), keyed by the settings, the retriever
and the data, so a resumed run trains on the very rows it started with (random sampling included). Under
several processes the main process mines and scores first; the others read what it wrote.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MINED_DIR = "hard_negatives"


@dataclass
class PairOptions:
    """What was done to the pairs: per dataset, the mining summary and the teacher's cache file."""

    mined: dict[str, dict[str, Any]] | None = None
    teacher_scores: dict[str, str] | None = None
    notes: list[str] = field(default_factory=list)


def _miner_identity(arguments: Any, spec: str) -> str:
    """The retriever's weights as a cache key: for ``self``, the start model as the stage loads it."""
    from .scorer import SELF, scorer_fingerprint

    if spec != SELF:
        return scorer_fingerprint(spec)
    parts = [scorer_fingerprint(arguments.model_name_or_path)]
    if arguments.peft_model_name_or_path:
        parts.append(scorer_fingerprint(arguments.peft_model_name_or_path))
    parts += [str(getattr(arguments, k)) for k in ("quantization", "torch_dtype", "pooling_mode", "bidirectional",
                                                     "format")]
    return "self:" + "|".join(parts)


def _brief(reports: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The mining summary per dataset without ST's statistics table (which stays in summary.json)."""
    return {name: {k: v for k, v in report.items() if k != "report"} for name, report in reports.items()}


def _mined(arguments: Any, data: Any, output_dir: str, model: Any | None, settings: Any) -> tuple[Any, dict]:
    """``data`` with mined negatives: read from ``output_dir/hard_negatives`` when it holds this very mining, else
    mined now (``model`` for ``self``, else the retriever loaded here) and written there."""
    from ..files import read_json, write_json_atomic
    from .mining import MinedSet, describe, mine_pair_data
    from .pair_data import PairData, PairSubset
    from .pair_files import read_pair_folder, write_pair_folder
    from .scorer import load_scorer

    key = hashlib.sha256(json.dumps({
        "settings": settings.fingerprint(), "miner": _miner_identity(arguments, settings.mine_with),
        "data": [s.digest() for s in data.subsets]}, sort_keys=True).encode()).hexdigest()
    folder = Path(output_dir) / MINED_DIR
    summary = read_json(folder / "summary.json") or {}
    if summary.get("key") == key:
        table = {s.name: "" for s in data.subsets}
        saved = read_pair_folder(folder, instructions=table, symmetric=(), datasets=list(summary["datasets"]))
        saved_by_name = {s.name: s for s in saved.subsets}
        subsets = [PairSubset(s.name, saved_by_name[s.name].dataset, s.instruction, s.symmetric, s.source)
                   for s in data.subsets if s.name in saved_by_name]  # the stage's order, as when mined
        logger.info("hard negatives: the mined rows of this run, from %s", folder)
        return PairData(subsets, data.dropped), _brief(summary["datasets"])
    miner = model if model is not None else load_scorer(settings.mine_with)
    mined, reports = mine_pair_data(data, miner, settings)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.jsonl"):
        old.unlink()
    write_pair_folder(mined, folder)
    report = {name: asdict(r) for name, r in reports.items()}
    write_json_atomic(folder / "summary.json", {"key": key, "mine_with": settings.mine_with, "settings": asdict(settings),
                                                "datasets": {s.name: report[s.name] for s in mined.subsets},
                                                "emptied": [n for n in report if n not in mined.names]})
    for name, r in reports.items():
        logger.info("hard negatives of %s: %s", name, describe(MinedSet(**asdict(r))))
    return mined, _brief({s.name: report[s.name] for s in mined.subsets})


def apply_pair_options(arguments: Any, data: Any, args: Any, done: PairOptions | None = None,
                       model: Any | None = None) -> tuple[Any, PairOptions]:
    """The steps of the stage's options that can run now (``model``: the start model, once loaded), on ``data``;
    ``done`` says which already ran."""
    from .distill import check_candidates, with_teacher_scores
    from .scorer import SELF

    done = done or PairOptions()
    settings = arguments.mining() if hasattr(arguments, "mining") else None
    teacher = getattr(arguments, "teacher", None)
    if settings is not None and done.mined is None and (settings.mine_with != SELF or model is not None):
        with args.main_process_first(desc="hard negatives"):
            data, done.mined = _mined(arguments, data, args.output_dir, model if settings.mine_with == SELF else None,
                                      settings)
    if teacher and done.teacher_scores is None and (settings is None or done.mined is not None):
        check_candidates(data, arguments.loss_class)
        with args.main_process_first(desc="teacher scores"):
            data, done.teacher_scores = with_teacher_scores(
                data, teacher, arguments.teacher_instructions, arguments.teacher_cache_dir,
                args.per_device_eval_batch_size)
    return data, done
