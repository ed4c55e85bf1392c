"""st_llm2vec/instructions.py: llm2vec's join of instruction and text, which tokens are pooled (the text's alone,
whatever characters either holds), and doc_max_length's word-level cut (by tokens where there are no words)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import st_llm2vec
from st_llm2vec.instructions import format_text, truncate_words

INSTRUCTION = "Retrieve semantically similar text:"


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


@pytest.mark.parametrize("instruction", ["Retrieve\ue000 similar text:", "\ue000", "a \ue000 b \ue000"])
def test_private_use_character_in_instruction_does_not_move_the_pooled_window(exact_model, instruction):
    tokenizer = exact_model[0].tokenizer
    text = "Two dogs run."
    features = exact_model.preprocess([text], prompt=instruction)
    n_text = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert int(features["embed_mask"].sum()) == n_text
    expected = tokenizer(instruction.strip() + " " + text)["input_ids"]
    assert features["input_ids"][0].tolist() == expected  # the instruction reaches the model unchanged


def test_private_use_character_in_text_is_kept_and_pooled(exact_model):
    tokenizer = exact_model[0].tokenizer
    text = "dogs \ue000 run"
    features = exact_model.preprocess([text], prompt=INSTRUCTION)
    assert features["input_ids"][0].tolist() == tokenizer(INSTRUCTION + " " + text)["input_ids"]
    assert int(features["embed_mask"].sum()) == len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_format_text_splits_structurally_with_templates_and_suffixes():
    render = lambda s: f"[INST] {s.strip()} [/INST]"  # noqa: E731
    for instruction in (None, "Q\ue000:", "  "):
        for text in ("a\ue000b", "  x  ", ""):
            formatted = format_text(text, instruction, render, " </s>")
            assert formatted.full.endswith(formatted.text_part)
            assert formatted.text_part.endswith(" [/INST] </s>")
            assert formatted.full.count("\ue000") == (text + (instruction or "")).count("\ue000")


# --------------------------------------------------------------------------- doc_max_length


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


def test_doc_max_length_keeps_llm2vecs_word_truncation_for_spaced_text(tiny_llm):
    model = st_llm2vec.from_llm(str(tiny_llm("llama")), doc_max_length=12)
    text = "The children are building a sand castle at the beach while two dogs run in the grass."
    kept = truncate_words(text, model[0]._count_tokens, 12)
    assert kept.split() == text.split()[: len(kept.split())] and kept != text


def test_doc_max_length_cuts_unspaced_text_by_tokens_instead_of_emptying_it(tiny_llm):
    model = st_llm2vec.from_llm(str(tiny_llm("llama")), doc_max_length=8, format="exact")
    tokenizer = model[0].tokenizer
    texts = ["一二三四五六七八九十" * 5, "十九八七六五四三二一" * 5, "https://example.com/" + "path" * 60]
    for text in texts:
        kept = truncate_words(text, model[0]._count_tokens, 8)
        assert kept and text.startswith(kept)  # a prefix of the text, never the empty string
        assert 0 < len(tokenizer(kept, add_special_tokens=False)["input_ids"]) <= 8
    out = model.encode(texts)
    assert np.abs(out[0] - out[1]).max() > 1e-4  # different texts, different embeddings


def test_doc_max_length_leaves_a_text_within_the_token_limit_unchanged():
    """Long in bytes, short in tokens: no cut at all (a cut here once dropped the last character)."""
    from st_llm2vec.instructions import truncate_words

    text = "A dog, which is large and gray, is carrying a ball. " * 10  # 520 bytes, 110 "tokens"
    assert truncate_words(text, lambda t: len(t.split()), 400) == text


def test_doc_max_length_keeps_a_token_prefix_when_a_word_less_run_straddles_the_limit():
    """llm2vec turns "a <900 unspaced characters>" into "a"; we keep the longest prefix within the limit."""
    from st_llm2vec.instructions import truncate_words

    count = lambda t: len(t.replace(" ", ""))  # one token per non-space character
    texts = ["a " + "字" * 900, "a " + "词" * 900]
    cut = [truncate_words(t, count, 400) for t in texts]
    assert cut[0] != cut[1] and all(count(c) == 400 for c in cut)
    spaced = " ".join(["word"] * 200)  # 800 "tokens": word-level cut as llm2vec, close to the limit
    assert truncate_words(spaced, count, 400) == " ".join(["word"] * 100)


@pytest.mark.parametrize("bad", [0, -3])
def test_non_positive_doc_max_length_is_refused(tiny_llm, bad):
    """doc_max_length=0 used to empty every text (all embeddings equal)."""
    with pytest.raises(ValueError, match="doc_max_length"):
        st_llm2vec.from_llm(str(tiny_llm("llama")), doc_max_length=bad)
