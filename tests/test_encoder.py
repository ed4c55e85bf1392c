"""The ST module: bidirectional embeddings, padding invariance, save/load, instructions, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

import st_llm2vec

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma3_text"]
TEXTS = ["A man is playing a guitar.", "Two dogs run.", "The children are building a sand castle at the beach today."]


@pytest.fixture(scope="module")
def llama_model(tiny_llm):
    """llm2vec's exact semantics (the portable format's are in tests/test_portable.py)."""
    return st_llm2vec.from_llm(str(tiny_llm("llama")), format="exact")


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip_keeps_embeddings_and_bidirectionality(tiny_llm, tmp_path, arch, impl):
    model = st_llm2vec.from_llm(str(tiny_llm(arch)), attn_implementation=impl, format="exact")
    before = model.encode(TEXTS)
    first = model.encode("A man is playing a guitar.", output_value="token_embeddings")[0]
    changed = model.encode("A man is playing a cat.", output_value="token_embeddings")[0]
    assert (first - changed).abs().max() > 1e-4  # the first token sees the last word

    model.save(str(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text())["is_causal"] is False
    loaded = SentenceTransformer(str(tmp_path))
    assert isinstance(loaded[0], st_llm2vec.LLM2VecTransformer)
    assert loaded[0].probe["early_token_shift"] > 1e-3  # re-proved at load
    np.testing.assert_allclose(loaded.encode(TEXTS), before, atol=1e-5)


@pytest.mark.numerics
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3_text"])
def test_padding_and_batch_composition_do_not_change_an_embedding(tiny_llm, arch):
    model = st_llm2vec.from_llm(str(tiny_llm(arch)))
    alone = np.stack([model.encode([t])[0] for t in TEXTS])  # no padding at all
    batched = model.encode(TEXTS, batch_size=3)  # left-padded together
    reordered = model.encode(TEXTS[::-1] + ["x " * 40], batch_size=4)[:3][::-1]  # other company, more padding
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    np.testing.assert_allclose(reordered, alone, atol=1e-5)


def test_padding_side_is_left_with_pad_equal_to_eos(llama_model):
    tokenizer = llama_model[0].tokenizer
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == tokenizer.eos_token
    features = llama_model.preprocess(["a", "a longer text here"])
    assert features["attention_mask"][0, 0] == 0 and features["attention_mask"][0, -1] == 1


def test_instruction_tokens_are_excluded_from_mean_pooling(llama_model):
    text, instruction = "Two dogs run.", "Retrieve semantically similar text:"
    with_instruction = llama_model.encode([text], prompt=instruction)[0]
    assert not np.allclose(with_instruction, llama_model.encode([text])[0], atol=1e-4)

    # by hand: run the backbone on "instruction text", average the states of the text's own tokens
    encoder = llama_model[0]
    tokenizer = encoder.tokenizer
    ids = tokenizer(instruction + " " + text, return_tensors="pt")
    n_text = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        states = encoder.model(**ids).last_hidden_state[0]
    np.testing.assert_allclose(with_instruction, states[-n_text:].mean(0).numpy(), atol=1e-5)

    # skip_instruction=False averages every token, instruction and BOS included
    llama_model[1].skip_instruction = False
    try:
        everything = llama_model.encode([text], prompt=instruction)[0]
    finally:
        llama_model[1].skip_instruction = True
    np.testing.assert_allclose(everything, states.mean(0).numpy(), atol=1e-5)


def test_named_prompts_are_saved_and_used(tiny_llm, tmp_path):
    model = st_llm2vec.from_llm(str(tiny_llm("llama")), prompts={"query": "Retrieve semantically similar text:"}, format="exact")
    expected = model.encode(["Two dogs run."], prompt="Retrieve semantically similar text:")
    np.testing.assert_allclose(model.encode(["Two dogs run."], prompt_name="query"), expected, atol=1e-6)
    model.save(str(tmp_path))
    loaded = SentenceTransformer(str(tmp_path))
    np.testing.assert_allclose(loaded.encode_query(["Two dogs run."]), expected, atol=1e-5)


@pytest.mark.parametrize("mode", ["mean", "weighted_mean", "eos_token", "last_token", "bos_token"])
def test_every_pooling_mode_round_trips(tiny_llm, tmp_path, mode):
    model = st_llm2vec.from_llm(str(tiny_llm("llama")), pooling_mode=mode, format="exact")
    before = model.encode(TEXTS)
    model.save(str(tmp_path))
    np.testing.assert_allclose(SentenceTransformer(str(tmp_path)).encode(TEXTS), before, atol=1e-5)


def test_chat_template_is_off_by_default_and_applied_when_configured(tiny_llm):
    path = str(tiny_llm("llama"))
    plain = st_llm2vec.from_llm(path, format="exact")
    assert plain.preprocess(["hello"])["input_ids"].shape[1] == len(plain[0].tokenizer("hello")["input_ids"])
    wrapped = st_llm2vec.from_llm(path, chat_template="[INST] {{ messages[0]['content'] | trim }} [/INST]", format="exact")
    ids = wrapped.preprocess(["hello"])["input_ids"][0]
    assert wrapped[0].tokenizer.decode(ids, skip_special_tokens=True).startswith("[INST] hello [/INST]")


def test_causal_option_is_explicit_and_saved(tiny_llm, tmp_path):
    model = st_llm2vec.from_llm(str(tiny_llm("qwen2")), bidirectional=False, format="exact")
    first = model.encode("A man is playing a guitar.", output_value="token_embeddings")[0]
    changed = model.encode("A man is playing a cat.", output_value="token_embeddings")[0]
    assert torch.allclose(first[0], changed[0])  # causal: the first token cannot see the change
    model.save(str(tmp_path))
    assert SentenceTransformer(str(tmp_path))[0].bidirectional is False


def test_set_backbone_reproves_bidirectionality_unless_told_not_to(tiny_llm):
    import copy

    encoder = st_llm2vec.from_llm(str(tiny_llm("llama")), format="exact")[0]
    swapped = copy.deepcopy(encoder.model)
    swapped.config.is_causal = True  # as a wrapper or reloaded weights could leave it
    encoder.probe = None
    encoder.set_backbone(swapped, probe=False)
    assert encoder.model is swapped and encoder.probe is None
    encoder.set_backbone(swapped)
    assert swapped.config.is_causal is False and encoder.probe["early_token_shift"] > 1e-3
    causal = st_llm2vec.from_llm(str(tiny_llm("qwen2")), bidirectional=False, format="exact")[0]
    causal.set_backbone(copy.deepcopy(causal.model))
    assert causal.model.config.is_causal is True and not hasattr(causal, "probe")


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


# -- bad input -------------------------------------------------------------------------------------


def test_empty_and_whitespace_texts_get_a_finite_embedding(tiny_llm):
    for add_bos in (True, False):
        model = st_llm2vec.from_llm(str(tiny_llm("qwen2", add_bos=add_bos)))
        out = model.encode(["", "   ", "Two dogs run."])
        assert out.shape[0] == 3 and np.isfinite(out).all()


@pytest.mark.parametrize("bad", [None, 3, ["nested"]])
def test_non_string_items_raise_a_clear_error(llama_model, bad):
    with pytest.raises(TypeError, match="not str"):
        llama_model.encode(["fine", bad])


def test_very_long_text_is_truncated_to_max_seq_length(tiny_llm):
    model = st_llm2vec.from_llm(str(tiny_llm("llama")), max_seq_length=64)
    features = model.preprocess(["word " * 20_000])
    assert features["input_ids"].shape[1] == 64
    assert np.isfinite(model.encode(["word " * 20_000])).all()


def test_unknown_pooling_mode_names_the_valid_ones(tiny_llm):
    with pytest.raises(ValueError, match="mean, weighted_mean, eos_token, bos_token"):
        st_llm2vec.from_llm(str(tiny_llm("llama")), pooling_mode="max")


def test_directory_without_config_is_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        st_llm2vec.from_llm(str(tmp_path))


def test_bos_pooling_without_bos_token_is_refused(tiny_llm):
    with pytest.raises(ValueError, match="BOS"):
        st_llm2vec.from_llm(str(tiny_llm("qwen2", add_bos=False)), pooling_mode="bos_token")


def test_doc_max_length_drops_trailing_words_like_llm2vec(tiny_llm):
    model = st_llm2vec.from_llm(str(tiny_llm("llama")), doc_max_length=12, format="exact")
    encoder = model[0]
    long_text = "The children are building a sand castle at the beach while two dogs run in the grass."
    kept = encoder.tokenizer.decode(model.preprocess([long_text])["input_ids"][0], skip_special_tokens=True)
    assert long_text.startswith(kept) and kept.split() == long_text.split()[: len(kept.split())]
    assert len(encoder.tokenizer(kept, add_special_tokens=False)["input_ids"]) <= 12
    assert kept != long_text
    short = "Two dogs run."
    assert encoder.tokenizer.decode(model.preprocess([short])["input_ids"][0], skip_special_tokens=True) == short
