"""st_llm2vec/encoder/ (LLM2VecTransformer): loading and its checks, llm2vec's tokenization (left padding, prompts,
chat templates, max_seq_length), save/load round trips, and bad input refused naming the file, the key or the fix."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

import st_llm2vec
from conftest import REPO
from conftest import copy_model_dir as _copy
from conftest import edit_json as _edit_json

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma3_text"]
TEXTS = ["A man is playing a guitar.", "Two dogs run.", "The children are building a sand castle at the beach today."]


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


def test_named_prompts_are_saved_and_used(tiny_llm, tmp_path):
    model = st_llm2vec.from_llm(str(tiny_llm("llama")), prompts={"query": "Retrieve semantically similar text:"}, format="exact")
    expected = model.encode(["Two dogs run."], prompt="Retrieve semantically similar text:")
    np.testing.assert_allclose(model.encode(["Two dogs run."], prompt_name="query"), expected, atol=1e-6)
    model.save(str(tmp_path))
    loaded = SentenceTransformer(str(tmp_path))
    np.testing.assert_allclose(loaded.encode_query(["Two dogs run."]), expected, atol=1e-5)


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


# --------------------------------------------------------------------------- prompts and chat templates


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


def test_chat_template_is_off_by_default_and_applied_when_configured(tiny_llm):
    path = str(tiny_llm("llama"))
    plain = st_llm2vec.from_llm(path, format="exact")
    assert plain.preprocess(["hello"])["input_ids"].shape[1] == len(plain[0].tokenizer("hello")["input_ids"])
    wrapped = st_llm2vec.from_llm(path, chat_template="[INST] {{ messages[0]['content'] | trim }} [/INST]", format="exact")
    ids = wrapped.preprocess(["hello"])["input_ids"][0]
    assert wrapped[0].tokenizer.decode(ids, skip_special_tokens=True).startswith("[INST] hello [/INST]")


def test_chat_template_that_drops_the_text_is_refused(tiny_llm):
    with pytest.raises(ValueError, match="chat_template"):
        st_llm2vec.from_llm(str(tiny_llm("llama")), chat_template="[INST] hello [/INST]", format="exact")


def test_chat_template_with_a_syntax_error_is_refused_at_load(tiny_llm):
    with pytest.raises(ValueError, match="chat_template"):
        st_llm2vec.from_llm(str(tiny_llm("llama")), chat_template="{{ messages[0]['content'] ", format="exact")


# --------------------------------------------------------------------------- bad input, lengths, devices


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


@pytest.mark.parametrize("bad", [0, -1])
def test_non_positive_max_seq_length_is_refused(tiny_llm, exact_model, bad):
    with pytest.raises(ValueError, match="max_seq_length"):
        st_llm2vec.from_llm(str(tiny_llm("llama")), max_seq_length=bad)
    with pytest.raises(ValueError, match="max_seq_length"):
        exact_model.max_seq_length = bad
    assert exact_model.max_seq_length == 512


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


def test_meta_device_is_refused_before_anything_moves(tiny_llm):
    model = st_llm2vec.from_llm(str(tiny_llm("llama")))
    before = model.encode(TEXTS)
    with pytest.raises(ValueError, match="meta"):
        model.encode(TEXTS, device="meta")
    with pytest.raises(ValueError, match="meta"):
        model.to("meta")
    assert all(p.device.type == "cpu" for p in model.parameters())
    np.testing.assert_allclose(model.encode(TEXTS), before, atol=1e-6)


# --------------------------------------------------------------------------- loading a checkpoint


def test_directory_without_config_is_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        st_llm2vec.from_llm(str(tmp_path))


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


def test_tokenizer_without_eos_is_refused_at_load(tiny_llm, tmp_path):
    path = _copy(tiny_llm("llama"), tmp_path / "m")
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.pop("eos_token", None)
    config["eos_token"] = None
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="EOS.*eos_token"):
        st_llm2vec.from_llm(str(path))


def test_a_config_naming_a_model_that_is_nowhere_says_which_model_to_use(tmp_path, capsys):
    """The tiny configs name the llm2vec fixtures in ../shared: on a clone the error says what to pass instead."""
    from st_llm2vec import cli

    config = tmp_path / "c.json"
    config.write_text(json.dumps({"model_name_or_path": "../no-shared-here/fixtures/llama/base", "output_dir": str(tmp_path / "o"),
                                  "dataset_name": "Wiki1M", "dataset_file_path": str(REPO / "training/mntp/tiny_corpus.txt")}))
    assert cli.main(["simcse", str(config)], report_errors=True) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "st-llm2vec fetch-smollm2 --quiet" in err and "Traceback" not in err


# --------------------------------------------------------------------------- loading a saved model dir: its module configs


def test_saved_bidirectional_false_logs_a_warning_naming_the_file_and_key(saved_dir, tmp_path, caplog):
    path = _copy(saved_dir, tmp_path / "m")
    _edit_json(path / "sentence_bert_config.json", bidirectional=False)
    with caplog.at_level(logging.WARNING):
        model = SentenceTransformer(str(path))
    assert model[0].bidirectional is False
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("sentence_bert_config.json" in m and '"bidirectional": false' in m for m in messages), messages


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


def test_negative_model_max_length_in_saved_tokenizer_config_is_refused(saved_dir, tmp_path):
    path = _copy(saved_dir, tmp_path / "m")
    _edit_json(path / "tokenizer_config.json", model_max_length=-5)
    with pytest.raises(ValueError, match="max_seq_length.*-5.*model_max_length"):
        SentenceTransformer(str(path))
