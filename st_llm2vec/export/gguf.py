"""``st-llm2vec export MODEL OUT --backend gguf``: a portable model dir as a GGUF file that llama.cpp (llama-server,
llama-cpp-python, Ollama, LM Studio) runs bidirectionally with the right pooling, proven through llama.cpp.

What llama.cpp's own tools do, they do: its converter (``convert_hf_to_gguf.py``, which ships in the
llama-cpp-python sdist, not in its wheel: :func:`fetch_converter` puts it in the cache once) turns the
dir's checkpoint into GGUF and writes ``attention.causal = false`` from ``is_causal: false``; gguf-py's
``copy_with_new_metadata`` rewrites the file; llama.cpp's ``llama_model_quantize`` makes the k-quants.
Written here is only what they lack: the pooling key (the converter writes none for ``LlamaModel``), and
the proof, which loads the file in a fresh process through llama-cpp-python as a user would: finite
outputs, the bidirectionality probe on token states, and per-text min cosine vs the fp32 torch model,
refused below ``--min-cosine`` unless ``--force``.
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

logger = logging.getLogger(__name__)

GGUF_DIR = "gguf"
# --quantize: the converter's own output types, then llama.cpp's quantizations of an F16 file
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
LLAMA_QUANTS = ("q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_m", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k")
QUANTIZE = CONVERTER_TYPES + LLAMA_QUANTS
DEFAULT_QUANTIZE = "f16"
# llama.cpp's pooling types by the stock Pooling name of the portable dir (llama.h: LLAMA_POOLING_TYPE_*)
LLAMA_POOLING = {"mean": 1, "cls": 2, "lasttoken": 3}
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
    own cache when the package was built from it, which is how llama-cpp-python installs)."""
    from ..files import temp_dir_beside

    version = llama_cpp_version()
    target = converter_dir(version)
    if (target / CONVERTER).is_file():
        return target / CONVERTER
    work = Path(tempfile.mkdtemp(prefix="st-llm2vec-sdist-"))
    try:
        cmd = [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}", "--no-deps", "--no-binary",
               ":all:", "-d", str(work)] + (["-q"] if quiet else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        archives = sorted(work.glob("llama_cpp_python-*.tar.gz"))
        if proc.returncode != 0 or not archives:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise MissingExtraError(f"pip could not get the llama-cpp-python {version} sdist ({tail[0]}); pass "
                                    f"--converter PATH to a llama.cpp checkout's {CONVERTER} instead")
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


# -- writing the GGUF ---------------------------------------------------------------------------------


def _run_converter(converter: Path, model_dir: Path, out: Path, outtype: str) -> None:
    """llama.cpp's converter on the dir's checkpoint (in a subprocess: it is a script, with its own gguf-py)."""
    cmd = [sys.executable, str(converter), str(model_dir), "--outfile", str(out), "--outtype", outtype]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise GGUFExportError(f"llama.cpp's converter failed on {model_dir}:\n{tail}")


def _with_pooling(source: Path, target: Path, pooling_type: int) -> None:
    """``source`` copied to ``target`` with ``{arch}.pooling_type`` set (gguf-py's own metadata copy)."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = gguf.GGUFReader(str(source), "r")
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(str(target), arch=arch, endianess=reader.endianess)
    key = gguf.Keys.LLM.POOLING_TYPE.format(arch=arch)
    copy_with_new_metadata(reader, writer, {key: MetadataDetails(gguf.GGUFValueType.UINT32, pooling_type)}, [])


def _quantize(source: Path, target: Path, quant: str) -> None:
    """llama.cpp's own quantizer (``llama_model_quantize``) from an F16/F32 GGUF."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}")
    params.nthread = max(1, (os.cpu_count() or 1))
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if status != 0 or not target.is_file():
        raise GGUFExportError(f"llama.cpp could not quantize to {quant} (status {status})")


def write_gguf(model_dir: Path, out: Path, quantize: str, pooling: str, converter: Path) -> None:
    """The dir's checkpoint as one GGUF at ``out``: converted, its pooling key written, quantized if asked."""
    work = Path(tempfile.mkdtemp(prefix=".convert-", dir=out.parent))
    try:
        converted = work / "converted.gguf"
        _run_converter(converter, model_dir, converted, quantize if quantize in CONVERTER_TYPES else "f16")
        pooled = out if quantize in CONVERTER_TYPES else work / "pooled.gguf"
        _with_pooling(converted, pooled, LLAMA_POOLING[pooling])
        if quantize not in CONVERTER_TYPES:
            _quantize(pooled, out, quantize)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- the proof, through llama.cpp ---------------------------------------------------------------------

# Runs in a fresh interpreter (llama.cpp aborts the process on some bad batch settings) without st_llm2vec
# (:func:`~st_llm2vec.proof.run_without_st_llm2vec`):
# the file as a user gets it, its own pooling key, llama.cpp's default (F16) KV cache.
_PROOF_SCRIPT = r"""
import numpy as np
import llama_cpp
import llama_cpp.llama
args = json.loads(sys.stdin.read())
if not args["repack"]:  # what llama-server's --no-repack does: no weight repacking into extra buffer types
    default_params = llama_cpp.llama_model_default_params
    def without_repack():
        params = default_params()
        params.use_extra_bufts = False
        return params
    llama_cpp.llama.llama_cpp.llama_model_default_params = without_repack
def load(pooling=None):
    kwargs = dict(embedding=True, n_ctx=args["n_ctx"], n_batch=args["n_ctx"], n_ubatch=args["n_ctx"],
                  n_threads=args["threads"], verbose=False)
    if pooling is not None:
        kwargs["pooling_type"] = pooling
    return llama_cpp.Llama(args["path"], **kwargs)
llm = load()
result = {"pooling_type": int(llm.pooling_type()) if hasattr(llm, "pooling_type") else None}
result["tokens"] = [len(llm.tokenize(t.encode(), add_bos=True, special=False)) for t in args["texts"]]
result["embeddings"] = [list(map(float, llm.embed(t, normalize=False))) for t in args["texts"]]
del llm
tokens = load(llama_cpp.LLAMA_POOLING_TYPE_NONE)
a, b = (np.asarray(tokens.embed(t, normalize=False), dtype=np.float64) for t in args["probe"])
result["first_token_shift"] = first_token_shift(a, b)
report(result)
"""


def prove_gguf(model: Any, path: Path, texts: list[str], *, threads: int | None = None) -> dict[str, Any]:
    """Load the GGUF through llama-cpp-python in a fresh process and hold it against the fp32 torch ``model``
    (the stock-loaded portable dir, documents without instructions): finite, bidirectional on token states,
    per-text min / mean cosine."""
    import numpy as np
    import torch

    from ..proof import BIDIRECTIONAL_PROBE, first_token_shift, row_cosines

    longest = max(len(model.tokenizer(t)["input_ids"]) for t in [*texts, *BIDIRECTIONAL_PROBE])
    n_ctx = max(512, 64 * (longest // 64 + 2))  # non-causal: one ubatch must hold a whole text (llama.cpp aborts otherwise)
    payload = {"path": str(path), "texts": texts, "probe": list(BIDIRECTIONAL_PROBE), "n_ctx": n_ctx,
               "threads": threads or torch.get_num_threads(), "repack": True}
    ran, crashed = _run_proof(payload)
    if ran is None and crashed:
        # llama.cpp's weight repacking for quantized types (AMX / AVX-512 buffers) crashed on this CPU (measured:
        # SIGSEGV for Q8_0 / Q4_K_M on a Sapphire Rapids Xeon); users then need --no-repack: prove that setting
        payload["repack"] = False
        ran, crashed = _run_proof(payload)
        if ran is None:
            raise GGUFExportError(f"llama.cpp crashed running {path.name}, with and without weight repacking")
        logger.warning("llama.cpp crashed running %s with weight repacking (this CPU's extra buffer types); it "
                       "runs with --no-repack, which the proof used and the report records", path.name)
    ours = np.asarray(ran["embeddings"], dtype=np.float64)
    reference = model.encode(texts, batch_size=8, convert_to_numpy=True, show_progress_bar=False).astype(np.float64)
    cosine = row_cosines(ours, reference)
    probe = model.preprocess(list(BIDIRECTIONAL_PROBE))
    with torch.no_grad():
        states = model[0].model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).last_hidden_state
    lengths = probe["attention_mask"].sum(1)
    first = [int(probe["attention_mask"].shape[1] - n) for n in lengths]  # left padding
    worst = int(np.nan_to_num(cosine, nan=-1.0).argmin())
    return {
        "finite": bool(np.isfinite(ours).all()),
        "first_token_shift": ran["first_token_shift"],
        "torch_first_token_shift": first_token_shift(states[0, first[0]:].numpy(), states[1, first[1]:].numpy()),
        "min_cosine": float(np.nan_to_num(cosine, nan=-1.0).min()),
        "mean_cosine": float(np.nan_to_num(cosine, nan=-1.0).mean()),
        "worst_text": texts[worst],
        "texts": len(texts),
        "pooling_type": ran["pooling_type"],
        "n_ctx": n_ctx,
        "kv_cache": "f16 (llama.cpp's default)",
        "repack": payload["repack"],
    }


def _run_proof(payload: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """(what the proof script measured, or None; whether llama.cpp crashed on a signal). Other failures raise."""
    from ..proof import last_line, run_without_st_llm2vec

    ran, proc = run_without_st_llm2vec(_PROOF_SCRIPT, payload, why="the GGUF must run without it",
                                       env=dict(os.environ, OMP_NUM_THREADS=str(payload["threads"])))
    if ran is not None:
        return ran, False
    if proc.returncode < 0:
        return None, True
    raise GGUFExportError(f"llama.cpp could not run the GGUF: {last_line(proc)}")


def _card_section(report: dict[str, Any]) -> str:
    proof = report["proof"]
    name = report["file"]
    no_repack = "" if proof["repack"] else " --no-repack"
    lines = [
        "", "## GGUF (llama.cpp)", "",
        f"`{GGUF_DIR}/{name}`: this model for llama.cpp ({report['quantize']}), converted by llama.cpp's own "
        f"`convert_hf_to_gguf.py` (llama-cpp-python {report['llama_cpp_python']}), with `attention.causal = false` "
        f"and pooling `{report['pooling']}` written in the file.", "",
        f"Proven when exported, through llama.cpp with its default F16 KV cache: outputs finite; token 1's state moved "
        f"by {proof['first_token_shift']:.2e} when only the last word changed (torch: {proof['torch_first_token_shift']:.2e}); "
        f"min cosine vs the fp32 torch model {proof['min_cosine']:.6f} (mean {proof['mean_cosine']:.6f}) over "
        f"{proof['texts']} held texts.", "",
        "```bash",
        f"llama-server -m {GGUF_DIR}/{name} --embeddings -c 8192 -b 8192 -ub 8192{no_repack}",
        "```", "",
        *([] if proof["repack"] else [
            "`--no-repack`: on the CPU this was exported on, llama.cpp's weight repacking for this quantization "
            "crashed (SIGSEGV); without it the file runs, and the figures above were measured so.", ""]),
        "```python",
        "from langchain_community.embeddings import LlamaCppEmbeddings",
        "",
        f"embeddings = LlamaCppEmbeddings(model_path='{GGUF_DIR}/{name}', n_ctx=512, n_batch=512)",
        "```", "",
        "llama.cpp applies no prompt: pass an instruction as text before the query; its tokens are then pooled with "
        "the text's (sentence-transformers leaves them out). A non-causal batch must fit one ubatch "
        "(`-ub` >= the longest input, else llama.cpp stops).", "",
    ]
    return "\n".join(lines)


def export(source: str | os.PathLike, output: str | os.PathLike, *, quantize: str = DEFAULT_QUANTIZE,
           min_cosine: float | None = None, force: bool = False, overwrite: bool = False,
           converter: str | os.PathLike | None = None, texts: list[str] | None = None) -> dict[str, Any]:
    """Write ``source`` (a portable dir) plus its proven GGUF (``gguf/model-<quantize>.gguf``) to ``output``;
    returns the report. Built in a temp dir beside ``output``, moved into place only once proven."""
    from ..files import atomic_dir, check_output
    from .pipeline import DEFAULT_MIN_COSINE, HELD_TEXTS, check_proof, copy_model_dir, finish, portable_source

    if quantize not in QUANTIZE:
        raise GGUFExportError(f"unknown GGUF type {quantize!r}; choose one of {', '.join(QUANTIZE)}")
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
    name = f"model-{quantize}.gguf"
    with atomic_dir(output, overwrite) as tmp:
        folder = copy_model_dir(source, tmp, GGUF_DIR)
        write_gguf(source, folder / name, quantize, pooling, script)
        proof = prove_gguf(model, folder / name, list(texts or HELD_TEXTS))
        problems = check_proof(proof, bidirectional=bidirectional, min_cosine=min_cosine, force=force)
        if problems:
            raise GGUFExportError(f"the {quantize} GGUF failed its proof: " + "; ".join(problems))
        report = {
            "backend": "gguf", "quantize": quantize, "file": name, "pooling": pooling, "source": source.name,
            "llama_cpp_python": llama_cpp_version(), "bidirectional": bidirectional, "min_cosine_threshold": min_cosine,
            "forced": bool(force and proof["min_cosine"] < min_cosine), "proof": proof,
            "seconds": round(time.perf_counter() - started, 1), "bytes": (folder / name).stat().st_size,
        }
        finish(tmp, GGUF_DIR, report, _card_section(report))
    return report


def run(args: Any) -> int:
    """``st-llm2vec export --backend gguf``, its options checked: export and say what was proven and how to serve it."""
    report = export(args.model, args.output, quantize=args.quantize or DEFAULT_QUANTIZE, min_cosine=args.min_cosine,
                    force=args.force, overwrite=args.overwrite, converter=args.converter)
    proof = report["proof"]
    path = f"{args.output}/{GGUF_DIR}/{report['file']}"
    print(f"Exported {args.model} to {path} ({report['quantize']}, pooling {report['pooling']}, "
          f"{report['bytes'] / 1e6:.1f} MB, {report['seconds']} s)")
    print(f"Proof through llama.cpp: finite; first-token shift {proof['first_token_shift']:.2e} (torch "
          f"{proof['torch_first_token_shift']:.2e}); min cosine vs fp32 torch {proof['min_cosine']:.6f} "
          f"(mean {proof['mean_cosine']:.6f}) over {proof['texts']} texts")
    no_repack = "" if proof["repack"] else " --no-repack  (llama.cpp's weight repacking crashed on this CPU)"
    print(f"Serve with: llama-server -m {path} --embeddings -ub 8192 -b 8192{no_repack}")
    return 0


def _pooling_dir(source: Path) -> str:
    """The Pooling module's folder in a portable dir (its modules.json entry)."""
    modules = json.loads((source / "modules.json").read_text(encoding="utf-8"))
    return next(m["path"] for m in modules if m["type"].endswith(".Pooling"))
