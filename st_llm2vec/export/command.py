"""``st-llm2vec export MODEL OUT --backend B``: a portable model dir plus its graph for another runtime, proven
through that runtime before it is written.

The command's options and one dispatch; each backend is a module of its own (``onnx``), imported only when
the command runs, so ``--help`` loads no torch. A new backend is an entry in :data:`BACKENDS` and a module
whose ``export(source, output, ...)`` returns its report.
"""

from __future__ import annotations

import argparse

from ..errors import InputError

# backend -> its --quantize choices
BACKENDS: dict[str, tuple[str, ...]] = {"onnx": ("int8",), "openvino": ()}
DEFAULT_MIN_COSINE = 0.99  # the proof's bound: min cosine of the export vs the float32 torch model
OPSET = 17  # the ONNX opset written
# what an interrupted export leaves (the CLI says it): built in a temp dir, moved into place only when proven
INTERRUPTED = "nothing was written"

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
    parser.add_argument("--backend", choices=tuple(BACKENDS), default="onnx", help="onnx (default); openvino: see the error")
    parser.add_argument("--quantize", choices=quantize,
                        help="onnx: int8 (dynamic int8 quantization in ONNX Runtime, per channel)")
    parser.add_argument("--min-cosine", type=float, default=DEFAULT_MIN_COSINE,
                        help=f"refuse the export below this min cosine vs the fp32 torch model (default {DEFAULT_MIN_COSINE})")
    parser.add_argument("--force", action="store_true", help="write the export even below --min-cosine (other checks stay)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT (only once the new one is proven)")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"onnx: the ONNX opset (default {OPSET})")


def run_export(args: argparse.Namespace) -> int:
    if args.backend == "openvino":
        raise InputError(_OPENVINO)
    if args.quantize and args.quantize not in BACKENDS[args.backend]:
        raise InputError(f"--quantize {args.quantize} is not a {args.backend} quantization; choose one of "
                         f"{', '.join(BACKENDS[args.backend]) or 'none'}")
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
