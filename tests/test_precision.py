"""st_llm2vec/precision.py: the bf16-mixed precision plan is measured against the float32 model, refused below its
threshold, acts at inference only, and a saved dir stays a float32 model for stock loaders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

import st_llm2vec
from st_llm2vec.errors import InputError
from st_llm2vec.precision import PLAN_FILE, PrecisionError, full_precision

from conftest import SENTENCES

TEXTS = sorted(set(SENTENCES)) + ["a dog", "act of distributing", "The cat sleeps."]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def planned(tiny_llm):
    return st_llm2vec.from_llm(str(tiny_llm()), precision="bf16-mixed", precision_texts=TEXTS)


def test_bf16_mixed_runs_projections_in_bf16_and_stays_within_its_measured_bound(planned):
    plan = planned.precision_plan
    assert plan is not None and plan.min_cosine >= 0.99 and plan.texts == len(TEXTS)
    with full_precision(planned):
        reference = planned.encode(TEXTS)
    mixed = planned.encode(TEXTS)
    cosines = _cosines(reference, mixed)
    assert not np.array_equal(reference, mixed), "the plan changed nothing: no projection ran in bf16"
    assert cosines.min() == pytest.approx(plan.min_cosine, abs=1e-6)  # the plan reports what it does
    projection = planned[0].model.layers[-1].self_attn.q_proj
    assert projection.weight.dtype == torch.float32 and projection.weight_lowp.dtype == torch.bfloat16


def test_a_threshold_the_model_cannot_reach_is_refused_with_the_measurements(tiny_llm):
    with pytest.raises(PrecisionError, match="precision='float32'") as info:
        st_llm2vec.from_llm(str(tiny_llm()), precision="bf16-mixed", precision_texts=TEXTS,
                            precision_min_cosine=1.0 + 1e-9)
    assert "1: " in str(info.value)  # the measurement behind the refusal is shown


def test_an_unknown_precision_is_refused_before_any_weight_loads(tmp_path):
    with pytest.raises(InputError, match="bf16-mixed"):
        st_llm2vec.from_llm(str(tmp_path / "does-not-exist"), precision="bf16")


def test_training_computes_in_float32_whatever_the_plan(planned):
    features = planned.tokenize(TEXTS[:3])
    with torch.enable_grad():
        with_plan = planned(dict(features))["sentence_embedding"].detach()
    with full_precision(planned), torch.enable_grad():
        float32 = planned(dict(features))["sentence_embedding"].detach()
    assert torch.equal(with_plan, float32)


def test_a_saved_plan_leaves_float32_weights_for_stock_loaders_and_reapplies_with_saved(planned, tmp_path):
    out = tmp_path / "planned"
    planned.save(str(out))
    saved = json.loads((out / PLAN_FILE).read_text())
    assert saved["precision"] == "bf16-mixed" and saved["float32_layers"] == planned.precision_plan.float32_layers
    assert "Precision plan" in (out / "README.md").read_text()
    with full_precision(planned):
        reference = planned.encode(TEXTS)
    stock = SentenceTransformer(str(out))
    assert _cosines(reference, stock.encode(TEXTS)).min() > 0.99999  # the float32 model, not the bf16 one
    again = st_llm2vec.load_model(str(out), precision="saved")
    assert again.precision_plan.float32_layers == planned.precision_plan.float32_layers
    assert _cosines(planned.encode(TEXTS), again.encode(TEXTS)).min() > 0.99999


def test_saved_precision_on_a_dir_without_a_plan_says_what_to_use(saved_dir):
    with pytest.raises(PrecisionError, match="bf16-mixed"):
        st_llm2vec.load_model(str(saved_dir), precision="saved")
