"""st_llm2vec/bidirectional.py: the switch makes decoders bidirectional, the probe refuses any model that stays
causal, and weights that are not finite are reported as such."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel

import st_llm2vec
from st_llm2vec import BidirectionalityError
from st_llm2vec.bidirectional import enable_bidirectional, probe_bidirectional
from conftest import copy_model_dir as _copy

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma3_text"]


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHS)
def test_switch_makes_every_architecture_bidirectional(tiny_llm, arch, impl):
    model = AutoModel.from_pretrained(tiny_llm(arch), attn_implementation=impl)
    before = probe_bidirectional(model)
    assert before["early_token_shift"] == 0.0  # causal as loaded
    enable_bidirectional(model)
    after = probe_bidirectional(model)
    assert after["early_token_shift"] > 1e-3
    assert after["padding_mismatch"] < 1e-5


@pytest.mark.slow  # flex_attention compiles on first use: ~45 s on 2 CPU cores
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_switch_works_under_flex_attention(tiny_llm, arch):
    model = st_llm2vec.from_llm(str(tiny_llm(arch)), attn_implementation="flex_attention")
    assert model[0].probe["early_token_shift"] > 1e-3


def test_config_flag_alone_leaves_stablelm_sdpa_causal_but_the_switch_does_not(tiny_llm):
    model = AutoModel.from_pretrained(tiny_llm("stablelm"), attn_implementation="sdpa")
    model.config.is_causal = False
    assert probe_bidirectional(model)["early_token_shift"] == 0.0  # transformers ignores the flag here
    enable_bidirectional(model)  # also flips the per-module flags SDPA reads
    assert probe_bidirectional(model)["early_token_shift"] > 1e-3


def test_model_that_stays_causal_is_refused_with_a_clear_error(tiny_llm, monkeypatch):
    def config_flag_only(model):
        model.config.is_causal = False
        return model

    monkeypatch.setattr(st_llm2vec.bidirectional, "enable_bidirectional", config_flag_only)
    with pytest.raises(BidirectionalityError) as err:
        st_llm2vec.from_llm(str(tiny_llm("stablelm")), attn_implementation="sdpa")
    message = str(err.value)
    assert "StableLmModel" in message and "'sdpa'" in message and "attn_implementation='eager'" in message
    assert isinstance(err.value, ValueError)


def test_absolute_position_model_fails_the_padding_probe():
    from transformers import GPT2Config

    torch.manual_seed(0)
    model = AutoModel.from_config(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=300, bos_token_id=0,
                                             eos_token_id=0))
    with pytest.raises(BidirectionalityError, match="left padding"):
        st_llm2vec.ensure_bidirectional(model)


def test_encoder_models_are_refused_before_loading(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                         vocab_size=100)).save_pretrained(tmp_path)
    with pytest.raises(BidirectionalityError, match="not a decoder-only LLM"):
        st_llm2vec.from_llm(str(tmp_path))


@pytest.mark.numerics
@pytest.mark.parametrize("bidirectional", [True, False])
def test_non_finite_weights_are_reported_as_such_not_as_causal(tiny_llm, tmp_path, bidirectional):
    from safetensors.torch import load_file, save_file

    path = _copy(tiny_llm("llama"), tmp_path / "m")
    weights = load_file(path / "model.safetensors")
    name = next(k for k in weights if "q_proj" in k)
    weights[name][0, 0] = float("nan")
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"not finite.*q_proj") as info:
        st_llm2vec.from_llm(str(path), bidirectional=bidirectional)
    assert "stays causal" not in str(info.value)
