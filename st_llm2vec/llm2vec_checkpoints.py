"""llm2vec checkpoint stacks: find a base model, its LoRA adapters and ``llm2vec_config.json``.

llm2vec publishes a model as a base checkpoint, an MNTP LoRA adapter trained on the bidirectional
base, optionally a second (SimCSE / supervised) LoRA trained on base+MNTP, and an
``llm2vec_config.json`` holding its encode settings. ``resolve_stack`` turns what a user names
(a base, or an adapter whose ``base_model_name_or_path`` leads back to one, plus further adapters)
into a validated :class:`CheckpointStack` before any weights load; :func:`st_llm2vec.adapter_merge.merge_adapters`
then folds the adapters into an st_llm2vec model in order.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .model_files import CheckpointError, check_safetensors, looks_like_hub_id
from .pooling_modes import normalize_pooling_mode

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"
LLM2VEC_CONFIG = "llm2vec_config.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
MAX_CHAIN = 8  # adapter -> base -> ... links followed before assuming a cycle


@dataclass(frozen=True)
class Llm2VecSettings:
    """llm2vec's encode settings (its ``LLM2Vec.__init__`` defaults unless a config file says otherwise)."""

    pooling_mode: str = "mean"
    max_length: int = 512
    doc_max_length: int = 400
    skip_instruction: bool = True
    config_file: str | None = None  # the llm2vec_config.json these came from (None: llm2vec defaults)
    pooling_overridden: bool = False  # pooling_mode given explicitly (--pooling-mode)


@dataclass(frozen=True)
class Adapter:
    """One validated LoRA adapter directory."""

    path: Path
    weights: Path
    config: dict[str, Any] = field(repr=False)
    name: str  # as the user (or a base_model_name_or_path) named it, for messages and the model card


@dataclass(frozen=True)
class CheckpointStack:
    """A base model and the LoRA adapters to merge into it, in order, with the llm2vec settings."""

    base: str  # local directory or Hub id
    base_name: str  # as named by the user or an adapter config
    adapters: tuple[Adapter, ...]
    settings: Llm2VecSettings

    @property
    def local_paths(self) -> list[Path]:
        """Every local directory the stack reads (an output must not overwrite one of them)."""
        paths = [a.path for a in self.adapters]
        if Path(self.base).is_dir():
            paths.insert(0, Path(self.base))
        return [p.resolve() for p in paths]


# -- resolving -------------------------------------------------------------------------------------


def resolve_stack(
    source: str | Path,
    adapters: tuple[str | Path, ...] | list[str | Path] = (),
    pooling_mode: str | None = None,
    *,
    allow_pickle: bool = False,
) -> CheckpointStack:
    """Validate SOURCE (+ adapters) into a stack: base, adapters in merge order, llm2vec settings.

    SOURCE is a causal-LM checkpoint (dir or Hub id) or a LoRA adapter whose base is followed
    (recursively: a supervised adapter naming an MNTP adapter naming the base). Relative base paths
    are tried against the adapter dir's parent, then the cwd. Each later ``adapters`` entry is merged
    on top, in the order given. The last ``llm2vec_config.json`` found (base first, then adapters)
    supplies the settings; ``pooling_mode`` overrides its pooling.
    """
    chain: list[Adapter] = []
    base, base_name = _follow_to_base(str(source), None, chain, allow_pickle)
    for ref in adapters:
        path = _adapter_dir(str(ref), None)
        if path is None:
            found = "has no " + ADAPTER_CONFIG if Path(ref).expanduser().is_dir() else "was not found"
            raise CheckpointError(
                f"Adapter {str(ref)!r} {found}: --adapter takes a LoRA adapter directory (or Hub repo) holding "
                f"{ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}."
            )
        chain.append(_load_adapter(path, str(ref), allow_pickle))
    if Path(base).is_dir():
        _check_base_dir(Path(base), allow_pickle)
    settings = _settings([Path(base)] + [a.path for a in chain], pooling_mode)
    return CheckpointStack(base=base, base_name=base_name, adapters=tuple(chain), settings=settings)


def _follow_to_base(ref: str, relative_to: Path | None, chain: list[Adapter], allow_pickle: bool) -> tuple[str, str]:
    """Walk adapter -> base_model_name_or_path until a non-adapter; prepend adapters to ``chain``."""
    name = ref
    for _ in range(MAX_CHAIN):
        adapter_path = _adapter_dir(ref, relative_to)
        if adapter_path is None:
            return _base_location(ref, relative_to), name
        adapter = _load_adapter(adapter_path, name, allow_pickle)
        chain.insert(0, adapter)
        ref = adapter.config.get("base_model_name_or_path") or ""
        if not ref:
            raise CheckpointError(
                f"Adapter {name!r} ({adapter_path / ADAPTER_CONFIG}) names no base_model_name_or_path; "
                "pass the base model as SOURCE and this adapter with --adapter."
            )
        name, relative_to = ref, adapter_path.parent
    raise CheckpointError(f"Following base_model_name_or_path from {name!r} did not reach a base model after {MAX_CHAIN} steps (a cycle?).")


def _candidates(ref: str, relative_to: Path | None) -> list[Path]:
    """Where a (possibly relative) path may live: the adapter dir's parent first, then the cwd."""
    path = Path(ref).expanduser()
    if path.is_absolute() or relative_to is None:
        return [path]
    return [relative_to / path, path]


def _local_dir(ref: str, relative_to: Path | None) -> Path | None:
    for candidate in _candidates(ref, relative_to):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def _adapter_dir(ref: str, relative_to: Path | None) -> Path | None:
    """The local directory of adapter ``ref`` (downloading a Hub adapter), or None if it is no adapter."""
    local = _local_dir(ref, relative_to)
    if local is not None:
        return local if (local / ADAPTER_CONFIG).is_file() else None
    if not looks_like_hub_id(ref) or "/" not in ref:
        return None
    return _download_hub_adapter(ref)


def _download_hub_adapter(repo_id: str) -> Path | None:
    """Fetch a Hub adapter's config, weights and llm2vec_config.json; None when the repo is no adapter."""
    from huggingface_hub import file_exists, snapshot_download

    try:
        if not file_exists(repo_id, ADAPTER_CONFIG):
            return None
        patterns = [ADAPTER_CONFIG, ADAPTER_WEIGHTS, ADAPTER_PICKLE, LLM2VEC_CONFIG]
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:  # offline, gated, or no such repo: let the base-model path report it
        logger.debug("Could not check %s on the Hub for an adapter: %s", repo_id, exc)
        return None


def _base_location(ref: str, relative_to: Path | None) -> str:
    """A local base dir (absolute) or a Hub id; a missing local path is an error naming where we looked."""
    local = _local_dir(ref, relative_to)
    if local is not None:
        if not (local / "config.json").is_file():
            raise CheckpointError(
                f"{str(local)!r} has neither config.json nor {ADAPTER_CONFIG}: expected a Hugging Face causal-LM "
                "checkpoint directory or a LoRA adapter directory."
            )
        return str(local)
    tried = ", ".join(repr(str(c)) for c in _candidates(ref, relative_to))
    if looks_like_hub_id(ref) and not Path(ref).expanduser().is_absolute():
        return ref  # a Hub id: transformers downloads (or reports) it
    raise CheckpointError(f"Base model {ref!r} not found (looked at {tried}); pass an existing directory or a Hub id.")


# -- validating files ----------------------------------------------------------------------------------


def _refuse_pickle(path: Path, what: str) -> None:
    raise CheckpointError(
        f"{what} has only pickle weights ({path.name}): loading them can run arbitrary code. Convert them to "
        "safetensors, or pass --allow-pickle (allow_pickle=True) if you trust their source."
    )


def _check_base_dir(path: Path, allow_pickle: bool) -> None:
    """A local base needs safetensors weights (pickle only when allowed), all shards present and readable."""
    safetensors = sorted(path.glob("*.safetensors"))
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            raise CheckpointError(f"Base model {path} lacks shards {missing} listed in {index.name}; re-download it.")
    for file in safetensors:
        check_safetensors(file)
    if safetensors:
        return
    pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not pickles:
        raise CheckpointError(f"Base model {path} holds no weights (*.safetensors); expected a full checkpoint.")
    if not allow_pickle:
        _refuse_pickle(pickles[0], f"Base model {path}")


def _load_adapter(path: Path, name: str, allow_pickle: bool) -> Adapter:
    """Read and check one adapter dir: a LoRA config and readable weights."""
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"Adapter {name!r}: cannot read {path / ADAPTER_CONFIG} ({exc}).") from exc
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise CheckpointError(
            f"Adapter {name!r} is a {peft_type or 'untyped'} PEFT adapter; llm2vec checkpoints (and this tool) use LoRA."
        )
    weights = path / ADAPTER_WEIGHTS
    if weights.is_file():
        check_safetensors(weights)
    elif (path / ADAPTER_PICKLE).is_file():
        if not allow_pickle:
            _refuse_pickle(path / ADAPTER_PICKLE, f"Adapter {name!r}")
        weights = path / ADAPTER_PICKLE
    else:
        raise CheckpointError(
            f"Adapter {name!r} ({path}) has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}: the adapter weights are "
            "missing. Copy the complete adapter folder."
        )
    return Adapter(path=path, weights=weights, config=config, name=name)


# -- llm2vec_config.json ----------------------------------------------------------------------------


def read_llm2vec_config(path: Path) -> dict[str, Any]:
    """The settings in one llm2vec_config.json, type-checked (pooling is checked by ``_settings``)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"Cannot read {path} ({exc}); fix or delete it.") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object of llm2vec settings, not {type(data).__name__}.")
    known = {"pooling_mode": str, "max_length": int, "doc_max_length": int, "skip_instruction": bool}
    settings = {}
    for key, value in data.items():
        if key not in known:
            logger.warning("Ignoring unknown key %r in %s", key, path)
        elif value is not None:
            if not isinstance(value, known[key]) or (known[key] is int and isinstance(value, bool)):
                raise CheckpointError(f"{path}: {key} must be {known[key].__name__}, got {value!r}.")
            settings[key] = value
    return settings


def _settings(dirs: list[Path], pooling_mode: str | None) -> Llm2VecSettings:
    """llm2vec defaults, updated by the last llm2vec_config.json among ``dirs``, then by ``pooling_mode``."""
    found = [d / LLM2VEC_CONFIG for d in dirs if (d / LLM2VEC_CONFIG).is_file()]
    settings = Llm2VecSettings()
    if found:
        values = read_llm2vec_config(found[-1])
        settings = replace(settings, **values, config_file=str(found[-1]))
        if pooling_mode is None:
            try:
                settings = replace(settings, pooling_mode=normalize_pooling_mode(settings.pooling_mode))
            except ValueError as exc:
                raise CheckpointError(f"{found[-1]}: {exc} Fix pooling_mode there, or pass --pooling-mode.") from exc
    if pooling_mode is not None:
        settings = replace(settings, pooling_mode=normalize_pooling_mode(pooling_mode), pooling_overridden=True)
    return settings


