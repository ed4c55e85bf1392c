"""What a training run keeps in its ``output_dir`` besides the model: its fingerprint (what it trains, not where
or how it is driven), the record of the run (``st_llm2vec_run.json``), and its ``checkpoint-N`` dirs, each
complete only once its marker (``st_llm2vec_checkpoint.json``, written last) is there."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..files import LOCK_FILE, timestamp, write_json_atomic
from ..schema import FileType, Key, obj

RUN_FILE = "st_llm2vec_run.json"
CHECKPOINT_MARKER = "st_llm2vec_checkpoint.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json",
                "adapter_model.bin", "pytorch_model.bin", "pytorch_model.bin.index.json")
OWN_FILES = frozenset({RUN_FILE, LOCK_FILE, CHECKPOINT_MARKER})
_ANEW = "delete it, or set overwrite_output_dir: true to start the run over"
# The files of a run this module reads, declared once (:mod:`st_llm2vec.schema`).
RUN_SCHEMA = FileType(RUN_FILE, "the record of a training run", obj({
    "fingerprint": Key("str"), "config": Key("dict"), "global_step": Key("int", low=0), "max_steps": Key("int", low=-1),
    "status": Key("str"), "output_dir": Key("str"),
}), _ANEW)
CHECKPOINT_SCHEMA = FileType(CHECKPOINT_MARKER, "a checkpoint's completion marker", obj({
    "global_step": Key("int", nullable=False, low=0), "fingerprint": Key("str"), "config": Key("dict"),
    "saved": Key("str"),
}, required=("global_step",)), _ANEW)
TRAINER_STATE = FileType("trainer_state.json", "the trainer's state of a checkpoint", obj({
    "global_step": Key("int", nullable=False, low=0),
}), _ANEW)

# Keys that say where and how a run is driven, not what it trains: left out of the fingerprint.
RUN_CONTROL_KEYS = frozenset({
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "stop_after_n_steps",
    "logging_dir", "logging_steps", "logging_strategy", "logging_first_step", "logging_nan_inf_filter",
    "log_level", "log_level_replica", "log_on_each_node", "disable_tqdm", "report_to", "run_name", "project",
    "save_steps", "save_strategy", "save_total_limit", "save_only_model", "save_safetensors", "save_on_each_node",
    "eval_steps", "eval_strategy", "eval_delay", "eval_on_start", "per_device_eval_batch_size",
    "eval_accumulation_steps", "evaluator", "eval_data_dir", "eval_max_pairs", "eval_instruction",
    "max_eval_samples", "validation_file", "dataloader_num_workers", "dataloader_pin_memory",
    "dataloader_persistent_workers", "dataloader_prefetch_factor", "use_cpu", "ddp_backend", "ddp_timeout",
    "push_to_hub", "hub_model_id", "hub_strategy", "hub_token", "hub_private_repo", "hub_always_push",
    "hub_revision", "preprocessing_num_workers", "overwrite_cache", "merge_lora", "save_mode",
    "skip_memory_metrics", "include_num_input_tokens_seen", "model_label", "data_label",
    # memory / speed only: the same training either way
    "gradient_checkpointing", "gradient_checkpointing_kwargs", "mini_batch_size", "torch_compile",
    "torch_compile_backend", "torch_compile_mode",
})


# --------------------------------------------------------------------------- fingerprint


def path_identity(value: Any) -> Any:
    """A local file or directory as (name, size, mtime) of its files; anything else (a Hub id) as it is."""
    if isinstance(value, (list, tuple)):
        return [path_identity(v) for v in value]
    if not isinstance(value, (str, os.PathLike)) or not str(value) or not os.path.exists(value):
        return value
    path = Path(value)

    def entry(p: Path) -> list[Any]:
        st = p.stat()
        return [p.name, st.st_size, st.st_mtime_ns]

    if path.is_file():
        return {"file": entry(path)}
    files = sorted(
        (p for p in path.iterdir() if p.is_file() and p.name not in OWN_FILES and not p.name.startswith(".")),
        key=lambda p: p.name,
    )
    return {"dir": path.name, "files": [entry(p) for p in files]}


def run_fingerprint(config: Mapping[str, Any], path_keys: Iterable[str] = ()) -> dict[str, Any]:
    """``{"hash": 16 hex digits, "config": what was hashed}`` for a flat config mapping."""
    path_keys = set(path_keys)
    parts: dict[str, Any] = {}
    for key in sorted(config):
        if key in RUN_CONTROL_KEYS:
            continue
        value = config[key]
        parts[key] = path_identity(value) if key in path_keys else value
    text = json.dumps(parts, sort_keys=True, default=str)
    parts = json.loads(text)
    return {"hash": hashlib.sha256(text.encode("utf-8")).hexdigest()[:16], "config": parts}


def describe_difference(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str:
    """``key (old → new), ...`` for the keys whose values differ."""
    if not old:
        return "(the other run recorded no settings)"
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if a != b:
            text_a, text_b = json.dumps(a, default=str), json.dumps(b, default=str)
            if len(text_a) > 60 or len(text_b) > 60:
                diffs.append(f"{key} (its files changed)" if isinstance(b, (dict, list)) else f"{key}")
            else:
                diffs.append(f"{key} ({text_a} → {text_b})")
    return ", ".join(diffs) if diffs else "(nothing that was recorded)"


# --------------------------------------------------------------------------- checkpoints


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of the ``checkpoint-N`` directories in ``output_dir``, newest (highest step) first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = CHECKPOINT_RE.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def _safetensors_problem(path: Path) -> str | None:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated"
            n = int.from_bytes(head, "little")
            if n <= 0 or 8 + n > size:
                return f"{path.name} is truncated"
            header = json.loads(f.read(n))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        if ends and 8 + n + max(ends) > size:
            return f"{path.name} is truncated"
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return f"{path.name} is unreadable"
    return None


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why a checkpoint without completion marker cannot be resumed (None: it looks complete)."""
    path = Path(path)
    state = TRAINER_STATE.read_whole(path)
    if state is None or "global_step" not in state:
        return "its trainer_state.json is missing or incomplete"
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        return "it holds no model weights"
    for weights in sorted(path.glob("*.safetensors")):
        problem = _safetensors_problem(weights)
        if problem:
            return problem
    return None


def write_checkpoint_marker(checkpoint_dir: str | os.PathLike, fingerprint: Mapping[str, Any] | None, step: int) -> None:
    """Mark ``checkpoint_dir`` complete (call after every other file of it is written)."""
    data = {"global_step": step, "saved": timestamp()}
    if fingerprint:
        data.update(fingerprint=fingerprint["hash"], config=fingerprint["config"])
    write_json_atomic(Path(checkpoint_dir) / CHECKPOINT_MARKER, data)


def remove_checkpoint_marker(checkpoint_dir: str | os.PathLike) -> None:
    """Unmark a checkpoint about to be (re)written: until the new marker lands it counts as incomplete."""
    with contextlib.suppress(OSError):
        os.unlink(Path(checkpoint_dir) / CHECKPOINT_MARKER)


def checkpoint_step(checkpoint_dir: str | os.PathLike) -> int | None:
    state = TRAINER_STATE.read_whole(checkpoint_dir)
    return state["global_step"] if state and "global_step" in state else None
