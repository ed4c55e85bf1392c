"""st_llm2vec/export/onnx.py (`st-llm2vec export`): a portable dir plus a proven ONNX graph (bidirectional, position ids from the mask),
fp32 and int8; refused below the cosine threshold; clear errors without the extra or for non-portable dirs."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import st_llm2vec
from st_llm2vec.cli import main

HAS_ONNX = all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason='the onnx extra is not installed: pip install -e ".[onnx]"')
QUERY = "Retrieve semantically similar text:"
TEXTS = ["A man is playing a guitar on the street.", "Two dogs run.", "The cat sleeps on a warm windowsill."]


@pytest.fixture(scope="module")
def portable(tiny_llm, tmp_path_factory):
    model = st_llm2vec.from_llm(str(tiny_llm("llama")), prompts={"query": QUERY})
    path = tmp_path_factory.mktemp("onnx") / "portable"
    model.save(str(path))
    return path


@pytest.fixture(scope="module")
def exported(portable):
    out = portable.parent / "fp32"
    assert main(["export", str(portable), str(out)]) == 0
    return out


def _session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path / "onnx" / "model.onnx"), options, providers=["CPUExecutionProvider"])


def _tokenize(path, texts, side="right"):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    tokenizer.padding_side = side
    enc = tokenizer(texts, padding=True, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}


@needs_onnx
def test_export_writes_the_portable_dir_plus_a_proven_graph_fed_only_what_st_feeds(portable, exported):
    assert (exported / "model.safetensors").is_file() and (exported / "modules.json").is_file()
    session = _session(exported)
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]  # no position_ids input
    assert [o.name for o in session.get_outputs()] == ["last_hidden_state"]
    report = json.loads((exported / "onnx" / "export_report.json").read_text())
    proof = report["proof"]
    assert proof["finite"] and proof["min_cosine"] > 0.99999 and proof["prompts"] == ["query"]
    assert proof["first_token_shift"] > 1e-3 and abs(proof["first_token_shift"] - proof["torch_first_token_shift"]) < 1e-4
    card = (exported / "README.md").read_text()
    assert "## ONNX export" in card and f"{proof['min_cosine']:.6f}" in card and "optimum" in card


@needs_onnx
def test_the_graph_is_bidirectional_and_takes_positions_from_the_mask_whatever_the_padding_side(exported):
    session = _session(exported)
    probe = _tokenize(exported, ["The quick brown fox jumps over the lazy dog", "The quick brown fox jumps over the lazy cat"])
    hidden = session.run(None, probe)[0]
    assert np.isfinite(hidden).all()
    assert np.linalg.norm(hidden[0, 1] - hidden[1, 1]) / np.linalg.norm(hidden[0, 1]) > 1e-3  # token 1 sees the end

    texts = ["A much longer sentence than the others, to force padding.", "x", "The cat sleeps."]
    alone = [session.run(None, _tokenize(exported, [t]))[0][0] for t in texts]
    for side in ("right", "left"):
        feeds = _tokenize(exported, texts, side)
        batch = session.run(None, feeds)[0]
        for row, single in enumerate(alone):
            real = feeds["attention_mask"][row].astype(bool)
            np.testing.assert_allclose(batch[row][real], single, atol=1e-5)


@needs_onnx
def test_load_onnx_gives_the_stock_torch_embeddings(portable, exported):
    from sentence_transformers import SentenceTransformer

    from st_llm2vec.export.onnx import load_onnx

    reference = SentenceTransformer(str(portable), device="cpu")
    model = load_onnx(exported, threads=1)
    assert type(model[0].model).__name__ == "OnnxBackbone"
    np.testing.assert_allclose(model.encode(TEXTS), reference.encode(TEXTS), atol=1e-5)
    np.testing.assert_allclose(model.encode(TEXTS, prompt_name="query"), reference.encode(TEXTS, prompt_name="query"),
                               atol=1e-5)


@needs_onnx
def test_int8_export_is_quantized_proven_and_reports_its_cosine(portable):
    import onnx

    out = portable.parent / "int8"
    assert main(["export", str(portable), str(out), "--quantize", "int8"]) == 0
    report = json.loads((out / "onnx" / "export_report.json").read_text())
    assert report["quantize"] == "int8" and report["proof"]["finite"]
    assert report["proof"]["min_cosine"] >= 0.99 and report["proof"]["first_token_shift"] > 1e-3
    ops = {node.op_type for node in onnx.load(str(out / "onnx" / "model.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    assert "dynamic int8" in (out / "README.md").read_text()


@needs_onnx
def test_an_export_below_the_cosine_threshold_is_refused_unless_forced(portable, capsys):
    out = portable.parent / "refused"
    # int8 moves every vector a little, so a threshold of exactly 1 (the highest --min-cosine accepts) fails
    strict = ["--quantize", "int8", "--min-cosine", "1"]
    assert main(["export", str(portable), str(out), *strict], report_errors=True) == 2
    assert re.search(r"failed its proof: min cosine vs the fp32 torch model is 0\.9\d+ < 1\.0",
                     capsys.readouterr().err)
    assert not out.exists() and not [p for p in portable.parent.iterdir() if p.name.startswith(".refused")]
    assert main(["export", str(portable), str(out), *strict, "--force"]) == 0
    assert json.loads((out / "onnx" / "export_report.json").read_text())["forced"] is True


@needs_onnx
def test_non_portable_dirs_and_openvino_get_a_clear_error(tiny_llm, tmp_path, capsys):
    exact = tmp_path / "exact"
    st_llm2vec.from_llm(str(tiny_llm("llama")), format="exact").save(str(exact))
    assert main(["export", str(exact), str(tmp_path / "out")], report_errors=True) == 2
    assert "is not in the portable format" in capsys.readouterr().err
    assert main(["export", str(exact), str(tmp_path / "out"), "--backend", "openvino"], report_errors=True) == 2
    assert "optimum-intel, whose releases cap transformers < 5.6" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_without_the_onnx_extra_export_says_how_to_install_it(tmp_path):
    """Runs whether or not the extra is installed: onnx/onnxruntime are blocked in the subprocess."""
    (tmp_path / "modules.json").write_text("[]")
    script = (
        "import sys\n"
        "sys.modules.update(onnx=None, onnxruntime=None)  # `import onnx` now fails as if not installed\n"
        "from st_llm2vec.cli import main\n"
        "sys.exit(main())\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, "export", str(tmp_path), str(tmp_path / "out")],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    assert 'pip install -e ".[onnx]"' in proc.stderr and "Traceback" not in proc.stderr


@needs_onnx
def test_stock_sentence_transformers_onnx_backend_loads_the_export_once_optimum_supports_transformers_5(exported):
    """Skipped while no Optimum release imports on transformers 5 (optimum-onnx 0.1.0: transformers<4.58)."""
    try:
        from optimum.onnxruntime import ONNX_WEIGHTS_NAME, ORTModelForFeatureExtraction  # noqa: F401  (what ST imports)
    except Exception as exc:  # ModuleNotFoundError, or ImportError of optimum-onnx on transformers 5
        pytest.skip(f"stock backend='onnx' unavailable: optimum.onnxruntime does not import ({type(exc).__name__}: {exc})")
    script = (
        "import sys, json\n"
        "class B:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'st_llm2vec': raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, B())\n"
        "from sentence_transformers import SentenceTransformer\n"
        f"m = SentenceTransformer({str(exported)!r}, backend='onnx')\n"
        f"print('EMB' + json.dumps(m.encode({TEXTS!r}).tolist()))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("EMB"))
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(exported), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(np.array(json.loads(line[3:])), reference, atol=1e-5)
