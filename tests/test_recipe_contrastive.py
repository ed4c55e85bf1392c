"""st_llm2vec/recipe/contrastive.py with stage_contrastive.py: the SimCSE and supervised stages — batches from one
dataset split across processes, SimCSE dropout, instructions on the queries, training runs, the repo's tiny
configs, (slow) DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from st_llm2vec import devdata as devsets
from st_llm2vec.recipe.contrastive import GlobalBatchSampler, set_attention_dropout
from st_llm2vec.recipe.stage_contrastive import prepare_stage, train_simcse, train_supervised
from conftest import REPO, save_stock_model
from conftest import PAIR_SENTENCES as SENTENCES
from conftest import contrastive_config as _base_config
from conftest import triplets as _triplets
from conftest import write_jsonl as _write_jsonl

SHARED = devsets.find_shared_data()
needs_shared = pytest.mark.skipif(SHARED is None, reason="shared data folder (../shared/data) not found")


# --------------------------------------------------------------------------- batching


def test_global_batches_come_from_one_dataset_and_split_across_processes():
    """With 2 processes each step's two per-process batches are disjoint halves of one dataset's batch."""
    from accelerate.data_loader import BatchSamplerShard
    from datasets import Dataset
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler, ProportionalBatchSampler
    from torch.utils.data import ConcatDataset

    sets = [Dataset.from_dict({"a": [f"{k}-{i}" for i in range(n)]}) for k, n in enumerate((20, 13))]
    per_device, world = 3, 2
    concat = ConcatDataset(sets)
    shards = []
    for rank in range(world):  # each process builds its samplers from the same seed, as the trainer does
        samplers = [
            NoDuplicatesBatchSampler(d, per_device * world, drop_last=True, generator=torch.Generator(), seed=1)
            for d in sets
        ]
        inner = ProportionalBatchSampler(concat, samplers, generator=torch.Generator(), seed=1)
        sampler = GlobalBatchSampler(inner, world)
        shards.append(list(BatchSamplerShard(sampler, world, rank, split_batches=False, even_batches=False)))
    assert len(shards[0]) == len(shards[1]) == 20 // 6 + 13 // 6
    for b0, b1 in zip(*shards):
        assert len(b0) == len(b1) == per_device and not set(b0) & set(b1)
        assert len({0 if i < 20 else 1 for i in b0 + b1}) == 1  # one dataset per global batch


# --------------------------------------------------------------------------- model behaviour


def test_simcse_dropout_is_active_in_training_and_off_in_encode(tiny_llm, tmp_path):
    corpus = tmp_path / "wiki.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n\n")
    stage = prepare_stage("simcse", _base_config(
        tiny_llm(), tmp_path / "out", dataset_name="Wiki1M", dataset_file_path=str(corpus), per_device_train_batch_size=4,
    ))
    model, backbone = stage.model, stage.model[0].model
    assert len(stage.data) == len(SENTENCES)  # the blank line was dropped
    attn = [m for m in backbone.modules() if isinstance(getattr(m, "attention_dropout", None), float)]
    assert attn and all(m.attention_dropout == 0.3 for m in attn)

    features = model.preprocess(SENTENCES[:4])
    model.train()
    with torch.no_grad():
        first, second = (model(dict(features))["sentence_embedding"] for _ in range(2))
    assert not torch.allclose(first, second)  # two dropout views of the same sentences
    one, two = model.encode(SENTENCES[:4]), model.encode(SENTENCES[:4])
    assert (one == two).all() and not model.training
    with torch.no_grad():
        assert torch.allclose(model(dict(features))["sentence_embedding"], torch.from_numpy(one), atol=1e-5)

    # Without attention and LoRA dropout, train mode is deterministic: the views differ by dropout alone.
    set_attention_dropout(backbone, 0.0)
    for module in backbone.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.train()
    with torch.no_grad():
        assert torch.equal(*(model(dict(features))["sentence_embedding"] for _ in range(2)))


def test_instructions_reach_queries_only(tiny_llm, tmp_path):
    folder = tmp_path / "echo"
    folder.mkdir()
    _write_jsonl(folder / "allnli.jsonl", _triplets(8, "nli"))
    _write_jsonl(folder / "fever.jsonl", _triplets(4, "claim"))
    stage = prepare_stage("supervised", _base_config(
        tiny_llm(), tmp_path / "out", dataset_name="E5", dataset_file_path=str(folder), per_device_train_batch_size=2,
        max_seq_length=256,  # no truncation here (the tiny tokenizer splits unseen words into bytes)
        format="exact",  # llm2vec's semantics: only the text is pooled (portable: tests/test_portable.py)
    ))
    tokenizer = stage.model[0].tokenizer
    prompts = stage.data.prompts()
    seen = set()
    for batch in stage.trainer.get_train_dataloader():  # exactly what the trainer feeds the loss
        name = batch["dataset_name"]
        seen.add(name)
        rows = {s.name: s for s in stage.data.subsets}[name].dataset
        texts = {t for col in ("query", "positive", "negative") for t in rows[col]}
        for column in ("query", "positive", "negative"):
            ids, embed = batch[f"{column}_input_ids"], batch[f"{column}_embed_mask"]
            for row_ids, row_embed in zip(ids, embed):
                full = tokenizer.decode(row_ids, skip_special_tokens=True)
                # the text part (its first token may carry the joining space, as in llm2vec)
                pooled = tokenizer.decode(row_ids[row_embed.bool()], skip_special_tokens=True).strip()
                assert pooled in texts  # only the text part is pooled
                prompt = prompts[name].get(column)
                if prompt:
                    assert full == f"{prompt.strip()} {pooled}"  # llm2vec: "<instruction>; <text>"
                else:
                    assert full == pooled
    assert seen == {"allnli_split1", "allnli_split2", "fever"}
    assert set(prompts["allnli_split1"]) == {"query"} and set(prompts["fever"]) == {"query"}
    assert set(prompts["allnli_split2"]) == {"query", "positive", "negative"}


# --------------------------------------------------------------------------- training runs


@needs_shared
def test_simcse_run_lowers_loss_and_saves_a_loadable_model(tiny_llm, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "simcse"
    result = train_simcse(_base_config(
        tiny_llm(), out, dataset_name="shared", dataset_file_path=str(SHARED), max_train_samples=256,
        per_device_train_batch_size=16, learning_rate=1e-3, max_steps=16,
        evaluator="sts", eval_data_dir=str(SHARED), eval_max_pairs=40, eval_strategy="no",
    ))
    print(f"simcse probe loss {result.loss_before:.4f} -> {result.loss_after:.4f}; eval {result.eval_after}")
    assert result.global_step == 16 and result.loss_after < result.loss_before
    assert set(result.eval_before) == set(result.eval_after) >= {"eval_sts12_spearman_cosine"}

    loaded = SentenceTransformer(str(out))
    assert type(loaded[0].model).__name__ == "LlamaModel"  # merged: no adapter left
    assert json.loads((out / "config.json").read_text())["attention_dropout"] == 0.0  # SimCSE dropout undone
    # saved portable (stock modules): stock ST cuts at max_seq_length tokens, so no word-level doc_max_length
    assert type(loaded[0]).__name__ == "Transformer" and result.model[0].doc_max_length is None
    emb = loaded.encode(SENTENCES[:3])
    assert (abs(emb - result.model.encode(SENTENCES[:3])) < 1e-5).all()
    scores = devsets.sts_evaluators(SHARED, max_pairs=40)[-1](loaded)
    assert -1 <= scores["sick-trial_spearman_cosine"] <= 1
    card = (out / "README.md").read_text()
    assert "llm2vec_stage`: simcse" in card and "simcse_dropout`: 0.3" in card and "MultipleNegativesRankingLoss" in card
    assert json.loads((out / "st_llm2vec_stage.json").read_text())["result"]["loss_after"] == result.loss_after


@needs_shared
def test_supervised_run_lowers_loss_and_saves_base_plus_adapter(tiny_llm, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "supervised"
    result = train_supervised(_base_config(
        tiny_llm(), out, dataset_name="shared", max_train_samples=64, per_device_train_batch_size=16,
        learning_rate=5e-3, max_steps=8, save_mode="adapter",
        evaluator="sts", eval_data_dir=str(SHARED), eval_max_pairs=30, eval_strategy="no",
    ))
    print(f"supervised probe loss {result.loss_before:.4f} -> {result.loss_after:.4f}")
    assert result.loss_after < result.loss_before
    assert result.datasets == {"sick": 64, "msr": 64}
    assert "eval_sick-trial_spearman_cosine" in result.eval_after
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    loaded = SentenceTransformer(str(out))
    query = "Given a premise, retrieve a hypothesis that is entailed by the premise; "
    a = loaded.encode(SENTENCES[:3], prompt=query)
    b = result.model.encode(SENTENCES[:3], prompt=query)
    assert (abs(a - b) < 1e-5).all()


def test_cached_loss_and_gradient_checkpointing_train(tiny_llm, tmp_path):
    corpus = tmp_path / "wiki.txt"
    corpus.write_text("\n".join(SENTENCES * 2))
    result = train_simcse(_base_config(
        tiny_llm(), tmp_path / "out", dataset_name="Wiki1M", dataset_file_path=str(corpus), per_device_train_batch_size=8,
        learning_rate=1e-3, max_steps=3, loss_class="CachedMultipleNegativesRankingLoss", mini_batch_size=2,
        gradient_checkpointing=True,
    ))
    assert result.global_step == 3 and len(result.train_losses) == 3
    assert "CachedMultipleNegativesRankingLoss" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize("stage, config, options", [
    ("simcse", "tiny.json", []),
    ("supervised", "tiny.json", []),
    # the three option configs: ~20 s each; their options are proven by test_recipe_{mining,matryoshka,distill}.py
    pytest.param("supervised", "tiny_mined.json", [], marks=pytest.mark.slow),
    pytest.param("supervised", "tiny_matryoshka.json", ["--matryoshka_dims", "32", "16", "8"],  # hidden size 32
                 marks=pytest.mark.slow),
    pytest.param("supervised", "tiny_distill.json", ["--teacher", "TEACHER", "--teacher_cache_dir", "CACHE"],
                 marks=pytest.mark.slow),
])
def test_the_repos_tiny_configs_need_no_shared_data(stage, config, options, tiny_llm, tmp_path, monkeypatch):
    """A clone has no ../shared: the tiny configs read their data from the repo; only the model (and the
    distillation's teacher: any Sentence Transformers model) is to be given."""
    from st_llm2vec import cli

    if "TEACHER" in options:
        save_stock_model(tiny_llm("llama"), tmp_path / "teacher")
        names = {"TEACHER": str(tmp_path / "teacher"), "CACHE": str(tmp_path / "cache")}
        options = [names.get(o, o) for o in options]
    monkeypatch.setattr(devsets, "find_shared_data", lambda path=None: None)
    code = cli.main([stage, str(REPO / "training" / stage / config), "--model_name_or_path", str(tiny_llm("llama")),
                     "--output-dir", str(tmp_path / "out"), "--set", "max_steps=2", "--set", "evaluator=none",
                     "--set", "disable_tqdm=true", "--set", "save_strategy=no", *options])
    assert code == 0 and (tmp_path / "out" / "modules.json").is_file()


# --------------------------------------------------------------------------- DDP


_DDP_SCRIPT = r'''
import json, sys, torch, torch.distributed as dist
import torch.nn.functional as F
from st_llm2vec.recipe.losses import build_loss
from st_llm2vec.recipe.stage_contrastive import train_supervised
config, out = json.loads(sys.argv[1]), sys.argv[2]
result = train_supervised(config)
rank, world = dist.get_rank(), dist.get_world_size()
# The loss the stage trains with, on rank-specific embeddings: does it see the other rank's documents?
loss = build_loss(result.model, config.get("loss_class", "HardNegativeNLLLoss"), 20.0, 32, "auto", world)
g = torch.Generator().manual_seed(100 + rank)
q, d = torch.randn(4, 8, generator=g, requires_grad=True), torch.randn(4, 8, generator=g)
gathered = loss.compute_loss_from_embeddings([q, d], None)
gathered.backward()
local = F.cross_entropy(20 * F.normalize(q, dim=-1) @ F.normalize(d, dim=-1).T, torch.arange(4))
json.dump({"rank": rank, "world": world, "gathered": gathered.item(), "local": local.item(),
           "q": q.tolist(), "d": d.tolist(), "result": result.to_dict()}, open(f"{out}/rank{rank}.json", "w"))
'''


@pytest.mark.slow
@needs_shared
def test_two_process_ddp_run_gathers_negatives(tiny_llm, tmp_path):
    import torch.nn.functional as F

    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT)
    out = tmp_path / "model"
    config = _base_config(
        tiny_llm(), out, dataset_name="shared", max_train_samples=64, per_device_train_batch_size=4,
        learning_rate=5e-3, max_steps=6, ddp_backend="gloo", save_strategy="steps", save_steps=3,
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", str(script), json.dumps(config), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    all_docs = torch.tensor(ranks[0]["d"] + ranks[1]["d"])
    for r, info in enumerate(ranks):
        assert info["world"] == 2 and info["result"]["gather_across_devices"] and info["result"]["global_step"] == 6
        assert info["result"]["global_batch_size"] == 8
        q = torch.tensor(info["q"])
        reference = F.cross_entropy(20 * F.normalize(q, dim=-1) @ F.normalize(all_docs, dim=-1).T, torch.arange(4) + 4 * r)
        assert abs(info["gathered"] - reference.item()) < 1e-4  # 8 candidates: both ranks' documents
        assert abs(info["gathered"] - info["local"]) > 1e-3
    print("DDP probe loss", [(i["result"]["loss_before"], i["result"]["loss_after"]) for i in ranks])
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(out)).encode(SENTENCES[:2]).shape == (2, 32)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
