"""st_llm2vec/llm2vec_checkpoints.py, adapter_merge.py: an llm2vec checkpoint stack (base + LoRA adapters +
llm2vec_config.json) is found, checked and merged — or refused naming the file and the fix.

Runs on a tiny llm2vec-style stack (conftest ``stack``: base + two LoRA adapters, the second with an
llm2vec_config.json) through ``convert``, so it needs no downloads and no shared fixtures.
"""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformer

import st_llm2vec  # noqa: F401
from st_llm2vec.llm2vec_checkpoints import CheckpointError, resolve_stack
from st_llm2vec.cli import main as cli
from st_llm2vec.export.convert import convert as _convert
from conftest import SENTENCES
from conftest import copy_writable as _copy
from conftest import save_lora as _save_lora

# These tests are about the exact format (llm2vec's semantics, our module classes); the portable
# format, convert's default, is covered by tests/test_portable.py.
convert = functools.partial(_convert, format="exact")

TEXTS = SENTENCES[:5]


def _encode(path: Path) -> np.ndarray:
    return SentenceTransformer(str(path)).encode(TEXTS, prompt="Retrieve:")


def _error(*args, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        convert(*args, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------- finding the stack


def test_adapter_source_follows_base_relative_to_adapter_parent(stack, full, tmp_path):
    """SOURCE=supervised → base "base" (relative to its parent); same weights as base + supervised."""
    out = tmp_path / "m"
    with contextlib.chdir(tmp_path):
        assert cli(["convert", str(stack / "mntp"), str(out), "--adapter", str(stack / "supervised"), "--format", "exact"]) == 0
    np.testing.assert_allclose(_encode(out), _encode(full), atol=1e-5)


def test_relative_base_falls_back_to_cwd(stack, tmp_path):
    adapter = _copy(stack / "mntp", tmp_path / "elsewhere" / "mntp")
    with contextlib.chdir(stack):
        resolved = resolve_stack(adapter)
    assert Path(resolved.base) == (stack / "base").resolve() and [a.path for a in resolved.adapters] == [adapter.resolve()]


def test_hub_adapter_source_is_downloaded_and_followed(stack, tmp_path, monkeypatch):
    import huggingface_hub

    snapshot = _copy(stack / "mntp", tmp_path / "snapshot")
    config = json.loads((snapshot / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(stack / "base")  # a Hub adapter names its base; keep it local here
    (snapshot / "adapter_config.json").write_text(json.dumps(config))
    asked = []
    monkeypatch.setattr(huggingface_hub, "file_exists", lambda repo, name, **kw: asked.append((repo, name)) or True)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **kw: asked.append((repo, kw["allow_patterns"])) or str(snapshot))
    with contextlib.chdir(tmp_path):
        resolved = resolve_stack("someone/tiny-mntp")
    assert Path(resolved.base) == (stack / "base").resolve() and [a.path for a in resolved.adapters] == [snapshot]
    assert asked[0] == ("someone/tiny-mntp", "adapter_config.json") and "adapter_model.safetensors" in asked[1][1]


def test_llm2vec_config_is_read_from_the_last_adapter(stack, tmp_path):
    supervised = _copy(stack / "supervised", tmp_path / "supervised")
    settings = {"pooling_mode": "weighted_mean", "max_length": 64, "doc_max_length": 12, "skip_instruction": False}
    (supervised / "llm2vec_config.json").write_text(json.dumps(settings))
    resolved = resolve_stack(stack / "base", [stack / "mntp", supervised])
    assert (resolved.settings.pooling_mode, resolved.settings.max_length) == ("weighted_mean", 64)
    assert (resolved.settings.doc_max_length, resolved.settings.skip_instruction) == (12, False)
    out = convert(stack / "base", tmp_path / "m", adapters=[stack / "mntp", supervised], prompts={})
    model = SentenceTransformer(str(out))
    assert (model[0].max_seq_length, model[0].doc_max_length) == (64, 12)
    assert (model[1].pooling_mode, model[1].skip_instruction) == ("weighted_mean", False)


# --------------------------------------------------------------------------- bad inputs


def test_missing_adapter_files(stack, tmp_path):
    adapter = _copy(stack / "mntp", tmp_path / "mntp")
    (adapter / "adapter_model.safetensors").unlink()
    assert "weights are missing" in _error(stack / "base", tmp_path / "o", adapters=[adapter])
    assert "was not found" in _error(stack / "base", tmp_path / "o", adapters=[tmp_path / "nope"])
    assert "has no adapter_config.json" in _error(stack / "base", tmp_path / "o", adapters=[stack / "base"])
    assert not (tmp_path / "o").exists()


def test_corrupt_safetensors(stack, tmp_path):
    adapter = _copy(stack / "mntp", tmp_path / "mntp")
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert "truncated or corrupt" in _error(stack / "base", tmp_path / "o", adapters=[adapter])
    base = _copy(stack / "base", tmp_path / "base")
    (base / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    assert "truncated or corrupt" in _error(base, tmp_path / "o")


def test_adapter_for_another_shape_is_refused(stack, tmp_path):
    adapter = _copy(stack / "mntp", tmp_path / "mntp")
    tensors = load_file(adapter / "adapter_model.safetensors")
    key = next(k for k in tensors if "q_proj.lora_A" in k)
    tensors[key] = tensors[key][:, :16].contiguous()
    save_file(tensors, adapter / "adapter_model.safetensors")
    message = _error(stack / "base", tmp_path / "o", adapters=[adapter])
    assert "does not fit the base model" in message and "q_proj" in message


def test_adapter_for_another_architecture_is_refused(stack, tmp_path):
    adapter = _copy(stack / "mntp", tmp_path / "mntp")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["auto_mapping"] = {"base_model_class": "GemmaBiModel", "parent_library": "llm2vec.models.bidirectional_gemma"}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    assert "trained on GemmaBiModel (gemma), but the base is a llama model" in _error(stack / "base", tmp_path / "o", adapters=[adapter])


def test_adapter_from_a_bigger_model_is_refused(stack, tmp_path):
    """A real shape mismatch: an adapter of a hidden-64 model onto the hidden-32 base."""
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig.from_pretrained(stack / "base")
    config.hidden_size, config.intermediate_size = 64, 128
    _save_lora(LlamaModel(config), tmp_path / "big", seed=3, base_ref="base")
    assert "does not fit the base model" in _error(stack / "base", tmp_path / "o", adapters=[tmp_path / "big"])


def test_unknown_pooling_in_llm2vec_config(stack, tmp_path):
    supervised = _copy(stack / "supervised", tmp_path / "supervised")
    (supervised / "llm2vec_config.json").write_text(json.dumps({"pooling_mode": "max"}))
    message = _error(stack / "base", tmp_path / "o", adapters=[stack / "mntp", supervised])
    assert "'max'" in message and "--pooling-mode" in message and "llm2vec_config.json" in message
    assert convert(stack / "base", tmp_path / "o", adapters=[stack / "mntp", supervised], pooling_mode="mean").is_dir()


def test_pickle_weights_need_allow_pickle(stack, full, tmp_path):
    mntp = _copy(stack / "mntp", tmp_path / "mntp")
    supervised = _copy(stack / "supervised", tmp_path / "supervised")
    torch.save(load_file(supervised / "adapter_model.safetensors"), supervised / "adapter_model.bin")
    (supervised / "adapter_model.safetensors").unlink()
    assert "--allow-pickle" in _error(stack / "base", tmp_path / "o", adapters=[mntp, supervised])
    base = _copy(stack / "base", tmp_path / "base")
    torch.save(load_file(base / "model.safetensors"), base / "pytorch_model.bin")
    (base / "model.safetensors").unlink()
    assert "--allow-pickle" in _error(base, tmp_path / "o")
    out = convert(base, tmp_path / "o", adapters=[mntp, supervised], allow_pickle=True, prompts={"query": "Find:"})
    np.testing.assert_allclose(_encode(out), _encode(full), atol=1e-5)


# --------------------------------------------------------------------------- merging


def test_adapter_trained_on_the_causal_lm_class_is_remapped(stack, tmp_path):
    """LoRA saved over *ForCausalLM (keys carry its ``model.`` prefix) merges like one saved over the bare model."""
    from transformers import AutoModel, AutoModelForCausalLM

    _save_lora(AutoModelForCausalLM.from_pretrained(stack / "base"), tmp_path / "causal-lm", seed=7, base_ref="base")
    _save_lora(AutoModel.from_pretrained(stack / "base"), tmp_path / "bare", seed=7, base_ref="base")
    keys = load_file(tmp_path / "causal-lm" / "adapter_model.safetensors")
    assert all(k.startswith("base_model.model.model.") for k in keys)
    a = convert(stack / "base", tmp_path / "a", adapters=[tmp_path / "causal-lm"], prompts={})
    b = convert(stack / "base", tmp_path / "b", adapters=[tmp_path / "bare"], prompts={})
    np.testing.assert_allclose(_encode(a), _encode(b), atol=1e-6)
