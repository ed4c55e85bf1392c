"""What every export backend does around its own conversion: it takes a portable dir only, builds the export in a
copy of it, judges the proof the same way (finite, bidirectional, min cosine vs the float32 torch model) and
writes the report and the model card's section. Each backend (:mod:`.backends`) supplies the conversion and the
figures of its proof.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from ..errors import InputError, MissingFileError
from ..proof import PROBE_TEXTS, foreign_modules, modules_of

logger = logging.getLogger(__name__)

DEFAULT_MIN_COSINE = 0.99  # the proof's bound: min cosine of the export vs the float32 torch model
REPORT_FILE = "export_report.json"  # in the backend's folder of OUTPUT
# Held texts for the cosine check: other lengths and content than the probe texts, so the batch pads.
HELD_TEXTS = PROBE_TEXTS + [
    "Quantum computers use qubits, which can represent a zero and a one at the same time.",
    "She sells sea shells by the sea shore.",
    "The recipe calls for two cups of flour, one egg, a pinch of salt and half a litre of milk, mixed well.",
    "Paris is the capital of France.",
    "What is the boiling point of water at high altitude?",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "def add(a, b):\n    return a + b",
    "1 2 3 4 5 6 7 8 9 10",
]


def portable_source(source: Any, output: Any) -> tuple[Path, Path, dict[str, Any]]:
    """``(source, output, source's config.json)``: ``source`` must be a portable dir (stock modules, a stock
    Transformer first) and ``output`` a directory outside it."""
    source, output = Path(source).expanduser().absolute(), Path(output).expanduser().absolute()
    if not source.is_dir():
        raise MissingFileError(f"{source} is not a directory")
    if output == source or source in output.parents or output in source.parents:
        raise InputError("OUTPUT must be a directory outside MODEL (and not one holding it)")
    if not (source / "modules.json").is_file():
        raise MissingFileError(f"{source} is not a Sentence-Transformers model dir (no modules.json); "
                               "write one with `st-llm2vec convert SOURCE OUT` or `model.save(OUT)` first")
    modules = modules_of(source)
    foreign = foreign_modules(m["type"] for m in modules)
    if foreign or not modules or not modules[0]["type"].endswith(".Transformer") or modules[0].get("path", ""):
        raise InputError(f"{source} is not in the portable format (modules {foreign or [m['type'] for m in modules]}); "
                         "only portable dirs (stock modules) can be exported: convert with --format portable")
    return source, output, json.loads((source / "config.json").read_text(encoding="utf-8"))


def copy_model_dir(source: Path, tmp: Path, backend_dir: str) -> Path:
    """The portable dir's files into ``tmp`` (an earlier export's backend folders, the ones holding its report, and
    hidden files left out); returns the new, empty ``tmp/backend_dir``."""
    for entry in source.iterdir():
        if entry.name.startswith(".") or (entry / REPORT_FILE).is_file():
            continue
        (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, tmp / entry.name)
    (tmp / backend_dir).mkdir()
    return tmp / backend_dir


def check_proof(proof: dict[str, Any], *, bidirectional: bool, min_cosine: float, force: bool) -> list[str]:
    """The reasons an export's proof fails (empty: it passes): non-finite outputs, a causal export of a
    bidirectional model (token 1 moves less than half as much as in torch when only the last word
    changes), a min cosine vs the fp32 torch model below ``min_cosine`` (``force`` turns only that into a
    warning)."""
    problems = []
    if not proof["finite"]:
        problems.append("the export gives non-finite outputs (NaN/inf)")
    shift, expected = proof["first_token_shift"], proof["torch_first_token_shift"]
    if bidirectional and not shift >= max(1e-6, 0.5 * expected):
        problems.append(f"the export is not bidirectional: token 1 moved by {shift:.1e} when only the last word "
                        f"changed (the torch model: {expected:.1e})")
    if not proof["min_cosine"] >= min_cosine:
        message = (f"min cosine vs the fp32 torch model is {proof['min_cosine']:.6f} < {min_cosine} "
                   "(pass --min-cosine or --force to accept it)")
        if force:
            logger.warning("Forced: %s", message)
        else:
            problems.append(message)
    return problems


def finish(tmp: Path, backend_dir: str, report: dict[str, Any], card_section: str) -> None:
    """The report into ``tmp/backend_dir``, its section onto the model card, the umask's modes."""
    from ..files import normalize_permissions

    (tmp / backend_dir / REPORT_FILE).write_text(json.dumps(report, indent=2), encoding="utf-8")
    card = tmp / "README.md"
    card.write_text((card.read_text(encoding="utf-8") if card.exists() else "") + card_section, encoding="utf-8")
    normalize_permissions(tmp)
