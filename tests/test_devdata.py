"""st_llm2vec/devdata.py: the dev sets — readers on the real shared files, the built-in STS set, and evaluators on
a tiny local model."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest

from st_llm2vec import devdata as devsets

DATA = devsets.find_shared_data()
needs_data = pytest.mark.skipif(
    DATA is None, reason=f"shared data folder not found (<repo>/../shared/data or ${devsets.DATA_ENV})"
)


def _bow_model(sentences: list[str]):
    """A tiny bag-of-words SentenceTransformer: word-level tokenizer trained here, one-hot static embeddings."""
    import numpy as np
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(sentences, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]"]))
    weights = np.eye(tok.get_vocab_size(), dtype=np.float32)
    weights[0] = 1e-3  # unknown words: nearly nothing, but never a zero vector
    return SentenceTransformer(modules=[StaticEmbedding(tok, embedding_weights=weights)], device="cpu")


# --------------------------------------------------------------------------- locating data


def test_find_shared_data_explicit_and_env(tmp_path, monkeypatch):
    (tmp_path / "sts").mkdir()
    assert devsets.find_shared_data(tmp_path) == tmp_path.resolve()
    monkeypatch.setenv(devsets.DATA_ENV, str(tmp_path))
    assert devsets.find_shared_data() == tmp_path.resolve()
    monkeypatch.setenv(devsets.DATA_ENV, str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=devsets.DATA_ENV):
        devsets.find_shared_data()
    with pytest.raises(FileNotFoundError, match="data_dir"):
        devsets.find_shared_data(tmp_path / "nope")


def test_from_any_cwd_the_data_is_looked_for_beside_the_clone(tmp_path, monkeypatch):
    """The last guess is <clone>/../shared/data (the clone: the dir holding pyproject.toml), whatever the cwd."""
    monkeypatch.chdir(tmp_path)
    guess = list(devsets._default_candidates())[-1]
    clone = Path(__file__).resolve().parents[1]  # tests/ lives in the clone
    assert guess == clone.parent / "shared" / "data"


def test_absent_data_falls_back_or_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv(devsets.DATA_ENV, raising=False)
    monkeypatch.setattr(devsets, "_default_candidates", lambda: iter([tmp_path / "missing"]))
    assert devsets.find_shared_data() is None
    [ev] = devsets.sts_evaluators()
    assert ev.name == "builtin-sts"
    [ev] = devsets.dev_evaluators(None, 10, wang_queries=None)  # no reranking set without the data
    assert ev.name == "builtin-sts" and devsets.dev_set_size(ev) == len(devsets.builtin_sts_pairs())  # not capped
    sentences, desc = devsets.training_sentences(None, 20, seed=1)
    assert len(sentences) == 20 and "generated for this project" in desc
    assert sentences == devsets.training_sentences(None, 20, seed=1)[0]
    assert sentences != devsets.training_sentences(None, 20, seed=2)[0]
    with pytest.raises(FileNotFoundError, match=devsets.DATA_ENV):
        devsets.sts_evaluators(fallback=False)
    with pytest.raises(FileNotFoundError, match=devsets.DATA_ENV):
        devsets.simcse_sentences()


# --------------------------------------------------------------------------- readers (synthetic edge cases)


def test_read_sts_quotes_bom_and_unscored_rows(tmp_path):
    f = tmp_path / "x.test.tsv"
    f.write_text('\ufeff4.5\t"Quoted, start\tplain end \n\tno score\tskipped\n0\ta "b\tc\n', encoding="utf-8")
    assert devsets.read_sts(f) == [("\"Quoted, start", "plain end", 4.5), ("a \"b", "c", 0.0)]
    (tmp_path / "y.train.tsv").write_text("1\tp\tq\n", encoding="utf-8")
    assert len(devsets.read_sts(tmp_path)) == 3
    assert len(devsets.read_sts(tmp_path, split="test")) == 2


def test_read_msr_crlf_and_bad_header(tmp_path):
    f = tmp_path / "m.tsv"
    f.write_bytes('\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n1\t1\t2\tA "x".\tB\r\n'.encode())
    assert devsets.read_msr(f) == [('A "x".', "B", 1)]
    f.write_text("Label\ts1\ts2\n1\ta\tb\n", encoding="utf-8")
    with pytest.raises(ValueError, match="missing column"):
        devsets.read_msr(f)


# --------------------------------------------------------------------------- readers (real files)


@needs_data
def test_read_sts_real_years():
    for year, expected in (("2012", 2358), ("2013", 1500)):
        pairs = devsets.read_sts(DATA / devsets.STS_DIR / year, split="test")
        assert len(pairs) == expected
        assert all(0.0 <= p.score <= 5.0 and p.sentence1 and p.sentence2 for p in pairs)
    assert len(devsets.read_sts(DATA / devsets.STS_DIR / "2012", split="train")) > 0


@needs_data
def test_read_sick_real():
    train = devsets.read_sick(DATA / devsets.SICK_DIR / "SICK_train.txt")
    trial = devsets.read_sick(DATA / devsets.SICK_DIR / "SICK_trial.txt")
    assert len(train) == 4500 and len(trial) == 500
    assert all(1.0 <= p.relatedness <= 5.0 for p in train + trial)
    assert set(Counter(p.entailment for p in train)) == {"ENTAILMENT", "NEUTRAL", "CONTRADICTION"}


@needs_data
def test_read_msr_and_wang_real():
    msr = devsets.read_msr(DATA / devsets.MSR_DIR / "msr-para-train.tsv")
    assert len(msr) == 3576 and {m.label for m in msr} == {0, 1}
    assert msr[0].sentence1.startswith("Amrozi")  # BOM-free header, first row intact
    wang = devsets.read_wang(DATA / devsets.WANG_DIR / "dev.csv")
    assert len(wang) > 1000 and {w.label for w in wang} == {0, 1}
    assert all(w.question and w.answer for w in wang)


@needs_data
def test_training_sets_real():
    sents = devsets.simcse_sentences()
    assert len(sents) > 10_000 and len(set(sents)) == len(sents)
    assert sents == devsets.simcse_sentences()
    assert devsets.simcse_sentences(limit=5) == sents[:5]
    assert devsets.simcse_sentences(limit=5, seed=1) == devsets.simcse_sentences(limit=5, seed=1)
    triplets = devsets.sick_triplets()
    assert len(triplets) > 100 and len(devsets.sick_triplets(symmetric=True)) > len(triplets)
    assert all(len({a, p, n}) == 3 for a, p, n in triplets)
    pairs = devsets.msr_pairs(limit=10)
    assert len(pairs) == 10 and len(devsets.msr_pairs()) > 2000


# --------------------------------------------------------------------------- built-in set


def test_builtin_pairs_unique_and_spread():
    pairs = devsets.builtin_sts_pairs()
    assert 30 <= len(pairs) <= 60
    assert len({(a, b) for a, b, _ in pairs}) == len(pairs)
    assert all(a != b and 0.0 <= s <= 5.0 for a, b, s in pairs)
    buckets = Counter(round(s) for _, _, s in pairs)
    assert set(buckets) == {0, 1, 2, 3, 4, 5} and min(buckets.values()) >= 4


def test_builtin_evaluator_on_bag_of_words_model():
    pairs = devsets.builtin_sts_pairs()
    model = _bow_model([s for a, b, _ in pairs for s in (a, b)])
    ev = devsets.builtin_sts_evaluator()
    result = ev(model)
    spearman = result["builtin-sts_spearman_cosine"]
    assert ev.primary_metric == "builtin-sts_spearman_cosine"
    assert 0.2 < spearman <= 1.0  # word overlap tracks the hand-written scores


@needs_data
def test_sts_and_wang_evaluators_run(tmp_path):
    *evs, rerank = devsets.dev_evaluators(max_pairs=40, wang_queries=5)
    assert [e.name for e in evs] == ["sts12", "sts13", "sick-trial"] and rerank.name == devsets.WANG_DEV
    assert all(len(e.scores) == 40 and 0.0 <= min(e.scores) and max(e.scores) <= 1.0 for e in evs)
    assert [devsets.dev_set_size(e) for e in (*evs, rerank)] == [40, 40, 40, 5]
    assert all(s["positive"] and s["negative"] for s in rerank.samples)
    texts = [s for e in evs for s in e.sentences1 + e.sentences2]
    texts += [t for s in rerank.samples for t in [s["query"], *s["positive"], *s["negative"]]]
    model = _bow_model(texts)
    for ev in evs:
        assert not math.isnan(ev(model)[ev.primary_metric])
    res = rerank(model, output_path=str(tmp_path))
    assert rerank.primary_metric == "wang-dev_map"
    assert 0.0 < res["wang-dev_map"] <= 1.0 and "wang-dev_mrr@10" in res
    assert Path(tmp_path).joinpath(rerank.csv_file).is_file()
