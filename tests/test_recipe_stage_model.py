"""st_llm2vec/recipe/stage_model.py: what every training stage shares — its start model (a base plus llm2vec adapters,
merged as llm2vec merges them) and the save format of its output, said before anything is trained."""

from __future__ import annotations

import json

import pytest

from st_llm2vec.recipe.stage_model import load_start_model
from st_llm2vec.recipe.stage_contrastive import prepare_stage
from conftest import REPO, fixtures_dir
from conftest import contrastive_config as _base_config


@pytest.mark.skipif(
    fixtures_dir() is None or not (fixtures_dir() / "llama" / "mntp").is_dir(),
    reason="llm2vec reference fixtures not found",
)
def test_start_from_llm2vec_base_plus_mntp_adapter_matches_llm2vec():
    import numpy as np

    root = fixtures_dir() / "llama"
    model, start = load_start_model(str(root / "base"), str(root / "mntp"))
    assert start.merged_in_memory and type(model[0].model).__name__ == "LlamaModel"
    docs = json.loads((root / "inputs.json").read_text())["docs"]
    expected = np.load(root / "expected.npz")["base+mntp__mean__docs"]
    assert np.allclose(model.encode(docs), expected, atol=1e-4)


def test_a_stage_says_before_training_when_its_output_cannot_be_portable(tiny_llm, tmp_path, caplog):
    out = tmp_path / "out"
    config = _base_config(tiny_llm("llama"), out, pooling_mode="weighted_mean", max_steps=1, dataset_name="E5",
                          dataset_file_path=str(REPO / "training" / "supervised" / "tiny_e5"), per_device_train_batch_size=4)
    with caplog.at_level("WARNING", logger="st_llm2vec.recipe.stage_model"):
        stage = prepare_stage("supervised", config)
    stage.run.release()
    assert "will be saved in the exact format" in caplog.text and "weighted_mean" in caplog.text
    assert not (out / "modules.json").exists()  # said before anything was trained or saved
