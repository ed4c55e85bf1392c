"""A model that scores the training pairs without being trained: the miner of hard negatives (``hard_negatives:
mine_with``, ``st-llm2vec mine``) and the teacher of distillation (``teacher``). Either is any Sentence Transformers
model — a stock one, or one st-llm2vec wrote — or, for mining, ``self``: the model being trained, at its start.

Here: what is checked before anything loads (:func:`check_scorer`: an embedding model, which does not cut texts
shorter than the stage trains on), how one is loaded, which prompt each side of a dataset gets
(:func:`subset_prompts`: the dataset's own instruction, as the stage trains with it, or the model's own query /
document prompts) and its fingerprint (:func:`scorer_fingerprint`), which keys the cached scores.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..errors import InputError, MissingFileError

SELF = "self"
# Which prompts a scorer encodes with: auto (data for the model being trained, model for any other), data (each
# dataset's instruction, as the supervised stage joins it), model (the scorer's own query / document prompts), none.
INSTRUCTION_MODES = ("auto", "data", "model", "none")


def _local_dir(spec: str) -> Path | None:
    path = Path(spec).expanduser()
    return path if path.exists() else None


def _cached_hub_file(repo_id: str, filename: str) -> Path | None:
    """A file of a Hub model as the local Hugging Face cache holds it (None: not cached; nothing is downloaded)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename)
    return Path(found) if isinstance(found, str) else None


def model_file(spec: str, filename: str) -> Path | None:
    """``filename`` of a model dir or of a Hub model in the local cache (None: neither has it)."""
    local = _local_dir(spec)
    if local is not None:
        return local / filename if (local / filename).is_file() else None
    return _cached_hub_file(spec, filename)


def check_scorer(spec: str, what: str, max_seq_length: int | None = None) -> None:
    """Refuse, before anything loads, a scorer that cannot serve: a path that is missing or not a Sentence
    Transformers model (a bare causal LM has no embedding; make one with ``st-llm2vec convert`` or a stage), or one
    that cuts texts at fewer tokens than the stage's ``max_seq_length`` (it would score other texts than the ones
    trained on). A scorer's dimension and tokenizer need not match the student's: only its scores are used. A Hub id
    that is not in the local cache is checked when it loads."""
    from ..model_files import looks_like_hub_id

    if spec == SELF:
        return
    local = _local_dir(spec)
    if local is None and not looks_like_hub_id(spec):
        raise MissingFileError(f"{what} {spec!r} does not exist: give a Sentence Transformers model dir or Hub id.")
    if local is not None and not local.is_dir():
        raise InputError(f"{what} {spec!r} is a file; give a Sentence Transformers model dir or Hub id.")
    if local is not None and not (local / "modules.json").is_file():
        kind = "a causal LM checkpoint" if (local / "config.json").is_file() else "not a model dir"
        raise InputError(
            f"{what} {spec!r} is {kind}, not a Sentence Transformers model (no modules.json): it has no embedding to "
            "score with. Give an embedding model, e.g. a stage's output or `st-llm2vec convert LLM DIR`.")
    limit = scorer_max_seq_length(spec)
    if max_seq_length is not None and limit is not None and limit < max_seq_length:
        raise InputError(
            f"{what} {spec!r} cuts texts at {limit} tokens, fewer than this stage's max_seq_length {max_seq_length}: "
            f"it would score shorter texts than the student trains on. Set max_seq_length to at most {limit}, or "
            "choose another model.")


def model_json(spec: str, filename: str) -> Any:
    """A JSON file of a model dir (or of a Hub model in the local cache), parsed; None if absent or unreadable."""
    path = model_file(spec, filename)
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path else None
    except (OSError, ValueError):
        return None


def scorer_max_seq_length(spec: str) -> int | None:
    """The token limit a Sentence Transformers model dir declares, read as ST reads it: its Transformer module's
    ``sentence_bert_config.json`` ``max_seq_length``, else its tokenizer's ``model_max_length`` (None: neither)."""
    modules = model_json(spec, "modules.json")
    modules = [m for m in modules if isinstance(m, dict)] if isinstance(modules, list) else []
    folder = next((str(m.get("path") or "") for m in modules if str(m.get("type", "")).endswith("Transformer")), "")
    prefix = f"{folder}/" if folder else ""
    for filename, field in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length")):
        config = model_json(spec, prefix + filename)
        value = config.get(field) if isinstance(config, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 10**6:
            return value
    return None


def load_scorer(spec: str, device: str | None = None) -> Any:
    """The scoring model in evaluation mode: ``SentenceTransformer(spec)`` (after ``import st_llm2vec``, so both of
    st-llm2vec's formats load, as does any stock model)."""
    from sentence_transformers import SentenceTransformer

    import st_llm2vec  # noqa: F401  (registers the exact format's module classes)

    model = SentenceTransformer(spec, device=device or "cpu")
    model.eval()
    return model


def scorer_fingerprint(spec: str) -> str:
    """What identifies a scorer's weights, for cache keys: a local dir by every file's path, size and modification
    time (a re-saved model is a new one), a Hub model by its cached snapshot (commit), else its id."""
    local = _local_dir(spec)
    if local is None:
        modules = _cached_hub_file(spec, "modules.json")
        return f"hub:{spec}@{modules.parent.name}" if modules is not None else f"hub:{spec}"
    digest = hashlib.sha256()
    for file in sorted(p for p in local.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(local).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return f"dir:{os.path.abspath(local)}:{digest.hexdigest()[:16]}"


def resolve_mode(mode: str, spec: str) -> str:
    """``auto`` → ``data`` for the model being trained (it learns the datasets' instructions), ``model`` otherwise."""
    if mode != "auto":
        return mode
    return "data" if spec == SELF else "model"


def subset_prompts(subset: Any, mode: str) -> dict[str, str | None]:
    """``{"query": prompt, "document": prompt}`` for encoding a dataset's two sides with ``encode_query`` /
    ``encode_document``: ``data``: the dataset's instruction joined as the supervised stage joins it (documents
    get it only in symmetric datasets); ``model``: None, i.e. the model's own query / document prompts; ``none``:
    empty prompts."""
    from .pair_data import join_instruction

    if mode == "model":
        return {"query": None, "document": None}
    if mode == "none" or not subset.instruction:
        return {"query": "", "document": ""}
    prompt = join_instruction(subset.instruction)
    return {"query": prompt, "document": prompt if subset.symmetric else ""}
