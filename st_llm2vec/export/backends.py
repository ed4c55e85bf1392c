"""The export backends, one entry each: what ``st-llm2vec export --backend`` offers, its quantizations and options,
the folder it writes in OUTPUT, and the module that does the work. The command, its ``--help`` and the docs read
this table; a new backend is an entry here and a module with ``run(args) -> int`` (the command, once the options
are checked) and ``export(source, output, ...) -> report`` (the library call).

Importing this is cheap (``--help`` loads no torch): the modules are imported when the command runs. gguf.py is
light, so its own lists of types are read from it; onnx.py imports torch, so its one choice is declared here and
onnx.py reads it from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .gguf import DEFAULT_QUANTIZE as GGUF_DEFAULT
from .gguf import GGUF_DIR
from .gguf import QUANTIZE as GGUF_QUANTIZE

OPSET = 17  # the ONNX opset written


@dataclass(frozen=True)
class Backend:
    """One export backend: ``module`` does it, into ``folder`` of OUTPUT; ``quantize`` (default ``default_quantize``)
    its ``--quantize`` choices, ``options`` its own command-line options ((flags, argparse settings), ...), ``help``
    its line in ``--backend``'s help; ``unavailable``: why it cannot run here (the command refuses with it)."""

    name: str
    module: str
    folder: str
    help: str
    quantize: tuple[str, ...] = ()
    default_quantize: str | None = None
    quantize_help: str = ""
    options: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = field(default=())
    unavailable: str = ""


BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        Backend(
            "onnx", "st_llm2vec.export.onnx", "onnx", "an ONNX graph for ONNX Runtime",
            quantize=("int8",), quantize_help="int8 (dynamic int8 quantization in ONNX Runtime, per channel)",
            options=((("--opset",), {"type": int, "default": OPSET, "help": f"onnx: the ONNX opset (default {OPSET})"}),),
        ),
        Backend(
            "gguf", "st_llm2vec.export.gguf", GGUF_DIR, "a GGUF for llama.cpp",
            quantize=GGUF_QUANTIZE, default_quantize=GGUF_DEFAULT,
            quantize_help=f"{', '.join(GGUF_QUANTIZE)} (default {GGUF_DEFAULT})",
            options=((("--converter",), {"default": None, "metavar": "PATH", "help": (
                "gguf: llama.cpp's convert_hf_to_gguf.py (default: the one `st-llm2vec fetch-gguf-converter` cached)")}),),
        ),
        Backend(
            "openvino", "", "openvino", "see the error",
            unavailable=(
                "--backend openvino is not available: stock sentence-transformers loads OpenVINO through optimum-intel, "
                "whose releases cap transformers < 5.6 and huggingface-hub < 1.22 (st-llm2vec needs transformers "
                ">= 5.2,<5.24 with huggingface-hub 2.x). OpenVINO's runtime reads the ONNX graph directly: export with "
                "--backend onnx and compile onnx/model.onnx with openvino.Core()."
            ),
        ),
    )
}
DEFAULT_BACKEND = "onnx"
