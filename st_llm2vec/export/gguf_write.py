"""Writing the GGUF for ``st-llm2vec export --backend gguf``: llama.cpp's converter, its ``llama-embed`` architecture,
the pooling key, and llama.cpp's quantizer with per-tensor type overrides.

- Architecture: llama.cpp's converter turns a ``LlamaBidirectionalModel`` checkpoint into its ``llama-embed``
  architecture (a non-causal embedding graph without a KV cache). A portable dir says ``LlamaModel`` with
  ``is_causal: false``, which the converter writes as ``llama`` + ``attention.causal = false``: a causal-LM graph with
  a (default F16) KV cache, whose vectors then depend on which texts share a batch. So the converter is shown the
  dir as a ``LlamaBidirectionalModel`` (a view of it: links to its files, the config's ``architectures`` changed),
  and the file needs no runtime setting to be an embedding model.
- Pooling: the converter writes none for this class; gguf-py's own metadata copy writes it.
- Types: a type is ``BASE`` (llama.cpp's ``--outtype``/ftype names) optionally followed by ``:GROUP-TYPE`` parts
  that keep groups of tensors at another type (``q8_0:blocks-f16``: the token embeddings at Q8_0, every block at
  F16). llama.cpp's quantizer does the per-tensor types itself (``tt_overrides``: regex -> type, what
  ``llama-quantize --tensor-type`` passes); only the naming of groups is ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

# the converter's own output types, then llama.cpp's quantizations (ftypes) of an F32 file
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
LLAMA_QUANTS = ("q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_m", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k")
BASE_TYPES = CONVERTER_TYPES + LLAMA_QUANTS
# tensor groups a type may keep at another type (``GROUP-TYPE``); ``blkA-B`` names blocks A to B as well
GROUPS = {
    "embd": r"^token_embd\.",
    "blocks": r"^blk\.",
    "attn": r"^blk\.\d+\.attn_",
    "ffn": r"^blk\.\d+\.ffn_",
}
# tensor types a group may be kept at (ggml's names)
KEEP_TYPES = ("f32", "f16", "bf16", "q8_0", "q6_k", "q5_k", "q5_0", "q4_k", "q4_0")
# llama.cpp's pooling types by the stock Pooling name of the portable dir (llama.h: LLAMA_POOLING_TYPE_*)
LLAMA_POOLING = {"mean": 1, "cls": 2, "lasttoken": 3}
LLAMA_EMBED_ARCH = "LlamaBidirectionalModel"  # the converter's class for llama.cpp's `llama-embed` architecture
ARCH_NAME = "llama-embed"


class GGUFWriteError(InputError):
    """The GGUF could not be written; the message says which step failed and what to do."""


@dataclass(frozen=True)
class GGUFType:
    """One GGUF type: ``base`` (a converter type or a llama.cpp ftype) and ``keep``: tensor-name regex -> ggml type
    for the tensors kept at another type than the base gives them. ``name`` is how it was written."""

    name: str
    base: str
    keep: dict[str, str] = field(default_factory=dict)

    @property
    def by_converter(self) -> bool:
        """Written by the converter alone (no llama.cpp quantizer run)."""
        return self.base in CONVERTER_TYPES and not self.keep


def _group_regex(group: str) -> str:
    if group in GROUPS:
        return GROUPS[group]
    match = re.fullmatch(r"blk(\d+)-(\d+)", group)
    if match and int(match[1]) <= int(match[2]):
        layers = "|".join(str(i) for i in range(int(match[1]), int(match[2]) + 1))
        return rf"^blk\.({layers})\."
    raise GGUFWriteError(f"unknown tensor group {group!r} in a GGUF type; use one of {', '.join(GROUPS)} or blkA-B "
                         "(blocks A to B)")


def parse_type(spec: str) -> GGUFType:
    """``q8_0``, ``q8_0:blocks-f16``, ``q4_k_m:embd-q8_0:blk0-3-f16`` as a :class:`GGUFType` (later parts win)."""
    base, *parts = spec.strip().lower().split(":")
    if base not in BASE_TYPES:
        raise GGUFWriteError(f"unknown GGUF type {base!r}; choose one of {', '.join(BASE_TYPES)}, optionally with "
                             ":GROUP-TYPE parts (e.g. q8_0:blocks-f16)")
    keep = {}
    for part in parts:
        group, _, kept = part.rpartition("-")
        if not group or kept not in KEEP_TYPES:
            raise GGUFWriteError(f"{part!r} in GGUF type {spec!r} is not GROUP-TYPE with TYPE one of "
                                 f"{', '.join(KEEP_TYPES)} (e.g. blocks-f16)")
        keep[_group_regex(group)] = kept
    return GGUFType(spec.strip().lower(), base, keep)


# -- the converter ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _as_llama_embed(model_dir: Path, work: Path) -> Iterator[Path]:
    """A view of ``model_dir`` whose config names the converter's ``llama-embed`` class: links to its files, its
    ``config.json`` rewritten. A dir that is not a Llama is shown as it is (the converter then decides)."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") != "llama":
        yield model_dir
        return
    view = work / "model-view"
    view.mkdir()
    for entry in model_dir.iterdir():
        if entry.name != "config.json":
            (view / entry.name).symlink_to(entry.resolve())
    config["architectures"] = [LLAMA_EMBED_ARCH]
    (view / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    yield view


def run_converter(converter: Path, model_dir: Path, out: Path, outtype: str, *, verbose: bool = False) -> None:
    """llama.cpp's converter on the dir's checkpoint (in a subprocess: it is a script, with its own gguf-py); its log
    only with ``verbose``."""
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=".view-", dir=out.parent)))
        view = stack.enter_context(_as_llama_embed(model_dir, work))
        cmd = [sys.executable, str(converter), str(view), "--outfile", str(out), "--outtype", outtype]
        proc = subprocess.run(cmd, capture_output=not verbose, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join(((proc.stderr or proc.stdout) or "").strip().splitlines()[-3:])
        raise GGUFWriteError(f"llama.cpp's converter failed on {model_dir}:\n{tail or 'see its output above'}")


def with_pooling(source: Path, target: Path, pooling_type: int, *, verbose: bool = False) -> None:
    """``source`` copied to ``target`` with ``{arch}.pooling_type`` set (gguf-py's own metadata copy; its progress bar
    only with ``verbose``)."""
    import functools

    import gguf
    from gguf.scripts import gguf_new_metadata
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = gguf.GGUFReader(str(source), "r")
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(str(target), arch=arch, endianess=reader.endianess)
    key = gguf.Keys.LLM.POOLING_TYPE.format(arch=arch)
    bar = gguf_new_metadata.tqdm
    gguf_new_metadata.tqdm = functools.partial(bar, disable=not verbose)  # the module's own name for it, restored
    try:
        copy_with_new_metadata(reader, writer, {key: MetadataDetails(gguf.GGUFValueType.UINT32, pooling_type)}, [])
    finally:
        gguf_new_metadata.tqdm = bar


# -- llama.cpp's quantizer ----------------------------------------------------------------------------


@contextlib.contextmanager
def llama_log(verbose: bool) -> Iterator[list[str]]:
    """llama.cpp's log (the quantizer prints a line per tensor) on stderr only with ``verbose``; else its last lines
    are kept (yielded) for an error message. Our own callback, not llama-cpp-python's ``set_verbose``: that one maps
    ggml's log levels by an older enum (WARN reads as ERROR), so warnings print even when quiet."""
    import collections
    import ctypes

    import llama_cpp
    from llama_cpp import _logger

    tail: collections.deque[str] = collections.deque(maxlen=20)

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        line = text.decode("utf-8", errors="replace")
        if verbose:
            print(line, end="", file=sys.stderr, flush=True)
        else:
            tail.append(line)

    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    lines: list[str] = []
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
        lines.extend("".join(tail).strip().splitlines()[-3:])


def quantize(source: Path, target: Path, gguf_type: GGUFType, *, verbose: bool = False) -> None:
    """llama.cpp's own quantizer (``llama_model_quantize``) from an F32 GGUF, with ``gguf_type.keep`` as its per-tensor
    overrides (``tt_overrides``, regex -> ggml type, matched with ``std::regex_search``)."""
    import ctypes

    import gguf
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    ftype = "ALL_F32" if gguf_type.base == "f32" else f"MOSTLY_{gguf_type.base.upper()}"
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_{ftype}")
    params.nthread = max(1, (os.cpu_count() or 1))
    if gguf_type.keep and gguf_type.base in ("f32", "f16", "bf16"):
        raise GGUFWriteError(f"{gguf_type.name}: llama.cpp's quantizer applies per-tensor types only to a quantized "
                             "base type (e.g. q8_0:blocks-f16), not to f32/f16/bf16")
    # llama.cpp takes the first pattern that matches a tensor: the later parts of the type go first, so they win
    keep = list(reversed(gguf_type.keep.items()))
    overrides = (llama_cpp.llama_model_tensor_override * (len(keep) + 1))()
    patterns = [pattern.encode() for pattern, _ in keep]  # kept alive until the call returns
    for slot, pattern, (_, kept) in zip(overrides, patterns, keep):
        slot.pattern = pattern
        slot.type = int(gguf.GGMLQuantizationType[kept.upper()])
    overrides[len(patterns)].pattern = None  # the list ends at a null pattern
    if patterns:
        params.tt_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    with llama_log(verbose) as log:
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if status != 0 or not target.is_file():
        raise GGUFWriteError(f"llama.cpp could not quantize to {gguf_type.name} (status {status}): "
                             + (" / ".join(log) or "--verbose shows its log"))


def write_gguf(model_dir: Path, out: Path, gguf_type: GGUFType | str, pooling: str | int, converter: Path, *,
               keep: dict[str, str] | None = None, verbose: bool = False) -> GGUFType:
    """The dir's checkpoint as one GGUF at ``out``: converted (as ``llama-embed`` for a Llama), its pooling key
    written, quantized if asked, the tensors matching a ``keep`` regex (merged over the type's own) at that ggml
    type. ``pooling``: a stock Pooling name (``mean``) or llama.cpp's number. Returns the type written."""
    pooling_type = LLAMA_POOLING[pooling] if isinstance(pooling, str) else int(pooling)
    gguf_type = parse_type(gguf_type) if isinstance(gguf_type, str) else gguf_type
    if keep:
        for kept in keep.values():
            if kept not in KEEP_TYPES:
                raise GGUFWriteError(f"keep type {kept!r} is not one of {', '.join(KEEP_TYPES)}")
        gguf_type = GGUFType(gguf_type.name, gguf_type.base, {**gguf_type.keep, **keep})
    work = Path(tempfile.mkdtemp(prefix=".convert-", dir=out.parent))
    try:
        converted = work / "converted.gguf"
        run_converter(converter, model_dir, converted, gguf_type.base if gguf_type.by_converter else "f32",
                      verbose=verbose)
        pooled = out if gguf_type.by_converter else work / "pooled.gguf"
        with_pooling(converted, pooled, pooling_type, verbose=verbose)
        if not gguf_type.by_converter:
            quantize(pooled, out, gguf_type, verbose=verbose)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return gguf_type


def tensor_types(path: Path) -> dict[str, str]:
    """Tensor name -> ggml type name (``F16``, ``Q8_0``, ...) as written in the GGUF at ``path``."""
    import gguf

    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path), "r").tensors}


def architecture(path: Path) -> str:
    """``general.architecture`` of the GGUF at ``path``."""
    import gguf

    return gguf.GGUFReader(str(path), "r").fields[gguf.Keys.General.ARCHITECTURE].contents()
