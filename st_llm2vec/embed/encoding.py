"""The model of an embed job: which dir MODEL names, how it is loaded, and how one shard's texts become vectors.

Every model is loaded with ``SentenceTransformer(path)`` after ``import st_llm2vec`` (which lets ST load our
exact-format classes): that is the very call users compare with, so the vectors are ``encode``'s by
construction. (``st_llm2vec.load_model`` rebuilds a portable dir with our encoder; it pools the BOS token of an
empty text, where stock ST's ``WordWeights`` leave a zero vector: not the same answer.) ``--precision
bf16-mixed`` / ``auto`` apply st_llm2vec's measured plan (:mod:`st_llm2vec.precision`) to the loaded model,
which needs decoder layers: a model without them is refused for bf16-mixed and stays float32 for auto.

:func:`embed_texts` embeds a shard: identical texts (same BLAKE2b-128 of their UTF-8) once, the distinct texts in
batches of ``batch_size`` cut in token-count order (:mod:`st_llm2vec.length_batches`, which the eval wing uses
too), each batch one ``encode`` call; results go back to input order. The batches depend only on the shard's
texts, so a shard computed again (a resume, another engine) gets the same batches. Duplicates are found within a
shard only: across shards a text is embedded again (the same vector up to float rounding), which keeps memory
bounded by the shard and each shard independent of the others.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, MissingFileError
from ..length_batches import encode_by_token_length
from ..model_files import MODULE_DIMENSIONS, MODULES, ST_CONFIG

logger = logging.getLogger(__name__)

# Hub snapshot files a SentenceTransformer never reads (other backends' weights).
_OTHER_BACKENDS = ["onnx/*", "openvino/*", "*.onnx", "*.h5", "*.msgpack", "*.ot", "flax_model*", "tf_model*",
                   "rust_model*", "coreml/*"]


@dataclass(frozen=True)
class ModelSource:
    """MODEL as given (``spec``), the local dir it names (a Hub id: its cached snapshot) and the snapshot's commit."""

    spec: str
    path: Path
    revision: str | None = None


def _silence_bitsandbytes() -> None:
    """peft (which st_llm2vec's checkpoints and sentence-transformers import) imports bitsandbytes, which logs a
    warning about an optional CPU kernel at import: nothing an embed job uses (that one message is dropped;
    a Ray worker process may import the stack before st_llm2vec's own import installs the filter)."""
    from ..console import silence_import_notices

    silence_import_notices()


def resolve_model(spec: str) -> ModelSource:
    """The local dir of MODEL: a dir with modules.json, or a Hub id (the cached snapshot, else downloaded)."""
    _silence_bitsandbytes()
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "modules.json").is_file():
            raise InputError(f"{spec} has no modules.json: not a Sentence Transformers model. A decoder LLM checkpoint "
                             "becomes one with `st-llm2vec convert LLM OUT_DIR` (or st_llm2vec.from_llm(...).save(dir)).")
        return ModelSource(spec, path.resolve())
    from ..model_files import looks_like_hub_id

    if path.exists() or not looks_like_hub_id(spec):
        raise MissingFileError(f"MODEL {spec!r} is neither a model directory nor a Hugging Face Hub id "
                               f"(looked relative to {os.getcwd()!r}).")
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(spec, local_files_only=True, ignore_patterns=_OTHER_BACKENDS))
    except Exception:  # not cached: download it (huggingface_hub raises several kinds)
        try:
            snapshot = Path(snapshot_download(spec, ignore_patterns=_OTHER_BACKENDS))
        except Exception as exc:
            raise MissingFileError(f"{spec!r} is not in the Hugging Face cache and cannot be downloaded "
                                   f"({type(exc).__name__}); pass a local model dir.") from exc
    if not (snapshot / "modules.json").is_file():
        raise InputError(f"{spec} has no modules.json: not a Sentence Transformers model.")
    return ModelSource(spec, snapshot, snapshot.name)


def saved_prompts(path: Path) -> tuple[dict[str, str], str | None]:
    """The prompts and default prompt name a model dir carries (config_sentence_transformers.json, checked), unloaded."""
    config = ST_CONFIG.read(path, missing_ok=True) or {}  # a bad one is named, not read as "no prompts"
    return dict(config.get("prompts") or {}), config.get("default_prompt_name")


def choose_prompt(path: Path, prompt_name: str | None, prompt: str | None) -> tuple[str | None, str | None]:
    """(name, text) of the prompt for ``--prompt-name`` / ``--prompt``; neither: the model's default prompt, as
    ``encode`` would use (text None: no prompt)."""
    prompts, default = saved_prompts(path)
    if prompt is not None:
        return None, prompt or None
    name = prompt_name or default
    if name is None:
        return None, None
    if name not in prompts:
        raise InputError(f"the model has no prompt named {name!r} (its prompts: {', '.join(map(repr, prompts)) or 'none'}); "
                         "pass --prompt TEXT for another one.")
    return name, prompts[name] or None


def query_prompt(path: Path) -> tuple[str | None, str | None]:
    """The prompt ``search`` puts before a query: the model's "query" prompt, if it has a non-empty one."""
    prompts, _ = saved_prompts(path)
    return ("query", prompts["query"]) if prompts.get("query") else (None, None)


def estimated_dim(path: Path, dim: int | None) -> int:
    """The output dimension a model dir declares (its last Dense / pooling config), capped by ``dim``; 768 if
    none says. For sizing shards only: the vectors themselves are checked."""
    found = None
    for module in MODULES.read(path):  # checked: a damaged file is named here rather than by the load
        data = MODULE_DIMENSIONS.read(path / module["path"], missing_ok=True) if module["path"] else None
        for key in ("out_features", "embedding_dimension", "word_embedding_dimension"):
            if data and data.get(key) is not None:
                found = data[key]
                break
    found = found or 768
    return min(found, dim) if dim else found


@dataclass(frozen=True, kw_only=True)
class EncodeOptions:
    """How texts are encoded, as the user asked it: the fields ``EmbedConfig`` and ``ModelSettings`` share."""

    normalize: bool = True
    batch_size: int = 32
    dim: int | None = None
    precision: str = "float32"
    device: str | None = None


@dataclass(frozen=True)
class ModelSettings(EncodeOptions):
    """How the model is loaded and called, in whichever process embeds (picklable for the Ray engine's actors)."""

    path: str
    prompt: str | None = None
    threads: int | None = None


def quiet_libraries() -> None:
    """No third-party progress bars or notices while loading and encoding (the job draws its own bar)."""
    _silence_bitsandbytes()
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()  # "Loading weights"
    disable_progress_bars()


def load(settings: ModelSettings) -> Any:
    """The SentenceTransformer the settings describe, with its precision plan applied; returns (model, applied)."""
    quiet_libraries()  # before sentence-transformers is imported: bitsandbytes speaks at import
    import torch

    import st_llm2vec  # noqa: F401  (registers our exact-format classes with sentence-transformers)
    from sentence_transformers import SentenceTransformer

    from .. import precision as precisions

    if settings.threads:
        torch.set_num_threads(settings.threads)
    model = SentenceTransformer(settings.path, device=settings.device, truncate_dim=settings.dim,
                                local_files_only=True)
    native = model.get_embedding_dimension()
    if settings.dim is not None and native is not None and settings.dim > native:
        raise InputError(f"--dim {settings.dim} is more than the model's {native} dimensions.")
    model.default_prompt_name = None  # the prompt is always passed explicitly (resolved by choose_prompt)
    requested = precisions.resolve(settings.precision)
    applied = "float32"
    if requested != "float32":
        try:
            plan = precisions.prepare(model, requested, source=settings.path)
        except precisions.PrecisionError as exc:
            if settings.precision != "auto":
                raise InputError(f"--precision {settings.precision} cannot act on this model ({exc}).") from exc
            plan = None
        applied = f"bf16-mixed: {plan.describe()}" if plan else "float32"
    model.st_llm2vec_embed_precision = applied
    return model


def embed_texts(model: Any, texts: list[str], settings: ModelSettings,
                hashes: list[bytes] | None = None, on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """(len(texts), dim) float32 vectors of one shard (see the module docstring for the batches)."""
    from .plan import text_hash

    hashes = hashes if hashes is not None else [text_hash(t) for t in texts]
    slot: dict[bytes, int] = {}
    distinct: list[int] = []
    for i, h in enumerate(hashes):
        if h not in slot:
            slot[h] = len(distinct)
            distinct.append(i)
    vectors = encode_by_token_length(model.encode, model, [texts[i] for i in distinct], settings.batch_size,
                                     on_batch, prompt=settings.prompt, normalize_embeddings=settings.normalize)
    if on_batch is not None and len(texts) > len(distinct):
        on_batch(len(texts) - len(distinct))
    return vectors[[slot[h] for h in hashes]]
