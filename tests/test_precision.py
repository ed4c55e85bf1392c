"""st_llm2vec/precision*.py: the bf16-mixed precision plan is chosen with a margin, checked on calibration texts it was
not chosen with, refused below its threshold, acts at inference only, refuses what it cannot apply, and a saved dir
stays a float32 model for stock loaders whose plan file is validated field by field."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

import st_llm2vec
from st_llm2vec.errors import InputError
from st_llm2vec import precision_search
from st_llm2vec.precision import PLAN_FILE, PrecisionError, PrecisionPlan, full_precision, resolve

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
    choose, check = precision_search.split_texts(TEXTS)
    assert plan is not None and plan.texts == len(choose) and plan.check_texts == len(check)
    assert plan.target == pytest.approx(1 - precision_search.MARGIN * (1 - 0.99))  # planned with a margin
    assert plan.min_cosine >= plan.target and plan.check_min_cosine >= plan.target
    with full_precision(planned):
        reference = planned.encode(TEXTS)
    mixed = planned.encode(TEXTS)
    cosines = _cosines(reference, mixed)
    assert not np.array_equal(reference, mixed), "the plan changed nothing: no projection ran in bf16"
    # the plan reports what it does, on the texts that chose it and on those that only checked it
    assert cosines[choose].min() == pytest.approx(plan.min_cosine, abs=1e-6)
    assert cosines[check].min() == pytest.approx(plan.check_min_cosine, abs=1e-6)
    projection = planned[0].model.layers[-1].self_attn.q_proj
    assert projection.weight.dtype == torch.float32 and projection.weight_lowp.dtype == torch.bfloat16


def test_choosing_and_checking_texts_are_disjoint_and_all_used():
    choose, check = precision_search.split_texts([f"t{i}" for i in range(10)])
    assert not set(choose) & set(check) and sorted(choose + check) == list(range(10)) and len(check) == 3


def test_checking_texts_that_fail_raise_the_float32_prefix_and_the_plan_says_so(tiny_llm, monkeypatch):
    """Plans with fewer than 2 float32 layers keep the choosing texts but move a checking text below the target:
    the plan must not stop at the prefix the choosing texts allow."""
    model = st_llm2vec.from_llm(str(tiny_llm()))
    texts = [f"text number {i}" for i in range(9)]
    _, check = precision_search.split_texts(texts)
    real_encode = precision_search.encode

    def encode(model, texts, batch_size=32):
        vectors = real_encode(model, texts, batch_size)
        plan = model.precision_plan
        if plan is not None and len(plan.float32_layers) < 2:
            vectors[check[0]] = -vectors[check[0]]
        return vectors

    monkeypatch.setattr(precision_search, "encode", encode)
    plan = precision_search.plan_precision(model, texts, min_cosine=0.9, max_float32_share=1.0)
    assert plan.float32_layers == [0, 1] and plan.check_used and "also used to choose" in plan.describe()


def test_quantized_weights_and_a_plan_are_refused_together_before_any_weight_loads(tmp_path):
    for precision in ("bf16-mixed", "saved"):
        with pytest.raises(InputError, match="precision=.*quantization='nf4'"):
            st_llm2vec.from_llm(str(tmp_path / "does-not-exist"), quantization="nf4", precision=precision)
        with pytest.raises(InputError, match="quantization"):
            st_llm2vec.load_model(str(tmp_path / "does-not-exist"), quantization="int8", precision=precision)
    assert resolve("auto", "nf4") == "float32"  # auto never plans over quantized weights


@pytest.mark.parametrize("capability, flags, expected", [
    ("AVX512", True, "bf16-mixed"), ("AVX2", True, "float32"), ("DEFAULT", True, "float32"), ("AVX512", False, "float32"),
])
def test_auto_plans_only_where_torch_runs_native_bf16_kernels(monkeypatch, capability, flags, expected):
    """ATEN_CPU_CAPABILITY=avx2 on an AVX512-BF16 CPU emulates bf16: "auto" must not make that CPU slower."""
    from st_llm2vec import precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: flags)
    assert resolve("auto") == expected


def test_a_plan_over_weights_that_are_not_float32_is_refused(tiny_llm):
    with pytest.raises(PrecisionError, match="float32 projection weights.*bfloat16"):
        st_llm2vec.from_llm(str(tiny_llm()), precision="bf16-mixed", precision_texts=TEXTS, dtype=torch.bfloat16)


@pytest.mark.parametrize("arch", ["mistral", "qwen2", "gemma"])
def test_the_plan_applies_to_every_supported_architecture(tiny_llm, arch):
    model = st_llm2vec.from_llm(str(tiny_llm(arch)))
    reference = model.encode(TEXTS)
    st_llm2vec.precision.apply_plan(model[0].model, PrecisionPlan(float32_layers=[0], layers=2))
    mixed = model.encode(TEXTS)
    assert mixed.dtype == np.float32 and not np.array_equal(reference, mixed)
    assert _cosines(reference, mixed).min() > 0.99
    st_llm2vec.precision.remove_plan(model[0].model)
    assert np.array_equal(model.encode(TEXTS), reference)  # removing it restores float32 exactly


def test_a_threshold_the_model_cannot_reach_is_refused_with_the_measurements(tiny_llm):
    with pytest.raises(PrecisionError, match="precision='float32'") as info:
        st_llm2vec.from_llm(str(tiny_llm()), precision="bf16-mixed", precision_texts=TEXTS,
                            precision_min_cosine=1.0)
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


@pytest.fixture(scope="module")
def planned_dir(planned, tmp_path_factory):
    """The planned model saved once (a save proves the dir in a fresh process); each case edits its own copy."""
    out = tmp_path_factory.mktemp("planned") / "model"
    planned.save(str(out))
    return out


@pytest.mark.parametrize("field, value", [
    ("float32_layers", "all"), ("float32_layers", [99]), ("float32_layers", [0, 0]), ("layers", 999),
    ("layers", "30"), ("dtype", "float8"), ("min_cosine", 2.0), ("threshold", None), ("texts", -1),
    ("precision", "int4"), ("check_used", "yes"), ("surprise", 1),
])
def test_a_plan_file_with_a_bad_field_is_refused_naming_the_file_and_field(planned_dir, tmp_path, field, value):
    out = shutil.copytree(planned_dir, tmp_path / "planned")
    path = out / PLAN_FILE
    data = json.loads(path.read_text())
    data[field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(InputError) as info:
        st_llm2vec.load_model(str(out), precision="saved", precision_texts=TEXTS)
    message = str(info.value)
    assert PLAN_FILE in message and repr(field) in message and "\n" not in message


def test_a_plan_file_that_is_not_json_is_refused(planned_dir, tmp_path):
    out = shutil.copytree(planned_dir, tmp_path / "planned")
    (out / PLAN_FILE).write_text("{not json")
    with pytest.raises(InputError, match=PLAN_FILE):
        st_llm2vec.load_model(str(out), precision="saved", precision_texts=TEXTS)


def test_calibration_texts_are_many_distinct_and_none_is_a_public_sts_sentence():
    """The held-out figures in the README are only held out if no calibration text is one of those sentences."""
    texts = precision_search.calibration_texts()
    assert len(texts) == precision_search.DEFAULT_CALIBRATION_TEXTS == len(set(texts))
    assert texts == precision_search.calibration_texts()  # deterministic
    from st_llm2vec.devdata import find_shared_data

    root = find_shared_data()
    if root is None:
        pytest.skip("../shared/data absent")
    public = set()
    for file in (root / "sts").rglob("*"):
        if file.suffix in (".tsv", ".txt") and file.is_file():
            public.update(part.strip() for line in file.read_text(errors="replace").splitlines()
                          for part in line.split("\t"))
    assert not [t for t in texts if t in public and len(t.split()) > 3]
