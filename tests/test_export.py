"""``st-llm2vec convert`` / ``push``: stack resolution, bad inputs, atomic writes, overwrite, Hub push (mocked).

Runs on a tiny llm2vec-style stack built here (base + two LoRA adapters, the second with an
llm2vec_config.json), so it needs no downloads and no shared fixtures.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformer

import st_llm2vec  # noqa: F401
from st_llm2vec.export import convert as convert_module
from st_llm2vec.checkpoints import CheckpointError, resolve_stack
from st_llm2vec.cli import main as cli
from st_llm2vec.export.convert import convert as _convert

# These tests are about the exact format (llm2vec's semantics, our module classes); the portable
# format, convert's default, is covered by tests/test_portable.py.
convert = functools.partial(_convert, format="exact")

from conftest import SENTENCES

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TEXTS = SENTENCES[:5]



def _save_lora(model, out: Path, seed: int, base_ref: str) -> None:
    """A LoRA adapter over ``model`` with random non-zero weights, naming its base as llm2vec's do."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    peft_model.save_pretrained(out)
    config = json.loads((out / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base_ref
    (out / "adapter_config.json").write_text(json.dumps(config))
    (out / "README.md").unlink(missing_ok=True)
    return peft_model.merge_and_unload()


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    """An llm2vec checkpoint layout: base/, mntp/ (over base), supervised/ (over base+mntp, with llm2vec_config.json)."""
    from conftest import make_tiny_llm
    from transformers import AutoModel

    root = tmp_path_factory.mktemp("stack")
    make_tiny_llm(root / "base", "llama")
    model = AutoModel.from_pretrained(root / "base")
    model = _save_lora(model, root / "mntp", seed=1, base_ref="base")
    _save_lora(model, root / "supervised", seed=2, base_ref="base")
    settings = {"pooling_mode": "mean", "max_length": 512, "doc_max_length": 400, "skip_instruction": True}
    (root / "supervised" / "llm2vec_config.json").write_text(json.dumps(settings))
    return root


@pytest.fixture(scope="module")
def full(stack, tmp_path_factory) -> Path:
    """base+mntp+supervised converted once through the CLI (shared by read-only tests)."""
    out = tmp_path_factory.mktemp("full") / "model"
    with contextlib.chdir(stack):
        assert cli(["convert", "base", str(out), "--adapter", "mntp", "--adapter", "supervised", "--prompt", "query=Find:", "--format", "exact"]) == 0
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for path in [dst, *dst.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return dst


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _encode(path: Path) -> np.ndarray:
    return SentenceTransformer(str(path)).encode(TEXTS, prompt="Retrieve:")


# -- the happy path ------------------------------------------------------------------------------------


def test_cli_convert_writes_a_standalone_st_dir(full):
    files = {p.name for p in full.iterdir()}
    assert {"model.safetensors", "config.json", "modules.json", "config_sentence_transformers.json", "README.md"} <= files
    assert not any(name.endswith(".bin") or name.startswith("adapter_") for name in files)
    assert json.loads((full / "config.json").read_text())["is_causal"] is False
    modules = [m["type"] for m in json.loads((full / "modules.json").read_text())]
    assert modules == ["st_llm2vec.encoder.LLM2VecTransformer", "st_llm2vec.pooling.LLM2VecPooling"]
    assert json.loads((full / "config_sentence_transformers.json").read_text())["prompts"]["query"] == "Find:"
    card = (full / "README.md").read_text()
    assert "## How this model was made" in card and st_llm2vec.__version__ in card
    assert card.index("1. `mntp`") < card.index("2. `supervised`")
    assert "`mean`" in card and "supervised/llm2vec_config.json" in card and "doc_max_length=400" in card
    assert _leftovers(full.parent) == []
    model = SentenceTransformer(str(full))
    assert model[0].bidirectional and model[0].doc_max_length == 400
    assert model[0].max_seq_length == 256  # llm2vec's max_length 512, capped by the tiny model's positions
    assert model.encode(TEXTS, prompt_name="query").shape == (len(TEXTS), 32)


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


def test_default_prompts_and_pooling_override(stack, tmp_path):
    out = convert(stack / "base", tmp_path / "m", adapters=[stack / "mntp", stack / "supervised"], pooling_mode="eos_token")
    assert json.loads((out / "1_LLM2VecPooling" / "config.json").read_text())["pooling_mode"] == "eos_token"
    assert json.loads((out / "sentence_bert_config.json").read_text())["text_suffix"] == " </s>"
    assert SentenceTransformer(str(out)).prompts["query"] == convert_module.DEFAULT_PROMPTS["query"]
    assert "from `--pooling-mode`" in (out / "README.md").read_text()


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


def test_keep_adapters_dtype_and_attention(stack, tmp_path):
    out = convert(stack / "base", tmp_path / "m", adapters=[stack / "mntp", stack / "supervised"],
                  keep_adapters=True, dtype="bfloat16", attn_implementation="eager")
    assert (out / "adapters" / "01_mntp" / "adapter_model.safetensors").is_file()
    assert (out / "adapters" / "02_supervised" / "llm2vec_config.json").is_file()
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.bfloat16}
    assert SentenceTransformer(str(out)).encode(TEXTS).shape == (len(TEXTS), 32)


def test_causal_flag_keeps_the_model_causal(stack, tmp_path):
    out = convert(stack / "base", tmp_path / "m", causal=True)
    assert json.loads((out / "sentence_bert_config.json").read_text())["bidirectional"] is False
    assert SentenceTransformer(str(out))[0].model.config.is_causal is True


# -- bad inputs ------------------------------------------------------------------------------------------


def _error(*args, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        convert(*args, **kwargs)
    return str(info.value)


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


# -- output handling ---------------------------------------------------------------------------------


def test_existing_output_is_refused_then_replaced_with_overwrite(stack, tmp_path, capsys):
    out = tmp_path / "m"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert cli(["convert", str(stack / "base"), str(out)], report_errors=True) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "old.txt").is_file()
    assert cli(["convert", str(stack / "base"), str(out), "--overwrite", "--format", "exact"]) == 0
    assert not (out / "old.txt").exists() and (out / "model.safetensors").is_file()
    assert _leftovers(tmp_path) == []


def test_output_may_not_be_an_input(stack, tmp_path):
    base = _copy(stack / "base", tmp_path / "base")
    with pytest.raises(FileExistsError, match="is \\(or contains\\) the input"):
        convert(base, tmp_path, overwrite=True)
    assert (base / "model.safetensors").is_file()


@pytest.mark.parametrize("failure", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failed_convert_leaves_nothing(stack, tmp_path, monkeypatch, failure):
    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(convert_module, "_model_card", fail)  # the last step, after the weights are written
    with pytest.raises(type(failure)):
        convert(stack / "base", tmp_path / "m", adapters=[stack / "mntp"])
    assert list(tmp_path.iterdir()) == []
    # with --overwrite, the old OUTPUT survives a failed replacement untouched
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "old.txt").write_text("old")
    with pytest.raises(type(failure)):
        convert(stack / "base", tmp_path / "m", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["m"] and [p.name for p in (tmp_path / "m").iterdir()] == ["old.txt"]


def test_cli_reports_interrupt(stack, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(convert_module, "_model_card", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert cli(["convert", str(stack / "base"), str(tmp_path / "m")], report_errors=True) == 130
    assert "nothing was written" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


# -- push (Hub mocked at huggingface_hub's boundary) ----------------------------------------------------


@pytest.fixture
def hub(monkeypatch, tmp_path_factory):
    """Record create_repo / upload_folder calls (and what the uploaded folder held) instead of uploading."""
    from huggingface_hub import CommitInfo, HfApi, RepoUrl

    calls: dict[str, list] = {"create_repo": [], "upload_folder": [], "tokens": []}
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))
    monkeypatch.setenv("HF_TOKEN", "hf_secret_test_token")

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"].append(dict(kwargs, repo_id=repo_id))
        calls["tokens"].append(self.token)
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        calls["upload_folder"].append(dict(kwargs, repo_id=repo_id, folder_path=folder_path, files=files))
        url = f"https://huggingface.co/{repo_id}/commit/abc123"
        return CommitInfo(commit_url=url, commit_message=kwargs.get("commit_message") or "", commit_description="", oid="abc123")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_convert_push_to_hub_uploads_the_finished_dir(stack, tmp_path, hub):
    out = convert(stack / "base", tmp_path / "m", adapters=[stack / "mntp"], push_to_hub="someone/tiny-llm2vec")
    assert hub["create_repo"] == [{"repo_id": "someone/tiny-llm2vec", "private": None, "repo_type": None, "exist_ok": True}]
    (upload,) = hub["upload_folder"]
    assert upload["repo_id"] == "someone/tiny-llm2vec" and Path(upload["folder_path"]) == out
    assert {"model.safetensors", "modules.json", "config.json", "README.md", "1_LLM2VecPooling/config.json"} <= set(upload["files"])
    assert b'SentenceTransformer("someone/tiny-llm2vec")' in upload["files"]["README.md"]
    assert all(b"hf_secret_test_token" not in data for data in upload["files"].values())
    assert hub["tokens"] == [None]  # huggingface_hub reads HF_TOKEN itself; we never pass it around


def test_cli_push(full, hub, capsys):
    assert cli(["push", str(full), "someone/pushed", "--private"]) == 0
    assert hub["create_repo"][0]["private"] is True and hub["upload_folder"][0]["repo_id"] == "someone/pushed"
    assert set(hub["upload_folder"][0]["files"]) == {str(p.relative_to(full)) for p in full.rglob("*") if p.is_file()}
    output = capsys.readouterr()
    assert "hf_secret_test_token" not in output.out + output.err


def test_push_refuses_non_model_dirs_bad_repo_ids_and_missing_tokens_before_uploading(full, stack, tmp_path, hub, monkeypatch, capsys):
    assert cli(["push", str(stack / "base"), "someone/x"], report_errors=True) == 2 and "modules.json" in capsys.readouterr().err
    assert cli(["push", str(full), "not-a-repo-id"], report_errors=True) == 2 and "user-or-org/model-name" in capsys.readouterr().err
    monkeypatch.delenv("HF_TOKEN")
    assert cli(["push", str(full), "someone/x"], report_errors=True) == 2 and "hf auth login" in capsys.readouterr().err
    # a missing token is caught before a (long) conversion starts
    assert cli(["convert", str(stack / "base"), str(tmp_path / "m"), "--push-to-hub", "someone/x"], report_errors=True) == 2
    assert "HF_TOKEN" in capsys.readouterr().err and not (tmp_path / "m").exists()
    assert hub["create_repo"] == [] and hub["upload_folder"] == []


# -- more sources ---------------------------------------------------------------------------------------


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


def test_sigterm_during_convert_leaves_nothing(stack, tmp_path, monkeypatch, capsys):
    import signal

    monkeypatch.setattr(convert_module, "_model_card", lambda *a, **k: os.kill(os.getpid(), signal.SIGTERM))
    assert cli(["convert", str(stack / "base"), str(tmp_path / "m")], report_errors=True) == 130
    assert list(tmp_path.iterdir()) == []
