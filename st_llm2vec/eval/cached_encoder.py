"""A model as mteb calls it during ``st-llm2vec eval``: mteb's own ``SentenceTransformerEncoderWrapper`` with the
prompts given explicitly and each distinct text embedded once per model and prompt, kept on disk by content hash
(mteb's ``NumpyCache`` and ``hash_item``): a rerun, or a second task over the same texts, encodes nothing again.
The texts a call does need are encoded in batches of similar token length (:meth:`EvalEncoder._encode_by_length`).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from ..files import write_json_atomic
from ..length_batches import encode_by_token_length
from . import require_mteb

require_mteb()

import numpy as np  # noqa: E402  (after the check that names the extra to install)
from mteb._content_hashes import hash_item  # noqa: E402
from mteb.models import SentenceTransformerEncoderWrapper  # noqa: E402
from mteb.models.abs_encoder import get_prompt_name  # noqa: E402
from mteb.models.cache_wrappers.cache_backends.numpy_cache import NumpyCache  # noqa: E402
from mteb.types import PromptType  # noqa: E402

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)


class _MemoryStore:
    """Embeddings of one model and prompt, for this process only (no cache dir)."""

    def __init__(self) -> None:
        self.vectors: dict[str, Any] = {}

    def get(self, text: str):
        return self.vectors.get(text)

    def add(self, texts: list[str], vectors) -> None:
        self.vectors.update(zip(texts, vectors))


class _DiskStore:
    """mteb's ``NumpyCache`` (a float32 memmap + a hash -> row index, rows found by mteb's ``hash_item``) for one
    model and prompt, with the index written atomically after the vectors are flushed: mteb writes it in place,
    and a run killed mid-write would leave an index its ``load`` raises on. An unreadable cache is discarded
    (logged) and rebuilt, never trusted."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.cache = None
        if (directory / "index.json").is_file():
            cache = NumpyCache(directory)
            try:
                cache.load()
                if cache.vectors is None or max(cache.hash_to_index.values(), default=-1) >= len(cache.vectors):
                    raise ValueError("index and vectors disagree")
                self.cache = cache
            except (OSError, ValueError) as exc:
                logger.warning("Discarding the unreadable embedding cache %s (%s); it is rebuilt.", directory, exc)
                cache.close()
                shutil.rmtree(directory, ignore_errors=True)

    def get(self, text: str):
        if self.cache is None:
            return None
        index = self.cache.hash_to_index.get(hash_item({"text": text}))
        return None if index is None else self.cache.vectors[index]

    def add(self, texts: list[str], vectors) -> None:
        if self.cache is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.cache = NumpyCache(self.directory, initial_vectors=max(1024, 2 * len(texts)))
        self.cache.add([{"text": t} for t in texts], vectors)
        self.cache.vectors.flush()
        (self.directory / "dimension").write_text(str(self.cache.vector_dim), encoding="utf-8")
        write_json_atomic(self.directory / "index.json", self.cache.hash_to_index)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()


class EvalEncoder(SentenceTransformerEncoderWrapper):
    """mteb's wrapper for a ``SentenceTransformer``, with explicit prompts and an embedding cache.

    mteb's ``CachedEmbeddingWrapper`` is not used: it keys its cache by task name (a second task over the
    same corpus encodes it again) and not by prompt (a changed instruction would reuse the old vectors),
    and it encodes a text as often as a batch repeats it. Here the key is the model (the cache dir) and
    the prompt text, each distinct text of a call is encoded once, and the prompt passed to ``encode`` is
    always an explicit string: mteb's own lookup (``get_prompt_name``: task-query, task, type-query,
    type, query / document) over ``prompts``, then the model's ``default_prompt_name``, else none.
    """

    def __init__(self, model: SentenceTransformer, meta, prompts: Mapping[str, str],
                 cache_dir: Path | None = None) -> None:
        # Not super().__init__: it checks each prompt key against mteb's task registry, which drops the names
        # of local tasks, and warns about prompt sets without both "query" and "document". It sets only these.
        self.model = model
        self.mteb_model_meta = meta
        self.model_prompts = dict(prompts)
        self.fps = self.max_frames = self.num_frames = self.target_sampling_rate = self.max_samples = None
        self.cache_dir = cache_dir
        self.stores: dict[str, _MemoryStore | _DiskStore] = {}
        self.encoded = 0  # texts encoded by the model
        self.reused = 0  # texts served from the cache
        self.precision: dict[str, Any] = {"precision": "float32", "plan": None}  # recorded with each task's result

    def prompt(self, task_metadata, prompt_type: PromptType | None) -> str:
        """The prompt this model gets for one side of a task (``""``: none)."""
        name = get_prompt_name(self.model_prompts, task_metadata, prompt_type)
        if name is not None:
            return self.model_prompts[name] or ""
        default = getattr(self.model, "default_prompt_name", None)
        if default and prompt_type is None:
            return (self.model.prompts or {}).get(default) or ""
        return ""

    def _store(self, prompt: str):
        if prompt not in self.stores:
            if self.cache_dir is None:
                self.stores[prompt] = _MemoryStore()
            else:
                key = hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]
                self.stores[prompt] = _DiskStore(self.cache_dir / f"prompt-{key}")
                (self.cache_dir / f"prompt-{key}.txt").parent.mkdir(parents=True, exist_ok=True)
                (self.cache_dir / f"prompt-{key}.txt").write_text(prompt, encoding="utf-8")
        return self.stores[prompt]

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str,
               prompt_type: PromptType | None = None, **kwargs: Any) -> np.ndarray:
        if "text" not in inputs.dataset.column_names:
            raise InputError(f"task {task_metadata.name} gives the model {inputs.dataset.column_names}, not text: "
                             "st-llm2vec eval evaluates text embedding models on text tasks.")
        texts = list(inputs.dataset["text"])
        prompt = self.prompt(task_metadata, prompt_type)
        store = self._store(prompt)
        missing = [t for t in dict.fromkeys(texts) if store.get(t) is None]
        self.reused += len(texts) - len(missing)
        if missing:
            if prompt_type == PromptType.query:
                encode = self.model.encode_query
            elif prompt_type == PromptType.document:
                encode = self.model.encode_document
            else:
                encode = self.model.encode
            vectors = self._encode_by_length(encode, missing, prompt, dict(kwargs))
            store.add(missing, vectors)
            self.encoded += len(missing)
        return np.stack([np.asarray(store.get(t), dtype=np.float32) for t in texts])

    def _encode_by_length(self, encode, texts: list[str], prompt: str, kwargs: dict[str, Any]) -> np.ndarray:
        """``texts`` encoded in batches of similar token length (:mod:`st_llm2vec.length_batches`), the vectors
        returned in ``texts``' order; mteb's batch size and progress-bar wish are honoured around it."""
        batch_size = int(kwargs.pop("batch_size", None) or 32)
        progress = bool(kwargs.pop("show_progress_bar", False))
        kwargs.pop("convert_to_numpy", None)
        kwargs.pop("convert_to_tensor", None)
        from tqdm.auto import tqdm

        with tqdm(total=len(texts), desc="encoding", unit="text", disable=not progress, leave=False) as bar:
            return encode_by_token_length(encode, self.model, texts, batch_size, bar.update, prompt=prompt, **kwargs)

    def close(self) -> None:
        for store in self.stores.values():
            if isinstance(store, _DiskStore):
                store.close()
