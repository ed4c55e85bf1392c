"""Contrastive stages (SimCSE, supervised): data layouts, instructions, dropout, batching, training runs, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import fixtures_dir

from st_llm2vec.eval import devsets
from st_llm2vec.train.contrastive import GlobalBatchSampler, set_attention_dropout
from st_llm2vec.train.recipe import load_start_model, read_arguments
from st_llm2vec.train.stage_contrastive import ARGUMENTS, prepare_stage, train_simcse, train_supervised
from st_llm2vec.train.pair_data import E5_INSTRUCTIONS, read_pair_folder, shared_pair_data

REPO = Path(__file__).resolve().parents[1]
SHARED = devsets.find_shared_data()
needs_shared = pytest.mark.skipif(SHARED is None, reason="shared data folder (../shared/data) not found")

SENTENCES = [
    "A man is playing a guitar on the street.",
    "Two dogs are running through a field of grass.",
    "The children are building a sand castle at the beach.",
    "A woman is slicing tomatoes in the kitchen.",
    "Nobody is riding the bicycle down the hill.",
    "The cat sleeps on a warm windowsill in the afternoon.",
    "A chef is tasting the soup.",
    "The train to the city was late this morning.",
    "A girl is painting a picture of a horse.",
    "The old man is feeding pigeons in the park.",
    "Two people are dancing on the stage.",
    "A boy is kicking a ball against the wall.",
]



def _base_config(model: Path, out: Path, **kw) -> dict:
    config = dict(
        model_name_or_path=str(model), output_dir=str(out), use_cpu=True, disable_tqdm=True, lora_r=8,
        max_seq_length=64, evaluator="none", save_strategy="no", logging_steps=1, seed=7,
    )
    config.update(kw)
    return config


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _triplets(n: int, tag: str) -> list[dict]:
    return [
        {"query": f"{tag} question {i} about {SENTENCES[i % 12]}", "positive": SENTENCES[i % 12],
         "negative": SENTENCES[(i + 5) % 12]}
        for i in range(n)
    ]


# --------------------------------------------------------------------------- data layouts


def test_echo_folder_alternates_instructions_marks_symmetric_and_counts_drops(tmp_path):
    rows = _triplets(6, "nli")
    rows[2]["query"] = "   "  # dropped: empty query
    rows[3]["negative"] = ""  # dropped: the set has hard negatives, this row has none
    _write_jsonl(tmp_path / "allnli.jsonl", rows)
    _write_jsonl(tmp_path / "allnli_split1.jsonl", _triplets(4, "old"))  # llm2vec reads allnli.jsonl instead
    _write_jsonl(tmp_path / "fever.jsonl", _triplets(3, "claim"))
    _write_jsonl(tmp_path / "quora_duplicates_split2.jsonl", _triplets(3, "dup"))

    data = read_pair_folder(tmp_path)
    a, b = E5_INSTRUCTIONS["allnli"]
    assert data.names == ["allnli_split1", "allnli_split2", "fever", "quora_duplicates_split2"]
    by = {s.name: s for s in data.subsets}
    # row i -> instruction i % 2; rows 2 (even) and 3 (odd) were dropped
    assert by["allnli_split1"].dataset["query"] == [rows[0]["query"], rows[4]["query"]]
    assert by["allnli_split2"].dataset["query"] == [rows[1]["query"], rows[5]["query"]]
    assert data.dropped["allnli_split1"]["empty query/positive"] == 1
    assert data.dropped["allnli_split2"]["without negative"] == 1
    prompts = data.prompts()
    assert prompts["allnli_split1"] == {"query": a + "; "}  # asymmetric: queries only
    assert prompts["allnli_split2"] == {c: b + "; " for c in ("query", "positive", "negative")}  # llm2vec's mark
    assert prompts["fever"] == {"query": E5_INSTRUCTIONS["fever"] + "; "}
    assert set(prompts["quora_duplicates_split2"]) == {"query", "positive", "negative"}

    queries_only = read_pair_folder(tmp_path, symmetric_instructions=False).prompts()
    assert all(set(p) == {"query"} for p in queries_only.values())


def test_missing_instruction_lists_the_datasets(tmp_path):
    _write_jsonl(tmp_path / "fever.jsonl", _triplets(2, "c"))
    _write_jsonl(tmp_path / "my_set.jsonl", _triplets(2, "m"))
    _write_jsonl(tmp_path / "other.jsonl", _triplets(2, "o"))
    with pytest.raises(ValueError, match=r"my_set.*other.*instructions"):
        read_pair_folder(tmp_path)
    data = read_pair_folder(tmp_path, instructions={"my_set": "Find it", "other": ""})
    assert data.prompts()["my_set"] == {"query": "Find it; "}
    assert "other" not in data.prompts()  # "" trains it without instruction
    assert read_pair_folder(tmp_path, datasets=["fever"]).names == ["fever"]


def test_pair_files_without_usable_rows_or_with_bad_json_are_refused_naming_the_line(tmp_path):
    _write_jsonl(tmp_path / "fever.jsonl", [{"query": "", "positive": "x"}, {"query": "q", "positive": None}])
    with pytest.raises(ValueError, match="No usable rows"):
        read_pair_folder(tmp_path)
    (tmp_path / "fever.jsonl").write_text('{"query": "q", "positive": "p"}\nnot json\n')
    with pytest.raises(ValueError, match=r"fever.jsonl:2"):
        read_pair_folder(tmp_path)


def test_batch_larger_than_a_dataset(tmp_path):
    _write_jsonl(tmp_path / "fever.jsonl", _triplets(10, "c"))
    _write_jsonl(tmp_path / "nq.jsonl", _triplets(3, "q"))
    data = read_pair_folder(tmp_path)
    with pytest.raises(ValueError, match=r"nq \(3 rows\).*skip_small_datasets"):
        data.check_batch_size(4)
    assert data.check_batch_size(4, skip_small=True).names == ["fever"]
    with pytest.raises(ValueError, match="fever"):
        data.check_batch_size(16, skip_small=True)  # nothing left to train on


@needs_shared
def test_shared_sets_have_instructions_on_the_right_sides():
    data = shared_pair_data(SHARED)
    by = {s.name: s for s in data.subsets}
    assert by["sick"].has_negatives and not by["msr"].has_negatives
    assert set(data.prompts()["sick"]) == {"query"}
    assert set(data.prompts()["msr"]) == {"query", "positive"}


def test_llm2vec_style_configs_parse():
    configs = sorted((REPO / "training").glob("simcse/*.json")) + sorted((REPO / "training").glob("supervised/*.json"))
    assert {p.parent.name for p in configs} == {"simcse", "supervised"}
    for path in configs:
        arguments, args = read_arguments(ARGUMENTS[path.parent.name], json.loads(path.read_text()))
        assert arguments.model_name_or_path and args["output_dir"]
    with pytest.raises(ValueError, match=r"lora_rank"):
        read_arguments(ARGUMENTS["simcse"], {"model_name_or_path": "m", "output_dir": "o", "lora_rank": 8})


def test_gather_across_devices_reads_true_false_and_auto_from_files_and_the_command_line():
    import argparse

    from st_llm2vec.train.config import ConfigError
    from st_llm2vec.train.recipe import overrides_from_cli, parent_parser

    simcse = ARGUMENTS["simcse"]
    base = {"model_name_or_path": "m", "output_dir": "o"}
    for given, expected in (("false", False), ("True", True), ("AUTO", "auto"), (False, False), (None, None)):
        arguments, _ = read_arguments(simcse, {**base, "gather_across_devices": given})
        assert arguments.gather_across_devices == expected
    with pytest.raises(ConfigError, match="gather_across_devices: expected true, false or 'auto'"):
        read_arguments(simcse, {**base, "gather_across_devices": "maybe"})
    cli = argparse.ArgumentParser(parents=[parent_parser(simcse)]).parse_args(["c.json", "--gather_across_devices", "false"])
    arguments, _ = read_arguments(simcse, base, overrides_from_cli(simcse, cli))
    assert arguments.gather_across_devices is False  # the string "false" would gather (bool("false") is True)


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


def test_dev_evaluator_applies_the_eval_instruction_and_restores_prompts(tiny_llm):
    from st_llm2vec import from_llm
    from st_llm2vec.eval.scores import InstructedSequentialEvaluator

    model = from_llm(str(tiny_llm()))
    sts = devsets.builtin_sts_evaluator()
    plain = InstructedSequentialEvaluator([sts], None)(model)
    seen = []
    preprocess = model.preprocess
    model.preprocess = lambda texts, prompt=None, **kw: seen.append(prompt) or preprocess(texts, prompt=prompt, **kw)
    instructed = InstructedSequentialEvaluator([sts], "Retrieve semantically similar text:")(model)
    assert set(seen) == {"Retrieve semantically similar text: "}  # portable model: the stock prompt form
    assert instructed["builtin-sts_spearman_cosine"] != plain["builtin-sts_spearman_cosine"]
    assert model.default_prompt_name is None and "st_llm2vec_eval" not in model.prompts


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


def test_cli_overrides_and_errors(tiny_llm, tmp_path, capsys):
    from st_llm2vec.cli import main

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model_name_or_path": str(tiny_llm()), "output_dir": str(tmp_path / "o")}))
    with pytest.raises(FileNotFoundError, match="dataset_file_path|echo"):
        main(["supervised", str(cfg), "--set", "dataset_name=E5", "--dataset-file-path", str(tmp_path / "nope")])
    with pytest.raises(ValueError, match="save_mode"):
        main(["simcse", str(cfg), "--set", 'save_mode="both"'])


# --------------------------------------------------------------------------- DDP

_DDP_SCRIPT = r'''
import json, sys, torch, torch.distributed as dist
import torch.nn.functional as F
from st_llm2vec.train.contrastive import build_loss
from st_llm2vec.train.stage_contrastive import train_supervised
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


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("stage", ["simcse", "supervised"])
def test_the_repos_tiny_configs_need_no_shared_data(stage, tiny_llm, tmp_path, monkeypatch):
    """A clone has no ../shared: the tiny configs read their data from the repo; only the model is to be given."""
    from st_llm2vec import cli

    monkeypatch.setattr(devsets, "find_shared_data", lambda path=None: None)
    code = cli.main([stage, str(REPO / "training" / stage / "tiny.json"), "--model_name_or_path", str(tiny_llm("llama")),
                     "--output-dir", str(tmp_path / "out"), "--set", "max_steps=2", "--set", "evaluator=none",
                     "--set", "disable_tqdm=true", "--set", "save_strategy=no"])
    assert code == 0 and (tmp_path / "out" / "modules.json").is_file()


def test_a_config_naming_a_model_that_is_nowhere_says_which_model_to_use(tmp_path, capsys):
    """The tiny configs name the llm2vec fixtures in ../shared: on a clone the error says what to pass instead."""
    from st_llm2vec import cli

    config = tmp_path / "c.json"
    config.write_text(json.dumps({"model_name_or_path": "../no-shared-here/fixtures/llama/base", "output_dir": str(tmp_path / "o"),
                                  "dataset_name": "Wiki1M", "dataset_file_path": str(REPO / "training/mntp/tiny_corpus.txt")}))
    assert cli.main(["simcse", str(config)], report_errors=True) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "st-llm2vec fetch-smollm2 --quiet" in err and "Traceback" not in err


def test_a_stage_says_before_training_when_its_output_cannot_be_portable(tiny_llm, tmp_path, caplog):
    out = tmp_path / "out"
    config = _base_config(tiny_llm("llama"), out, pooling_mode="weighted_mean", max_steps=1, dataset_name="E5",
                          dataset_file_path=str(REPO / "training" / "supervised" / "tiny_e5"), per_device_train_batch_size=4)
    with caplog.at_level("WARNING", logger="st_llm2vec.train.recipe"):
        stage = prepare_stage("supervised", config)
    stage.run.release()
    assert "will be saved in the exact format" in caplog.text and "weighted_mean" in caplog.text
    assert not (out / "modules.json").exists()  # said before anything was trained or saved
