"""st_llm2vec/recipe/mntp_masking.py, mntp_head.py, mntp_loss.py with stage_mntp.py: MNTP's llm2vec loss parity, masking rules, LM heads, collator and
evaluator, and the MNTP stage's training, CLI and (slow) DDP.

Tiny random models are built here; nothing is downloaded. The llm2vec parity tests read the shared
fixtures (``ST_LLM2VEC_FIXTURES`` or ``../shared/fixtures/llm2vec``) and skip when they are absent.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import st_llm2vec
from st_llm2vec.bidirectional import enable_bidirectional
from st_llm2vec.recipe.lora import add_lora, lora_config
from st_llm2vec.recipe.mntp_head import LMHeadError
from st_llm2vec.recipe.mntp_loss import MNTPEvaluator, MNTPLoss
from st_llm2vec.recipe.mntp_masking import (
    IGNORE_INDEX,
    MNTPDataCollator,
    mask_tokens,
    resolve_mask_token_id,
    setup_mask_token,
)
from st_llm2vec.recipe.arguments import read_arguments
from st_llm2vec.recipe.stage_mntp import MNTPArguments, train_mntp
from conftest import corpus_lines, make_tiny_llama, make_tokenizer, mntp_config
from conftest import mntp_history as history
from conftest import mntp_recipe as recipe

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "training" / "mntp" / "tiny.json"


def fixtures_root() -> Path:
    return Path(os.environ.get("ST_LLM2VEC_FIXTURES", REPO.parent / "shared" / "fixtures" / "llm2vec"))


def fixture_dirs() -> list[str]:
    root = fixtures_root()
    found = sorted(p.parent.name for p in root.glob("*/mntp_batch.npz")) if root.is_dir() else []
    return sorted(set(found) | {"llama", "mistral", "gemma"})


@pytest.fixture(scope="module")
def tiny_llama_tied(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny_llama_tied"), tied=True, seed=1)


def hf_bidirectional_loss(path: Path, input_ids, attention_mask, labels, cls=None, **kwargs) -> float:
    """The loss transformers' own ...ForCausalLM head gives with bidirectional attention (llm2vec's setup)."""
    from transformers import AutoModelForCausalLM

    model = (cls or AutoModelForCausalLM).from_pretrained(path, **kwargs)
    enable_bidirectional(model)
    model.eval()
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.item()


def masked_batch(model, texts: list[str], seed: int = 0, **loss_kwargs):
    loss = MNTPLoss(model, **loss_kwargs)
    batch = MNTPDataCollator(model[0].tokenizer)([{"text": t} for t in texts])
    ids, mask = batch["mntp_input_ids"], batch["mntp_attention_mask"]
    inputs, labels = loss.mask(ids, mask, generator=torch.Generator().manual_seed(seed))
    return loss, inputs, mask, labels


# --------------------------------------------------------------------------- loss parity


@pytest.mark.parametrize("name", fixture_dirs())
def test_loss_parity_with_llm2vec_fixture(name):
    folder = fixtures_root() / name
    if not (folder / "mntp_batch.npz").is_file():
        pytest.skip(f"llm2vec fixture {folder} not found (set ST_LLM2VEC_FIXTURES)")
    readme = json.loads((folder / "README.json").read_text()) if (folder / "README.json").is_file() else {}
    # llm2vec 0.2.3 leaves Qwen2 causal (fixture README): its MNTP loss is the causal model's.
    bidirectional = readme.get("arch") != "qwen2"
    batch = np.load(folder / "mntp_batch.npz")
    model = st_llm2vec.from_llm(str(folder / "base"), bidirectional=bidirectional)
    loss = MNTPLoss(model)
    if "mask_token_id" in batch:
        assert resolve_mask_token_id(model[0].tokenizer, "blank") == int(batch["mask_token_id"])
    with torch.no_grad():
        ours = loss.masked_loss(
            torch.as_tensor(batch["input_ids"]), torch.as_tensor(batch["attention_mask"]), torch.as_tensor(batch["labels"])
        ).item()
    expected = float(batch["loss"])
    assert abs(ours - expected) / abs(expected) <= 1e-5, (name, ours, expected)


def test_parity_check_is_sensitive_to_attention():
    folder = fixtures_root() / "llama"
    if not (folder / "mntp_batch.npz").is_file():
        pytest.skip("llm2vec llama fixture not found")
    batch = np.load(folder / "mntp_batch.npz")
    model = st_llm2vec.from_llm(str(folder / "base"), bidirectional=False)
    with torch.no_grad():
        causal = MNTPLoss(model).masked_loss(*(torch.as_tensor(batch[k]) for k in ("input_ids", "attention_mask", "labels")))
    assert abs(causal.item() - float(batch["loss"])) / float(batch["loss"]) > 1e-4


@pytest.mark.parametrize("tied", [False, True])
def test_loss_equals_transformers_causal_lm_head(tiny_llama, tiny_llama_tied, tied):
    path = tiny_llama_tied if tied else tiny_llama
    model = st_llm2vec.from_llm(str(path))
    loss, inputs, mask, labels = masked_batch(model, corpus_lines()[:6], mlm_probability=0.3)
    assert (labels != IGNORE_INDEX).any()
    with torch.no_grad():
        ours = loss.masked_loss(inputs, mask, labels).item()
    assert loss.lm_head is None if tied else loss.lm_head is not None
    ref = hf_bidirectional_loss(path, inputs, mask, labels)
    assert abs(ours - ref) / ref <= 1e-5


def test_softcapped_head_matches_transformers(tmp_path):
    """An unseen architecture: Gemma 2's tanh logit softcapping is part of its LM head."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    tok = make_tokenizer(tmp_path, corpus_lines())
    config = Gemma2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, final_logit_softcapping=2.0, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    hf = Gemma2ForCausalLM(config)
    with torch.no_grad():
        for p in hf.parameters():
            p.mul_(20)  # large logits, so that the capping matters
    hf.save_pretrained(tmp_path)
    model = st_llm2vec.from_llm(str(tmp_path), attn_implementation="eager")
    loss, inputs, mask, labels = masked_batch(model, corpus_lines()[:4])
    assert loss.transform is not None
    with torch.no_grad():
        ours = loss.masked_loss(inputs, mask, labels).item()
    ref = hf_bidirectional_loss(tmp_path, inputs, mask, labels, attn_implementation="eager")
    assert abs(ours - ref) / ref <= 1e-5


def test_batch_without_labels_gives_zero_connected_loss(tiny_llama):
    model = st_llm2vec.from_llm(str(tiny_llama))
    loss = MNTPLoss(model)
    ids = torch.tensor([[1, 5, 6, 7]])
    value = loss.masked_loss(ids, torch.ones_like(ids), torch.full_like(ids, IGNORE_INDEX))
    assert value.item() == 0.0 and value.requires_grad


# --------------------------------------------------------------------------- masking


def _padded_batch():
    # bos=1, eos=2, pad=2; row 0 right-padded, row 1 left-padded, row 2 with an EOS inside
    ids = torch.tensor(
        [
            [1, 10, 11, 12, 13, 14, 2, 2],
            [2, 2, 1, 20, 21, 22, 23, 24],
            [1, 30, 31, 2, 32, 33, 34, 35],
        ]
    )
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])
    return ids, mask


@pytest.mark.parametrize("strategy", ["default", "all_mask"])
def test_masking_never_touches_pad_special_or_first_tokens(strategy):
    ids, mask = _padded_batch()
    ids = ids.repeat(200, 1)
    mask = mask.repeat(200, 1)
    no_bos = ids.clone()
    no_bos[:, :] = torch.where(no_bos == 1, 40, no_bos)  # a tokenizer without BOS: the first token is ordinary
    for batch in (ids, no_bos):
        inputs, labels = mask_tokens(
            batch, mask, mask_token_id=3, mlm_probability=0.9, strategy=strategy, special_ids=[1, 2],
            vocab_size=50, generator=torch.Generator().manual_seed(0),
        )
        chosen = labels != IGNORE_INDEX
        assert not chosen[mask == 0].any()
        assert not chosen[torch.isin(batch, torch.tensor([1, 2]))].any()
        first = mask.argmax(dim=1)
        assert not chosen[torch.arange(len(batch)), first].any()
        assert chosen.float().mean() > 0.3
        assert torch.equal(labels[chosen], batch[chosen])
        assert torch.equal(inputs[~chosen], batch[~chosen])
        if strategy == "all_mask":
            assert (inputs[chosen] == 3).all()


def test_default_strategy_is_80_10_10():
    ids = torch.randint(10, 1000, (400, 250), generator=torch.Generator().manual_seed(0))
    inputs, labels = mask_tokens(
        ids, None, mask_token_id=3, mlm_probability=0.2, strategy="default", vocab_size=1000,
        generator=torch.Generator().manual_seed(1),
    )
    chosen = labels != IGNORE_INDEX
    assert abs(chosen.float().mean().item() - 0.2 * 249 / 250) < 0.005
    became_mask = (inputs[chosen] == 3).float().mean().item()
    kept = (inputs[chosen] == ids[chosen]).float().mean().item()
    assert abs(became_mask - 0.8) < 0.01
    assert abs(kept - 0.1) < 0.01  # (random ids hit the original only 1/1000 of the time)
    assert abs(1 - became_mask - kept - 0.1) < 0.01


@pytest.mark.parametrize("p", [0, 1, -0.1, 1.5])
def test_mlm_probability_outside_open_interval_is_refused(tiny_llama, p):
    ids, mask = _padded_batch()
    with pytest.raises(ValueError, match="mlm_probability"):
        mask_tokens(ids, mask, mask_token_id=3, mlm_probability=p, vocab_size=50)
    with pytest.raises(ValueError, match="mlm_probability"):
        MNTPLoss(st_llm2vec.from_llm(str(tiny_llama)), mlm_probability=p)
    with pytest.raises(ValueError, match="mlm_probability"):
        read_arguments(MNTPArguments, {"model_name_or_path": "x", "output_dir": "y", "mlm_probability": p})


def test_loss_masks_itself_reproducibly_in_eval(tiny_llama):
    model = st_llm2vec.from_llm(str(tiny_llama))
    loss = MNTPLoss(model)
    batch = MNTPDataCollator(model[0].tokenizer)([{"text": t} for t in corpus_lines()[:4]])
    features = [{k[len("mntp_"):]: v for k, v in batch.items()}]
    assert "labels" not in features[0]
    model.eval()
    with torch.no_grad():
        first, second = loss(features).item(), loss(features).item()
    assert first == second and first > 0  # eval masks are seeded by the batch content


# --------------------------------------------------------------------------- mask token, LM head, collator, evaluator


def test_each_mask_token_type_names_its_token_or_is_refused_clearly(tiny_llama):
    model = st_llm2vec.from_llm(str(tiny_llama))
    tok = model[0].tokenizer
    assert resolve_mask_token_id(tok, "blank") == tok.convert_tokens_to_ids("_")
    assert resolve_mask_token_id(tok, "eos") == tok.eos_token_id
    assert resolve_mask_token_id(tok, "<s>") == tok.bos_token_id  # any token of the vocabulary
    with pytest.raises(ValueError, match="no single token '<nope>'"):
        resolve_mask_token_id(tok, "<nope>")
    with pytest.raises(ValueError, match="mask_token_type='mask'"):
        MNTPLoss(model, mask_token_type="mask")  # not added yet


def test_mask_type_adds_token_and_resizes_embeddings_and_head(tiny_llama):
    model = st_llm2vec.from_llm(str(tiny_llama))
    tok = model[0].tokenizer
    rows = model[0].model.get_input_embeddings().num_embeddings
    mask_id = setup_mask_token(model, "mask")
    assert tok.mask_token == "<mask>" and mask_id == rows
    assert model[0].model.get_input_embeddings().num_embeddings == rows + 1
    add_lora(model, lora_config(r=2))
    loss, inputs, mask, labels = masked_batch(model, corpus_lines()[:4], mask_token_type="mask")
    assert loss.mask_token_id == mask_id and loss.lm_head.weight.shape[0] == rows + 1
    assert (inputs == mask_id).any()
    assert torch.isfinite(loss.masked_loss(inputs, mask, labels))
    assert setup_mask_token(model, "mask") == mask_id  # idempotent


def test_model_without_lm_head_weights_is_refused(tmp_path, tiny_llama):
    bare = make_tiny_llama(tmp_path / "bare", causal_lm=False)
    model = st_llm2vec.from_llm(str(bare))
    with pytest.raises(LMHeadError, match="no 'lm_head.weight'"):
        MNTPLoss(model)
    # ...but the causal-LM checkpoint's head can be named explicitly
    MNTPLoss(model, lm_head=str(tiny_llama))
    from transformers import AutoModelForCausalLM

    head = AutoModelForCausalLM.from_pretrained(tiny_llama).lm_head
    assert MNTPLoss(model, lm_head=head).lm_head is head
    assert not any(p.requires_grad for p in head.parameters())  # frozen by default


def test_collator_pads_right_and_passes_labels_through(tiny_llama):
    model = st_llm2vec.from_llm(str(tiny_llama))
    tok = model[0].tokenizer
    collator = MNTPDataCollator(tok, max_length=5)
    batch = collator([{"text": "The river runs past the old mill."}, {"input_ids": [1, 7, 8]}])
    ids, mask = batch["mntp_input_ids"], batch["mntp_attention_mask"]
    assert ids.shape == (2, 5) and mask.tolist()[1] == [1, 1, 1, 0, 0]
    assert ids[1, 3:].tolist() == [tok.eos_token_id] * 2 and "mntp_labels" not in batch
    batch = collator([{"input_ids": [1, 7, 8], "labels": [-100, 7, -100]}, {"input_ids": [1, 9], "labels": [-100, 9]}])
    assert batch["mntp_labels"].tolist() == [[-100, 7, -100], [-100, 9, -100]]


def test_evaluator_reports_loss_and_accuracy(tiny_llama):
    model = st_llm2vec.from_llm(str(tiny_llama))
    loss = MNTPLoss(model)
    evaluator = MNTPEvaluator(loss, corpus_lines()[:10], MNTPDataCollator(model[0].tokenizer), batch_size=4)
    first, again = evaluator(model), evaluator(model)
    assert set(first) == {"mntp_loss", "mntp_accuracy"} and first == again
    assert 0 <= first["mntp_accuracy"] <= 1 and first["mntp_loss"] > 0
    assert evaluator.primary_metric == "mntp_accuracy"


def test_trainable_lm_head_gets_gradients(tiny_llama):
    model = st_llm2vec.from_llm(str(tiny_llama))
    loss, inputs, mask, labels = masked_batch(model, corpus_lines()[:4], freeze_lm_head=False)
    loss.masked_loss(inputs, mask, labels).backward()
    assert loss.lm_head.weight.requires_grad and loss.lm_head.weight.grad.abs().sum() > 0


def test_no_eval_tokens_is_reported_not_a_zero_loss(tiny_llm, tmp_path):
    import st_llm2vec
    from st_llm2vec.recipe.mntp_loss import MNTPEvaluator, MNTPLoss
    from st_llm2vec.recipe.mntp_masking import MNTPDataCollator
    from st_llm2vec.recipe.text_data import EmptyDatasetError

    model = st_llm2vec.from_llm(str(tiny_llm()))
    rows = [{"input_ids": [1, 40], "labels": [-100, -100]}] * 3  # nothing masked
    metrics = MNTPEvaluator(MNTPLoss(model), rows, MNTPDataCollator(model[0].tokenizer))(model)
    assert math.isnan(metrics["mntp_loss"]) and math.isnan(metrics["mntp_accuracy"])  # before: 0.0

    one_token = tmp_path / "valid.txt"
    one_token.write_text("</s>\n" * 6)  # BOS + one token that is never masked, line by line
    with pytest.raises(EmptyDatasetError, match="No eval tokens"):
        train_mntp(mntp_config(tiny_llm(), tmp_path / "out", line_by_line=True, do_eval=True,
                               validation_file=str(one_token), eval_strategy="steps", eval_steps=1))


# --------------------------------------------------------------------------- training through the stage


def test_twenty_steps_lower_the_loss(tiny_llama, tmp_path):
    def fixed_mask_loss(model) -> float:
        loss = MNTPLoss(model, lm_head=str(tiny_llama))
        return MNTPEvaluator(loss, corpus_lines()[:24], MNTPDataCollator(model[0].tokenizer), seed=3)(model)["mntp_loss"]

    before = fixed_mask_loss(st_llm2vec.from_llm(str(tiny_llama)))
    result = train_mntp(recipe(tiny_llama, tmp_path / "out", gradient_checkpointing=True))
    after = fixed_mask_loss(st_llm2vec.from_llm(result.output_dir))
    losses = [loss for _, loss in history(tmp_path / "out")]
    assert len(losses) == 20
    assert after < before - 0.03, (before, after)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_cli_tiny_config_writes_a_loadable_model(tiny_llama, tmp_path):
    from sentence_transformers import SentenceTransformer

    from st_llm2vec.cli import main

    out = tmp_path / "tiny_out"
    code = main([
        "mntp", str(TINY_CONFIG), "--model-name-or-path", str(tiny_llama), "--output-dir", str(out),
        "--stop-after-n-steps", "4", "--set", "max_steps=4", "--set", "eval_steps=2", "--set", "save_steps=2",
        "--set", "disable_tqdm=true",
    ])
    assert code == 0
    saved = json.loads((out / "mntp_config.json").read_text())
    assert saved["train_file"].endswith("tiny_corpus.txt") and saved["gradient_checkpointing"] is True
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "checkpoint-4").is_dir()
    metrics = json.loads((out / "mntp_metrics.json").read_text())["metrics"]
    assert "eval_mntp_accuracy" in metrics

    model = SentenceTransformer(str(out))
    assert type(model[0]).__name__ == "Transformer"  # the portable format: stock modules
    emb = model.encode(["The river runs past the old mill."])
    nxt = st_llm2vec.load_model(str(out))  # where SimCSE / supervised training starts
    assert isinstance(nxt[0], st_llm2vec.LLM2VecTransformer)
    np.testing.assert_allclose(nxt.encode(["The river runs past the old mill."]), emb, rtol=1e-5, atol=1e-6)


def test_plain_sentence_transformer_trainer_on_a_text_column(tiny_llama, tmp_path):
    """MNTPLoss + MNTPDataCollator work with the stock trainer on raw text (tokenized line by line)."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    model = st_llm2vec.from_llm(str(tiny_llama))
    add_lora(model, lora_config(r=4))
    loss = MNTPLoss(model)
    collator = MNTPDataCollator(model[0].tokenizer, max_length=32)
    texts = Dataset.from_dict({"text": corpus_lines()})
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, use_cpu=True, report_to="none",
        save_strategy="no", logging_steps=1, disable_tqdm=True,
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=texts, eval_dataset=texts.select(range(8)), loss=loss, data_collator=collator,
        evaluator=MNTPEvaluator(loss, corpus_lines()[:8], collator),
    )
    trainer.train()
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] > 0 and "eval_mntp_accuracy" in metrics
    assert trainer.evaluate()["eval_loss"] == metrics["eval_loss"]  # eval masks are fixed per batch


@pytest.mark.slow
def test_two_process_cpu_ddp_run(tiny_llama, tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found")
    config = recipe(tiny_llama, tmp_path / "ddp", max_steps=6, stop_after_n_steps=6, save_strategy="steps", save_steps=3,
                    ddp_backend="gloo", per_device_train_batch_size=4)
    path = tmp_path / "ddp.json"
    path.write_text(json.dumps(config))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", "29517", str(REPO / "training" / "run_mntp.py"), str(path)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    state = json.loads((tmp_path / "ddp" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert state["log_history"][0]["epoch"] > 0
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(tmp_path / "ddp")).encode(["a river"]).shape == (1, 32)
