"""``st-llm2vec eval``'s tasks: local files as mteb tasks, the shared dev tasks, names mteb knows, llm2vec's
instructions. No model is loaded here (tests/test_eval_run.py runs them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("mteb")

from st_llm2vec.errors import InputError, MissingFileError  # noqa: E402
from st_llm2vec import devdata as devsets  # noqa: E402
from st_llm2vec.eval import instructions, tasks  # noqa: E402


def write_beir(root, qrels_rows=("q0\td0\t1", "q1\td2\t1")):
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": f"doc {i}"}) + "\n"
                                               for i in range(3)))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": f"query {i}"}) + "\n"
                                                for i in range(2)))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels_rows) + "\n")
    return root


def test_a_scored_pairs_file_becomes_an_mteb_sts_task_named_after_the_file(tmp_path):
    from mteb.abstasks.sts import AbsTaskSTS

    path = tmp_path / "my-pairs.tsv"
    path.write_text("sentence1\tsentence2\tscore\na\tb\t1\nc\td\t4\n")
    task = tasks.resolve_tasks([str(path)])[0]
    assert isinstance(task, AbsTaskSTS) and task.metadata.name == "my-pairs"
    assert task.metadata.main_score == "cosine_spearman" and (task.min_score, task.max_score) == (1.0, 4.0)
    task.load_data()
    assert task.dataset["test"]["sentence1"] == ["a", "c"] and task.dataset["test"]["score"] == [1.0, 4.0]


def test_a_beir_dir_becomes_a_retrieval_task_and_a_reranking_jsonl_a_reranking_task(tmp_path):
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    retrieval = tasks.resolve_tasks([str(write_beir(tmp_path / "beir"))])[0]
    assert isinstance(retrieval, AbsTaskRetrieval) and retrieval.metadata.type == "Retrieval"
    retrieval.load_data()
    split = retrieval.dataset["default"]["test"]
    assert split["relevant_docs"] == {"q0": {"d0": 1}, "q1": {"d2": 1}} and split["top_ranked"] is None
    path = tmp_path / "rr.jsonl"
    path.write_text(json.dumps({"query": "q", "positive": ["yes", "yes"], "negative": "no"}) + "\n"
                    + json.dumps({"query": "no positive", "positive": [], "negative": ["x"]}) + "\n")
    reranking = tasks.resolve_tasks([str(path)])[0]
    assert reranking.metadata.type == "Reranking" and reranking.metadata.main_score == "map_at_1000"
    reranking.load_data()
    split = reranking.dataset["default"]["test"]
    # one query (the one without a positive is left out, as mteb does), each text once
    assert split["relevant_docs"] == {"q0": {"d0": 0, "d1": 1}} and split["top_ranked"] == {"q0": ["d0", "d1"]}
    assert split["corpus"]["text"] == ["no", "yes"]


@pytest.mark.parametrize("name, content, expected", [
    ("pairs.tsv", "a\tb\t1\nc\td\n", r"pairs.tsv:2: expected 3 columns"),
    ("pairs.jsonl", '{"sentence1": "a", "sentence2": "b", "score": 1}\n{"sentence1": "a"}\n', r"pairs.jsonl:2:"),
    ("rr.jsonl", '{"query": "q", "positive": ["p"]}\n{"query": "q", "positive": 3}\n', r"rr.jsonl:2: expected"),
    ("rr.jsonl", '{"query": "q", "positive": ["p"]}\nnot json\n', r"rr.jsonl:2: not a JSON object"),
])
def test_a_malformed_local_file_is_reported_with_its_file_and_line(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputError, match=expected):
        tasks.resolve_tasks([str(path)])


def test_a_beir_dir_with_a_missing_file_or_a_bad_judgement_names_the_file_and_line(tmp_path):
    beir = write_beir(tmp_path / "beir", qrels_rows=("q0\td0\t1", "q1\td9\t1"))
    with pytest.raises(InputError, match=r"qrels/test.tsv:3: corpus-id 'd9' is not in corpus.jsonl"):
        tasks.resolve_tasks([str(beir)])
    (beir / "queries.jsonl").unlink()
    with pytest.raises(MissingFileError, match=r"queries.jsonl: no such file"):
        tasks.resolve_tasks([str(beir)])
    with pytest.raises(MissingFileError, match=r"no such file or directory"):
        tasks.resolve_tasks([str(tmp_path / "nowhere.tsv")])


def test_an_unknown_task_name_lists_the_closest_names_mteb_knows_case_ignored():
    with pytest.raises(InputError) as info:
        tasks.resolve_tasks(["STS-12"])
    message = str(info.value)
    assert message.startswith("unknown task 'STS-12' (closest names: ")
    assert "STS12" in message and "sts12" in message and "\n" not in message
    with pytest.raises(InputError, match="closest names: .*SciFact"):
        tasks.resolve_tasks(["scifakt"])


def test_mteb_task_names_resolve_to_mteb_tasks_and_the_dev_group_to_every_shared_task(monkeypatch, tmp_path):
    assert [t.metadata.name for t in tasks.resolve_tasks(["STS12", "STS12"])] == ["STS12"]
    if devsets.find_shared_data() is None:
        pytest.skip("no shared data folder")
    assert [t.metadata.name for t in tasks.resolve_tasks(["dev"])] == list(tasks.SHARED_TASKS)


def test_without_the_shared_data_a_shared_task_says_where_to_put_it_and_what_to_use_instead(monkeypatch):
    monkeypatch.delenv(devsets.DATA_ENV, raising=False)
    monkeypatch.setattr(devsets, "find_shared_data", lambda path=None: None)
    with pytest.raises(MissingFileError) as info:
        tasks.resolve_tasks(["dev"])
    message = str(info.value)
    assert str(Path.cwd().parent / "shared" / "data") in message and "<repo>" not in message  # a real path
    assert devsets.DATA_ENV in message and "--tasks pairs.tsv" in message
    assert [t.metadata.name for t in tasks.dev_tasks()] == ["builtin-sts"]  # what the quick start scores then


@pytest.mark.skipif(devsets.find_shared_data() is None, reason="no shared data folder")
def test_the_wang_tasks_rerank_and_retrieve_over_the_same_pool_of_candidates():
    rerank = tasks.shared_task(devsets.WANG_DEV)
    retrieve = tasks.shared_task(tasks.WANG_RETRIEVAL)
    rerank.load_data(), retrieve.load_data()
    a, b = rerank.dataset["default"]["test"], retrieve.dataset["default"]["test"]
    assert a["corpus"]["text"] == b["corpus"]["text"] and a["queries"]["text"] == b["queries"]["text"]
    assert b["top_ranked"] is None and len(a["top_ranked"]) == len(devsets.wang_samples())
    # retrieval judges only the positives; reranking also marks each query's negatives
    assert all(set(b["relevant_docs"][q]) == {d for d, r in a["relevant_docs"][q].items() if r} for q in a["relevant_docs"])


def test_llm2vec_instructions_are_data_with_their_source_and_go_to_the_side_llm2vec_gives_them():
    import mteb

    table = instructions.llm2vec_table()
    assert "github.com/McGill-NLP/llm2vec" in table["source"] and "MIT" in table["license"]
    sts = instructions.task_instruction(mteb.get_task("STS12"))
    assert (sts.instruction, sts.source, sts.symmetric, sts.prompt_key()) == (
        "Retrieve semantically similar text:", "llm2vec", True, "STS12")
    scifact = instructions.task_instruction(mteb.get_task("SciFact"))
    assert scifact.prompt_key() == "SciFact-query" and scifact.instruction == table["instructions"]["SciFact"]
    # a task that supersedes one in the table takes its instruction; a task llm2vec never ran takes mteb's own
    v2 = instructions.task_instruction(mteb.get_task("STSBenchmark.v2" if "STSBenchmark.v2" in tasks.mteb_task_names()
                                                     else "Banking77Classification.v2"))
    assert v2.source.startswith("llm2vec (as ")
    other = mteb.get_task("NanoSciFactRetrieval")
    assert "NanoSciFactRetrieval" not in table["instructions"]
    item = instructions.task_instruction(other)
    assert item.source.startswith("mteb") and item.instruction.endswith(":")
    assert instructions.task_instruction(other, {"NanoSciFactRetrieval": "Find it:"}).source == "--instruction"


def test_instruction_overrides_are_task_equals_text():
    assert instructions.parse_overrides(["a=Find it:", "b="]) == {"a": "Find it:", "b": ""}
    with pytest.raises(InputError, match="TASK=TEXT"):
        instructions.parse_overrides(["no equals sign"])
