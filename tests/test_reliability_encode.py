"""Encode / load reliability: every bad input gets a clear error naming the fix, or a defined,
documented behaviour, never a silently different result. Tiny random models only (no downloads).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

import st_llm2vec
from st_llm2vec.instructions import format_text, truncate_words

TEXTS = ["A man is playing a guitar.", "Two dogs run.", "The children are building a sand castle at the beach today."]
INSTRUCTION = "Retrieve semantically similar text:"


@pytest.fixture(scope="module")
def exact_model(tiny_llm):
    return st_llm2vec.from_llm(str(tiny_llm("llama")), format="exact")


@pytest.fixture(scope="module")
def saved_dir(tiny_llm, tmp_path_factory):
    """A model saved with our module classes (sentence_bert_config.json + 1_LLM2VecPooling/config.json)."""
    path = tmp_path_factory.mktemp("saved") / "model"
    st_llm2vec.from_llm(str(tiny_llm("llama")), format="exact").save(str(path))
    assert (path / "1_LLM2VecPooling" / "config.json").is_file()
    return path


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _edit_json(path: Path, **changes) -> None:
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


# -- 5: doc_max_length on text without spaces -------------------------------------------------------


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


def test_doc_max_length_keeps_llm2vecs_word_truncation_for_spaced_text(tiny_llm):
    model = st_llm2vec.from_llm(str(tiny_llm("llama")), doc_max_length=12)
    text = "The children are building a sand castle at the beach while two dogs run in the grass."
    kept = truncate_words(text, model[0]._count_tokens, 12)
    assert kept.split() == text.split()[: len(kept.split())] and kept != text


@pytest.mark.parametrize("bad", [0, -3])
def test_non_positive_doc_max_length_is_refused(tiny_llm, bad):
    """doc_max_length=0 used to empty every text (all embeddings equal)."""
    with pytest.raises(ValueError, match="doc_max_length"):
        st_llm2vec.from_llm(str(tiny_llm("llama")), doc_max_length=bad)


# -- 6: prompt longer than max_seq_length ---------------------------------------------------------


@pytest.mark.parametrize("fmt", ["exact", "portable"])
def test_prompt_filling_max_seq_length_raises_naming_the_lengths_and_the_fix(tiny_llm, fmt):
    model = st_llm2vec.from_llm(str(tiny_llm("llama")), max_seq_length=16, format=fmt)
    long_prompt = "Retrieve semantically similar text for this query: " * 6
    with pytest.raises(ValueError, match=r"prompt is \d+ tokens.*max_seq_length is 16.*[Ss]horten"):
        model.encode(["Two dogs run.", "A cat."], prompt=long_prompt)
    # a prompt that leaves room for text still works
    out = model.encode(["Two dogs run.", "A cat sleeps."], prompt="Query:")
    assert np.abs(out[0] - out[1]).max() > 1e-4


def test_non_string_prompt_is_refused(exact_model):
    with pytest.raises(ValueError, match="prompt must be a str"):
        exact_model.encode(["Two dogs run."], prompt=5)


# -- 7: no sentinel character that user text can contain -------------------------------------------


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


def test_chat_template_that_drops_the_text_is_refused(tiny_llm):
    with pytest.raises(ValueError, match="chat_template"):
        st_llm2vec.from_llm(str(tiny_llm("llama")), chat_template="[INST] hello [/INST]", format="exact")


def test_chat_template_with_a_syntax_error_is_refused_at_load(tiny_llm):
    with pytest.raises(ValueError, match="chat_template"):
        st_llm2vec.from_llm(str(tiny_llm("llama")), chat_template="{{ messages[0]['content'] ", format="exact")


# -- 8: token embeddings hold each text's own tokens -----------------------------------------------


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


# -- 11: saved module configs ----------------------------------------------------------------------


def test_saved_bidirectional_false_logs_a_warning_naming_the_file_and_key(saved_dir, tmp_path, caplog):
    path = _copy(saved_dir, tmp_path / "m")
    _edit_json(path / "sentence_bert_config.json", bidirectional=False)
    with caplog.at_level(logging.WARNING):
        model = SentenceTransformer(str(path))
    assert model[0].bidirectional is False
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("sentence_bert_config.json" in m and '"bidirectional": false' in m for m in messages), messages


def test_pooling_embedding_dimension_disagreeing_with_the_backbone_is_refused(saved_dir, tmp_path):
    path = _copy(saved_dir, tmp_path / "m")
    _edit_json(path / "1_LLM2VecPooling" / "config.json", embedding_dimension=999)
    with pytest.raises(ValueError, match=r"1_LLM2VecPooling.config\.json.*embedding_dimension.*999.*32"):
        SentenceTransformer(str(path))


def test_pooling_embedding_dimension_is_checked_when_assembled_by_hand(tiny_llm):
    encoder = st_llm2vec.LLM2VecTransformer(str(tiny_llm("llama")))
    with pytest.raises(ValueError, match="embedding_dimension"):
        SentenceTransformer(modules=[encoder, st_llm2vec.LLM2VecPooling(999)])


@pytest.mark.parametrize(
    "file, key",
    [("sentence_bert_config.json", "doc_max_lenght"), ("1_LLM2VecPooling/config.json", "pooling")],
)
def test_unknown_key_in_a_module_config_names_the_file_and_key(saved_dir, tmp_path, file, key):
    path = _copy(saved_dir, tmp_path / "m")
    _edit_json(path / file, **{key: 5})
    with pytest.raises(ValueError, match=rf"{file.replace('/', '.')}.*{key}"):
        SentenceTransformer(str(path))


@pytest.mark.parametrize(
    "file",
    ["sentence_bert_config.json", "1_LLM2VecPooling/config.json", "tokenizer_config.json", "tokenizer.json"],
)
def test_invalid_json_in_a_saved_model_names_the_file(saved_dir, tmp_path, file):
    path = _copy(saved_dir, tmp_path / "m")
    (path / file).write_text("{not json")
    with pytest.raises(ValueError, match=rf"{file.replace('/', '.')}.*not valid JSON"):
        SentenceTransformer(str(path))


@pytest.mark.parametrize(
    "file, changes, match",
    [
        ("sentence_bert_config.json", {"doc_max_length": 0}, "doc_max_length"),
        ("sentence_bert_config.json", {"max_batch_tokens": "100"}, "max_batch_tokens"),
        ("sentence_bert_config.json", {"bidirectional": "false"}, "bidirectional"),
        ("sentence_bert_config.json", {"text_suffix": 5}, "text_suffix"),
        ("1_LLM2VecPooling/config.json", {"skip_instruction": "false"}, "skip_instruction"),
        ("1_LLM2VecPooling/config.json", {"pooling_mode": "max"}, "pooling_mode"),
    ],
)
def test_invalid_value_in_a_module_config_names_the_file_and_key(saved_dir, tmp_path, file, changes, match):
    path = _copy(saved_dir, tmp_path / "m")
    _edit_json(path / file, **changes)
    with pytest.raises(ValueError, match=rf"{file.replace('/', '.')}.*{match}"):
        SentenceTransformer(str(path))


@pytest.mark.parametrize("file", ["sentence_bert_config.json", "1_LLM2VecPooling/config.json"])
def test_missing_module_config_names_the_file_instead_of_falling_back_to_defaults(saved_dir, tmp_path, file):
    """Without sentence_bert_config.json, doc_max_length / chat_template / ... silently became defaults."""
    path = _copy(saved_dir, tmp_path / "m")
    (path / file).unlink()
    with pytest.raises(FileNotFoundError, match=rf"{file.replace('/', '.')} is missing"):
        SentenceTransformer(str(path))


def test_bos_pooling_edited_into_a_model_without_bos_is_refused_at_load(tiny_llm, tmp_path):
    """from_llm refuses bos_token pooling without a BOS token; a hand-edited saved config must be refused too."""
    path = tmp_path / "m"
    st_llm2vec.from_llm(str(tiny_llm("qwen2", add_bos=False)), format="exact").save(str(path))
    _edit_json(path / "1_LLM2VecPooling" / "config.json", pooling_mode="bos_token")
    with pytest.raises(ValueError, match=r"1_LLM2VecPooling.config\.json.*bos_token.*BOS"):
        SentenceTransformer(str(path))


def test_negative_model_max_length_in_saved_tokenizer_config_is_refused(saved_dir, tmp_path):
    path = _copy(saved_dir, tmp_path / "m")
    _edit_json(path / "tokenizer_config.json", model_max_length=-5)
    with pytest.raises(ValueError, match="max_seq_length.*-5.*model_max_length"):
        SentenceTransformer(str(path))


# -- 12: device ------------------------------------------------------------------------------------


def test_meta_device_is_refused_before_anything_moves(tiny_llm):
    model = st_llm2vec.from_llm(str(tiny_llm("llama")))
    before = model.encode(TEXTS)
    with pytest.raises(ValueError, match="meta"):
        model.encode(TEXTS, device="meta")
    with pytest.raises(ValueError, match="meta"):
        model.to("meta")
    assert all(p.device.type == "cpu" for p in model.parameters())
    np.testing.assert_allclose(model.encode(TEXTS), before, atol=1e-6)


# -- load errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("relative", [False, True])
def test_from_llm_on_a_missing_local_path_names_the_path(tmp_path, monkeypatch, relative):
    monkeypatch.chdir(tmp_path)
    missing = "./no-such-model" if relative else str(tmp_path / "no" / "such-model")
    with pytest.raises(FileNotFoundError, match="such-model' does not exist"):
        st_llm2vec.from_llm(missing)


def test_missing_path_that_looks_like_a_hub_id_says_it_is_not_a_local_directory(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network: fail fast
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError, match="'output/no-such-model' is not a local directory"):
        st_llm2vec.from_llm("output/no-such-model")


def test_from_llm_on_a_weights_file_instead_of_a_directory_names_the_fix(tiny_llm):
    with pytest.raises(ValueError, match="directory"):
        st_llm2vec.from_llm(str(tiny_llm("llama") / "model.safetensors"))


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_safetensors_names_the_file(tiny_llm, tmp_path, damage):
    path = _copy(tiny_llm("llama"), tmp_path / "m")
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a safetensors file at all")
    with pytest.raises(ValueError, match=r"model\.safetensors.*(truncated|corrupt)"):
        st_llm2vec.from_llm(str(path))


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


def test_tokenizer_without_eos_is_refused_at_load(tiny_llm, tmp_path):
    path = _copy(tiny_llm("llama"), tmp_path / "m")
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.pop("eos_token", None)
    config["eos_token"] = None
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="EOS.*eos_token"):
        st_llm2vec.from_llm(str(path))


@pytest.mark.parametrize("bad", [0, -1])
def test_non_positive_max_seq_length_is_refused(tiny_llm, exact_model, bad):
    with pytest.raises(ValueError, match="max_seq_length"):
        st_llm2vec.from_llm(str(tiny_llm("llama")), max_seq_length=bad)
    with pytest.raises(ValueError, match="max_seq_length"):
        exact_model.max_seq_length = bad
    assert exact_model.max_seq_length == 512


# -- encode kwargs ---------------------------------------------------------------------------------


def test_per_call_max_length_in_processing_kwargs_is_honoured(exact_model):
    cut = exact_model.encode(TEXTS[2:], processing_kwargs={"text": {"max_length": 4}})
    features = exact_model.preprocess(TEXTS[2:], processing_kwargs={"text": {"max_length": 4}})
    assert features["input_ids"].shape[1] == 4
    assert np.abs(cut - exact_model.encode(TEXTS[2:])).max() > 1e-4


@pytest.mark.parametrize("kwargs", [{"text": {"padding": "max_length"}}, {"common": {"truncation": False}}])
def test_unsupported_processing_kwargs_are_refused(exact_model, kwargs):
    """llm2vec's tokenization is fixed (left padding, truncation); other overrides would be ignored."""
    with pytest.raises(ValueError, match="processing_kwargs"):
        exact_model.encode(TEXTS, processing_kwargs=kwargs)


@pytest.mark.parametrize("bad", [0, -2])
def test_non_positive_per_call_max_length_is_refused(exact_model, bad):
    with pytest.raises(ValueError, match="max_length"):
        exact_model.preprocess(TEXTS, max_length=bad)


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
