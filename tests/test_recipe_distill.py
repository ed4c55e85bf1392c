"""st_llm2vec/recipe/distill.py with losses.py: a teacher's scores are its cosines of each row's query with the
positive and every negative, computed once and cached with the data (keyed by the teacher, its prompts and the
rows); the supervised stage trained with MarginMSELoss or DistillKLDivLoss moves the student towards them; a
teacher that cannot serve is refused before anything loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from st_llm2vec.recipe import scorer
from st_llm2vec.recipe.distill import with_teacher_scores
from st_llm2vec.recipe.pair_files import pair_data_from_rows
from conftest import contrastive_config, make_tiny_llm, save_stock_model, write_jsonl
from test_recipe_mining import pair_rows

FEVER = "Given a claim, retrieve documents that support or refute the claim"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A stock Sentence Transformers model over another tiny LLM than the student's (other weights, other scores)."""
    root = tmp_path_factory.mktemp("teacher")
    return save_stock_model(make_tiny_llm(root / "llm", seed=5), root / "model", max_seq_length=128)


def cosines(model, queries, docs) -> np.ndarray:
    q, d = model.encode(queries, normalize_embeddings=True), model.encode(docs, normalize_embeddings=True)
    return (q * d).sum(1)


def test_teacher_scores_are_its_cosines_computed_once_and_cached_with_the_data(teacher, tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformer

    rows = pair_rows(8)
    data = pair_data_from_rows({"fever": rows}, {"fever": FEVER})
    scored, files = with_teacher_scores(data, str(teacher), "model", str(tmp_path / "cache"))
    labels = np.array(scored.subsets[0].dataset["label"][:])
    model = SentenceTransformer(str(teacher), device="cpu")
    queries = [r["query"] for r in rows]
    expected = np.stack([cosines(model, queries, [r[k] for r in rows]) for k in ("positive", "negative")], axis=1)
    assert labels.shape == (8, 2) and np.abs(labels - expected).max() < 1e-5
    assert Path(files["fever"]).is_file() and Path(files["fever"]).parent == tmp_path / "cache"

    monkeypatch.setattr(scorer, "load_scorer", lambda *a, **k: pytest.fail("the teacher was loaded again"))
    again, same = with_teacher_scores(data, str(teacher), "model", str(tmp_path / "cache"))
    assert same == files and again.subsets[0].dataset["label"][:] == labels.tolist()
    changed = pair_data_from_rows({"fever": [dict(rows[0], negative="Another text.")] + rows[1:]}, {"fever": FEVER})
    with pytest.raises(pytest.fail.Exception, match="the teacher was loaded again"):
        with_teacher_scores(changed, str(teacher), "model", str(tmp_path / "cache"))  # other rows: scored afresh
    with pytest.raises(pytest.fail.Exception, match="the teacher was loaded again"):
        with_teacher_scores(data, str(teacher), "data", str(tmp_path / "cache"))  # other prompts: scored afresh


def _agreement(model, rows, teacher_labels: np.ndarray, loss: str) -> float:
    """How far the student's scores are from the teacher's: MSE of the margins, or KL of the softmax at scale 20."""
    import torch

    queries = [r["query"] for r in rows]
    columns = [[r["positive"] for r in rows]] + [[r["negative"][k] for r in rows] for k in range(2)]
    student = np.stack([cosines(model, queries, docs) for docs in columns], axis=1)
    if loss == "MarginMSELoss":
        margins = lambda s: s[:, :1] - s[:, 1:]  # noqa: E731
        return float(((margins(student) - margins(teacher_labels)) ** 2).mean())
    p, log_q = torch.softmax(torch.tensor(teacher_labels) * 20, 1), torch.log_softmax(torch.tensor(student) * 20, 1)
    return float((p * (p.log() - log_q)).sum(1).mean())


@pytest.mark.parametrize("loss", ["MarginMSELoss", "DistillKLDivLoss"])
def test_the_student_learns_the_teachers_scores(loss, teacher, tiny_llm, tmp_path):
    import pyarrow.parquet as pq

    import st_llm2vec
    from st_llm2vec.recipe.stage_contrastive import train_supervised

    rows = [dict(r, negative=[r["negative"], f"Some other text {i}."]) for i, r in enumerate(pair_rows(16))]
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "fever.jsonl", rows)
    result = train_supervised(contrastive_config(
        tiny_llm(), tmp_path / "out", dataset_name="E5", dataset_file_path=str(tmp_path / "data"),
        per_device_train_batch_size=8, learning_rate=5e-3, max_steps=6, loss_class=loss, teacher=str(teacher),
        teacher_cache_dir=str(tmp_path / "cache"), instructions={"fever": ""},
        format="exact"))  # saved without the portable proof's extra process: the test reads the model in memory
    labels = np.array(pq.read_table(result.teacher_scores["fever"])["label"].to_pylist())  # the cached scores
    before = _agreement(st_llm2vec.from_llm(str(tiny_llm())), rows, labels, loss)
    after = _agreement(result.model, rows, labels, loss)
    print(f"{loss}: student vs teacher {before:.5f} -> {after:.5f}")
    assert result.global_step == 6 and after < 0.7 * before
    assert loss in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize("overrides, message", [
    ({"teacher": "TEACHER"}, "does not learn from it: use MarginMSELoss"),
    ({"loss_class": "MarginMSELoss"}, "learns a teacher's scores: set `teacher`"),
    ({"loss_class": "MarginMSELoss", "teacher": "LLM"}, "is a causal LM checkpoint, not a Sentence Transformers model"),
    ({"loss_class": "DistillKLDivLoss", "teacher": "TEACHER", "max_seq_length": 256},
     "cuts texts at 128 tokens, fewer than this stage's max_seq_length 256"),
    ({"loss_class": "MarginMSELoss", "teacher": "TEACHER", "dataset_file_path": "PAIRS"},
     r"dataset\(s\) \['nq'\] have no negatives"),
])
def test_a_teacher_that_cannot_serve_is_refused_before_the_student_loads(overrides, message, teacher, tiny_llm,
                                                                          tmp_path, monkeypatch):
    from st_llm2vec.errors import UserError
    from st_llm2vec.recipe import stage_model
    from st_llm2vec.recipe.stage_contrastive import train_supervised

    monkeypatch.setattr(stage_model, "start_model", lambda *a, **k: pytest.fail("the student was loaded"))
    for folder, name, rows in (("data", "fever", pair_rows(8)), ("pairs", "nq", pair_rows(8))):
        (tmp_path / folder).mkdir()
        write_jsonl(tmp_path / folder / f"{name}.jsonl", rows if name == "fever" else
                    [{"query": r["query"], "positive": r["positive"]} for r in rows])
    names = {"TEACHER": str(teacher), "LLM": str(tiny_llm()), "PAIRS": str(tmp_path / "pairs")}
    overrides = {k: names.get(v, v) if isinstance(v, str) else v for k, v in overrides.items()}
    config = contrastive_config(tiny_llm(), tmp_path / "out", dataset_name="E5",
                                **{"dataset_file_path": str(tmp_path / "data"), **overrides})
    with pytest.raises(UserError, match=message):
        train_supervised(config)
