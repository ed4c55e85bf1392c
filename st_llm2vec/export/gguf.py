"""``st-llm2vec export MODEL OUT --backend gguf``: a portable model dir as a GGUF file that llama.cpp (llama-server,
llama-cpp-python, LangChain, Ollama, LM Studio) runs bidirectionally with the right pooling, proven as users run it.

What llama.cpp's own tools do, they do: its converter (``convert_hf_to_gguf.py``, which ships in the
llama-cpp-python sdist, not in its wheel: :func:`fetch_converter` puts it in the cache once) writes the file, as its
``llama-embed`` architecture (non-causal, no KV cache) for a Llama; llama.cpp's quantizer makes the quantized types,
per-tensor types included (:mod:`.gguf_write`). The proof (:mod:`.gguf_proof`) runs the file through
llama-cpp-python as users do (one ``embed()`` of a list of ~200 varied texts) and refuses it below ``--min-cosine``
vs the float32 torch model unless ``--force``; the report and the model card give each file's size, speed and
min cosine.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import InputError, MissingExtraError
from .gguf_write import CONVERTER_TYPES, LLAMA_POOLING, LLAMA_QUANTS, parse_type, write_gguf  # noqa: F401 (API)

logger = logging.getLogger(__name__)

GGUF_DIR = "gguf"
# --quantize: the converter's types, llama.cpp's quantizations, and mixed types whose per-tensor choice was measured
# (benchmarks/gguf_files.py; the Python API takes any type gguf_write.parse_type reads, and keep={regex: type})
# Measured on untrained SmolLM2-135M (the export's 200 proof texts, min cosine): F16 blocks 0.983 on the shortest texts,
# mostly from block 0 (block 0 at F32: 0.998); a Q8_0 token embedding costs nothing (1.00000 with F32 blocks); Q8_0 in
# the blocks breaks it wherever it is (all 0.754, attention only 0.677, FFN only 0.529, blocks 10-29 only 0.977) -
# except after the layers where its massive activations form: blocks 0-1 F32, 2-11 F16, 12-29 Q8_0 measured 0.9928
# on the proof's texts and 0.998 on 256 held-out STS sentences, at 199 MB (F16: 271 MB).
MIXED = ("q8_0:blk0-1-f32:blk2-11-f16", "q8_0:blocks-f16:blk0-0-f32", "q8_0:blocks-f16")
QUANTIZE = CONVERTER_TYPES + LLAMA_QUANTS + MIXED
DEFAULT_QUANTIZE = "f16"
CONVERTER = "convert_hf_to_gguf.py"
INSTALL_HINT = 'pip install -e ".[gguf]"  (from the st-llm2vec clone: llama-cpp-python is built from source, minutes)'


class GGUFExportError(InputError):
    """The GGUF could not be written or failed its proof; the message says which check and what to do."""


# -- llama.cpp's converter ----------------------------------------------------------------------------


def llama_cpp_version() -> str:
    """The installed llama-cpp-python's version (its sdist carries the matching converter)."""
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        raise MissingExtraError(f"GGUF export needs llama-cpp-python (llama.cpp's runtime): {INSTALL_HINT}") from None


def converter_dir(version: str | None = None) -> Path:
    """Where :func:`fetch_converter` keeps llama.cpp's converter for llama-cpp-python ``version``."""
    from ..smollm2 import default_cache_dir

    return default_cache_dir() / f"llama.cpp-converter-{version or llama_cpp_version()}"


def find_converter(explicit: str | os.PathLike | None = None) -> Path:
    """``convert_hf_to_gguf.py``: ``explicit`` (e.g. a llama.cpp checkout's), ``$ST_LLM2VEC_GGUF_CONVERTER``, or
    the one :func:`fetch_converter` cached for the installed llama-cpp-python."""
    for given in (explicit, os.environ.get("ST_LLM2VEC_GGUF_CONVERTER") or None):
        if given is not None:
            path = Path(given).expanduser()
            path = path / CONVERTER if path.is_dir() else path
            if not path.is_file():
                raise MissingExtraError(f"{path} is not llama.cpp's {CONVERTER}")
            return path
    cached = converter_dir() / CONVERTER
    if not cached.is_file():
        raise MissingExtraError(
            f"llama.cpp's converter ({CONVERTER}) is not in the cache: it ships in the llama-cpp-python "
            f"{llama_cpp_version()} sdist, not in the wheel. Run `st-llm2vec fetch-gguf-converter` once (pip takes the "
            "sdist from its cache or PyPI), or pass --converter PATH (a llama.cpp checkout)."
        )
    return cached


def fetch_converter(*, quiet: bool = False) -> Path:
    """Put llama.cpp's converter (``convert_hf_to_gguf.py``, ``conversion/``, ``gguf-py/``, its licence) from the
    installed llama-cpp-python's sdist into the cache; returns the script's path. pip downloads the sdist (from its
    own cache when the package was built from it, which is how llama-cpp-python installs). Says what it does on
    stderr unless ``quiet`` (a download of ~75 MB can take a minute)."""
    from ..files import temp_dir_beside

    def say(message: str) -> None:
        if not quiet:
            print(f"st-llm2vec: {message}", file=sys.stderr, flush=True)

    version = llama_cpp_version()
    target = converter_dir(version)
    if (target / CONVERTER).is_file():
        say(f"llama.cpp's converter for llama-cpp-python {version} is already in the cache")
        return target / CONVERTER
    work = Path(tempfile.mkdtemp(prefix="st-llm2vec-sdist-"))
    try:
        say(f"getting the llama-cpp-python {version} sdist with pip (from its cache, else PyPI: ~75 MB)")
        started = time.perf_counter()
        cmd = [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}", "--no-deps", "--no-binary",
               ":all:", "-d", str(work), "-q"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        archives = sorted(work.glob("llama_cpp_python-*.tar.gz"))
        if proc.returncode != 0 or not archives:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise MissingExtraError(f"pip could not get the llama-cpp-python {version} sdist ({tail[0]}); pass "
                                    f"--converter PATH to a llama.cpp checkout's {CONVERTER} instead")
        say(f"got {archives[0].name} ({archives[0].stat().st_size / 1e6:.0f} MB, {time.perf_counter() - started:.0f} s);"
            f" extracting vendor/llama.cpp/{CONVERTER} and its gguf-py to {target}")
        prefix = f"{archives[0].name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
        keep = (CONVERTER, "conversion/", "gguf-py/", "LICENSE")
        tmp = temp_dir_beside(target)
        try:
            with tarfile.open(archives[0]) as tar:
                for member in tar.getmembers():
                    name = member.name.removeprefix(prefix)
                    if member.name.startswith(prefix) and name.startswith(keep) and (member.isfile() or member.isdir()):
                        member.name = name
                        tar.extract(member, tmp, filter="data")
            if not (tmp / CONVERTER).is_file():
                raise MissingExtraError(f"{archives[0].name} holds no vendor/llama.cpp/{CONVERTER}")
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target / CONVERTER


def add_arguments_fetch_gguf_converter(parser: Any) -> None:
    parser.add_argument("--quiet", action="store_true", help="print only the converter's path")


def run_fetch_gguf_converter(args: Any) -> int:
    print(fetch_converter(quiet=args.quiet))
    return 0


# -- the export ---------------------------------------------------------------------------------------


def _card_section(report: dict[str, Any]) -> str:
    proof = report["proof"]
    name = report["file"]
    no_repack = "" if proof["repack"] else " --no-repack"
    speed = proof["gguf_texts_per_s"] / max(proof["torch_texts_per_s"], 1e-9)
    lines = [
        "", "## GGUF (llama.cpp)", "",
        f"`{GGUF_DIR}/{name}` ({report['bytes'] / 1e6:.1f} MB): this model for llama.cpp ({report['quantize']}), "
        f"converted by llama.cpp's own `convert_hf_to_gguf.py` (llama-cpp-python {report['llama_cpp_python']}) as its "
        f"`{proof['architecture']}` architecture (non-causal attention, no KV cache), pooling `{report['pooling']}` "
        "written in the file.", "",
        f"Proven when exported, as users run it: llama-cpp-python `Llama(path, embedding=True, n_ctx={proof['n_ctx']}, "
        f"n_batch={proof['n_ctx']}, n_ubatch={proof['n_ctx']}).embed(texts)` with {proof['texts']} varied texts in one "
        f"list: min cosine vs the float32 torch model {proof['min_cosine']:.5f} (mean {proof['mean_cosine']:.6f}); "
        f"texts embedded alone vs in the list: min cosine {proof['alone_min_cosine']:.5f}; token 1's state moved by "
        f"{proof['first_token_shift']:.2e} when only the last word changed (torch: {proof['torch_first_token_shift']:.2e}); "
        f"{proof['gguf_texts_per_s']:.1f} texts/s vs {proof['torch_texts_per_s']:.1f} in torch float32 ({speed:.2f}x, "
        f"{proof['threads']} thread(s), one round on the exporting machine).", "",
        "Strip your texts (`text.strip()`) before embedding them: sentence-transformers strips them, llama.cpp does "
        "not, and a trailing space gives other token ids and another vector.", "",
        "```python",
        "from llama_cpp import Llama",
        "",
        f"llm = Llama('{GGUF_DIR}/{name}', embedding=True, n_ctx=512, n_batch=512, n_ubatch=512)",
        "vectors = llm.embed([t.strip() for t in texts])",
        "",
        "from langchain_community.embeddings import LlamaCppEmbeddings  # the same call underneath",
        "",
        f"embeddings = LlamaCppEmbeddings(model_path='{GGUF_DIR}/{name}', n_ctx=512, n_batch=512)",
        "```", "",
        "```bash",
        f"llama-server -m {GGUF_DIR}/{name} --embeddings -c 8192 -b 8192 -ub 8192{no_repack}",
        "```", "",
        *([] if proof["repack"] else [
            f"`--no-repack`: on the CPU this was exported on, llama.cpp's weight repacking for this type crashed "
            f"({proof['crash']}); without it the file runs, and the figures above were measured so (llama-cpp-python has "
            "no argument for it: its model params' `use_extra_bufts = False`).", ""]),
        "llama.cpp applies no prompt: pass an instruction as text before the query; its tokens are then pooled with "
        "the text's (sentence-transformers leaves them out). A non-causal batch must fit one ubatch "
        "(`n_ubatch` >= the longest input, else llama.cpp stops); `embed()` cuts texts longer than `n_batch` tokens.", "",
    ]
    return "\n".join(lines)


def check_gguf_proof(proof: dict[str, Any], *, bidirectional: bool, min_cosine: float, force: bool) -> list[str]:
    """The shared checks (:func:`.pipeline.check_proof`) plus: vectors must not depend on which texts share a batch
    (alone vs in the list, held to the same threshold, ``force`` turns it into a warning)."""
    from .pipeline import check_proof

    problems = check_proof(proof, bidirectional=bidirectional, min_cosine=min_cosine, force=force)
    if not proof["alone_min_cosine"] >= min_cosine:
        message = (f"texts embedded alone vs in one list differ: min cosine {proof['alone_min_cosine']:.6f} < "
                   f"{min_cosine}")
        if force:
            logger.warning("Forced: %s", message)
        else:
            problems.append(message)
    return problems


def export(source: str | os.PathLike, output: str | os.PathLike, *, quantize: str = DEFAULT_QUANTIZE,
           min_cosine: float | None = None, force: bool = False, overwrite: bool = False,
           converter: str | os.PathLike | None = None, texts: list[str] | None = None,
           keep: dict[str, str] | None = None, threads: int | None = None, verbose: bool = False) -> dict[str, Any]:
    """Write ``source`` (a portable dir) plus its proven GGUF (``gguf/model-<type>.gguf``) to ``output``; returns the
    report. ``quantize``: a type :func:`.gguf_write.parse_type` reads (``q8_0:blocks-f16``); ``keep``: more
    per-tensor types (tensor-name regex -> ggml type); ``texts``: the proof's texts (default ~200 varied ones).
    Built in a temp dir beside ``output``, moved into place only once proven."""
    from ..files import atomic_dir, check_output
    from .gguf_proof import prove_gguf
    from .pipeline import DEFAULT_MIN_COSINE, copy_model_dir, finish, portable_source

    gguf_type = parse_type(quantize)
    missing = [name for name in ("llama_cpp", "gguf", "sentencepiece") if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtraError(f"GGUF export needs llama-cpp-python, gguf and sentencepiece ({', '.join(missing)} "
                                f"missing): {INSTALL_HINT}")
    min_cosine = DEFAULT_MIN_COSINE if min_cosine is None else min_cosine
    source, output, config = portable_source(source, output)
    check_output(output, overwrite)
    script = find_converter(converter)
    pooling = json.loads((source / _pooling_dir(source) / "config.json").read_text(encoding="utf-8"))["pooling_mode"]
    if pooling not in LLAMA_POOLING:
        raise GGUFExportError(f"llama.cpp has no pooling for {pooling!r}")
    bidirectional = config.get("is_causal") is False or config.get("use_bidirectional_attention") is True
    from sentence_transformers import SentenceTransformer

    started = time.perf_counter()
    model = SentenceTransformer(str(source), device="cpu", local_files_only=True)
    model.eval()
    name = f"model-{gguf_type.name.replace(':', '.')}.gguf"
    with atomic_dir(output, overwrite) as tmp:
        folder = copy_model_dir(source, tmp, GGUF_DIR)
        written = write_gguf(source, folder / name, gguf_type, pooling, script, keep=keep, verbose=verbose)
        proof = prove_gguf(model, folder / name, texts, threads=threads, verbose=verbose).as_dict()
        problems = check_gguf_proof(proof, bidirectional=bidirectional, min_cosine=min_cosine, force=force)
        if problems:
            hint = ("; f32 is exact, and a mixed type keeps the tensors that move the vectors at a wider type "
                    "(benchmarks/gguf_files.py measures each)" if proof["min_cosine"] < min_cosine else "")
            raise GGUFExportError(f"the {gguf_type.name} GGUF failed its proof: " + "; ".join(problems) + hint)
        if not proof["repack"]:
            logger.warning("llama.cpp crashed running %s with weight repacking (%s on this CPU); it runs with "
                           "--no-repack, which the proof used and the card records", name, proof["crash"])
        from .gguf_write import tensor_types

        report = {
            "backend": "gguf", "quantize": gguf_type.name, "keep": written.keep, "file": name, "pooling": pooling,
            "source": source.name, "llama_cpp_python": llama_cpp_version(), "bidirectional": bidirectional,
            "min_cosine_threshold": min_cosine, "forced": bool(force and proof["min_cosine"] < min_cosine),
            "proof": proof, "tensor_types": _count(tensor_types(folder / name).values()),
            "seconds": round(time.perf_counter() - started, 1), "bytes": (folder / name).stat().st_size,
        }
        finish(tmp, GGUF_DIR, report, _card_section(report))
    return report


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def run(args: Any) -> int:
    """``st-llm2vec export --backend gguf``, its options checked: export and say what was proven and how to serve it."""
    report = export(args.model, args.output, quantize=args.quantize or DEFAULT_QUANTIZE, min_cosine=args.min_cosine,
                    force=args.force, overwrite=args.overwrite, converter=args.converter,
                    verbose=bool(getattr(args, "verbose", False)))
    proof = report["proof"]
    path = f"{args.output}/{GGUF_DIR}/{report['file']}"
    speed = proof["gguf_texts_per_s"] / max(proof["torch_texts_per_s"], 1e-9)
    print(f"Exported {args.model} to {path} ({report['quantize']}, {proof['architecture']}, pooling "
          f"{report['pooling']}, {report['bytes'] / 1e6:.1f} MB, {report['seconds']} s)")
    print(f"Proof through llama-cpp-python as users run it (embed() of {proof['texts']} texts in one list, "
          f"n_ctx={proof['n_ctx']}): min cosine vs float32 torch {proof['min_cosine']:.5f} (mean "
          f"{proof['mean_cosine']:.6f}); alone vs in the list {proof['alone_min_cosine']:.5f}; "
          f"{proof['gguf_texts_per_s']:.1f} texts/s vs torch {proof['torch_texts_per_s']:.1f} ({speed:.2f}x, "
          f"{proof['threads']} thread(s), one round)")
    # the same figures as one Markdown table (what the README quotes and tests/test_readme.py compares)
    print("| type | MB | min cosine | mean cosine | texts/s vs torch float32 |\n|---|---:|---:|---:|---:|")
    print(f"| {report['quantize']} | {report['bytes'] / 1e6:.1f} | {proof['min_cosine']:.5f} | "
          f"{proof['mean_cosine']:.6f} | {speed:.2f}x |")
    for flag in proof["flagged"][:3]:
        print(f"  tokenized differently: {flag['text']!r} ({flag['reason']}; cosine {flag['cosine']:.4f})")
    no_repack = "" if proof["repack"] else f" --no-repack  (llama.cpp's weight repacking crashed: {proof['crash']})"
    print(f"Serve with: llama-server -m {path} --embeddings -ub 8192 -b 8192{no_repack}")
    return 0


def _pooling_dir(source: Path) -> str:
    """The Pooling module's folder in a portable dir (its modules.json entry)."""
    modules = json.loads((source / "modules.json").read_text(encoding="utf-8"))
    return next(m["path"] for m in modules if m["type"].endswith(".Pooling"))
