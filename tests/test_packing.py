"""st_llm2vec/encoder/packing.py, layout.py: the packed (unpadded) path and token-budget batching give the padded
path's embeddings.

The packed path: one row per batch, positions restarting per text, attention kept inside each text, segment
pooling. On CPU it runs with a document mask (sdpa / eager / flex_attention); with flash-attn 2 the same
features drive the varlen kernel (checked on a GPU by benchmarks/gpu_encode.py). How a corpus is split for the
backbone (token-budget batching inside ST batches, and ST's multi-process pool) may not change an embedding either.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import st_llm2vec

TEXTS = [
    "A man is playing a guitar on the street.",
    "Two dogs run.",
    "The children are building a sand castle at the beach while two dogs run in the grass.",
    "",
    "Nobody is riding the bicycle.",
    "x " * 60,
]
# the token-budget tests' texts
BUDGET_TEXTS = [
    "Two dogs run.",
    "A man is playing a guitar on the street.",
    "The children are building a sand castle at the beach while two dogs run in the grass nearby.",
    "x",
    "Nobody is riding the bicycle down the hill this morning.",
    "word " * 40,
    "",
    "The cat sleeps.",
]
INSTRUCTION = "Retrieve semantically similar text:"


def _pair(path: str, **kwargs):
    kwargs.setdefault("format", "exact")  # the tests below spell out llm2vec's instruction join
    padded = st_llm2vec.from_llm(path, **kwargs)
    packed = st_llm2vec.from_llm(path, **kwargs)
    packed[0].unpad_inputs = True
    assert packed[0].can_flatten_inputs and not padded[0].can_flatten_inputs
    return padded, packed


def test_padded_is_the_default_without_flash_attention(tiny_llm):
    model = st_llm2vec.from_llm(str(tiny_llm("llama")))
    assert model[0].unpad_inputs is None and not model[0].can_flatten_inputs
    assert "attention_mask" in model.preprocess(["a", "b c"])


def test_auto_mode_packs_an_encode_batch_only_when_it_costs_less(tiny_llm):
    model = st_llm2vec.from_llm(str(tiny_llm("llama")))
    short, long = "Two dogs run.", "The children are building a sand castle at the beach. " * 2
    with torch.inference_mode():  # as inside encode()
        assert "cu_seq_lens_q" in model.preprocess([long] + [short] * 7)  # mostly padding if padded
        assert "attention_mask" in model.preprocess([short] * 8)  # nothing to gain
        assert "attention_mask" in model.preprocess([long])
    assert "attention_mask" in model.preprocess([long] + [short] * 7)  # outside encode: padded
    mixed = [long, short, long + " more", short + " and more"]
    padded = st_llm2vec.from_llm(str(tiny_llm("llama")))
    padded[0].unpad_inputs = False
    np.testing.assert_allclose(model.encode(mixed, batch_size=4), padded.encode(mixed, batch_size=4), atol=1e-5)


def test_packed_features_restart_positions_and_flatten_the_embed_mask(tiny_llm):
    _, packed = _pair(str(tiny_llm("llama")))
    encoder = packed[0]
    features = packed.preprocess(["Two dogs run.", "A man is playing a guitar."], prompt=INSTRUCTION)
    lengths = [len(encoder.tokenizer(INSTRUCTION + " " + t)["input_ids"]) for t in ("Two dogs run.", "A man is playing a guitar.")]
    n_text = [len(encoder.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in ("Two dogs run.", "A man is playing a guitar.")]
    assert features["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in features
    assert features["cu_seq_lens_q"].tolist() == [0, lengths[0], sum(lengths)]
    assert features["max_length_q"] == max(lengths)
    expected_positions = [p for length in lengths for p in range(length)]
    assert features["position_ids"][0].tolist() == expected_positions
    expected_mask = [int(p >= length - n) for length, n in zip(lengths, n_text) for p in range(length)]
    assert features["embed_mask"][0].tolist() == expected_mask


@pytest.mark.numerics
@pytest.mark.parametrize(
    "impl", ["sdpa", "eager", pytest.param("flex_attention", marks=pytest.mark.slow)]  # flex compiles: slow on CPU
)
@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_packed_equals_padded(tiny_llm, arch, impl):
    padded, packed = _pair(str(tiny_llm(arch)), attn_implementation=impl)
    for prompt in (None, INSTRUCTION):
        expected = padded.encode(TEXTS, prompt=prompt, batch_size=4)
        got = packed.encode(TEXTS, prompt=prompt, batch_size=4)
        np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("mode", ["mean", "weighted_mean", "eos_token", "bos_token"])
def test_packed_equals_padded_for_every_pooling_mode(tiny_llm, mode):
    padded, packed = _pair(str(tiny_llm("llama")), pooling_mode=mode)
    for prompt in (None, INSTRUCTION):
        np.testing.assert_allclose(
            packed.encode(TEXTS, prompt=prompt, batch_size=6), padded.encode(TEXTS, prompt=prompt, batch_size=6), atol=1e-5
        )
    padded[1].skip_instruction = packed[1].skip_instruction = False
    np.testing.assert_allclose(
        packed.encode(TEXTS, prompt=INSTRUCTION), padded.encode(TEXTS, prompt=INSTRUCTION), atol=1e-5
    )


def test_packed_texts_do_not_see_each_other(tiny_llm):
    """Changing one text of a packed batch leaves the others' embeddings untouched."""
    _, packed = _pair(str(tiny_llm("llama")))
    a = packed.encode(["Two dogs run.", "A man is playing a guitar."], batch_size=2)
    b = packed.encode(["Two dogs run.", "A woman is slicing tomatoes."], batch_size=2)
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)
    assert np.abs(a[1] - b[1]).max() > 1e-4


def test_packed_path_is_bidirectional_within_a_text(tiny_llm):
    _, packed = _pair(str(tiny_llm("llama")))
    first = packed.encode(["A man is playing a guitar.", "Two dogs run."], output_value="token_embeddings", batch_size=2)
    changed = packed.encode(["A man is playing a cat.", "Two dogs run."], output_value="token_embeddings", batch_size=2)
    assert (first[0][-8] - changed[0][-8]).abs().max() > 1e-4  # an early token sees the last word


def test_packed_token_embeddings_match_padded(tiny_llm):
    padded, packed = _pair(str(tiny_llm("llama")))
    expected = padded.encode(TEXTS[:3], output_value="token_embeddings", batch_size=3)
    got = packed.encode(TEXTS[:3], output_value="token_embeddings", batch_size=3)
    for e, g in zip(expected, got):
        keep = g.abs().sum(-1) > 0  # packed re-pads with zeros
        assert keep.sum() > 0
        torch.testing.assert_close(g[keep], e[keep], atol=1e-5, rtol=0)


def test_the_encoder_hands_on_padded_rows_of_a_packed_batch(tiny_llm):
    """Packing stays inside the encoder: its output has the padded path's rows, masks and states."""
    padded, packed = _pair(str(tiny_llm("llama")))
    features = packed[0].preprocess(TEXTS[:3], prompt=INSTRUCTION)
    assert "cu_seq_lens_q" in features
    with torch.no_grad():  # outside encode: left-padded, as the padded path
        got = packed[0](features)
        expected = padded[0](padded[0].preprocess(TEXTS[:3], prompt=INSTRUCTION))
    assert not any(key.startswith(("cu_seq_lens", "max_length_")) or key == "position_ids" for key in got)
    for key in ("attention_mask", "embed_mask"):
        assert torch.equal(got[key], expected[key]), key
    keep = expected["attention_mask"].bool()
    torch.testing.assert_close(got["token_embeddings"][keep], expected["token_embeddings"][keep], atol=1e-5, rtol=0)
    assert not got["token_embeddings"][~keep].any()


def test_causal_model_packed_equals_padded(tiny_llm):
    padded, packed = _pair(str(tiny_llm("qwen2")), bidirectional=False)
    np.testing.assert_allclose(packed.encode(TEXTS, batch_size=6), padded.encode(TEXTS, batch_size=6), atol=1e-5)


def test_sliding_window_shorter_than_the_texts_is_not_packed_with_a_mask(tiny_llm):
    model = st_llm2vec.from_llm(str(tiny_llm("gemma3_text")))  # sliding_window=16 < max_seq_length
    model[0].unpad_inputs = True
    assert not model[0].can_flatten_inputs
    assert "attention_mask" in model.preprocess(["a b c"])


def test_unpad_false_forces_padding(tiny_llm):
    model = st_llm2vec.from_llm(str(tiny_llm("llama")))
    model[0].unpad_inputs = False
    assert not model[0].can_flatten_inputs


def test_no_second_tokenization_without_instruction_is_exact(tiny_llm):
    """The text-part length read off the full tokenization equals llm2vec's separate tokenization."""
    for add_bos in (True, False):
        model = st_llm2vec.from_llm(str(tiny_llm("llama", add_bos=add_bos)), max_seq_length=16, format="exact")
        encoder = model[0]
        texts = TEXTS + ["   ", "</s>", "word " * 30]
        features = model.preprocess(texts)
        for row, text in enumerate(texts):
            n = len(encoder.tokenizer(text, add_special_tokens=False, truncation=True, max_length=16)["input_ids"])
            attended = int(features["attention_mask"][row].sum())
            expected = min(n, attended)
            assert int(features["embed_mask"][row].sum()) == expected, (text, add_bos)
            width = features["attention_mask"].shape[1]
            assert features["embed_mask"][row, width - expected :].all()


def test_gpu_script_tiny_smoke_run():
    """benchmarks/gpu_encode.py --tiny runs on CPU and checks itself (packed == padded, bidirectional)."""
    from conftest import REPO

    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_encode.py"), "--tiny"],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "packed == padded" in result.stdout and "bidirectional" in result.stdout


# --------------------------------------------------------------------------- token-budget batching, multi-process pool


def _backbone_calls(model) -> list[tuple[int, ...]]:
    """Record the input_ids shape of every backbone call (seen by the embedding layer: ST calls the
    backbone's ``forward`` directly, past module hooks)."""
    shapes: list[tuple[int, ...]] = []
    embeddings = model[0].model.get_input_embeddings()
    embeddings.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape)))
    return shapes


@pytest.mark.parametrize("unpad", [False, True], ids=["padded", "packed"])
def test_token_budget_splits_batches_without_changing_embeddings(tiny_llm, unpad):
    path = str(tiny_llm("llama"))
    whole = st_llm2vec.from_llm(path)
    budgeted = st_llm2vec.from_llm(path, max_batch_tokens=64)
    whole[0].unpad_inputs = budgeted[0].unpad_inputs = unpad
    calls = _backbone_calls(budgeted)
    for prompt in (None, INSTRUCTION):
        expected = whole.encode(BUDGET_TEXTS, prompt=prompt, batch_size=len(BUDGET_TEXTS))
        got = budgeted.encode(BUDGET_TEXTS, prompt=prompt, batch_size=len(BUDGET_TEXTS))
        np.testing.assert_allclose(got, expected, atol=1e-5)
    longest = max(len(budgeted[0].tokenizer(INSTRUCTION + " " + t)["input_ids"]) for t in BUDGET_TEXTS)
    assert len(calls) > 2  # one ST batch per prompt, split into pieces
    # every call within budget, except a single text longer than the budget, which runs alone
    assert all(rows * width <= 64 or (rows == 1 and width <= longest) for rows, width in calls)


def test_token_budget_groups_short_rows_together(tiny_llm):
    model = st_llm2vec.from_llm(str(tiny_llm("llama")), max_batch_tokens=200)
    model[0].unpad_inputs = False
    calls = _backbone_calls(model)
    model.encode(["Two dogs run."] * 12 + ["word " * 40] * 2, batch_size=14)
    # the short rows share calls trimmed to their own width; the long ones are not padded with them
    assert max(rows for rows, _ in calls) >= 6
    assert min(width for _, width in calls) < max(width for _, width in calls)


def test_token_budget_is_saved_and_checked(tiny_llm, tmp_path):
    from sentence_transformers import SentenceTransformer

    model = st_llm2vec.from_llm(str(tiny_llm("llama")), max_batch_tokens=4096, format="exact")
    model.save(str(tmp_path / "m"))
    assert SentenceTransformer(str(tmp_path / "m"))[0].max_batch_tokens == 4096
    for bad in (0, -5, 1.5, True):
        with pytest.raises(ValueError, match="max_batch_tokens must be a positive int"):
            model[0].max_batch_tokens = bad


def test_training_gradients_are_the_same_with_a_token_budget(tiny_llm):
    path = str(tiny_llm("llama"))
    grads = []
    for budget in (None, 32):
        model = st_llm2vec.from_llm(path, max_batch_tokens=budget)
        features = model.preprocess(BUDGET_TEXTS[:6])
        model(features)["sentence_embedding"].pow(2).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_multi_process_pool_gives_the_same_embeddings(tiny_llm):
    model = st_llm2vec.from_llm(str(tiny_llm("llama")))
    texts = [f"sentence number {i}: {BUDGET_TEXTS[i % len(BUDGET_TEXTS)]}" for i in range(24)]
    expected = model.encode(texts, prompt=INSTRUCTION)
    got = model.encode(texts, prompt=INSTRUCTION, device=["cpu", "cpu"], chunk_size=6)
    np.testing.assert_allclose(got, expected, atol=1e-5)
