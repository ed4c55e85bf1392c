"""st_llm2vec/portable.py, portable_save.py: the portable save format — stock sentence-transformers modules that load,
bidirectional and equal,
in a process where st_llm2vec cannot be imported; the exact format where stock modules cannot express the model."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

import st_llm2vec
from st_llm2vec.export.convert import convert
from st_llm2vec.portable import PortableFormatError

from conftest import fixtures_dir

TEXTS = ["A man is playing a guitar on the street.", "Two dogs run.", "The cat sleeps on a warm windowsill."]
QUERY = "Retrieve semantically similar text:"

# Loads each dir with stock ST in a fresh interpreter in which `import st_llm2vec` fails.
_STOCK_LOAD = r"""
import json, sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "st_llm2vec":
            raise ImportError("blocked")
sys.meta_path.insert(0, _Blocked())
try:
    import st_llm2vec
    raise SystemExit("st_llm2vec was importable")
except ImportError:
    pass
import torch
from sentence_transformers import SentenceTransformer
args = json.loads(sys.stdin.read())
out = {}
for path in args["paths"]:
    model = SentenceTransformer(path, device="cpu", trust_remote_code=args["trust_remote_code"])
    result = {"modules": [type(m).__module__ + "." + type(m).__name__ for m in model],
              "docs": model.encode(args["docs"]).tolist()}
    result["queries"] = {p: model.encode(args["docs"], prompt=p).tolist() for p in args.get("prompts", [])}
    if args.get("prompt_name"):
        result["named"] = model.encode(args["docs"], prompt_name=args["prompt_name"]).tolist()
    a, b = model.encode(["The quick brown fox jumps over the lazy dog", "The quick brown fox jumps over the lazy cat"],
                        output_value="token_embeddings")
    result["shift"] = float((a[1] - b[1]).norm() / a[1].norm())
    out[path] = result
print("RESULT" + json.dumps(out))
"""


def stock_load(paths, docs, *, prompt_name=None, prompts=(), trust_remote_code=False, block=True) -> dict:
    """Encode with stock ST in a subprocess (st_llm2vec blocked unless ``block`` is False)."""
    script = _STOCK_LOAD if block else _STOCK_LOAD.replace("sys.meta_path.insert(0, _Blocked())", "").replace(
        'raise SystemExit("st_llm2vec was importable")', "pass")
    payload = {"paths": [str(p) for p in paths], "docs": list(docs), "prompt_name": prompt_name,
               "prompts": list(prompts), "trust_remote_code": trust_remote_code}
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], input=json.dumps(payload), capture_output=True, text=True,
                          env=env, timeout=600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    return json.loads(line[len("RESULT"):])


@pytest.fixture(scope="module")
def portable(tiny_llm, tmp_path_factory):
    """A from_llm model (mean pooling, a query prompt) saved with plain ``save()``."""
    model = st_llm2vec.from_llm(str(tiny_llm("llama")), prompts={"query": QUERY})
    path = tmp_path_factory.mktemp("portable") / "model"
    model.save(str(path))
    return model, path


def test_from_llm_save_writes_only_stock_modules_and_the_flags_serving_engines_read(portable):
    model, path = portable
    assert model.save_report["format"] == "portable"
    types = [m["type"] for m in json.loads((path / "modules.json").read_text())]
    assert types == [
        "sentence_transformers.base.modules.transformer.Transformer",
        "sentence_transformers.sentence_transformer.modules.word_weights.WordWeights",
        "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
    ]
    config = json.loads((path / "config.json").read_text())
    assert config["is_causal"] is False and config["use_bidirectional_attention"] is True  # llama: TEI's key
    module_config = json.loads((path / "sentence_bert_config.json").read_text())
    assert list(module_config["modality_config"]) == ["text"]  # no chat-template wrapping
    assert not {"doc_max_length", "text_suffix", "format", "bidirectional"} & set(module_config)
    prompts = json.loads((path / "config_sentence_transformers.json").read_text())["prompts"]
    assert prompts["query"] == QUERY + " "  # prompt + text == llm2vec's instruction + " " + text
    card = (path / "README.md").read_text()
    assert "trust_remote_code" in card and "HuggingFaceEmbedding(" in card and "HuggingFaceEmbeddings(" in card
    assert "LLM2VecTransformer" not in card


@pytest.mark.numerics
def test_portable_dir_loads_without_st_llm2vec_runs_bidirectionally_and_gives_the_same_embeddings(portable):
    model, path = portable
    stock = stock_load([path], TEXTS, prompt_name="query")[str(path)]
    assert all(t.startswith("sentence_transformers.") for t in stock["modules"])
    assert stock["shift"] > 1e-4  # an early token moves when only the last word changes
    np.testing.assert_allclose(stock["docs"], model.encode(TEXTS), atol=1e-4)
    # train/serve consistency: the query embeddings the in-memory model computes are the served ones
    np.testing.assert_allclose(stock["named"], model.encode(TEXTS, prompt_name="query"), atol=1e-4)


def test_portable_queries_pool_only_the_tokens_after_the_prompt_as_stock_word_weights_and_pooling_do(portable):
    """The portable semantics, by hand: the backbone on ``prompt + text``; summed: the tokens after the prompt
    tokenized alone (``include_prompt=False``); divided by the non-BOS tokens of the whole row (WordWeights'
    sum, which counts the prompt's too). Documents: every token but BOS, averaged."""
    import torch

    model, _ = portable
    text = "Two dogs run."
    encoder = model[0]
    ids = encoder.tokenizer(model.prompts["query"] + text, return_tensors="pt")
    assert ids["input_ids"][0, 0] == encoder.tokenizer.bos_token_id
    skip = len(encoder.tokenizer(model.prompts["query"])["input_ids"])
    with torch.no_grad():
        states = encoder.model(**ids).last_hidden_state[0]
    expected = states[skip:].sum(0) / (states.shape[0] - 1)
    np.testing.assert_allclose(model.encode([text], prompt_name="query")[0], expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(model.encode([text])[0], encoder.model(**encoder.tokenizer(text, return_tensors="pt"))
                               .last_hidden_state[0, 1:].mean(0).detach().numpy(), atol=1e-5)


def test_weighted_mean_and_instruct_wrappers_use_the_exact_format_and_say_why(tiny_llm, tmp_path, caplog):
    path = str(tiny_llm("llama"))
    with caplog.at_level("INFO", logger="st_llm2vec.build"):
        model = st_llm2vec.from_llm(path, pooling_mode="weighted_mean")
    assert model[0].format == "exact" and "weightedmean" in caplog.text
    model.save(str(tmp_path / "m"))
    assert model.save_report == {"format": "exact", "reason": model.save_report["reason"]}
    assert "st_llm2vec" in (tmp_path / "m" / "modules.json").read_text()
    assert "pip install -e ." in (tmp_path / "m" / "README.md").read_text()  # st-llm2vec is not on PyPI
    for kwargs in ({"pooling_mode": "weighted_mean"}, {"chat_template": "[INST] {{ messages[0]['content'] }} [/INST]"}):
        with pytest.raises(PortableFormatError, match="format='exact'"):
            st_llm2vec.from_llm(path, format="portable", **kwargs)


def test_a_model_stock_st_would_run_causally_is_never_written_portable(tiny_llm, tmp_path, caplog):
    """StableLM + SDPA needs our per-module flags: stock loading stays causal, which the proof catches."""
    path = str(tiny_llm("stablelm"))
    required = st_llm2vec.from_llm(path, attn_implementation="sdpa", format="portable")
    with pytest.raises(PortableFormatError, match="causally"):
        required.save(str(tmp_path / "refused"))
    assert not (tmp_path / "refused" / "modules.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    auto = st_llm2vec.from_llm(path, attn_implementation="sdpa")
    with caplog.at_level("WARNING", logger="st_llm2vec.model"):
        auto.save(str(tmp_path / "fallback"))
    assert auto.save_report["format"] == "exact" and "causally" in auto.save_report["reason"]
    assert "causally" in caplog.text
    assert "st_llm2vec.encoder.LLM2VecTransformer" in (tmp_path / "fallback" / "modules.json").read_text()


def test_a_portable_dir_reloads_with_st_llm2vec_as_the_same_model(portable):
    """Training stages start from saved dirs: ``load_model`` rebuilds a portable dir with our encoder."""
    model, path = portable
    again = st_llm2vec.load_model(str(path))
    assert isinstance(again[0], st_llm2vec.LLM2VecTransformer) and again[0].format == "portable"
    assert again.prompts["query"] == QUERY + " "
    np.testing.assert_allclose(again.encode(TEXTS, prompt_name="query"), model.encode(TEXTS, prompt_name="query"), atol=1e-5)


# -- converted llm2vec checkpoints (../shared/fixtures/llm2vec) ------------------------------------

FIXTURES = fixtures_dir()
needs_fixtures = pytest.mark.skipif(FIXTURES is None, reason="llm2vec fixtures (../shared/fixtures/llm2vec) not found")


def _convert_fixture(arch: str, pooling: str, out: Path, **kwargs) -> Path:
    with contextlib.chdir(FIXTURES / arch):
        return convert("base", out, adapters=["mntp", "supervised"], pooling_mode=pooling, **kwargs)


def _expected(arch: str, key: str) -> np.ndarray:
    return np.load(FIXTURES / arch / "expected.npz")[key]


def _inputs(arch: str) -> dict:
    return json.loads((FIXTURES / arch / "inputs.json").read_text())


@needs_fixtures
@pytest.mark.parametrize("poolings", [("mean",), pytest.param(("eos_token", "bos_token"), marks=pytest.mark.slow)])
def test_converted_llm2vec_documents_match_llm2vec_in_stock_sentence_transformers(tmp_path, poolings):
    outputs = {}
    for arch in ("llama", "mistral", "gemma"):
        for pooling in poolings:
            out = _convert_fixture(arch, pooling, tmp_path / f"{arch}-{pooling}")
            assert convert.last_report["format"] == "portable", convert.last_report
            assert convert.last_report["comparison"]["documents_max_difference"] <= 1e-4
            outputs[out] = (arch, pooling)
    docs = _inputs("llama")["docs"]
    assert all(_inputs(arch)["docs"] == docs for arch in ("mistral", "gemma"))
    stock = stock_load(list(outputs), docs)
    for out, (arch, pooling) in outputs.items():
        result = stock[str(out)]
        assert all(t.startswith("sentence_transformers.") for t in result["modules"])
        assert result["shift"] > 1e-4, (arch, pooling)
        np.testing.assert_allclose(result["docs"], _expected(arch, f"base+mntp+supervised__{pooling}__docs"),
                                   atol=1e-4, err_msg=f"{arch} {pooling}")


@needs_fixtures
def test_convert_falls_back_to_exact_for_weighted_mean_and_instruct_wrappers_and_refuses_portable(tmp_path):
    for arch, pooling in (("llama", "weighted_mean"), ("llama3-instruct", "mean")):
        _convert_fixture(arch, pooling, tmp_path / arch)
        assert convert.last_report["format"] == "exact" and convert.last_report["reason"]
        card = (tmp_path / arch / "README.md").read_text()
        assert "exact" in card and "trust_remote_code=True" in card
        with pytest.raises(PortableFormatError, match="--format exact"):
            _convert_fixture(arch, pooling, tmp_path / f"{arch}-p", format="portable")
        assert not (tmp_path / f"{arch}-p").exists()


@needs_fixtures
def test_exact_format_keeps_llm2vec_parity_for_pairs_and_documents_with_trust_remote_code(tmp_path):
    """--format exact, loaded in a fresh process that never imports st_llm2vec: trust_remote_code=True."""
    archs = ("llama", "mistral", "gemma", "llama3-instruct", "mistral-instruct")
    outputs = {_convert_fixture(arch, "mean", tmp_path / arch, format="exact"): arch for arch in archs}
    instructions = sorted({i for arch in archs for i, _ in _inputs(arch)["pairs"] if i})
    docs = _inputs("llama")["docs"]
    stock = stock_load(list(outputs), docs, trust_remote_code=True, block=False)
    for out, arch in outputs.items():
        result = stock[str(out)]
        assert result["modules"][0] == "st_llm2vec.encoder.LLM2VecTransformer"
        np.testing.assert_allclose(result["docs"], _expected(arch, "base+mntp+supervised__mean__docs"), atol=1e-4)
    # pairs: each (instruction, text) alone through encode(text, prompt=instruction), in-process (same classes)
    for out, arch in outputs.items():
        model = SentenceTransformer(str(out), device="cpu")
        pairs = _inputs(arch)["pairs"]
        got = np.stack([model.encode([text], prompt=instruction or None)[0] for instruction, text in pairs])
        np.testing.assert_allclose(got, _expected(arch, "base+mntp+supervised__mean"), atol=1e-4, err_msg=arch)
    assert instructions  # the fixtures do hold instructions


def test_a_trained_model_serves_the_query_embeddings_it_was_trained_and_evaluated_with(tiny_llm, tmp_path):
    """Train/serve consistency: supervised stage (instructions on queries, dev STS with an instruction) →
    saved portable → loaded by stock ST without st_llm2vec: the same query embeddings (≤ 1e-4)."""
    from st_llm2vec.recipe.stage_contrastive import train_supervised
    from st_llm2vec.instructions import prompt_for, stored_prompt

    folder = tmp_path / "e5"
    folder.mkdir()
    rows = [{"query": f"question {i} about dogs", "positive": f"Dogs are animals number {i}.",
             "negative": f"Cats sleep all day {i}."} for i in range(8)]
    (folder / "allnli.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    result = train_supervised(dict(
        model_name_or_path=str(tiny_llm("llama")), output_dir=str(out), use_cpu=True, disable_tqdm=True, lora_r=4,
        max_seq_length=64, evaluator="sts", eval_strategy="no", save_strategy="no", per_device_train_batch_size=2,
        max_steps=2, dataset_name="E5", dataset_file_path=str(folder), seed=3,
    ))
    model = result.model
    assert model[0].format == "portable" and result.prompts  # trained with instructions on the queries
    per_dataset = [p for p in result.prompts.values() if isinstance(p, dict)]  # allnli is split in two
    instruction = (per_dataset[0] if per_dataset else result.prompts)["query"]  # "<instruction>; ", as fed
    dev = "Retrieve semantically similar text:"
    texts = [r["query"] for r in rows[:3]]
    stock = stock_load([out], texts, prompts=[instruction, stored_prompt(dev)])[str(out)]
    np.testing.assert_allclose(stock["queries"][instruction], model.encode(texts, prompt=instruction), atol=1e-4)
    np.testing.assert_allclose(stock["queries"][stored_prompt(dev)], model.encode(texts, prompt=prompt_for(model, dev)),
                               atol=1e-4)


# -- what the proof checks, and what serving engines read ------------------------------------------


@pytest.mark.parametrize("pooling", ["mean", "eos_token", "bos_token"])
def test_pooling_config_is_read_alike_by_stock_st_tei_and_llama_cpp(tiny_llm, tmp_path, pooling):
    """TEI reads only ``1_Pooling/config.json`` and only the pre-6 booleans; llama.cpp's converter finds the
    Pooling entry in modules.json and reads the booleans first; stock ST 6 reads ``pooling_mode``."""
    from sentence_transformers.sentence_transformer.modules import Pooling

    model = st_llm2vec.from_llm(str(tiny_llm("llama")), pooling_mode=pooling, prompts={"query": QUERY})
    model.save(str(tmp_path / "m"))
    assert model.save_report["format"] == "portable"
    stock_mode = {"mean": "mean", "eos_token": "lasttoken", "bos_token": "cls"}[pooling]
    # TEI (router/src/lib.rs): the four booleans must parse; cls, then mean, decide
    tei = json.loads((tmp_path / "m" / "1_Pooling" / "config.json").read_text())
    for key in ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
                "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_lasttoken"):
        assert isinstance(tei[key], bool)
    tei_pool = "cls" if tei["pooling_mode_cls_token"] else "mean" if tei["pooling_mode_mean_tokens"] else "lasttoken" \
        if tei["pooling_mode_lasttoken"] else None
    assert tei_pool == stock_mode
    # llama.cpp (conversion/base.py _try_set_pooling_type): the first modules.json type ending in "Pooling"
    modules = json.loads((tmp_path / "m" / "modules.json").read_text())
    entry = next(m for m in modules if m["type"].endswith("Pooling"))
    config = json.loads((tmp_path / "m" / entry["path"] / "config.json").read_text())
    llama_cpp = next(mode for key, mode in (("pooling_mode_mean_tokens", "mean"), ("pooling_mode_cls_token", "cls"),
                                              ("pooling_mode_lasttoken", "lasttoken")) if config.get(key))
    assert llama_cpp == stock_mode
    # stock ST 6: the 6.x keys win, the booleans are dropped
    loaded = Pooling.load(str(tmp_path / "m" / entry["path"]))
    assert loaded.pooling_mode == stock_mode and loaded.include_prompt is (pooling != "mean")


@pytest.mark.numerics
def test_a_bfloat16_model_is_saved_portable_with_the_proofs_figures_in_its_card(tiny_llm, tmp_path):
    """bf16 padding changes results by more than float32 bounds: the proof compares batch for batch."""
    model = st_llm2vec.from_llm(str(tiny_llm("llama")), dtype="bfloat16", prompts={"query": QUERY}, format="portable")
    model.save(str(tmp_path / "bf16"))
    proof = model.save_report["proof"]
    assert proof["dtype"] == "bfloat16" and proof["min_cosine"] >= proof["min_cosine_bound"] == 0.999
    card = (tmp_path / "bf16" / "README.md").read_text()
    assert f"{proof['min_cosine']:.7f}" in card and "bfloat16" in card


def _refused_save(model, tmp_path, match):
    with pytest.raises(PortableFormatError, match=match):
        model.save(str(tmp_path / "refused"))
    assert not (tmp_path / "refused" / "modules.json").exists()


def test_the_proof_refuses_a_dir_whose_stock_pooling_differs(tiny_llm, tmp_path, monkeypatch):
    import dataclasses

    from st_llm2vec import pooling_modes as modes

    model = st_llm2vec.from_llm(str(tiny_llm("llama")), format="portable")
    monkeypatch.setitem(modes.MODES, "mean", dataclasses.replace(modes.MODES["mean"], stock="max"))
    _refused_save(model, tmp_path, "other embeddings")


def test_the_proof_refuses_a_dir_whose_stored_prompt_differs(tiny_llm, tmp_path, monkeypatch):
    model = st_llm2vec.from_llm(str(tiny_llm("llama")), prompts={"query": QUERY}, format="portable")
    real = model._get_model_config
    monkeypatch.setattr(model, "_get_model_config", lambda: {**real(), "prompts": {"query": "Something else: "}})
    _refused_save(model, tmp_path, "tokenizes with the prompt 'query' otherwise")


def test_the_proof_refuses_a_dir_whose_tokenizer_differs(tiny_llm, tmp_path, monkeypatch):
    """eos_token pooling needs the EOS suffix that the saved tokenizer's post-processor appends."""
    from st_llm2vec import portable_save as portable

    model = st_llm2vec.from_llm(str(tiny_llm("llama")), pooling_mode="eos_token", format="portable")
    write = portable._write_module_dirs

    def without_suffix(model, directory):
        entries = write(model, directory)
        data = json.loads((directory / "tokenizer.json").read_text())
        data["post_processor"] = None
        (directory / "tokenizer.json").write_text(json.dumps(data))
        return entries

    monkeypatch.setattr(portable, "_write_module_dirs", without_suffix)
    _refused_save(model, tmp_path, "tokenizes documents otherwise")


@needs_fixtures
def test_portable_queries_equal_llm2vecs_on_the_fixtures(tmp_path):
    """Instructions are left out of the mean in the portable format, as llm2vec leaves them out."""
    from st_llm2vec.instructions import stored_prompt

    for arch in ("llama", "mistral", "gemma"):
        out = _convert_fixture(arch, "mean", tmp_path / arch)
        assert convert.last_report["format"] == "portable"
        model = SentenceTransformer(str(out), device="cpu")
        pairs = [(i, t) for i, t in _inputs(arch)["pairs"] if i]
        expected = _expected(arch, "base+mntp+supervised__mean")[[k for k, (i, _) in enumerate(_inputs(arch)["pairs"]) if i]]
        got = np.stack([model.encode([text], prompt=stored_prompt(instruction))[0] for instruction, text in pairs])
        cosine = (got * expected).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
        assert cosine.min() >= 0.9999, (arch, cosine.min())  # measured 0.9999999 (was 0.83 with include_prompt=True)


def test_cli_convert_prints_the_format_and_the_proof_it_read_from_the_stock_load(tiny_llm, tmp_path, capsys):
    from st_llm2vec import cli

    assert cli.main(["convert", str(tiny_llm("llama")), str(tmp_path / "c"), "--prompt", f"query={QUERY}"]) == 0
    out = capsys.readouterr().out
    assert "Format: portable" in out
    assert "Proof: loaded by stock sentence-transformers without st_llm2vec: bidirectional" in out and "per-text cosine" in out
