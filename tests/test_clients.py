"""Real embedding clients load a saved model with st_llm2vec NOT importable: LlamaIndex, LangChain, mteb.

``st_llm2vec.from_llm(..., pooling_mode="mean").save(out)`` writes a *portable* directory: stock
Sentence-Transformers modules only, ``is_causal: false`` in config.json, a text-only
``modality_config``. So stock ``SentenceTransformer(out)`` - and every client built on it - loads it
with no flag and runs it bidirectionally in a process that cannot import this package.

One subprocess (module-scoped, ~15 s, mostly imports) blocks ``import st_llm2vec`` with a
``sys.meta_path`` finder, sets the Hub/transformers/datasets offline switches, never passes
``trust_remote_code``, runs the stock model and the three clients, and prints JSON; each client has its
own test below, so a failure names the client. Needs the ``clients`` extra (part of ``test``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import st_llm2vec

from conftest import SENTENCES

TOL = 1e-4

# Distinct lengths, so batches are padded; no newlines (LangChain replaces "\n" by " ").
TEXTS = list(dict.fromkeys(SENTENCES))[:6] + ["a b", "A short one."]
QUERY = "Which animal sleeps on the windowsill?"
STS_ROWS = [
    ("A man is playing a guitar on the street.", "A man plays the guitar outside.", 4.8),
    ("Two dogs are running through a field of grass.", "A cat sleeps on a warm windowsill.", 0.4),
    ("The children are building a sand castle at the beach.", "Kids make a castle of sand on the beach.", 4.5),
    ("A woman is slicing tomatoes in the kitchen.", "A woman is cutting vegetables.", 3.6),
    ("Nobody is riding the bicycle down the hill.", "A man rides a bicycle down the hill.", 1.8),
    ("The cat sleeps on a warm windowsill in the afternoon.", "A cat is asleep in the sun.", 3.9),
    ("A man is playing a guitar on the street.", "The children are building a sand castle.", 0.2),
]

# Runs in the child. argv: model_dir, sts_dir, prediction_dir, texts/query JSON. Prints one JSON line.
_CHILD = textwrap.dedent(
    r'''
    import importlib.abc, sys

    class _BlockStLlm2Vec(importlib.abc.MetaPathFinder):
        """Before anything else: this process must not be able to import st_llm2vec."""
        attempts = []

        def find_spec(self, name, path=None, target=None):
            if name == "st_llm2vec" or name.startswith("st_llm2vec."):
                self.attempts.append(name)
                raise ImportError(f"st_llm2vec is blocked in this process ({name})")
            return None

    _blocker = _BlockStLlm2Vec()
    sys.meta_path.insert(0, _blocker)

    import json, math, os, traceback
    from pathlib import Path

    model_dir, sts_dir, prediction_dir, payload = sys.argv[1:5]
    payload = json.loads(payload)
    texts, query = payload["texts"], payload["query"]
    out = {}

    try:
        import st_llm2vec  # noqa: F401
        out["st_llm2vec_importable"] = True
    except ImportError:
        out["st_llm2vec_importable"] = False
    probe_attempts = len(_blocker.attempts)

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from sentence_transformers import SentenceTransformer

    def run(name, fn):
        try:
            out[name] = {"ok": True, **fn()}
        except Exception:
            out[name] = {"ok": False, "error": traceback.format_exc(limit=8)}

    def max_diff(a, b):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape != b.shape:
            return {"shape_mismatch": [list(a.shape), list(b.shape)]}
        return float(np.abs(a - b).max())

    def reference():
        # Stock ST, no flags: the ground truth every client is compared with (unnormalized).
        return SentenceTransformer(model_dir, device="cpu")

    def stock():
        root = Path(model_dir)
        modules = [m["type"] for m in json.loads((root / "modules.json").read_text())]
        config = json.loads((root / "config.json").read_text())
        st_config = json.loads((root / "sentence_bert_config.json").read_text())
        model = reference()

        def first_token(text):
            # The Transformer module's own output (later modules may reweight tokens: the portable
            # mean pooling gives BOS weight 0 via WordWeights). One text per call: no padding.
            with torch.no_grad():
                return model[0](model[0].preprocess([text]))["token_embeddings"][0, 0]

        a, b = first_token("a b c d"), first_token("a b c e")
        emb = model.encode(texts)
        return {
            "modules": modules,
            "config_is_causal": config.get("is_causal"),
            "modalities": sorted(st_config.get("modality_config", {})),
            "first_token_delta": float((a - b).abs().max()),
            "shape": list(emb.shape),
            "finite": bool(np.isfinite(emb).all()),
        }

    def llamaindex():
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding

        # normalize defaults to True in LlamaIndex: turn it off, the reference is unnormalized too.
        client = HuggingFaceEmbedding(model_name=model_dir, device="cpu", normalize=False)
        ref = reference()
        docs = client.get_text_embedding_batch(texts)
        q = client.get_query_embedding(query)
        return {
            "docs_max_diff": max_diff(docs, ref.encode(texts)),
            "query_max_diff": max_diff(q, ref.encode([query])[0]),
        }

    def langchain():
        # langchain-huggingface is the maintained package but every release pins huggingface_hub<2
        # (we have 2.x), so the clients extra installs langchain-community, whose
        # HuggingFaceEmbeddings is the same SentenceTransformer wrapper. Use whichever is installed.
        try:
            from langchain_huggingface import HuggingFaceEmbeddings
        except ImportError:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from langchain_community.embeddings import HuggingFaceEmbeddings

        # LangChain does not normalize unless asked; say so explicitly.
        client = HuggingFaceEmbeddings(model_name=model_dir, model_kwargs={"device": "cpu"},
                                       encode_kwargs={"normalize_embeddings": False})
        ref = reference()
        docs = client.embed_documents(texts)
        q = client.embed_query(query)
        return {
            "impl": HuggingFaceEmbeddings.__module__,
            "docs_max_diff": max_diff(docs, ref.encode(texts)),
            "query_max_diff": max_diff(q, ref.encode([query])[0]),
        }

    def mteb_sts():
        import mteb
        from mteb.abstasks.sts import AbsTaskSTS
        from mteb.abstasks.task_metadata import TaskMetadata

        class LocalTinySTS(AbsTaskSTS):
            # mteb loads it with datasets.load_dataset(path=<local dir>, revision=...): the dir's
            # test.jsonl becomes the "test" split; no Hub access (and offline mode is on).
            min_score = 0
            max_score = 5
            metadata = TaskMetadata(
                name="LocalTinySTS",
                dataset={"path": sts_dir, "revision": "local"},
                description="Seven scored sentence pairs written by the test.",
                type="STS", category="t2t", modalities=["text"], eval_splits=["test"],
                eval_langs=["eng-Latn"], main_score="cosine_spearman",
            )

        model = reference()
        result = mteb.evaluate(model, [LocalTinySTS()], cache=None, overwrite_strategy="always",
                               show_progress_bar=False, prediction_folder=prediction_dir)
        (task_result,) = result.task_results
        (scores,) = task_result.scores["test"]
        predictions = json.loads(next(Path(prediction_dir).glob("LocalTinySTS*.json")).read_text())
        predicted = predictions["default"]["test"]["cosine_scores"]
        rows = [json.loads(line) for line in Path(sts_dir, "test.jsonl").read_text().splitlines()]
        e1 = model.encode([r["sentence1"] for r in rows])
        e2 = model.encode([r["sentence2"] for r in rows])
        cos = (e1 * e2).sum(1) / (np.linalg.norm(e1, axis=1) * np.linalg.norm(e2, axis=1))
        return {
            "task_name": task_result.task_name,
            "main_score": scores["main_score"],
            "n_pairs": len(predicted),
            "cos_max_diff": max_diff(predicted, cos),
            "exceptions": [str(e) for e in (result.exceptions or [])],
        }

    run("stock", stock)
    run("llamaindex", llamaindex)
    run("langchain", langchain)
    run("mteb", mteb_sts)
    out["st_llm2vec_import_attempts"] = _blocker.attempts[probe_attempts:]
    out["st_llm2vec_in_sys_modules"] = "st_llm2vec" in sys.modules
    print("CLIENT_RESULTS " + json.dumps(out))
    '''
)


def run_clients(model_dir: Path, work: Path) -> dict:
    """Run the child on ``model_dir``; return its JSON results."""
    work.mkdir(parents=True, exist_ok=True)
    sts = work / "sts"
    sts.mkdir(exist_ok=True)
    (sts / "test.jsonl").write_text(
        "".join(json.dumps({"sentence1": a, "sentence2": b, "score": s}) + "\n" for a, b, s in STS_ROWS)
    )
    (work / "pred").mkdir(exist_ok=True)
    script = work / "child.py"
    script.write_text(_CHILD)
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
        HF_HOME=str(work / "hf_home"), MTEB_CACHE=str(work / "mteb_cache"),
        LLAMA_INDEX_CACHE_DIR=str(work / "llama_index_cache"),
        OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
    )
    payload = json.dumps({"texts": TEXTS, "query": QUERY})
    proc = subprocess.run(
        [sys.executable, str(script), str(model_dir), str(sts), str(work / "pred"), payload],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("CLIENT_RESULTS ")]
    if proc.returncode != 0 or not lines:
        raise AssertionError(
            f"client subprocess failed (rc={proc.returncode}); are the clients installed "
            f"(pip install -e '.[test]')?\n{proc.stderr[-4000:]}"
        )
    return json.loads(lines[-1][len("CLIENT_RESULTS "):])


@pytest.fixture(scope="module")
def portable_dir(tiny_llm, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("portable") / "model"
    st_llm2vec.from_llm(str(tiny_llm("llama")), pooling_mode="mean").save(str(out))
    return out


@pytest.fixture(scope="module")
def client_results(portable_dir, tmp_path_factory) -> dict:
    return run_clients(portable_dir, tmp_path_factory.mktemp("clients"))


def _ok(results: dict, name: str) -> dict:
    part = results[name]
    assert part["ok"], f"{name} failed in a process without st_llm2vec:\n{part['error']}"
    assert results["st_llm2vec_import_attempts"] == [], results["st_llm2vec_import_attempts"]
    assert not results["st_llm2vec_in_sys_modules"]
    return part


def _close(value, what: str) -> None:
    assert isinstance(value, float), f"{what}: {value}"
    assert value <= TOL, f"{what}: max |difference| {value:.3g} > {TOL}"


def test_stock_sentence_transformers_loads_it_bidirectional(client_results):
    assert client_results["st_llm2vec_importable"] is False, "the child could import st_llm2vec"
    stock = _ok(client_results, "stock")
    assert stock["modules"] and all(t.startswith("sentence_transformers.") for t in stock["modules"]), stock["modules"]
    assert stock["config_is_causal"] is False
    assert stock["modalities"] == ["text"]
    assert stock["shape"] == [len(TEXTS), 32] and stock["finite"]
    # Bidirectional: changing the last word moves the first token's state (a causal model: exactly 0).
    delta = stock["first_token_delta"]
    assert delta > 1e-4, f"runs causally under stock ST: last word changed, first token moved by {delta:.3g}"


def test_llamaindex_huggingface_embedding(client_results):
    part = _ok(client_results, "llamaindex")
    _close(part["docs_max_diff"], "LlamaIndex get_text_embedding_batch vs SentenceTransformer.encode")
    _close(part["query_max_diff"], "LlamaIndex get_query_embedding vs SentenceTransformer.encode")


def test_langchain_huggingface_embeddings(client_results):
    part = _ok(client_results, "langchain")
    _close(part["docs_max_diff"], f"LangChain ({part['impl']}) embed_documents vs SentenceTransformer.encode")
    _close(part["query_max_diff"], f"LangChain ({part['impl']}) embed_query vs SentenceTransformer.encode")


def test_mteb_evaluate_local_sts(client_results):
    part = _ok(client_results, "mteb")
    assert part["task_name"] == "LocalTinySTS" and not part["exceptions"], part
    assert part["n_pairs"] == len(STS_ROWS)
    assert math.isfinite(part["main_score"]) and -1.0 <= part["main_score"] <= 1.0, part["main_score"]
    _close(part["cos_max_diff"], "mteb's cosine scores vs cosine of SentenceTransformer.encode")
