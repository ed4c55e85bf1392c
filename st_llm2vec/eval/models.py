"""The models ``st-llm2vec eval`` evaluates: which model a name means, how it is loaded, which prompts it gets.

- :func:`resolve_model`: a model dir or Hub id -> :class:`ModelSource` (its label, its revision — a content
  fingerprint of a local dir, the commit of a Hub snapshot — and whether st-llm2vec wrote it), without
  loading weights, so a rerun whose results are all cached loads nothing. A decoder LLM checkpoint (a
  ``*ForCausalLM`` config.json, no modules.json) is evaluated as it is — causal attention, mean pooling, the
  quick start's "causal baseline" — under the label ``<name> (causal LM)``; anything else without
  modules.json is not an embedding model and is refused.
- :func:`load`: a dir st-llm2vec wrote is loaded with :func:`st_llm2vec.load_model` (our encoder: packing,
  token budget, the bidirectionality probe, the causal flag it was saved with), a decoder LLM with
  :func:`st_llm2vec.from_llm` (``bidirectional=False``), anything else with plain ``SentenceTransformer``.
  All then go through the same :class:`~.cached_encoder.EvalEncoder`.
- :func:`prompts_for`: the prompts mteb's lookup reads for a model, each task's instruction as the model takes it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError, MissingFileError
from ..model_files import HF_CONFIG
from .results import LoadSettings

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

# Files of a model dir that do not change its embeddings: left out of its revision.
_NOT_WEIGHTS = {"README.md", ".gitattributes"}


@dataclass(frozen=True)
class ModelSource:
    """A model to evaluate: as given (``spec``), its table label, its local dir, its revision, whether it is ours
    (a dir st-llm2vec wrote, loaded with our encoder) and whether it is a bare decoder LLM (``from_llm``, causal)."""

    spec: str
    label: str
    path: Path | None
    revision: str
    ours: bool
    llm: bool = False


LLM_LABEL = "{} (causal LM)"  # the table label of a bare decoder LLM: what it is evaluated as


def _dir_revision(path: Path) -> str:
    """``local-<16 hex>``: a hash of every file's relative path, size and modification time (re-saving a model
    gives a new revision, so its results and embeddings are never taken for the old ones')."""
    entries = []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path)
        if rel.parts[0].startswith(".") or rel.name in _NOT_WEIGHTS:
            continue
        st = file.stat()
        entries.append([rel.as_posix(), st.st_size, st.st_mtime_ns])
    return "local-" + hashlib.sha256(json.dumps(entries).encode("utf-8")).hexdigest()[:16]


def written_by_st_llm2vec(path: Path) -> bool:
    """A dir st-llm2vec saved: the exact format (our module classes in modules.json), or the portable one (stock
    ``Transformer`` [+ ``WordWeights``] + ``Pooling`` over a decoder whose config.json carries the ``is_causal``
    flag st-llm2vec writes)."""
    from ..build import read_portable_dir
    from ..instructions import EXACT
    from ..portable import saved_format
    from ..proof import PACKAGE, module_types

    if saved_format(path) == EXACT:
        return any(name.startswith(f"{PACKAGE}.") for name in module_types(path))
    config = HF_CONFIG.read(path, missing_ok=True)  # checked: a damaged one is named, not taken for "not ours"
    return config is not None and "is_causal" in config and read_portable_dir(str(path)) is not None


def _architectures(config_path: Path) -> list[str] | None:
    """The ``architectures`` of a Hugging Face config.json (None: no config.json); a damaged one is an error naming
    the file and field."""
    config = HF_CONFIG.read_file(config_path, missing_ok=True)
    return None if config is None else list(config.get("architectures") or [])


def is_decoder_llm(architectures: list[str] | None) -> bool:
    """A causal language model checkpoint (``LlamaForCausalLM``, ``GPT2LMHeadModel``, ...): what ``from_llm`` takes."""
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures or [])


def _not_an_embedding_model(where: str, architectures: list[str] | None) -> InputError:
    if architectures is None:
        what = "no config.json either: not a model directory"
    else:
        what = f"a {', '.join(architectures) or 'Hugging Face'} checkpoint, not a decoder LLM nor an embedding model"
    return InputError(
        f"{where} has no modules.json and {what}. st-llm2vec eval takes Sentence Transformers models (a dir with "
        "modules.json, or a Hub id of one) and decoder LLM checkpoints (*ForCausalLM: evaluated causal, mean-pooled; "
        "st-llm2vec convert LLM OUT_DIR makes a bidirectional embedding model of one).")


def _hub_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot dir of a Hub model (its name is the commit), or None when it is not cached."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=["modules.json"]))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


# Dir names that say nothing about the model (a package's bundled ``model/``, a run's ``final/``): the table
# labels them ``<parent>/<name>``.
_GENERIC_NAMES = {"model", "models", "final", "best", "latest", "output", "out", "checkpoint", "snapshot"}


def _dir_label(path: Path) -> str:
    return f"{path.parent.name}/{path.name}" if path.name.lower() in _GENERIC_NAMES and path.parent.name else path.name


def resolve_model(spec: str) -> ModelSource:
    """What ``spec`` (a model dir or a Hub id) names, checked without loading weights."""
    from ..model_files import looks_like_hub_id

    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "modules.json").is_file():
            return _llm_source(spec, path.resolve(), _dir_label(path.resolve()), _dir_revision(path))
        return ModelSource(spec, _dir_label(path.resolve()), path.resolve(), _dir_revision(path),
                           written_by_st_llm2vec(path))
    if path.exists():
        raise InputError(f"{spec!r} is a file; pass a model directory (with modules.json) or a Hub id.")
    if not looks_like_hub_id(spec):
        raise MissingFileError(f"{spec!r} does not exist (looked relative to {os.getcwd()!r}): pass a Sentence "
                               "Transformers model directory or a Hugging Face Hub id such as 'owner/name'.")
    snapshot = _hub_snapshot(spec)
    if snapshot is None:
        snapshot = _download_snapshot(spec)
    if not (snapshot / "modules.json").is_file():
        return _llm_source(spec, snapshot, spec, snapshot.name)
    return ModelSource(spec, spec, snapshot, snapshot.name, written_by_st_llm2vec(snapshot))


def _llm_source(spec: str, path: Path, name: str, revision: str) -> ModelSource:
    """A dir without modules.json: a decoder LLM (evaluated causal, mean-pooled), or refused."""
    architectures = _architectures(path / "config.json")
    if not is_decoder_llm(architectures):
        raise _not_an_embedding_model(spec, architectures)
    return ModelSource(spec, LLM_LABEL.format(name), path, revision, ours=True, llm=True)


def _download_snapshot(repo_id: str) -> Path:
    """A Hub model's modules.json (the rest comes with the model itself): its snapshot dir, or one line that says why
    it cannot be had."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    try:
        try:
            return Path(hf_hub_download(repo_id, "modules.json")).parent
        except EntryNotFoundError:  # not a Sentence Transformers model: a decoder LLM is evaluated as one
            return Path(hf_hub_download(repo_id, "config.json")).parent
    except EntryNotFoundError:
        raise _not_an_embedding_model(repo_id, None) from None
    except RepositoryNotFoundError:
        raise MissingFileError(f"{repo_id!r} is neither a local directory nor a model on the Hugging Face Hub.") from None
    except Exception as exc:  # offline, no network: huggingface_hub raises several kinds
        raise MissingFileError(
            f"{repo_id!r} is no directory here ({os.getcwd()!r}), and as a Hub id it is not in the Hugging Face "
            f"cache and the Hub cannot be reached ({type(exc).__name__}). "
            f"Download it where there is network (python -c \"from sentence_transformers import SentenceTransformer; "
            f"SentenceTransformer('{repo_id}')\") and copy the cache (~/.cache/huggingface), or pass a local dir."
        ) from exc


def check_spec(spec: str) -> None:
    """What can be told of a model argument without importing torch or mteb: a path that does not exist and cannot
    be a Hub id is refused here, before any task data is looked for."""
    from ..model_files import looks_like_hub_id

    path = Path(spec).expanduser()
    if not path.exists() and not looks_like_hub_id(spec):
        raise MissingFileError(f"model {spec!r} does not exist (looked relative to {os.getcwd()!r}): pass a Sentence "
                               "Transformers model directory or a Hugging Face Hub id such as 'owner/name'.")


def precision_of(source: ModelSource, requested: str) -> str:
    """The precision ``source`` is evaluated in, checked before it loads: "float32", "bf16-mixed" (the plan, measured
    at load) or "saved" (the plan its dir carries). "auto" is :func:`st_llm2vec.precision.resolve`'s choice for
    st-llm2vec models and decoder LLMs and float32 for stock models, which the plan does not apply to."""
    from ..precision import PLAN_FILE, resolve

    if requested == "float32":
        return "float32"
    if not source.ours:
        if requested == "auto":
            return "float32"
        raise InputError(f"--precision {requested} applies to models st-llm2vec wrote and to decoder LLMs; "
                         f"{source.label} is a stock Sentence Transformers model: evaluate it with --precision float32 "
                         "or auto (float32 for it).")
    if requested == "saved":
        if source.llm or source.path is None or not (source.path / PLAN_FILE).is_file():
            raise InputError(f"--precision saved: {source.label} carries no precision plan ({PLAN_FILE}); pass "
                             "--precision bf16-mixed to plan one at load, or float32.")
        return "saved"
    return resolve(requested)


def load(source: ModelSource, settings: LoadSettings, precision: str = "float32") -> SentenceTransformer:
    """The model, in evaluation mode: ours through :func:`st_llm2vec.load_model`, a decoder LLM through
    :func:`st_llm2vec.from_llm` (causal, mean pooling), each with ``precision`` (:func:`precision_of`), any other
    with ``SentenceTransformer`` (float32)."""
    from ..build import parse_dtype

    dtype = parse_dtype(settings.dtype) if settings.dtype else None
    target = str(source.path) if source.path is not None else source.spec
    if source.llm:
        from ..build import from_llm

        kwargs = {"dtype": dtype} if dtype is not None else {}
        model = from_llm(target, bidirectional=False, device=settings.device,
                         max_batch_tokens=settings.max_batch_tokens, precision=precision, **kwargs)
    elif source.ours:
        from ..build import load_model

        kwargs: dict[str, Any] = {"device": settings.device}
        if dtype is not None:
            kwargs["dtype"] = dtype
        model = load_model(target, precision=precision, **kwargs)
        if settings.max_batch_tokens is not None:
            model[0].max_batch_tokens = settings.max_batch_tokens
    else:
        if precision != "float32":
            raise InputError(f"{source.label} is a stock Sentence Transformers model: the precision plan does not "
                             "apply to it; evaluate it in float32")
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(target, device=settings.device,
                                    model_kwargs={"dtype": dtype} if dtype is not None else None)
    if settings.max_seq_length is not None:
        model.max_seq_length = settings.max_seq_length
    if settings.truncate_dim is not None:
        size = model.get_embedding_dimension()
        if size and settings.truncate_dim > size:
            raise InputError(f"--dim {settings.truncate_dim} is more than the {size} dimensions of {source.label}'s "
                             f"embeddings: give --dim up to {size}.")
        model.truncate_dim = settings.truncate_dim  # ST's own cut, as SentenceTransformer(path, truncate_dim=d)
    model.eval()
    return model


def plan_fingerprint(model: SentenceTransformer) -> str | None:
    """What the precision plan ``model`` runs under computes (None: no plan, float32): its dtype and float32 layers,
    so embeddings cached under one plan are never served for another."""
    from ..precision import plan_of

    hf_model = getattr(model[0], "model", None)
    plan = plan_of(hf_model) if hf_model is not None else None
    if plan is None:
        return None
    kept = sorted(plan.float32_layers)
    if kept == list(range(len(kept))):  # the plans search makes: a float32 prefix
        return f"{plan.dtype}-f32-first-{len(kept)}-of-{plan.layers}"
    return f"{plan.dtype}-f32-{hashlib.sha256(json.dumps(kept).encode()).hexdigest()[:8]}-of-{plan.layers}"


def model_prompts(model: SentenceTransformer) -> dict[str, str]:
    """The prompts a model carries (config_sentence_transformers.json), empty ones left out."""
    return {k: v for k, v in (getattr(model, "prompts", None) or {}).items() if v}


def prompts_for(model: SentenceTransformer, instructions: Mapping[str, Any], mode: str) -> dict[str, str]:
    """The prompt dict mteb's lookup reads for ``model``: each task's instruction under its key, as the model
    takes prompts (:func:`st_llm2vec.portable.prompt_for`), plus the model's own prompts, which win on the same
    key ("model": only those; "none": nothing)."""
    from ..instructions import prompt_for
    from .instructions import LLM2VEC, MODEL, NONE

    if mode == NONE:
        return {}
    own = model_prompts(model)
    if mode == MODEL:
        return own
    if mode != LLM2VEC:
        raise InputError(f"unknown instructions mode {mode!r}")
    table = {item.prompt_key(): prompt_for(model, item.instruction)
             for item in instructions.values() if item.instruction}
    return {**table, **own}
