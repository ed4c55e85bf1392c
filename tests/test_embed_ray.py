"""st-llm2vec embed --engine ray: the same shards, manifest and vectors as the local engine and ``encode``, with 1
and 2 workers on a local Ray (2 CPUs, started once for this module), and kill -9 then resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embed_models import assert_same_vectors, corpus_rows, kill_after, portable_dir, read_out, reference, run, write_jsonl

ray = pytest.importorskip("ray")

ROWS = corpus_rows(48, seed=1)


@pytest.fixture(scope="module")
def cluster():
    """A local Ray with 2 CPUs for every test here (and for the killed subprocess, through --ray-address)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def portable(tmp_path_factory) -> Path:
    return portable_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("ray-corpus") / "corpus.jsonl", ROWS)


@pytest.fixture(scope="module")
def local_out(portable, corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    run(portable, corpus, out, rows_per_shard=12)
    return out


def test_ray_engine_with_one_worker_writes_the_local_engines_shards_and_encodes_vectors(cluster, portable, corpus,
                                                                                         local_out, tmp_path):
    report = run(portable, corpus, tmp_path / "out", rows_per_shard=12, engine="ray", workers=1, threads=1)
    assert report.embedded == 48
    ids, vectors = read_out(tmp_path / "out")
    local_ids, local = read_out(local_out)
    assert ids == local_ids and len(set(ids)) == 48  # the same plan: shard by shard, row by row
    # Bit for bit at the same threads: the actor gets each shard whole, so it runs the local engine's batches (Ray
    # Data splitting the shards into pieces gave other batches, hence other rounding).
    assert np.array_equal(vectors, local)
    texts = {r["id"]: r["text"] for r in ROWS}
    assert_same_vectors(vectors, reference(portable, [texts[i] for i in ids]))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["engine"] == {"name": "ray", "workers": 1, "threads": 1, "gpus_per_worker": 0.0, "address": None}
    assert {s["engine"] for s in manifest["shards"]} == {"ray"} and manifest["complete"]


def test_ray_job_killed_after_its_first_shard_resumes_on_two_workers_with_only_the_missing_shards(
        cluster, portable, corpus, local_out, tmp_path):
    out = tmp_path / "out"
    printed = kill_after("committed:1", [str(portable), str(corpus), str(out), "--rows-per-shard", "12", "--engine",
                                          "ray", "--workers", "1", "--threads", "1", "--ray-address", cluster], tmp_path)
    assert printed == []  # Ray kept quiet
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["shards"]) == 1 and not manifest["complete"]
    done = manifest["shards"][0]
    report = run(portable, corpus, out, engine="ray", workers=2, threads=2)
    assert report.mode == "resume" and report.embedded == 48 - 12
    manifest = json.loads((out / "manifest.json").read_text())
    assert {s["index"]: s for s in manifest["shards"]}[done["index"]] == done  # kept as it was
    assert manifest["engine"]["workers"] == 2 and manifest["complete"]
    ids, vectors = read_out(out)
    local_ids, local = read_out(local_out)
    assert ids == local_ids and len(set(ids)) == 48
    assert_same_vectors(vectors, local)
    texts = {r["id"]: r["text"] for r in ROWS}
    assert_same_vectors(vectors, reference(portable, [texts[i] for i in ids]))
