"""st_llm2vec/recipe/mining.py with mine.py and pair_options.py: ``st-llm2vec mine`` writes a training folder whose
negatives are the retriever's closest non-positive documents, and counts the candidates its margin dropped as
likely positives; the supervised stage's ``hard_negatives`` mines with the model being trained and a resumed run
reads the very rows it mined; every setting is checked before anything loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from st_llm2vec import cli
from st_llm2vec.recipe.pair_files import read_pair_folder
from conftest import PAIR_SENTENCES as SENTENCES
from conftest import contrastive_config, save_stock_model, write_jsonl


def pair_rows(n: int = 24) -> list[dict]:
    """``n`` rows whose queries, positives and given negatives are all distinct texts."""
    return [{"query": f"what does note {i} say?", "positive": f"{SENTENCES[i % 12]} Note {i}.",
             "negative": f"{SENTENCES[(i + 5) % 12]} Not note {i}."} for i in range(n)]


@pytest.fixture(scope="module")
def retriever(tiny_llm, tmp_path_factory) -> Path:
    """A stock Sentence Transformers model over a tiny LLM: any ST model mines."""
    return save_stock_model(tiny_llm("llama"), tmp_path_factory.mktemp("retriever") / "model")


def test_mine_writes_a_training_folder_and_counts_the_candidates_its_margin_dropped(retriever, tmp_path, capsys):
    from sentence_transformers import SentenceTransformer

    rows = pair_rows()
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "fever.jsonl", rows)
    margin = 0.002
    args = ["mine", str(retriever), str(data), "--num-negatives", "2", "--margin", str(margin), "--range-max", "60"]
    assert cli.main([*args[:3], str(tmp_path / "mined"), *args[3:]]) == 0
    assert cli.main([*args[:3], str(tmp_path / "mined.pq"), *args[3:], "--format", "parquet"]) == 0
    assert "candidates dropped as likely positives" in capsys.readouterr().out

    mined = [json.loads(line) for line in (tmp_path / "mined" / "fever.jsonl").read_text().splitlines()]
    corpus = {r["positive"] for r in rows} | {r["negative"] for r in rows}
    for row in mined:
        assert len(row["negative"]) == 2 and row["positive"] not in row["negative"] and set(row["negative"]) <= corpus
    summary = json.loads((tmp_path / "mined" / "mine_summary.json").read_text())["datasets"]["fever"]
    assert summary["rows_in"] == 24 and summary["rows_out"] == len(mined) == 24 - summary["rows_without_enough_negatives"]

    # The margin's count, recomputed here: every corpus text (60 candidates cover all 48) that is not the row's
    # positive and scores within `margin` of it.
    model = SentenceTransformer(str(retriever), device="cpu")
    docs = sorted(corpus)
    q = model.encode([r["query"] for r in rows], normalize_embeddings=True)
    d = model.encode(docs, normalize_embeddings=True)
    scores = q @ d.T
    positive = scores[np.arange(24), [docs.index(r["positive"]) for r in rows]]
    close = (scores + margin > positive[:, None]).sum() - 24  # each row's own positive is not a candidate
    assert summary["dropped_likely_positives"] == {"absolute_margin": int(close)} and close > 0

    # Both formats read back as the supervised stage reads them: negatives in columns negative_1, negative_2.
    for folder in ("mined", "mined.pq"):
        subset = read_pair_folder(tmp_path / folder).subsets[0]
        assert subset.dataset.column_names == ["query", "positive", "negative_1", "negative_2"]
        assert subset.dataset["negative_1"][:] == [r["negative"][0] for r in mined]


def test_the_stage_mines_with_the_model_it_trains_and_a_resumed_run_reads_the_rows_it_mined(tiny_llm, tmp_path,
                                                                                             monkeypatch):
    from st_llm2vec.recipe import mining
    from st_llm2vec.recipe.arguments import read_arguments, training_arguments
    from st_llm2vec.recipe.contrastive_arguments import SupervisedArguments
    from st_llm2vec.recipe.pair_options import apply_pair_options
    from st_llm2vec.recipe.stage_contrastive import train_supervised

    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "fever.jsonl", pair_rows())
    config = contrastive_config(tiny_llm(), tmp_path / "out", dataset_name="E5", dataset_file_path=str(data),
                                per_device_train_batch_size=4, learning_rate=1e-3, max_steps=2,
                                hard_negatives={"mine_with": "self", "sampling_strategy": "random", "range_max": 6},
                                matryoshka_dims=[32, 8], format="exact")  # no portable proof: not tested here
    result = train_supervised(config)
    saved = [json.loads(line) for line in (tmp_path / "out" / "hard_negatives" / "fever.jsonl").read_text().splitlines()]
    given = {r["query"]: r["negative"] for r in pair_rows()}
    assert result.global_step == 2 and result.hard_negatives["fever"]["rows_out"] == len(saved) > 0
    assert all(r["negative"] != r["positive"] for r in saved)
    assert any(r["negative"] != given[r["query"]] for r in saved)  # mined, not the given ones
    card = (tmp_path / "out" / "README.md").read_text()
    assert "MatryoshkaLoss" in card and "hard_negatives" in card

    # A resumed run of this config reads the rows it mined (random sampling would draw others) and mines nothing.
    monkeypatch.setattr(mining, "mine_pair_data", lambda *a, **k: pytest.fail("mined again"))
    arguments, training = read_arguments(SupervisedArguments, config)
    again, done = apply_pair_options(arguments, arguments.data(), training_arguments(training), model=object())
    assert again.subsets[0].dataset.to_list() == [{"query": r["query"], "positive": r["positive"],
                                                   "negative": r["negative"]} for r in saved]
    assert done.mined == result.hard_negatives


@pytest.mark.parametrize("value, message", [
    ({"num_negatives": 0}, r"hard_negatives\.num_negatives: expected an integer >= 1, got 0"),
    ({"margin": 0.1, "relative_margin": 0.05}, "hard_negatives: set margin or relative_margin, not both"),
    ({"range_min": 5, "range_max": 3}, "range_max 3 must be larger than range_min 5"),
    ({"sampling_strategy": "best"}, r"hard_negatives\.sampling_strategy: expected one of 'top', 'random'"),
    ({"top_k": 3}, r"hard_negatives: unknown key\(s\) \['top_k'\]"),
    ({"mine_with": "no/such/dir/here"}, "hard_negatives.mine_with 'no/such/dir/here' does not exist"),
    ("self", "hard_negatives: expected a mapping"),
])
def test_hard_negatives_are_checked_before_anything_loads(value, message, tmp_path):
    from st_llm2vec.errors import UserError
    from st_llm2vec.recipe.stage_contrastive import train_supervised

    config = contrastive_config(tmp_path / "no-model", tmp_path / "out", dataset_name="E5",
                                dataset_file_path=str(tmp_path), hard_negatives=value)
    with pytest.raises(UserError, match=message):
        train_supervised(config)
    assert not (tmp_path / "out").exists()
