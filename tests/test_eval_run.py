"""``st-llm2vec eval`` end to end on tiny random models: one table for ours and a stock ST model, results and chart
written, reruns that load and encode nothing, resuming, the embedding cache across tasks, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("mteb")

from st_llm2vec import cli  # noqa: E402
from st_llm2vec.errors import OutputExistsError  # noqa: E402
from st_llm2vec.eval import instructions, tasks  # noqa: E402
from st_llm2vec.eval import models as encoders  # noqa: E402
from st_llm2vec.eval import runner as run  # noqa: E402
from st_llm2vec.eval.results import LoadSettings  # noqa: E402
from st_llm2vec.instructions import stored_prompt  # noqa: E402

from conftest import save_stock_model  # noqa: E402

SENTENCES = [
    "A man is playing a guitar on the street.", "Two dogs are running through a field of grass.",
    "The children are building a sand castle at the beach.", "A woman is slicing tomatoes in the kitchen.",
    "Nobody is riding the bicycle down the hill.", "The cat sleeps on a warm windowsill in the afternoon.",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_llm):
    """Our portable dir, a stock ST dir (Transformer + mean Pooling, not written by st-llm2vec) and a causal LM dir."""
    import st_llm2vec

    root = tmp_path_factory.mktemp("eval-models")
    llm = tiny_llm("llama")
    st_llm2vec.from_llm(str(llm), max_seq_length=64).save(str(root / "ours"))
    return {"ours": root / "ours", "stock": save_stock_model(llm, root / "stock"), "llm": llm}


@pytest.fixture
def data(tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{SENTENCES[i]}\t{SENTENCES[(i + j) % 6]}\t{j}\n" for i in range(6) for j in (1, 3)))
    rerank = tmp_path / "rerank.jsonl"
    rerank.write_text("".join(json.dumps({"query": SENTENCES[i], "positive": [SENTENCES[(i + 1) % 6]],
                                          "negative": [SENTENCES[(i + 2) % 6], SENTENCES[(i + 3) % 6]]}) + "\n"
                              for i in range(4)))
    return {"pairs": pairs, "rerank": rerank}


def config(tmp_path, **kwargs) -> run.EvalConfig:
    return run.EvalConfig(output_dir=tmp_path / "out", progress=False, **kwargs)


def test_ours_and_a_stock_model_give_one_table_mteb_result_files_a_summary_and_a_chart(models, data, tmp_path, capsys):
    code = cli.main(["eval", str(models["ours"]), str(models["stock"]), "--tasks", str(data["pairs"]),
                     str(data["rerank"]), "--output", str(tmp_path / "out"), "--no-progress", "--threads", "1"])
    assert code == 0
    captured = capsys.readouterr()
    assert "it/s]" not in captured.err and "Loading weights" not in captured.err  # --no-progress: no bar at all
    table = captured.out.splitlines()
    assert table[0].split() == ["model", "pairs", "rerank", "mean"]
    assert [line.split()[0] for line in table[2:4]] == ["ours", "stock"]
    out = tmp_path / "out"
    for name in ("summary.md", "summary.csv", "summary.json", "summary.png"):
        assert (out / name).stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["scores"]) == 4 and {s["model"] for s in summary["scores"]} == {"ours", "stock"}
    for model in ("ours", "stock"):  # mteb's own result files, one per task, under the model's revision
        files = sorted(p.name for p in (out / "results" / model).rglob("*.json"))
        assert {"pairs.json", "rerank.json", "model_meta.json", run.MARKER} <= set(files)
    assert "Retrieve semantically similar text:" in (out / "summary.md").read_text()


def test_a_rerun_loads_no_model_encodes_nothing_and_gives_the_same_scores(models, data, tmp_path, monkeypatch):
    first = run.evaluate_models([str(models["ours"])], [str(data["pairs"]), str(data["rerank"])], config(tmp_path))
    monkeypatch.setattr(run, "load", lambda *a, **k: pytest.fail("a model was loaded although every task is cached"))
    second = run.evaluate_models([str(models["ours"])], [str(data["pairs"]), str(data["rerank"])], config(tmp_path))
    assert [s.cached for s in second.scores] == [True, True] and second.encoded == {}
    assert [round(s.value, 3) for s in second.scores] == [round(s.value, 3) for s in first.scores]


def test_a_second_task_over_the_same_texts_and_a_rerun_after_overwrite_encode_nothing_again(models, tmp_path):
    samples = [tasks.RerankingSample(SENTENCES[i], (SENTENCES[(i + 1) % 6],), (SENTENCES[(i + 2) % 6],))
               for i in range(4)]
    pair = [tasks.reranking_task("rr", samples), tasks.reranking_task("rr-retrieval", samples, retrieval=True)]
    first = run.evaluate_models([str(models["ours"])], pair, config(tmp_path))
    # 4 queries (with the query instruction) + the 5 distinct candidate texts (no prompt), each once for both tasks
    assert first.encoded == {"ours": 4 + 5}
    again = run.evaluate_models([str(models["ours"])], pair, config(tmp_path, overwrite=True))
    assert again.encoded == {"ours": 0} and not any(s.cached for s in again.scores)


def test_an_interrupted_run_resumes_with_the_tasks_it_had_not_finished(models, data, tmp_path, monkeypatch):
    real, calls = run._run_task, []

    def interrupted(encoder, task, *args):
        calls.append(task.metadata.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(encoder, task, *args)

    monkeypatch.setattr(run, "_run_task", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run.evaluate_models([str(models["ours"])], [str(data["pairs"]), str(data["rerank"])], config(tmp_path))
    monkeypatch.setattr(run, "_run_task", real)
    resumed = run.evaluate_models([str(models["ours"])], [str(data["pairs"]), str(data["rerank"])], config(tmp_path))
    assert [(s.task, s.cached) for s in resumed.scores] == [("pairs", True), ("rerank", False)]


def test_each_task_gets_its_instruction_as_the_models_prompt_and_the_results_say_which(models, data, tmp_path):
    result = run.evaluate_models([str(models["ours"])], [str(data["pairs"]), str(data["rerank"])], config(tmp_path))
    by_task = {s.task: s.instruction for s in result.scores}
    assert by_task["pairs"]["prompts"] == {"text": stored_prompt(instructions.STS_INSTRUCTION)}
    assert by_task["rerank"]["prompts"] == {"query": stored_prompt(instructions.RETRIEVAL_INSTRUCTION), "document": ""}
    plain = run.evaluate_models([str(models["ours"])], [str(data["pairs"])], config(tmp_path, instructions="none"))
    assert plain.scores[0].instruction["prompts"] == {"text": ""} and not plain.scores[0].cached


def test_the_model_prompts_mteb_would_use_apply_where_the_table_has_none(models, data, tmp_path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(models["stock"]))
    model.prompts = {"query": "query: ", "document": "passage: "}
    items = {t.metadata.name: instructions.task_instruction(t) for t in tasks.resolve_tasks([str(data["rerank"])])}
    assert encoders.prompts_for(model, items, instructions.MODEL) == {"query": "query: ", "document": "passage: "}
    merged = encoders.prompts_for(model, items, instructions.LLM2VEC)
    assert merged["rerank-query"] == stored_prompt(instructions.RETRIEVAL_INSTRUCTION) and merged["document"] == "passage: "


def test_results_for_other_data_under_the_same_task_name_are_refused_unless_overwrite(models, data, tmp_path):
    run.evaluate_models([str(models["ours"])], [str(data["pairs"])], config(tmp_path))
    data["pairs"].write_text(data["pairs"].read_text().replace("\t3\n", "\t2\n"))
    with pytest.raises(OutputExistsError, match="for other data .* pass --overwrite"):
        run.evaluate_models([str(models["ours"])], [str(data["pairs"])], config(tmp_path))
    redone = run.evaluate_models([str(models["ours"])], [str(data["pairs"])], config(tmp_path, overwrite=True))
    assert not redone.scores[0].cached


def test_an_output_dir_that_st_llm2vec_eval_did_not_write_is_refused(models, data, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="was not written by st-llm2vec eval"):
        run.evaluate_models([str(models["ours"])], [str(data["pairs"])], config(tmp_path))


def test_a_decoder_llm_checkpoint_is_evaluated_as_the_causal_baseline_and_the_quick_start_scores_it_alike(
        models, data, tmp_path):
    from st_llm2vec import from_llm
    from st_llm2vec.eval.scores import evaluate

    source = encoders.resolve_model(str(models["llm"]))
    assert source.llm and source.label == f"{models['llm'].name} (causal LM)"
    loaded = encoders.load(source, encoders.LoadSettings())
    assert not loaded[0].bidirectional
    result = run.evaluate_models([str(models["llm"])], [str(data["pairs"])], config(tmp_path))
    # the quick start's "causal baseline" row: from_llm(..., bidirectional=False), scored in memory
    baseline = from_llm(str(models["llm"]), bidirectional=False)
    expected = evaluate(baseline, tasks.resolve_tasks([str(data["pairs"])]), instruction=instructions.STS_INSTRUCTION,
                        progress=False)
    assert abs(result.scores[0].value - expected["pairs"]) <= 1e-4


@pytest.mark.parametrize("config_json", [None, {"architectures": ["BertForSequenceClassification"]}])
def test_a_dir_that_is_no_embedding_model_nor_decoder_llm_is_refused_in_one_line(models, data, tmp_path, capsys,
                                                                                   config_json):
    bad = tmp_path / "bad"
    bad.mkdir()
    if config_json is not None:
        (bad / "config.json").write_text(json.dumps(config_json))
    code = cli.main(["eval", str(bad), "--tasks", str(data["pairs"]), "--output", str(tmp_path / "out")],
                    report_errors=True)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "has no modules.json" in err
    assert ("BertForSequenceClassification" in err) == (config_json is not None)
    assert not (tmp_path / "out").exists()


def test_dirs_st_llm2vec_wrote_load_with_our_encoder_and_a_causal_baseline_stays_causal(models, tmp_path):
    import shutil

    from st_llm2vec.encoder import LLM2VecTransformer

    # what from_llm(..., bidirectional=False).save() writes differs from a bidirectional save in these two flags
    shutil.copytree(models["ours"], tmp_path / "causal")
    config = json.loads((tmp_path / "causal" / "config.json").read_text())
    assert config["is_causal"] is False
    config.update(is_causal=True, use_bidirectional_attention=False)
    (tmp_path / "causal" / "config.json").write_text(json.dumps(config))
    ours, causal, stock = (encoders.resolve_model(str(p)) for p in (models["ours"], tmp_path / "causal", models["stock"]))
    assert ours.ours and causal.ours and not stock.ours
    loaded = encoders.load(causal, encoders.LoadSettings())
    assert isinstance(loaded[0], LLM2VecTransformer) and not loaded[0].bidirectional
    assert type(encoders.load(stock, encoders.LoadSettings())[0]).__name__ == "Transformer"


def test_a_task_whose_data_is_not_cached_offline_says_in_one_line_how_to_get_it(models, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "st_llm2vec.cli", "eval", str(models["ours"]), "--tasks", "STS12",
                           "--output", str(tmp_path / "out"), "--no-progress", "--threads", "1"],
                          capture_output=True, text=True, env=env, timeout=300)
    err = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2, done.stderr
    assert "STS12" in err and "not in the Hugging Face cache" in err and "mteb.get_task('STS12').load_data()" in err


def test_a_dir_with_a_generic_name_is_labelled_with_its_parent(models, tmp_path):
    import shutil

    bundled = tmp_path / "some_package" / "model"  # how pip packages bundling a model lay it out
    shutil.copytree(models["stock"], bundled)
    assert encoders.resolve_model(str(bundled)).label == "some_package/model"
    assert encoders.resolve_model(str(models["stock"])).label == "stock"



def test_dim_scores_embeddings_cut_as_stock_truncate_dim_cuts_them_and_keeps_their_results_apart(models, data, tmp_path):
    import numpy as np
    from scipy.stats import spearmanr
    from sentence_transformers import SentenceTransformer

    from st_llm2vec.errors import InputError

    rows = [line.split("\t") for line in data["pairs"].read_text().splitlines()]
    settings = dict(instructions="none")
    full = run.evaluate_models([str(models["stock"])], [str(data["pairs"])], config(tmp_path, **settings))
    cut = run.evaluate_models([str(models["stock"])], [str(data["pairs"])],
                              config(tmp_path, load=LoadSettings(truncate_dim=8), **settings))
    assert not cut.scores[0].cached  # another experiment than the full-size run: its own results and embeddings
    stock = SentenceTransformer(str(models["stock"]), truncate_dim=8)
    a, b = (stock.encode([r[k] for r in rows], normalize_embeddings=True) for k in (0, 1))
    assert a.shape[1] == 8
    expected = 100 * spearmanr(np.sum(a * b, axis=1), [float(r[2]) for r in rows]).statistic
    assert cut.scores[0].value == pytest.approx(expected, abs=1e-6)
    assert full.scores[0].value != pytest.approx(expected, abs=1e-3)
    again = run.evaluate_models([str(models["stock"])], [str(data["pairs"])],
                                config(tmp_path, load=LoadSettings(truncate_dim=8), **settings))
    assert again.scores[0].cached and again.scores[0].value == pytest.approx(cut.scores[0].value, abs=1e-3)
    with pytest.raises(InputError, match="--dim 999 is more than the 32 dimensions"):
        run.evaluate_models([str(models["stock"])], [str(data["pairs"])],
                            config(tmp_path, load=LoadSettings(truncate_dim=999), **settings))
