"""st_llm2vec/lowbit.py: 4-bit / 8-bit loading through bitsandbytes (which runs on CPU too), and QLoRA whose saved
model is the adapter merged into the float32 start weights, not into the low-bit ones."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch

import st_llm2vec
from st_llm2vec.errors import InputError, MissingExtraError

from conftest import SENTENCES, make_tiny_llm, mntp_recipe

pytest.importorskip("bitsandbytes")
TEXTS = sorted(set(SENTENCES))


@pytest.fixture(scope="module")
def tiny64(tmp_path_factory):
    """bitsandbytes' CPU 4-bit kernels need rows of at least one 64-value block: hidden size 64."""
    return make_tiny_llm(tmp_path_factory.mktemp("tiny64"), hidden_size=64, intermediate_size=128)


@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_low_bit_loading_gives_a_bidirectional_model_close_to_float32(tiny64, quantization):
    import bitsandbytes as bnb

    low = st_llm2vec.from_llm(str(tiny64), quantization=quantization)  # the bidirectionality probe runs at load
    projection = low[0].model.layers[0].self_attn.q_proj
    assert isinstance(projection, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))
    reference = st_llm2vec.from_llm(str(tiny64)).encode(TEXTS)
    embeddings = low.encode(TEXTS)
    cosines = (embeddings * reference).sum(1) / np.linalg.norm(embeddings, axis=1) / np.linalg.norm(reference, axis=1)
    assert np.isfinite(embeddings).all() and cosines.min() > 0.9 and not np.allclose(embeddings, reference)


def test_a_4bit_layer_passes_gradients_to_its_input_after_the_load_time_probe(tiny64):
    """bitsandbytes' CPU repacking (at the first eval forward, e.g. our probe) drops autograd: QLoRA would train wrong."""
    import bitsandbytes.functional as F

    layer = st_llm2vec.from_llm(str(tiny64), quantization="nf4")[0].model.layers[0].self_attn.q_proj
    x = torch.randn(3, layer.in_features, requires_grad=True)
    layer.train()
    layer(x).sum().backward()
    weight = F.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    assert x.grad is not None
    assert torch.allclose(x.grad, weight.sum(0).expand_as(x), rtol=2e-2, atol=2e-2)  # compute dtype bf16


def test_an_unknown_quantization_is_refused_and_a_missing_bitsandbytes_names_the_extra(tiny64, monkeypatch):
    with pytest.raises(InputError, match="nf4"):
        st_llm2vec.from_llm(str(tiny64), quantization="int4")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"\.\[lowbit\]"):
        st_llm2vec.from_llm(str(tiny64), quantization="nf4")


def test_qlora_mntp_saves_the_adapter_merged_into_the_float32_start_weights(tiny64, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModel

    from st_llm2vec.recipe.stage_mntp import train_mntp

    out = tmp_path / "qlora"
    result = train_mntp(mntp_recipe(tiny64, out, quantization="nf4", max_steps=3, stop_after_n_steps=3))
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and (out / "1_Pooling").is_dir()  # a float32 portable dir
    saved = load_file(str(out / "model.safetensors"))
    # the reference: stock peft merging the saved adapter into the float32 start model
    reference = PeftModel.from_pretrained(AutoModel.from_pretrained(str(tiny64)), result.adapter_dir).merge_and_unload()
    expected = reference.state_dict()
    for name in ("layers.0.self_attn.q_proj.weight", "layers.1.mlp.down_proj.weight"):
        assert saved[name].dtype == torch.float32
        assert torch.allclose(saved[name], expected[name], atol=1e-6)
    start = load_file(str(tiny64 / "model.safetensors"))
    assert not torch.equal(saved["layers.0.self_attn.q_proj.weight"], start["model.layers.0.self_attn.q_proj.weight"])


def test_qlora_with_an_unmerged_output_is_refused_before_training(tiny64, tmp_path):
    from st_llm2vec.recipe.stage_mntp import train_mntp

    out = tmp_path / "unmerged"
    with pytest.raises(InputError, match="merge_lora: true"):
        train_mntp(mntp_recipe(tiny64, out, quantization="nf4", merge_lora=False))
    assert not out.exists() or not any(out.iterdir())
    shutil.rmtree(out, ignore_errors=True)


def test_qlora_simcse_trains_and_saves_a_float32_portable_model(tiny64, corpus, tmp_path):
    from safetensors.torch import load_file
    from sentence_transformers import SentenceTransformer

    from st_llm2vec.recipe.stage_contrastive import train_simcse

    from conftest import simcse_config

    out = tmp_path / "simcse"
    train_simcse(simcse_config(tiny64, out, corpus, quantization="nf4", save_strategy="no"))
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert all(t.dtype == torch.float32 for t in load_file(str(out / "model.safetensors")).values())
    assert np.isfinite(SentenceTransformer(str(out)).encode(TEXTS[:3])).all()
