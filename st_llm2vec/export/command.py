"""``st-llm2vec export MODEL OUT --backend B``: a portable model dir plus its graph for another runtime, proven
through that runtime before it is written.

The command's options, read from the backend table (:data:`.backends.BACKENDS`), and one dispatch to the backend's
module, imported only when the command runs, so ``--help`` loads no torch.
"""

from __future__ import annotations

import argparse
import importlib

from ..errors import InputError
from .backends import BACKENDS, DEFAULT_BACKEND
from .pipeline import DEFAULT_MIN_COSINE

# what an interrupted export leaves (the CLI says it): built in a temp dir, moved into place only when proven
INTERRUPTED = "nothing was written"


def add_arguments_export(parser: argparse.ArgumentParser) -> None:
    quantize = sorted({q for backend in BACKENDS.values() for q in backend.quantize})
    parser.add_argument("model", metavar="MODEL", help="a portable model dir (from `st-llm2vec convert` or model.save)")
    parser.add_argument("output", metavar="OUTPUT", help="directory to write MODEL plus the exported graph to")
    parser.add_argument("--backend", choices=tuple(BACKENDS), default=DEFAULT_BACKEND,
                        help="; ".join(f"{b.name}{' (default)' if b.name == DEFAULT_BACKEND else ''}: {b.help}"
                                       for b in BACKENDS.values()))
    parser.add_argument("--quantize", choices=quantize,
                        help="; ".join(f"{b.name}: {b.quantize_help}" for b in BACKENDS.values() if b.quantize))
    parser.add_argument("--min-cosine", type=float, default=DEFAULT_MIN_COSINE,
                        help=f"refuse the export below this min cosine vs the fp32 torch model (default {DEFAULT_MIN_COSINE})")
    parser.add_argument("--force", action="store_true", help="write the export even below --min-cosine (other checks stay)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT (only once the new one is proven)")
    parser.add_argument("--verbose", action="store_true", help="show the runtime's own log (llama.cpp's converter, "
                        "quantizer and loader for --backend gguf)")
    for backend in BACKENDS.values():
        for flags, settings in backend.options:
            parser.add_argument(*flags, **settings)


def run_export(args: argparse.Namespace) -> int:
    backend = BACKENDS[args.backend]
    if backend.unavailable:
        raise InputError(backend.unavailable)
    if args.quantize and args.quantize not in backend.quantize:
        raise InputError(f"--quantize {args.quantize} is not a {backend.name} quantization; choose one of "
                         f"{', '.join(backend.quantize) or 'none'}")
    if not 0 < args.min_cosine <= 1:  # nan too: every comparison with it fails
        raise InputError(f"--min-cosine must be a cosine in (0, 1], got {args.min_cosine}")
    for other in BACKENDS.values():  # another backend's option would be silently ignored
        for flags, settings in () if other is backend else other.options:
            if getattr(args, flags[0].lstrip("-").replace("-", "_"), None) != settings.get("default"):
                raise InputError(f"{flags[0]} is an option of --backend {other.name}, which --backend {backend.name} "
                                 f"does not use: drop it, or pass --backend {other.name}")
    return importlib.import_module(backend.module).run(args)
