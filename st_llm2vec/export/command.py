"""``st-llm2vec export MODEL OUT --backend B``: a portable model dir plus its graph for another runtime, proven
through that runtime before it is written.

The command's options and one dispatch; each backend is a module of its own (``onnx``, ``gguf``), imported only when
the command runs, so ``--help`` loads no torch. A new backend is an entry in :data:`BACKENDS` and a module
whose ``export(source, output, ...)`` returns its report.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from ..errors import InputError, MissingFileError
from ..proof import PROBE_TEXTS, foreign_modules, modules_of
from .gguf import DEFAULT_QUANTIZE as GGUF_DEFAULT
from .gguf import QUANTIZE as GGUF_QUANTIZE

logger = logging.getLogger(__name__)

# backend -> its --quantize choices
BACKENDS: dict[str, tuple[str, ...]] = {"onnx": ("int8",), "gguf": GGUF_QUANTIZE, "openvino": ()}
DEFAULT_MIN_COSINE = 0.99  # the proof's bound: min cosine of the export vs the float32 torch model
OPSET = 17  # the ONNX opset written
# what an interrupted export leaves (the CLI says it): built in a temp dir, moved into place only when proven
INTERRUPTED = "nothing was written"

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
REPORT_FILE = "export_report.json"  # in the backend's folder of OUTPUT

_OPENVINO = (
    "--backend openvino is not available: stock sentence-transformers loads OpenVINO through optimum-intel, "
    "whose releases cap transformers < 5.6 and huggingface-hub < 1.22 (st-llm2vec needs transformers "
    ">= 5.2,<5.24 with huggingface-hub 2.x). OpenVINO's runtime reads the ONNX graph directly: export with "
    "--backend onnx and compile onnx/model.onnx with openvino.Core()."
)


def add_arguments_export(parser: argparse.ArgumentParser) -> None:
    quantize = sorted({q for choices in BACKENDS.values() for q in choices})
    parser.add_argument("model", metavar="MODEL", help="a portable model dir (from `st-llm2vec convert` or model.save)")
    parser.add_argument("output", metavar="OUTPUT", help="directory to write MODEL plus the exported graph to")
    parser.add_argument("--backend", choices=tuple(BACKENDS), default="onnx",
                        help="onnx (default): an ONNX graph for ONNX Runtime; gguf: a GGUF for llama.cpp; openvino: see the error")
    parser.add_argument("--quantize", choices=quantize,
                        help=f"onnx: int8 (dynamic int8 quantization in ONNX Runtime, per channel); gguf: "
                             f"{', '.join(GGUF_QUANTIZE)} (default {GGUF_DEFAULT})")
    parser.add_argument("--min-cosine", type=float, default=DEFAULT_MIN_COSINE,
                        help=f"refuse the export below this min cosine vs the fp32 torch model (default {DEFAULT_MIN_COSINE})")
    parser.add_argument("--force", action="store_true", help="write the export even below --min-cosine (other checks stay)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT (only once the new one is proven)")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"onnx: the ONNX opset (default {OPSET})")
    parser.add_argument("--converter", default=None, metavar="PATH",
                        help="gguf: llama.cpp's convert_hf_to_gguf.py (default: the one `st-llm2vec fetch-gguf-converter` cached)")


def run_export(args: argparse.Namespace) -> int:
    if args.backend == "openvino":
        raise InputError(_OPENVINO)
    if args.quantize and args.quantize not in BACKENDS[args.backend]:
        raise InputError(f"--quantize {args.quantize} is not a {args.backend} quantization; choose one of "
                         f"{', '.join(BACKENDS[args.backend]) or 'none'}")
    if args.backend == "gguf":
        return _run_gguf(args)
    from . import onnx

    report = onnx.export(args.model, args.output, quantize=args.quantize, min_cosine=args.min_cosine,
                         force=args.force, overwrite=args.overwrite, opset=args.opset)
    proof = report["proof"]
    print(f"Exported {args.model} to {args.output}/{onnx.ONNX_DIR}/{onnx.ONNX_FILE} "
          f"({report['quantize'] or 'fp32'}, {report['graph_bytes'] / 1e6:.1f} MB, {report['seconds']} s)")
    print(f"Proof: finite; first-token shift {proof['first_token_shift']:.2e} (torch {proof['torch_first_token_shift']:.2e}); "
          f"min cosine vs fp32 torch {proof['min_cosine']:.6f} over {proof['texts']} texts")
    print(f"Load with: from st_llm2vec.export.onnx import load_onnx; load_onnx({args.output!r}). Note: {onnx.OPTIMUM_NOTE}.")
    return 0


def _run_gguf(args: argparse.Namespace) -> int:
    from . import gguf

    report = gguf.export(args.model, args.output, quantize=args.quantize or GGUF_DEFAULT, min_cosine=args.min_cosine,
                         force=args.force, overwrite=args.overwrite, converter=args.converter)
    proof = report["proof"]
    path = f"{args.output}/{gguf.GGUF_DIR}/{report['file']}"
    print(f"Exported {args.model} to {path} ({report['quantize']}, pooling {report['pooling']}, "
          f"{report['bytes'] / 1e6:.1f} MB, {report['seconds']} s)")
    print(f"Proof through llama.cpp: finite; first-token shift {proof['first_token_shift']:.2e} (torch "
          f"{proof['torch_first_token_shift']:.2e}); min cosine vs fp32 torch {proof['min_cosine']:.6f} "
          f"(mean {proof['mean_cosine']:.6f}) over {proof['texts']} texts")
    no_repack = "" if proof["repack"] else " --no-repack  (llama.cpp's weight repacking crashed on this CPU)"
    print(f"Serve with: llama-server -m {path} --embeddings -ub 8192 -b 8192{no_repack}")
    return 0


# -- what every backend does --------------------------------------------------------------------------


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
    """The portable dir's files into ``tmp`` (an earlier export's backend folders and hidden files left out);
    returns the new, empty ``tmp/backend_dir``."""
    for entry in source.iterdir():
        if entry.name in (*BACKENDS, "gguf") or entry.name.startswith("."):
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
