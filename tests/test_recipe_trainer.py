"""st_llm2vec/recipe/trainer.py (LLM2VecTrainer): a resumed LoRA run continues exactly as the uninterrupted one, in
both stages, and after bf16 training the model returned is the plain model its weights describe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from st_llm2vec.recipe.stage_contrastive import train_simcse
from st_llm2vec.recipe.stage_mntp import train_mntp
from conftest import PAIR_SENTENCES as SENTENCES
from conftest import contrastive_config as _base_config
from conftest import mntp_history as history
from conftest import mntp_recipe as recipe


@pytest.mark.slow  # 60+ s; test_resume_from_checkpoint_matches_an_uninterrupted_run proves resume in the default suite
def test_resume_continues_the_same_loss_curve(tiny_llama, tmp_path):
    common = {"max_steps": 8, "save_strategy": "steps", "save_steps": 4}
    train_mntp(recipe(tiny_llama, tmp_path / "straight", stop_after_n_steps=8, **common))
    train_mntp(recipe(tiny_llama, tmp_path / "cut", stop_after_n_steps=4, **common))
    assert (tmp_path / "cut" / "checkpoint-4").is_dir()
    train_mntp(recipe(tiny_llama, tmp_path / "cut", stop_after_n_steps=8, resume_from_checkpoint=True, **common))
    straight, resumed = history(tmp_path / "straight"), history(tmp_path / "cut")
    assert [s for s, _ in resumed] == list(range(1, 9))
    np.testing.assert_allclose([v for _, v in resumed], [v for _, v in straight], rtol=1e-5)


def test_resume_from_checkpoint_matches_an_uninterrupted_run(tiny_llm, tmp_path):
    from safetensors.torch import load_file

    corpus = tmp_path / "wiki.txt"
    corpus.write_text("\n".join(SENTENCES * 3))
    common = dict(dataset_name="Wiki1M", dataset_file_path=str(corpus), per_device_train_batch_size=4,
                  learning_rate=1e-3, max_steps=6, save_strategy="steps", save_steps=3)
    train_simcse(_base_config(tiny_llm(), tmp_path / "full", **common))
    first = train_simcse(_base_config(tiny_llm(), tmp_path / "cut", stop_after_n_steps=3, **common))
    assert first.global_step == 3 and (tmp_path / "cut" / "checkpoint-3" / "adapter_model.safetensors").is_file()
    resumed = train_simcse(_base_config(tiny_llm(), tmp_path / "cut", resume_from_checkpoint=True, **common))
    assert resumed.global_step == 6
    full, cut = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert all(torch.allclose(full[k], cut[k], atol=1e-6) for k in full)


def test_bf16_run_returns_the_plain_model_not_the_autocast_wrapper(tiny_llm, tmp_path):
    from sentence_transformers import SentenceTransformer

    corpus = tmp_path / "wiki.txt"
    corpus.write_text("\n".join(SENTENCES * 2))
    result = train_simcse(_base_config(
        tiny_llm(), tmp_path / "out", dataset_name="Wiki1M", dataset_file_path=str(corpus), per_device_train_batch_size=4,
        max_steps=2, bf16=True,
    ))
    assert "_original_forward" not in vars(result.model)
    reloaded = SentenceTransformer(str(tmp_path / "out"))
    assert abs(result.model.encode(SENTENCES[:3]) - reloaded.encode(SENTENCES[:3])).max() < 1e-5
