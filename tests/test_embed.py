"""st-llm2vec embed / search with the local engine: vectors equal to ``encode``, every input format and every bad
input, kill -9 and resume, --update, the manifest's refusals, search (the Ray engine: tests/test_embed_ray.py)."""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embed_models import (assert_same_vectors, corpus_rows, kill_after, portable_dir, read_out, reference, run,
                          stock_dir, write_jsonl)
from st_llm2vec.cli import main as cli
from st_llm2vec.embed.encoding import ModelSettings, embed_texts
from st_llm2vec.embed.inputs import Fields, find_inputs
from st_llm2vec.embed.plan import Rejects, plan_shards, read_shard, scan
from st_llm2vec.errors import InputError, MissingExtraError, OutputExistsError

ROWS = corpus_rows(60)


@pytest.fixture(scope="module")
def portable(tmp_path_factory) -> Path:
    return portable_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def stock(tmp_path_factory) -> Path:
    return stock_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", ROWS)


# --------------------------------------------------------------------------- vectors


def test_local_engine_writes_each_id_once_with_the_vectors_of_encode(portable, corpus, tmp_path):
    report = run(portable, corpus, tmp_path / "out", rows_per_shard=16)
    ids, vectors = read_out(tmp_path / "out")
    assert sorted(ids) == sorted(r["id"] for r in ROWS) and len(set(ids)) == len(ids)
    texts = {r["id"]: r["text"] for r in ROWS}
    assert_same_vectors(vectors, reference(portable, [texts[i] for i in ids]))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["rows"] == 60 and manifest["vectors"]["dim"] == 32
    assert [s["rows"] for s in manifest["shards"]] == [16, 16, 16, 12]
    assert manifest["engine"]["name"] == "local" and manifest["model"]["fingerprint"].startswith("sha256:")
    assert report.summary().startswith("embedded 60 rows") and "pd.read_parquet" in report.summary()
    schema = pq.read_schema(tmp_path / "out" / "part-00000.parquet")
    assert schema.field("embedding").type == pa.list_(pa.float32(), 32) and schema.field("id").type == pa.string()


def test_stock_model_with_a_prompt_and_a_dimension_gives_encodes_vectors(stock, corpus, tmp_path):
    run(stock, corpus, tmp_path / "out", prompt_name="query", dim=16)
    ids, vectors = read_out(tmp_path / "out")
    texts = {r["id"]: r["text"] for r in ROWS}
    assert vectors.shape == (60, 16)
    assert_same_vectors(vectors, reference(stock, [texts[i] for i in ids], prompt="query: ", truncate_dim=16))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["vectors"]["prompt"] == {"name": "query", "text": "query: "}


def test_bf16_mixed_is_refused_for_a_model_without_decoder_layers_and_auto_stays_float32(stock, corpus, tmp_path):
    with pytest.raises(InputError, match="--precision bf16-mixed cannot act on this model"):
        run(stock, corpus, tmp_path / "out", precision="bf16-mixed")
    assert not (tmp_path / "out").exists()
    run(stock, corpus, tmp_path / "out", precision="auto")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["vectors"]["precision_applied"] == "float32"


class RecordingModel:
    """Stands in for a SentenceTransformer: records each encode call, returns the texts' lengths as vectors."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts, **kwargs):
        self.calls.append(list(texts))
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)


def test_identical_texts_are_embedded_once_longest_first_and_written_for_every_row():
    model = RecordingModel()
    texts = ["bb", "a", "", "cccc", "a", "bb", "dd"]
    vectors = embed_texts(model, texts, ModelSettings("unused", batch_size=2))
    assert model.calls == [["cccc", "bb"], ["dd", "a"], [""]]  # distinct texts, longest first, ties in input order
    assert vectors[:, 0].tolist() == [2, 1, 0, 4, 1, 2, 2]



class WordTokenizer:
    """A tokenizer that makes one token of each space-separated word (so token order differs from character order)."""

    def __call__(self, texts, add_special_tokens=True, truncation=False, max_length=None, **kwargs):
        ids = [list(range(len(t.split()))) for t in texts]
        return {"input_ids": [i[:max_length] if truncation else i for i in ids]}


class TokenizingModel(RecordingModel):
    tokenizer = WordTokenizer()
    max_seq_length = 4


def test_batches_are_cut_in_token_order_capped_at_the_models_length_not_in_character_order():
    model = TokenizingModel()
    texts = ["x" * 50, "a b c", "y" * 40, "p q r s t u", "m n o p q r s", "k l"]
    embed_texts(model, texts, ModelSettings("unused", batch_size=2))
    # 4, 4 (both cut at max_seq_length: ties in input order), 3, 2, then the one-word texts however long
    assert model.calls == [["p q r s t u", "m n o p q r s"], ["a b c", "k l"], ["x" * 50, "y" * 40]]



class ImageProcessor:
    """What a multimodal model's ``tokenizer`` may be: it refuses a plain list of texts."""

    def __call__(self, *args, **kwargs):
        raise TypeError("expected images and text")


class ProcessorModel(RecordingModel):
    tokenizer = ImageProcessor()


def test_a_model_whose_tokenizer_refuses_plain_texts_gets_batches_in_character_order():
    model = ProcessorModel()
    embed_texts(model, ["k l", "x" * 50, "a b c"], ModelSettings("unused", batch_size=2))
    assert model.calls == [["x" * 50, "a b c"], ["k l"]]


# --------------------------------------------------------------------------- inputs


def test_every_input_format_is_read_in_a_stable_order_with_file_line_ids(tmp_path):
    data = tmp_path / "data"
    write_jsonl(data / "a.jsonl", [{"id": "j1", "text": "json line"}, {"text": "no id"}])
    (data / "b.json").write_text(json.dumps([{"id": 7, "text": "from an array"}, "a bare string"]))
    (data / "c.csv").write_text('id,text\nc1,"a, quoted\nnewline"\nc2,plain\n', encoding="utf-8")
    (data / "sub").mkdir()
    pq.write_table(pa.table({"text": ["parquet one", "parquet two"]}), data / "sub" / "d.parquet")
    (data / "e.txt").write_text("first line\n\nthird line\n", encoding="utf-8")
    (data / ".hidden.jsonl").write_text('{"text": "never read"}\n')
    root, files = find_inputs(str(data))
    assert [f.name for f in files] == ["a.jsonl", "b.json", "c.csv", "e.txt", "sub/d.parquet"]
    found = scan(files, Fields(), skip_bad=False, rejects=Rejects(None))
    rows = [read_shard(files, Fields(), spec) for spec in plan_shards(found, 3)]
    ids = [i for r in rows for i in r.ids]
    texts = [t for r in rows for t in r.texts]
    assert ids == ["j1", "a.jsonl:2", "7", "b.json:1", "c1", "c2", "e.txt:1", "e.txt:2", "e.txt:3",
                   "sub/d.parquet:0", "sub/d.parquet:1"]
    assert texts == ["json line", "no id", "from an array", "a bare string", "a, quoted\nnewline", "plain",
                     "first line", "", "third line", "parquet one", "parquet two"]
    assert [r.ids for r in rows][1] == ["b.json:1", "c1", "c2"]  # a shard crosses files from its restart point


@pytest.mark.parametrize("rows_per_shard", [1, 5, 255, 256, 257, 600])
def test_each_shard_read_alone_from_its_restart_point_equals_the_sequential_read(tmp_path, rows_per_shard):
    lines = [json.dumps({"id": f"r{i}", "text": f"text {i}"}) for i in range(700)]
    lines[300] = "{broken"
    (tmp_path / "a.jsonl").write_text("\n".join(lines[:400]) + "\n")
    (tmp_path / "b.jsonl").write_text("\n".join(lines[400:]) + "\n")
    _, files = find_inputs(str(tmp_path))
    found = scan(files, Fields(), skip_bad=True, rejects=Rejects(None))
    ids = [i for spec in plan_shards(found, rows_per_shard) for i in read_shard(files, Fields(), spec).ids]
    assert ids == [f"r{i}" for i in range(700) if i != 300]


BAD = {
    "malformed JSON": (b'{"id": "a", "text": "ok"}\n{"id": "b", "text": \n', ":2: not valid JSON"),
    "missing text": (b'{"id": "a", "text": "ok"}\n{"id": "b", "body": "x"}\n', ":2: no 'text' field"),
    "non-string text": (b'{"id": "a", "text": ["x"]}\n', ":1: 'text' is an array, not a string"),
    "non-UTF-8": (b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "caf\xe9"}\n', ":2: not UTF-8"),
    "duplicate id": (b'{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}\n{"id": "a", "text": "z"}\n',
                     ":3: duplicate id 'a' (first at "),
    "empty file": (b"", ": empty file"),
}


@pytest.mark.parametrize("kind", BAD)
def test_bad_input_is_one_line_naming_file_and_line_with_exit_2_and_no_out(portable, tmp_path, capsys, kind):
    content, expected = BAD[kind]
    (tmp_path / "in.jsonl").write_bytes(content)
    out = tmp_path / "out"
    status = cli(["embed", str(portable), str(tmp_path / "in.jsonl"), str(out), "--no-progress"], report_errors=True)
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1
    assert f"in.jsonl{expected}" in err and "--skip-bad" in err
    assert not out.exists()


def test_skip_bad_lists_bad_rows_with_reasons_counts_them_and_embeds_the_rest(portable, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_bytes(b"".join(content for content, _ in BAD.values()))
    (tmp_path / "in" / "b.jsonl").write_bytes(b"")
    report = run(portable, tmp_path / "in", tmp_path / "out", skip_bad=True)
    rejected = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    reasons = [r["reason"] for r in rejected]
    assert any(r.startswith("not valid JSON") for r in reasons) and any(r.startswith("no 'text'") for r in reasons)
    assert any(r.startswith("not UTF-8") for r in reasons) and "empty file (no rows)" in reasons
    assert sum(r.startswith("duplicate id") for r in reasons) == 4  # 'a' recurs 4 times after its first row
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["rejected"] == len(rejected) == report.rejected
    ids, _ = read_out(tmp_path / "out")
    assert sorted(ids) == ["a", "b"]


def test_empty_strings_are_embedded_not_dropped(portable, tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"id": "e", "text": ""}, {"id": "f", "text": "full"}])
    run(portable, tmp_path / "in.jsonl", tmp_path / "out")
    ids, vectors = read_out(tmp_path / "out")
    assert ids == ["e", "f"]
    assert_same_vectors(vectors, reference(portable, ["", "full"]))


# --------------------------------------------------------------------------- resume, update, refusals


def test_killed_job_resumes_keeping_finished_shards_and_redoing_an_unlisted_one(portable, corpus, tmp_path):
    out = tmp_path / "out"
    # killed after shard 0 was committed and shard 1 renamed into place, before the manifest listed it
    printed = kill_after("renamed:2", [str(portable), str(corpus), str(out), "--rows-per-shard", "16", "--threads", "1"],
                          tmp_path)
    assert printed == []  # a healthy run is quiet: no third-party warning, no bar without a terminal
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["file"] for s in manifest["shards"]] == ["part-00000.parquet"] and not manifest["complete"]
    first = (out / "part-00000.parquet").stat()
    (out / "part-00001.parquet").write_bytes(b"not what the manifest would say")  # an unlisted file is not trusted
    report = run(portable, corpus, out, rows_per_shard=16)
    assert report.mode == "resume" and report.embedded == 60 - 16
    after = (out / "part-00000.parquet").stat()
    assert (after.st_ino, after.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # not rewritten
    ids, vectors = read_out(out)
    run(portable, corpus, tmp_path / "whole", rows_per_shard=16)
    whole_ids, whole = read_out(tmp_path / "whole")
    assert ids == whole_ids and len(set(ids)) == 60
    assert np.array_equal(vectors, whole)  # same shards, same batches, same threads: the same bits
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"] + [f"part-0000{i}.parquet" for i in range(4)]


def test_update_embeds_only_new_and_changed_rows_drops_gone_ones_and_keeps_the_rest_byte_identical(portable, tmp_path):
    rows = corpus_rows(40)
    write_jsonl(tmp_path / "v1.jsonl", rows)
    run(portable, tmp_path / "v1.jsonl", tmp_path / "out", rows_per_shard=10)
    before = pq.read_table(sorted(glob.glob(f"{tmp_path}/out/part-*.parquet")))
    kept_shard = (tmp_path / "out" / "part-00003.parquet").read_bytes()
    changed = [dict(r) for r in rows if r["id"] != "d2"]  # d2 is gone
    changed[10]["text"] = "a changed text"  # d11
    changed += [{"id": "n1", "text": "a new row"}, {"id": "n2", "text": "another new row"}]
    write_jsonl(tmp_path / "v2.jsonl", changed)
    with pytest.raises(OutputExistsError, match="--update"):
        run(portable, tmp_path / "v2.jsonl", tmp_path / "out")
    report = run(portable, tmp_path / "v2.jsonl", tmp_path / "out", update=True)
    assert (report.mode, report.embedded, report.dropped, report.kept) == ("update", 3, 2, 38)
    ids, vectors = read_out(tmp_path / "out")
    assert sorted(ids) == sorted(r["id"] for r in changed)
    old = dict(zip(before.column("id").to_pylist(), np.stack(before.column("embedding").to_numpy(zero_copy_only=False))))
    for row_id, vector in zip(ids, vectors):
        if row_id not in ("d11", "n1", "n2"):
            assert vector.tobytes() == old[row_id].tobytes()
    assert (tmp_path / "out" / "part-00003.parquet").read_bytes() == kept_shard  # an untouched shard stays as it was
    texts = {r["id"]: r["text"] for r in changed}
    assert_same_vectors(vectors, reference(portable, [texts[i] for i in ids]))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["update"] is None and manifest["input"]["path"].endswith("v2.jsonl")
    assert run(portable, tmp_path / "v2.jsonl", tmp_path / "out").mode == "done"


def test_an_interrupted_update_is_finished_by_update_alone_with_each_id_once(portable, tmp_path, monkeypatch):
    from st_llm2vec.embed import job

    rows = corpus_rows(30)
    write_jsonl(tmp_path / "v1.jsonl", rows)
    run(portable, tmp_path / "v1.jsonl", tmp_path / "out", rows_per_shard=10)
    changed = [dict(r, text=r["text"] + " (edited)") if r["id"] in ("d4", "d25") else r for r in rows]
    write_jsonl(tmp_path / "v2.jsonl", changed)

    def crash(point: str, count: int) -> None:
        if (point, count) == ("committed", 1):
            raise RuntimeError("simulated crash after the update's first new shard")

    monkeypatch.setattr(job, "_hook", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(portable, tmp_path / "v2.jsonl", tmp_path / "out", update=True)
    monkeypatch.undo()
    ids, _ = read_out(tmp_path / "out")
    assert len(ids) == len(set(ids)) == 29  # d4 or d25 not embedded yet; nothing twice
    for input_ in ("v1.jsonl", "v2.jsonl"):
        with pytest.raises(OutputExistsError, match="--update .* was interrupted"):
            run(portable, tmp_path / input_, tmp_path / "out")
    report = run(portable, tmp_path / "v2.jsonl", tmp_path / "out", update=True)
    assert report.embedded == 1
    ids, vectors = read_out(tmp_path / "out")
    assert sorted(ids) == sorted(r["id"] for r in changed)
    texts = {r["id"]: r["text"] for r in changed}
    assert_same_vectors(vectors, reference(portable, [texts[i] for i in ids]))


def test_an_out_made_by_another_prompt_or_input_is_refused_naming_what_differs(portable, corpus, tmp_path):
    run(portable, corpus, tmp_path / "out", rows_per_shard=32)
    with pytest.raises(OutputExistsError, match=r"prompt \(null → \"Find the passage: \"\), normalisation"):
        run(portable, corpus, tmp_path / "out", prompt_name="query", normalize=False)
    other = write_jsonl(tmp_path / "other.jsonl", ROWS[:10])
    with pytest.raises(OutputExistsError, match="input files .* differ. Pass --update"):
        run(portable, other, tmp_path / "out")
    report = run(portable, other, tmp_path / "out", overwrite=True, prompt_name="query")
    assert report.mode == "fresh" and read_out(tmp_path / "out")[0] == [r["id"] for r in ROWS[:10]]


def test_a_second_job_on_the_same_out_is_refused_while_one_holds_it(portable, corpus, tmp_path):
    from st_llm2vec.files import OutputLock

    with OutputLock(tmp_path / "out", holder="st-llm2vec embed job"):
        with pytest.raises(InputError, match="in use by another st-llm2vec embed job"):
            run(portable, corpus, tmp_path / "out")


def test_an_out_holding_other_files_and_no_manifest_is_refused_even_with_overwrite(portable, corpus, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match="holds no manifest.json .notes.txt."):
            run(portable, corpus, tmp_path / "out", overwrite=overwrite)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]


def test_out_inside_the_input_folder_is_refused(portable, tmp_path):
    write_jsonl(tmp_path / "in" / "a.jsonl", ROWS[:3])
    with pytest.raises(InputError, match="inside the input folder"):
        run(portable, tmp_path / "in", tmp_path / "in" / "vectors")


def test_ray_engine_without_ray_names_the_install_command(portable, corpus, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingExtraError, match=r'pip install -e "\.\[ray\]"'):
        run(portable, corpus, tmp_path / "out", engine="ray")


# --------------------------------------------------------------------------- search


def test_search_finds_the_row_whose_text_is_the_query_and_says_which_prompt_it_used(portable, corpus, tmp_path, capsys):
    run(portable, corpus, tmp_path / "out", rows_per_shard=25, prompt="")
    assert cli(["search", str(tmp_path / "out"), ROWS[9]["text"], "-k", "3", "--threads", "1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "query prompt: 'query' = 'Find the passage: '"
    assert printed[1].startswith("searched 60 rows in 3 shards")
    assert cli(["search", str(tmp_path / "out"), ROWS[9]["text"], "-k", "3", "--prompt", "", "--threads", "1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    rank, score, row_id = printed[2].split()
    assert (rank, row_id) == ("1", "d9") and float(score) > 0.9999
    assert len(printed) == 5


# --------------------------------------------------------------------------- readers, any text


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(st.characters(exclude_categories=("Cs",)), max_size=30), min_size=1, max_size=25),
       rows_per_shard=st.integers(1, 30), kind=st.sampled_from(["jsonl", "csv", "txt"]))
def test_any_text_reads_back_as_written_whichever_shard_starts_where(tmp_path_factory, texts, rows_per_shard, kind):
    import csv

    folder = tmp_path_factory.mktemp("any")
    path = folder / f"in.{kind}"
    ids = [f"r{i}" for i in range(len(texts))]
    if kind == "txt":
        texts = [t.replace("\n", " ").replace("\r", " ") for t in texts]
        path.write_text("".join(t + "\n" for t in texts), encoding="utf-8", newline="")
        ids = [f"in.txt:{i + 1}" for i in range(len(texts))]
    elif kind == "csv":
        with open(path, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "text"])
            writer.writerows(zip(ids, texts))
    else:
        path.write_text("".join(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n" for i, t in zip(ids, texts)),
                        encoding="utf-8")
    _, files = find_inputs(str(path))
    found = scan(files, Fields(), skip_bad=False, rejects=Rejects(None))
    shards = [read_shard(files, Fields(), spec) for spec in plan_shards(found, rows_per_shard)]
    assert [i for s in shards for i in s.ids] == ids
    assert [t for s in shards for t in s.texts] == texts


def test_a_csv_field_longer_than_the_csv_modules_default_limit_is_read(tmp_path):
    long = "word " * 40_000  # 200 000 characters: csv's default field limit is 131 072
    (tmp_path / "in.csv").write_text(f"id,text\na,{long}\nb,short\n", encoding="utf-8")
    _, files = find_inputs(str(tmp_path / "in.csv"))
    found = scan(files, Fields(), skip_bad=False, rejects=Rejects(None))
    assert read_shard(files, Fields(), plan_shards(found, 10)[0]).texts == [long, "short"]


def test_search_through_faiss_finds_what_numpy_finds(portable, corpus, tmp_path, monkeypatch):
    pytest.importorskip("faiss")
    from st_llm2vec.embed import search as search_module

    run(portable, corpus, tmp_path / "out", rows_per_shard=25)
    exact = search_module.search(str(tmp_path / "out"), "children play music", 5, threads=1)
    monkeypatch.setattr(search_module, "FAISS_ROWS", 1)
    through_faiss = search_module.search(str(tmp_path / "out"), "children play music", 5, threads=1)
    assert [i for i, _ in through_faiss.hits] == [i for i, _ in exact.hits]
    assert np.allclose([s for _, s in through_faiss.hits], [s for _, s in exact.hits], atol=1e-5)


def test_embed_and_search_help_import_neither_torch_nor_pyarrow_nor_ray():
    from conftest import run_python

    loaded = json.loads(run_python(
        "import contextlib, io, json, sys\nfrom st_llm2vec.cli import main\n"
        "for name in ('embed', 'search'):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main([name, '--help'])\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'pyarrow', 'ray', 'numpy'})))"))
    assert loaded == []
