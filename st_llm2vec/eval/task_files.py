"""A user's task files, read and checked (file and line of the first bad row) before any model loads: scored pairs
(STS), reranking samples, a BEIR retrieval dir. :mod:`.tasks` makes mteb tasks of what they hold."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..devdata import StsPair
from ..errors import InputError, MissingFileError
from ..files import jsonl_rows


@dataclass(frozen=True)
class RerankingSample:
    """One query with its candidate documents: those that answer it and those that do not."""

    query: str
    positives: tuple[str, ...]
    negatives: tuple[str, ...]


# Column names a user's scored-pairs file may use (first match wins), as in ST's and mteb's STS datasets.
_PAIR_COLUMNS = {
    "sentence1": ("sentence1", "sentence_a", "sentence_A", "text1", "s1", "query"),
    "sentence2": ("sentence2", "sentence_b", "sentence_B", "text2", "s2", "document"),
    "score": ("score", "relatedness_score", "similarity", "label", "gold"),
}


def _number(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def read_scored_pairs(path: str | Path) -> list[StsPair]:
    """Scored sentence pairs from a user's file, any score scale (Spearman reads only the order):

    - ``.jsonl``: one object per line with ``sentence1`` / ``sentence2`` / ``score`` (or ``text1``, ``label``, …);
    - ``.tsv`` / ``.csv`` / other: a header naming those columns, or no header and three columns of which
      exactly one is a number (SemEval's ``score, s1, s2`` or ``s1, s2, score``).

    Raises ``ValueError`` naming the file and line of the first bad row, or the file when nothing is in it.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file (expected scored pairs: sentence1, sentence2, score)")
    pairs: list[StsPair] = []
    if path.suffix == ".jsonl":
        for lineno, row in jsonl_rows(path):
            try:
                # a list, not a generator: next()'s StopIteration inside a generator becomes a RuntimeError
                a, b, score = [next(row[k] for k in names if k in row) for names in _PAIR_COLUMNS.values()]
                pairs.append(StsPair(str(a).strip(), str(b).strip(), float(score)))
            except (ValueError, TypeError, StopIteration) as exc:
                raise InputError(f"{path}:{lineno}: expected sentence1, sentence2 and a numeric score, got "
                                 f"{json.dumps(row)[:120]}") from exc
    else:
        delimiter = "," if path.suffix == ".csv" else "\t"
        with open(path, encoding="utf-8-sig", newline="") as fh:
            rows = [(n, r) for n, r in enumerate(csv.reader(fh, delimiter=delimiter), start=1) if any(c.strip() for c in r)]
        columns = None
        if rows:
            header = [c.strip() for c in rows[0][1]]
            found = [next((header.index(n) for n in names if n in header), None) for names in _PAIR_COLUMNS.values()]
            if None not in found:
                columns, rows = found, rows[1:]
        for lineno, row in rows:
            cols = columns
            if cols is None:
                numeric = [i for i, cell in enumerate(row) if _number(cell) is not None]
                if len(row) != 3 or len(numeric) != 1:
                    raise InputError(f"{path}:{lineno}: expected 3 columns, one of them the score (or a header naming "
                                     f"sentence1, sentence2, score), got {row!r}")
                cols = [i for i in range(3) if i != numeric[0]] + numeric
            try:
                a, b, score = (row[i] for i in cols)
            except IndexError as exc:
                raise InputError(f"{path}:{lineno}: missing column(s) in {row!r}") from exc
            if _number(score) is None:
                raise InputError(f"{path}:{lineno}: score {score!r} is not a number")
            pairs.append(StsPair(a.strip(), b.strip(), float(score)))
    if not pairs:
        raise InputError(f"{path}: no scored pairs in the file")
    return pairs


def _texts(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, str):
        return (value.strip(),) if value.strip() else ()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value if v.strip())
    return None


def read_reranking(path: str | Path) -> list[RerankingSample]:
    """Reranking samples from JSONL, one query per line: ``{"query": ..., "positive": [...], "negative": [...]}``
    (Sentence Transformers' RerankingEvaluator's fields; ``positives`` / ``negatives`` and single strings too)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file (expected JSONL reranking samples: query, positive, negative)")
    samples = []
    for lineno, row in jsonl_rows(path):
        query = row.get("query")
        positives = _texts(row.get("positive", row.get("positives")))
        negatives = _texts(row.get("negative", row.get("negatives", [])))
        if not isinstance(query, str) or not query.strip() or positives is None or negatives is None:
            raise InputError(f"{path}:{lineno}: expected {{\"query\": text, \"positive\": [texts], \"negative\": [texts]}}, "
                             f"got keys {sorted(row)}")
        samples.append(RerankingSample(query.strip(), positives, negatives))
    if not samples:
        raise InputError(f"{path}: no reranking samples in the file")
    return samples


def _qrels_file(directory: Path) -> Path:
    """BEIR keeps judgements in ``qrels/<split>.tsv``: test, else dev, else the only one; or ``qrels.tsv``."""
    folder = directory / "qrels"
    for candidate in (folder / "test.tsv", folder / "dev.tsv", directory / "qrels.tsv"):
        if candidate.is_file():
            return candidate
    found = sorted(folder.glob("*.tsv")) if folder.is_dir() else []
    if len(found) == 1:
        return found[0]
    raise MissingFileError(f"{directory}: no relevance judgements: expected qrels/test.tsv (BEIR layout: query-id, "
                           "corpus-id, score)" + (f"; found {[f.name for f in found]}, name one test.tsv" if found else ""))


def read_beir(directory: str | Path) -> tuple[dict[str, tuple[str, str]], dict[str, str], dict[str, dict[str, int]]]:
    """A BEIR retrieval dir: ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``)
    and ``qrels/test.tsv`` (``query-id``, ``corpus-id``, ``score``, with a header). Returns (corpus, queries, qrels)."""
    directory = Path(directory).expanduser()
    for name in ("corpus.jsonl", "queries.jsonl"):
        if not (directory / name).is_file():
            raise MissingFileError(f"{directory / name}: no such file (a BEIR retrieval dir holds corpus.jsonl, "
                                   "queries.jsonl and qrels/test.tsv)")

    def rows(name: str, with_title: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for lineno, row in jsonl_rows(directory / name):
            rid, text = row.get("_id", row.get("id")), row.get("text")
            if rid is None or not isinstance(text, str):
                raise InputError(f"{directory / name}:{lineno}: expected \"_id\" and \"text\", got keys {sorted(row)}")
            title = row.get("title") or ""
            out[str(rid)] = (str(title), text) if with_title else text
        if not out:
            raise InputError(f"{directory / name}: the file is empty")
        return out

    corpus, queries = rows("corpus.jsonl", True), rows("queries.jsonl", False)
    qrels_path = _qrels_file(directory)
    qrels: dict[str, dict[str, int]] = {}
    with open(qrels_path, encoding="utf-8-sig", newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh, delimiter="\t"), start=1):
            if not row or not any(c.strip() for c in row):
                continue
            if lineno == 1 and row[0].strip() in ("query-id", "query_id", "qid"):
                continue
            if len(row) < 3:
                raise InputError(f"{qrels_path}:{lineno}: expected query-id, corpus-id, score (tab-separated), got {row!r}")
            qid, did, score = row[0].strip(), row[1].strip(), row[-1].strip()
            try:
                grade = int(float(score))
            except ValueError as exc:
                raise InputError(f"{qrels_path}:{lineno}: score {score!r} is not a number") from exc
            if qid not in queries:
                raise InputError(f"{qrels_path}:{lineno}: query-id {qid!r} is not in queries.jsonl")
            if did not in corpus:
                raise InputError(f"{qrels_path}:{lineno}: corpus-id {did!r} is not in corpus.jsonl")
            qrels.setdefault(qid, {})[did] = grade
    if not qrels:
        raise InputError(f"{qrels_path}: no relevance judgements in the file")
    return corpus, {q: t for q, t in queries.items() if q in qrels}, qrels


def looks_like_reranking(path: Path) -> bool:
    if path.suffix != ".jsonl":
        return False
    for _, row in jsonl_rows(path):
        return "query" in row and ("positive" in row or "positives" in row)
    return False
