"""st_llm2vec/recipe/text_data.py, pair_data.py, pair_files.py and builtin_text.py: the training data — MNTP's text corpora, the
contrastive stages' pair layouts, the generated training text — read as llm2vec reads it, or refused naming the fix."""

from __future__ import annotations

import json
import logging

import pytest

from st_llm2vec import devdata as devsets
from st_llm2vec.recipe.pair_data import E5_INSTRUCTIONS
from st_llm2vec.recipe.pair_files import read_pair_folder, shared_pair_data
from st_llm2vec.recipe.stage_contrastive import train_simcse
from st_llm2vec.recipe.text_data import EmptyDatasetError, TextStats, load_texts, tokenize_corpus
from conftest import CORPUS, corpus_lines, simcse_config
from conftest import RUN_SENTENCES as SENTENCES
from conftest import triplets as _triplets
from conftest import write_jsonl as _write_jsonl

SHARED = devsets.find_shared_data()
needs_shared = pytest.mark.skipif(SHARED is None, reason="shared data folder (../shared/data) not found")


# --------------------------------------------------------------------------- text corpora (text_data)


def test_grouped_blocks_and_skipped_short_texts(tiny_llama, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    path = tmp_path / "c.txt"
    path.write_text("\n".join(["", "   ", *corpus_lines()[:20]]) + "\n")
    stats = TextStats()
    raw = load_texts(train_file=str(path))
    blocks = tokenize_corpus(raw["train"], tok, 16, stats=stats)
    assert stats.texts == 22 and stats.skipped_short == 2
    assert len(blocks) > 0 and all(len(ids) == 16 for ids in blocks["input_ids"])
    total = sum(len(tok(t)["input_ids"]) for t in corpus_lines()[:20])
    assert len(blocks) == total // 16

    stats = TextStats()
    rows = tokenize_corpus(raw["train"], tok, 8, line_by_line=True, stats=stats)
    assert stats.skipped_short == 2 and len(rows) == 20
    assert all(2 <= len(ids) <= 8 for ids in rows["input_ids"]) and rows[0]["input_ids"][0] == tok.bos_token_id


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_local_formats_pick_the_text_column(tiny_llama, tmp_path, fmt):
    import pandas as pd
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    frame = pd.DataFrame({"id": range(12), "body": corpus_lines()[:12]})
    path = tmp_path / f"c.{fmt}"
    {"jsonl": lambda: frame.to_json(path, orient="records", lines=True), "csv": lambda: frame.to_csv(path, index=False),
     "parquet": lambda: frame.to_parquet(path)}[fmt]()
    rows = tokenize_corpus(load_texts(train_file=str(path))["train"], tok, 128, line_by_line=True)
    assert rows[0]["input_ids"] == tok(corpus_lines()[0])["input_ids"]


def test_streaming_gives_the_same_blocks(tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    eager = tokenize_corpus(load_texts(train_file=str(CORPUS))["train"], tok, 16)
    stats = TextStats()
    lazy = tokenize_corpus(load_texts(train_file=str(CORPUS), streaming=True)["train"], tok, 16, stats=stats)
    assert [r["input_ids"] for r in lazy] == eager["input_ids"]
    assert stats.skipped_short == 2  # counted while streaming


def test_empty_or_too_short_corpus_is_a_clear_error(tiny_llama, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(EmptyDatasetError, match="are empty"):
        load_texts(train_file=str(empty))
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n  \n")
    with pytest.raises(EmptyDatasetError, match="shorter than 2 tokens"):
        tokenize_corpus(load_texts(train_file=str(blank))["train"], tok, 16)
    short = tmp_path / "short.txt"
    short.write_text("One short line.\n")
    with pytest.raises(EmptyDatasetError, match="fewer than one block"):
        tokenize_corpus(load_texts(train_file=str(short))["train"], tok, 64)
    with pytest.raises(FileNotFoundError):
        load_texts(train_file=str(tmp_path / "missing.txt"))
    odd = tmp_path / "c.xml"
    odd.write_text("<t>text</t>")
    with pytest.raises(ValueError, match="Unsupported data file"):
        load_texts(train_file=str(odd))


def test_an_ambiguous_text_column_must_be_named(tiny_llm, tmp_path, caplog):
    from transformers import AutoTokenizer

    from st_llm2vec.recipe.text_data import load_texts, tokenize_corpus

    tokenizer = AutoTokenizer.from_pretrained(tiny_llm())
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": f"doc-{i}", "body": s}) + "\n" for i, s in enumerate(SENTENCES)))
    raw = load_texts(train_file=str(path))["train"]
    with pytest.raises(ValueError, match=r"several string columns \['id', 'body'\].*set text_column"):
        tokenize_corpus(raw, tokenizer, 8, line_by_line=True)
    with caplog.at_level(logging.INFO, logger="st_llm2vec.recipe.text_data"):
        rows = tokenize_corpus(raw, tokenizer, 64, line_by_line=True, text_column="body")
    assert rows[0]["input_ids"] == tokenizer(SENTENCES[0])["input_ids"]
    assert "'body' column" in caplog.text


# --------------------------------------------------------------------------- pair layouts (pair_data)


def test_echo_folder_alternates_instructions_marks_symmetric_and_counts_drops(tmp_path):
    rows = _triplets(6, "nli")
    rows[2]["query"] = "   "  # dropped: empty query
    rows[3]["negative"] = ""  # dropped: the set has hard negatives, this row has none
    _write_jsonl(tmp_path / "allnli.jsonl", rows)
    _write_jsonl(tmp_path / "allnli_split1.jsonl", _triplets(4, "old"))  # llm2vec reads allnli.jsonl instead
    _write_jsonl(tmp_path / "fever.jsonl", _triplets(3, "claim"))
    _write_jsonl(tmp_path / "quora_duplicates_split2.jsonl", _triplets(3, "dup"))

    data = read_pair_folder(tmp_path)
    a, b = E5_INSTRUCTIONS["allnli"]
    assert data.names == ["allnli_split1", "allnli_split2", "fever", "quora_duplicates_split2"]
    by = {s.name: s for s in data.subsets}
    # row i -> instruction i % 2; rows 2 (even) and 3 (odd) were dropped
    assert by["allnli_split1"].dataset["query"] == [rows[0]["query"], rows[4]["query"]]
    assert by["allnli_split2"].dataset["query"] == [rows[1]["query"], rows[5]["query"]]
    assert data.dropped["allnli_split1"]["empty query/positive"] == 1
    assert data.dropped["allnli_split2"]["without negative"] == 1
    prompts = data.prompts()
    assert prompts["allnli_split1"] == {"query": a + "; "}  # asymmetric: queries only
    assert prompts["allnli_split2"] == {c: b + "; " for c in ("query", "positive", "negative")}  # llm2vec's mark
    assert prompts["fever"] == {"query": E5_INSTRUCTIONS["fever"] + "; "}
    assert set(prompts["quora_duplicates_split2"]) == {"query", "positive", "negative"}

    queries_only = read_pair_folder(tmp_path, symmetric_instructions=False).prompts()
    assert all(set(p) == {"query"} for p in queries_only.values())


def test_missing_instruction_lists_the_datasets(tmp_path):
    _write_jsonl(tmp_path / "fever.jsonl", _triplets(2, "c"))
    _write_jsonl(tmp_path / "my_set.jsonl", _triplets(2, "m"))
    _write_jsonl(tmp_path / "other.jsonl", _triplets(2, "o"))
    with pytest.raises(ValueError, match=r"my_set.*other.*instructions"):
        read_pair_folder(tmp_path)
    data = read_pair_folder(tmp_path, instructions={"my_set": "Find it", "other": ""})
    assert data.prompts()["my_set"] == {"query": "Find it; "}
    assert "other" not in data.prompts()  # "" trains it without instruction
    assert read_pair_folder(tmp_path, datasets=["fever"]).names == ["fever"]


def test_pair_files_without_usable_rows_or_with_bad_json_are_refused_naming_the_line(tmp_path):
    _write_jsonl(tmp_path / "fever.jsonl", [{"query": "", "positive": "x"}, {"query": "q", "positive": None}])
    with pytest.raises(ValueError, match="No usable rows"):
        read_pair_folder(tmp_path)
    (tmp_path / "fever.jsonl").write_text('{"query": "q", "positive": "p"}\nnot json\n')
    with pytest.raises(ValueError, match=r"fever.jsonl:2"):
        read_pair_folder(tmp_path)


def test_batch_larger_than_a_dataset(tmp_path):
    _write_jsonl(tmp_path / "fever.jsonl", _triplets(10, "c"))
    _write_jsonl(tmp_path / "nq.jsonl", _triplets(3, "q"))
    data = read_pair_folder(tmp_path)
    with pytest.raises(ValueError, match=r"nq \(3 rows\).*skip_small_datasets"):
        data.check_batch_size(4)
    assert data.check_batch_size(4, skip_small=True).names == ["fever"]
    with pytest.raises(ValueError, match="fever"):
        data.check_batch_size(16, skip_small=True)  # nothing left to train on


@needs_shared
def test_shared_sets_have_instructions_on_the_right_sides():
    data = shared_pair_data(SHARED)
    by = {s.name: s for s in data.subsets}
    assert by["sick"].has_negatives and not by["msr"].has_negatives
    assert set(data.prompts()["sick"]) == {"query"}
    assert set(data.prompts()["msr"]) == {"query", "positive"}


def test_simcse_refuses_batches_it_cannot_learn_from_before_loading_the_model(tmp_path):
    repeated = tmp_path / "repeated.txt"
    repeated.write_text("\n".join(SENTENCES[:3] * 4) + "\n")  # 12 lines, 3 distinct sentences
    missing_model = tmp_path / "no-model-here"  # loading it would fail with another error
    with pytest.raises(ValueError, match="3 distinct sentences .12 rows., fewer than one batch of 4"):
        train_simcse(simcse_config(missing_model, tmp_path / "a", repeated))
    with pytest.raises(ValueError, match="SimCSE needs at least 2 rows per batch.*the loss is always 0"):
        train_simcse(simcse_config(missing_model, tmp_path / "b", repeated, per_device_train_batch_size=1))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --------------------------------------------------------------------------- generated training text (builtin_text)


def test_generated_training_text_is_distinct_repeatable_and_apart_from_the_eval_pairs():
    from st_llm2vec.builtin_text import builtin_training_text

    sentences = builtin_training_text(2000, seed=42)
    assert len(sentences) == len(set(sentences)) == 2000
    assert builtin_training_text(2000, seed=42) == sentences and builtin_training_text(2000, seed=1) != sentences
    evaluation = {text for pair in devsets.builtin_sts_pairs() for text in pair[:2]}
    assert not evaluation & set(sentences)
    assert all((s[0].isupper() or s[0].isdigit()) and s.endswith(".") for s in sentences)
    assert not [s for s in sentences if s.startswith(("Two ", "Three ")) and " is " in s.split(" who ")[0]]
