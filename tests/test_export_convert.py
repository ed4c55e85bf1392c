"""st_llm2vec/export/convert.py: ``st-llm2vec convert`` / ``push`` write a standalone ST dir (prompts, pooling,
dtype, card), atomically — nothing is left of a failed or interrupted one —, and push it to the Hub (mocked).

Runs on the tiny llm2vec-style stack of conftest (``stack``: base + two LoRA adapters, the second with an
llm2vec_config.json), so it needs no downloads and no shared fixtures. How the stack is found, checked and merged:
tests/test_llm2vec_checkpoints.py.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer

import st_llm2vec  # noqa: F401
from st_llm2vec.export import convert as convert_module
from st_llm2vec.cli import main as cli
from st_llm2vec.export.convert import convert as _convert
from conftest import SENTENCES
from conftest import copy_writable as _copy

# These tests are about the exact format (llm2vec's semantics, our module classes); the portable
# format, convert's default, is covered by tests/test_portable.py.
convert = functools.partial(_convert, format="exact")

TEXTS = SENTENCES[:5]


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------- the happy path


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


def test_default_prompts_and_pooling_override(stack, tmp_path):
    out = convert(stack / "base", tmp_path / "m", adapters=[stack / "mntp", stack / "supervised"], pooling_mode="eos_token")
    assert json.loads((out / "1_LLM2VecPooling" / "config.json").read_text())["pooling_mode"] == "eos_token"
    assert json.loads((out / "sentence_bert_config.json").read_text())["text_suffix"] == " </s>"
    assert SentenceTransformer(str(out)).prompts["query"] == convert_module.DEFAULT_PROMPTS["query"]
    assert "from `--pooling-mode`" in (out / "README.md").read_text()


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


# --------------------------------------------------------------------------- output handling


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


def test_sigterm_during_convert_leaves_nothing(stack, tmp_path, monkeypatch, capsys):
    import signal

    monkeypatch.setattr(convert_module, "_model_card", lambda *a, **k: os.kill(os.getpid(), signal.SIGTERM))
    assert cli(["convert", str(stack / "base"), str(tmp_path / "m")], report_errors=True) == 130
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- push (Hub mocked at huggingface_hub's boundary)


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
