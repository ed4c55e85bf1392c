"""How a corpus is split for the backbone: token-budget batching inside ST batches, and ST's
multi-process pool. Neither may change an embedding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import st_llm2vec

TEXTS = [
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
        expected = whole.encode(TEXTS, prompt=prompt, batch_size=len(TEXTS))
        got = budgeted.encode(TEXTS, prompt=prompt, batch_size=len(TEXTS))
        np.testing.assert_allclose(got, expected, atol=1e-5)
    longest = max(len(budgeted[0].tokenizer(INSTRUCTION + " " + t)["input_ids"]) for t in TEXTS)
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
        features = model.preprocess(TEXTS[:6])
        model(features)["sentence_embedding"].pow(2).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_multi_process_pool_gives_the_same_embeddings(tiny_llm):
    model = st_llm2vec.from_llm(str(tiny_llm("llama")))
    texts = [f"sentence number {i}: {TEXTS[i % len(TEXTS)]}" for i in range(24)]
    expected = model.encode(texts, prompt=INSTRUCTION)
    got = model.encode(texts, prompt=INSTRUCTION, device=["cpu", "cpu"], chunk_size=6)
    np.testing.assert_allclose(got, expected, atol=1e-5)
