"""st_llm2vec/cards.py: model cards made from what was run (the recipe a stage records, start model and data as the
user named them, the proof figures), recommending only clients that work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO
from st_llm2vec import cards, cli
from st_llm2vec import devdata as devsets

ST_FIRST_LINE = ("This is a [sentence-transformers](https://www.SBERT.net) model trained on the simcse dataset. It maps "
                 "inputs to a 32-dimensional dense vector space and can be used for semantic textual similarity.")


def _recipe_dir(path: Path, recipe: dict) -> Path:
    path.mkdir(parents=True)
    (path / cards.RECIPE_FILE).write_text(json.dumps(recipe))
    return path


def test_a_stage_from_a_saved_dir_names_the_first_start_model_and_every_stage(tmp_path):
    mntp_dir = _recipe_dir(tmp_path / ".work-123" / "mntp", {
        "start_model": "my-org/my-llm", "stages": [{"stage": "mntp", "data": "wiki.txt", "steps": 30}]})
    recipe = cards.extend_recipe(str(mntp_dir), {"stage": "simcse", "data": "wiki.txt", "steps": 60})
    assert recipe == {"start_model": "my-org/my-llm", "stages": [
        {"stage": "mntp", "data": "wiki.txt", "steps": 30}, {"stage": "simcse", "data": "wiki.txt", "steps": 60}]}
    assert "work-123" not in json.dumps(recipe)  # never the temp dir the second stage started from


def test_a_start_model_is_named_as_given_or_by_its_label(tmp_path, monkeypatch):
    assert cards.extend_recipe("my-org/my-llm", {"stage": "mntp"})["start_model"] == "my-org/my-llm"
    assert cards.extend_recipe(str(tmp_path), {"stage": "mntp"}, "SmolLM2 (converted)")["start_model"] == "SmolLM2 (converted)"
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "models" / "llm").mkdir(parents=True)
    assert cards.extend_recipe(str(tmp_path / "models" / "llm"), {"stage": "mntp"})["start_model"] == "~/models/llm"


def test_the_card_says_how_the_model_was_made_and_drops_st_s_dataset_line():
    recipe = {"start_model": "my-org/my-llm", "stages": [
        {"stage": "mntp", "title": "MNTP", "data": "my text (2000 lines)", "steps": 30, "lora_r": 16},
        {"stage": "simcse", "title": "simcse", "data": "my text (2000 lines)", "steps": 60, "simcse_dropout": 0.3}]}
    text = cards.patch_card(f"# Title\n\n{ST_FIRST_LINE}\n\n## Model Details\n", "portable", None, None, None, None,
                            recipe)
    assert "the simcse dataset" not in text
    assert ("This is a [sentence-transformers](https://www.SBERT.net) model trained (see *How this model was made* "
            "for its training data). It maps inputs") in text
    section = text[text.index("## How this model was made"):text.index("## How to load")]
    assert "from `my-org/my-llm`" in section
    assert "1. MNTP on my text (2000 lines) (steps 30, LoRA r 16)" in section
    assert "2. simcse on my text (2000 lines) (steps 60, dropout 0.3)" in section
    assert cards.patch_card(ST_FIRST_LINE, "portable", None, None) .startswith(ST_FIRST_LINE)  # no recipe: as ST wrote it


def test_the_card_recommends_the_langchain_package_that_installs_with_this_stack():
    for save_format in ("portable", "exact"):
        text = cards.usage_section(save_format, "me/model", None)
        assert "langchain-huggingface" not in text and "langchain_huggingface" not in text
        assert "langchain-community" in text
    assert "from langchain_community.embeddings import HuggingFaceEmbeddings" in cards.usage_section("portable", None, None)


@pytest.mark.slow  # a training run and its portable proof (~15 s idle, a minute on a busy machine); the default suite
# checks the same through the quick start's pipeline (tests/test_quickstart.py)
def test_a_trained_dir_records_its_recipe_and_proof_and_its_card_renders_them(tiny_llm, tmp_path, monkeypatch):
    monkeypatch.setattr(devsets, "find_shared_data", lambda path=None: None)
    out = tmp_path / "out"
    assert cli.main(["simcse", str(REPO / "training" / "simcse" / "tiny.json"), "--model_name_or_path",
                     str(tiny_llm("llama")), "--model_label", "tiny-llama (test)", "--output-dir", str(out),
                     "--set", "max_steps=2", "--set", "evaluator=none", "--set", "save_strategy=no"]) == 0
    recipe = json.loads((out / cards.RECIPE_FILE).read_text())
    assert recipe["start_model"] == "tiny-llama (test)"
    [stage] = recipe["stages"]
    assert stage["stage"] == "simcse" and stage["steps"] == 2 and stage["data"].startswith("Wiki1M (")
    assert stage["data"].endswith("tiny_corpus.txt)")
    assert recipe["saved"]["format"] == "portable" and "per-text cosine" in recipe["saved"]["proof"]
    card = (out / "README.md").read_text()
    assert "## How this model was made" in card and "from `tiny-llama (test)`" in card
    assert "the simcse dataset" not in card and "Proven when saved:" in card
    assert "1. simcse on Wiki1M (" in card
