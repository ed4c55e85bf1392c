"""``st-llm2vec eval``'s speed work keeps its scores: the same scores as plain ``mteb.evaluate``, texts batched by
token length with each vector back in its caller's place, the precision recorded and kept apart, and the inputs
checked first (bad options before torch and mteb load, a missing model before any task data, a missing
matplotlib costing only the chart)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("mteb")

from conftest import REPO, save_stock_model  # noqa: E402
from st_llm2vec import cli, devdata  # noqa: E402
from st_llm2vec.eval import runner as run  # noqa: E402
from st_llm2vec.eval import tasks  # noqa: E402
from st_llm2vec.eval.cached_encoder import EvalEncoder  # noqa: E402
from st_llm2vec.eval.results import LoadSettings  # noqa: E402

SENTENCES = [
    "A man is playing a guitar on the street.", "Two dogs are running through a field of grass.",
    "The children are building a sand castle at the beach.", "A woman is slicing tomatoes in the kitchen.",
    "Nobody is riding the bicycle down the hill.", "The cat sleeps on a warm windowsill in the afternoon.",
    "Rain.", "A very long sentence about a dog that runs and runs through the grass of a field near a street.",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_llm):
    import st_llm2vec

    root = tmp_path_factory.mktemp("eval-speed")
    llm = tiny_llm("llama")
    st_llm2vec.from_llm(str(llm), max_seq_length=64).save(str(root / "ours"))
    return {"ours": root / "ours", "stock": save_stock_model(llm, root / "stock")}


def _tasks():
    pairs = [devdata.StsPair(SENTENCES[i], SENTENCES[(i + j) % 8], float(j)) for i in range(8) for j in (1, 3, 4)]
    samples = [tasks.RerankingSample(SENTENCES[i], (SENTENCES[(i + 1) % 8],),
                                     (SENTENCES[(i + 2) % 8], SENTENCES[(i + 5) % 8])) for i in range(6)]
    return [tasks.sts_task("pairs", pairs), tasks.reranking_task("rr", samples),
            tasks.reranking_task("rr-retrieval", samples, retrieval=True)]


@pytest.mark.parametrize("which", ["stock", "ours"])
def test_scores_through_our_eval_equal_plain_mteb_evaluate_of_the_same_model_dir(models, tmp_path, which):
    import mteb
    from sentence_transformers import SentenceTransformer

    ours = run.evaluate_models([str(models[which])], _tasks(),
                               run.EvalConfig(output_dir=tmp_path / "out", instructions="none", progress=False))
    plain = mteb.evaluate(SentenceTransformer(str(models[which])), _tasks(), cache=None, co2_tracker=False,
                          show_progress_bar=False, encode_kwargs={"batch_size": 32, "show_progress_bar": False})
    expected = {r.task_name: 100 * r.get_score() for r in plain.task_results}
    got = {s.task: s.value for s in ours.scores}
    assert set(got) == set(expected) == {"pairs", "rr", "rr-retrieval"}
    for name in expected:
        assert got[name] == pytest.approx(expected[name], abs=1e-3), name
    # no instruction: every side of every task gets the same (empty) prompt, so each of the 8 texts is encoded once
    assert ours.encoded == {which: len(SENTENCES)}


def test_sorted_batches_give_each_text_its_own_vector_in_the_callers_order(models):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(models["stock"]))
    encoder = EvalEncoder(model, None, {})
    texts = SENTENCES[::-1] + ["Short one.", "x"]
    calls: list[list[str]] = []

    def spy(batch, **kwargs):
        calls.append(list(batch))
        return model.encode(batch, **kwargs)

    got = encoder._encode_by_length(spy, texts, "", {"batch_size": 3, "show_progress_bar": False})
    expected = model.encode(texts, batch_size=64, convert_to_numpy=True)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    from st_llm2vec.length_batches import token_lengths

    lengths = dict(zip(texts, token_lengths(model, texts)))
    flat = [lengths[t] for batch in calls for t in batch]
    assert [len(b) for b in calls] == [3, 3, 3, 1] and flat == sorted(flat, reverse=True)  # longest first
    assert sorted(t for batch in calls for t in batch) == sorted(texts)  # each text once


def test_the_precision_is_recorded_and_its_results_and_embeddings_kept_apart_from_float32(models, tmp_path):
    pairs = _tasks()[:1]
    base = dict(output_dir=tmp_path / "out", instructions="none", progress=False)
    full = run.evaluate_models([str(models["ours"])], pairs, run.EvalConfig(**base))
    mixed = run.evaluate_models([str(models["ours"])], pairs,
                                run.EvalConfig(**base, load=LoadSettings(precision="bf16-mixed")))
    assert not mixed.scores[0].cached and mixed.encoded == full.encoded  # nothing served from float32's cache
    assert full.scores[0].instruction["precision"] == "float32" and full.scores[0].instruction["plan"] is None
    record = mixed.scores[0].instruction
    assert record["precision"] == "bf16-mixed" and "calibration texts" in record["plan"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["config"]["load"]["precision"] == "bf16-mixed" and summary["scores"][0]["instruction"]["plan"]
    assert "Precision: bf16-mixed" in (tmp_path / "out" / "summary.md").read_text()
    embeddings = sorted(p.name for p in (tmp_path / "out" / "embeddings").glob("*/*/*"))
    assert len(embeddings) == 2 and any("-plan-bfloat16-" in name for name in embeddings), embeddings
    again = run.evaluate_models([str(models["ours"])], pairs,
                                run.EvalConfig(**base, load=LoadSettings(precision="bf16-mixed")))
    assert again.scores[0].cached and again.scores[0].value == pytest.approx(mixed.scores[0].value, abs=1e-3)


@pytest.mark.parametrize("precision, message", [
    ("bf16-mixed", "is a stock Sentence Transformers model: evaluate it with --precision float32"),
    ("saved", "is a stock Sentence Transformers model"),
])
def test_a_precision_a_stock_model_cannot_take_is_refused_before_anything_loads(models, tmp_path, capsys, precision,
                                                                                message):
    code = cli.main(["eval", str(models["stock"]), "--tasks", "nope.tsv", "--precision", precision,
                     "--output", str(tmp_path / "out")], report_errors=True)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and message in err


def test_saved_precision_of_a_dir_without_a_plan_names_the_option_to_use(models, tmp_path, capsys):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("a\tb\t1\nc\td\t2\n")
    code = cli.main(["eval", str(models["ours"]), "--tasks", str(pairs), "--precision", "saved",
                     "--output", str(tmp_path / "out")], report_errors=True)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "carries no precision plan" in err and "--precision bf16-mixed" in err


def test_without_matplotlib_the_run_notes_the_missing_chart_and_writes_the_table(models, tmp_path, capsys,
                                                                                  monkeypatch):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{SENTENCES[i]}\t{SENTENCES[i + 1]}\t{i}\n" for i in range(6)))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    code = cli.main(["eval", str(models["stock"]), "--tasks", str(pairs), "--output", str(tmp_path / "out"),
                     "--no-progress", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "summary.png not drawn: matplotlib is missing" in notes[0]
    for name in ("summary.md", "summary.csv", "summary.json"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert not (tmp_path / "out" / "summary.png").exists()


def test_a_model_path_that_does_not_exist_is_named_before_any_task_complaint(tmp_path, capsys):
    code = cli.main(["eval", str(tmp_path / "no-such-model"), "--tasks", str(tmp_path / "no-such-pairs.tsv"),
                     "--output", str(tmp_path / "out")], report_errors=True)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "no-such-model" in err and "does not exist" in err
    assert "no-such-pairs" not in err


@pytest.mark.parametrize("options, message", [
    (["--threads", "abc"], "--threads must be a positive whole number or 'auto', got 'abc'"),
    (["--batch-size", "0"], "--batch-size must be a positive number"),
    (["--precision", "bf16-mixed", "--dtype", "bfloat16"], "cannot be combined with --dtype bfloat16"),
    ([], "does not exist"),  # the model path of this test
])
def test_bad_options_are_one_line_before_torch_or_mteb_is_imported(tmp_path, options, message):
    code = ("import json, sys\nfrom st_llm2vec import cli\n"
            f"argv = ['eval', {str(tmp_path / 'nope')!r}, '--tasks', 'sts12', *{options!r}]\n"
            "code = cli.main(argv, report_errors=True)\n"
            "print(json.dumps([code, 'torch' in sys.modules, 'mteb' in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    code_, torch_loaded, mteb_loaded = json.loads(done.stdout.strip().splitlines()[-1])
    err = done.stderr.strip()
    assert code_ == 2 and "\n" not in err and message in err, err
    assert not torch_loaded and not mteb_loaded


def test_a_missing_model_dir_that_could_be_a_hub_id_is_named_as_neither_before_any_task(tmp_path, capsys,
                                                                                         monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def not_cached(*args, **kwargs):
        raise LocalEntryNotFoundError("not cached")

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_cached)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    code = cli.main(["eval", "out/model", "--tasks", "no-such-pairs.tsv", "--output", "o"], report_errors=True)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "'out/model' is no directory here" in err and "no-such-pairs" not in err
