"""st_llm2vec/pooling.py with pooling_modes.py: every llm2vec pooling mode (its name, what it asks of the tokenizer,
sums in float32, its saved config checked against the backbone), and the layout of token embeddings in and outside
encode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

import st_llm2vec
from conftest import copy_model_dir as _copy
from conftest import edit_json as _edit_json

TEXTS = ["A man is playing a guitar.", "Two dogs run.", "The children are building a sand castle at the beach today."]


@pytest.mark.parametrize("mode", ["mean", "weighted_mean", "eos_token", "last_token", "bos_token"])
def test_every_pooling_mode_round_trips(tiny_llm, tmp_path, mode):
    model = st_llm2vec.from_llm(str(tiny_llm("llama")), pooling_mode=mode, format="exact")
    before = model.encode(TEXTS)
    model.save(str(tmp_path))
    np.testing.assert_allclose(SentenceTransformer(str(tmp_path)).encode(TEXTS), before, atol=1e-5)


@pytest.mark.parametrize("mode", ["mean", "weighted_mean"])
def test_half_precision_pooling_accumulates_in_float32_as_st_does(mode):
    """1/N and weights 1..N (past 256) are not exact in bf16: the sums run in float32, the result is bf16."""
    from sentence_transformers.sentence_transformer.modules import Pooling

    from st_llm2vec.pooling import LLM2VecPooling

    tokens = torch.randn(2, 300, 8, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    attention = torch.ones(2, 300, dtype=torch.long)
    attention[1, :40] = 0
    pooling = LLM2VecPooling(8, mode)

    def pool(t: torch.Tensor) -> torch.Tensor:
        return pooling({"token_embeddings": t, "attention_mask": attention, "embed_mask": attention})["sentence_embedding"]

    got = pool(tokens)
    assert torch.equal(got, pool(tokens.float()).to(torch.bfloat16))
    if mode == "mean":  # ST numbers weightedmean positions differently (see pooling.py)
        stock = Pooling(8, "mean")({"token_embeddings": tokens, "attention_mask": attention})["sentence_embedding"]
        assert got.dtype == stock.dtype
        torch.testing.assert_close(got.float(), stock.float(), atol=1e-2, rtol=1e-2)


def test_unknown_pooling_mode_names_the_valid_ones(tiny_llm):
    with pytest.raises(ValueError, match="mean, weighted_mean, eos_token, bos_token"):
        st_llm2vec.from_llm(str(tiny_llm("llama")), pooling_mode="max")


def test_bos_pooling_without_bos_token_is_refused(tiny_llm):
    with pytest.raises(ValueError, match="BOS"):
        st_llm2vec.from_llm(str(tiny_llm("qwen2", add_bos=False)), pooling_mode="bos_token")


def test_bos_pooling_edited_into_a_model_without_bos_is_refused_at_load(tiny_llm, tmp_path):
    """from_llm refuses bos_token pooling without a BOS token; a hand-edited saved config must be refused too."""
    path = tmp_path / "m"
    st_llm2vec.from_llm(str(tiny_llm("qwen2", add_bos=False)), format="exact").save(str(path))
    _edit_json(path / "1_LLM2VecPooling" / "config.json", pooling_mode="bos_token")
    with pytest.raises(ValueError, match=r"1_LLM2VecPooling.config\.json.*bos_token.*BOS"):
        SentenceTransformer(str(path))


def test_pooling_embedding_dimension_disagreeing_with_the_backbone_is_refused(saved_dir, tmp_path):
    path = _copy(saved_dir, tmp_path / "m")
    _edit_json(path / "1_LLM2VecPooling" / "config.json", embedding_dimension=999)
    with pytest.raises(ValueError, match=r"1_LLM2VecPooling.config\.json.*embedding_dimension.*999.*32"):
        SentenceTransformer(str(path))


def test_pooling_embedding_dimension_is_checked_when_assembled_by_hand(tiny_llm):
    encoder = st_llm2vec.LLM2VecTransformer(str(tiny_llm("llama")))
    with pytest.raises(ValueError, match="embedding_dimension"):
        SentenceTransformer(modules=[encoder, st_llm2vec.LLM2VecPooling(999)])


# --------------------------------------------------------------------------- token embeddings


@pytest.mark.parametrize("unpad", [False, True])
def test_token_embeddings_hold_each_texts_own_tokens(tiny_llm, unpad):
    model = st_llm2vec.from_llm(str(tiny_llm("llama")), format="exact")
    model[0].unpad_inputs = unpad
    tokenizer = model[0].tokenizer
    batched = model.encode(TEXTS, output_value="token_embeddings", batch_size=3)
    for text, rows in zip(TEXTS, batched):
        assert rows.shape[0] == len(tokenizer(text)["input_ids"])  # no padding rows
        alone = model.encode([text], output_value="token_embeddings")[0]
        torch.testing.assert_close(rows, alone, atol=1e-5, rtol=0)


def test_token_embeddings_are_identical_on_packed_and_padded_paths(tiny_llm):
    padded = st_llm2vec.from_llm(str(tiny_llm("llama")), format="exact")
    padded[0].unpad_inputs = False
    packed = st_llm2vec.from_llm(str(tiny_llm("llama")), format="exact")
    packed[0].unpad_inputs = True
    a = padded.encode(TEXTS, output_value="token_embeddings", batch_size=3)
    b = packed.encode(TEXTS, output_value="token_embeddings", batch_size=3)
    for x, y in zip(a, b):
        assert x.shape == y.shape
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


def test_forward_outside_encode_keeps_the_left_padded_layout(exact_model):
    """Training code (e.g. MNTP) aligns token_embeddings with its own left-padded inputs."""
    features = exact_model.preprocess(TEXTS)
    mask = features["attention_mask"].clone()
    with torch.no_grad():
        out = exact_model(features)
    assert torch.equal(out["attention_mask"], mask)
    assert out["token_embeddings"].shape[:2] == mask.shape
