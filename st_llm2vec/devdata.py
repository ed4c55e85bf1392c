"""The dev sets and small training sets of the shared data folder (``../shared/data``), and the dev sets as
Sentence Transformers evaluators (the training stages' in-loop dev STS).

The shared folder holds SemEval STS 2012/2013, SICK 2014, MSR paraphrase and TREC-QA answer selection (Wang et al.);
nothing of it is copied into the repo. Without it, the project's own STS pairs and training text
(:mod:`st_llm2vec.builtin_text`) keep evaluation and training possible. ``st-llm2vec eval`` scores the same sets
as mteb tasks (:mod:`st_llm2vec.eval.tasks`).
"""

from __future__ import annotations

import csv
import logging
import os
import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from .builtin_text import builtin_sts_pairs
from .errors import InputError, MissingFileError

if TYPE_CHECKING:
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator, RerankingEvaluator

logger = logging.getLogger(__name__)

DATA_ENV = "ST_LLM2VEC_DATA"
_KNOWN_SUBDIRS = ("sts", "para", "anssel")
STS_DIR = Path("sts") / "semeval-sts"
SICK_DIR = Path("sts") / "sick2014"
MSR_DIR = Path("para") / "msr"
WANG_DIR = Path("anssel") / "wang"
WANG_DEV = "wang-dev"  # the name of the Wang TREC-QA dev reranking evaluator (its metrics: wang-dev_map, ...)
# The STS 2012/2013 test subsets present in the shared copy (MSRvid and SMT 2013 are licence-restricted).
STS_YEARS = {"sts12": "2012", "sts13": "2013"}


class StsPair(NamedTuple):
    """A scored sentence pair (score on the file's own scale, 0-5 for SemEval STS)."""

    sentence1: str
    sentence2: str
    score: float


class SickPair(NamedTuple):
    """A SICK row: relatedness 1-5 and entailment label (ENTAILMENT / NEUTRAL / CONTRADICTION)."""

    pair_id: str
    sentence_a: str
    sentence_b: str
    relatedness: float
    entailment: str


class MsrPair(NamedTuple):
    """An MSR paraphrase-corpus row; label 1 means paraphrase."""

    sentence1: str
    sentence2: str
    label: int


class WangRow(NamedTuple):
    """A TREC answer-selection row; label 1 means the answer sentence answers the question."""

    question: str
    answer: str
    label: int


# --------------------------------------------------------------------------- locating the data


def _looks_like_shared_data(path: Path) -> bool:
    """True if ``path`` is a directory holding at least one of the expected subfolders."""
    return path.is_dir() and any((path / sub).is_dir() for sub in _KNOWN_SUBDIRS)


def _default_candidates() -> Iterator[Path]:
    """``<repo>/../shared/data`` guesses: from the cwd (and a few parents) and from the package location."""
    cwd = Path.cwd()
    for base in [cwd, *list(cwd.parents)[:3]]:
        yield base.parent / "shared" / "data"
    repo_root = Path(__file__).resolve().parents[1]  # <repo>/st_llm2vec/devdata.py
    yield repo_root.parent / "shared" / "data"


def default_data_location() -> Path:
    """The first place the shared data folder is looked for (``../shared/data`` from the cwd), for messages."""
    return next(_default_candidates()).resolve()


def find_shared_data(path: str | Path | None = None) -> Path | None:
    """The shared data folder: ``path``, else ``$ST_LLM2VEC_DATA``, else ``../shared/data``; None if absent. An
    explicit ``path`` or env var that points nowhere raises, so a typo is not mistaken for "no data"."""
    for explicit, origin in ((path, "data_dir"), (os.environ.get(DATA_ENV) or None, f"${DATA_ENV}")):
        if explicit is None:
            continue
        p = Path(explicit).expanduser()
        if not _looks_like_shared_data(p):
            raise MissingFileError(f"{origin}={p} is not the shared data folder (expected sts/, para/ or anssel/ inside).")
        return p.resolve()
    for cand in _default_candidates():
        if _looks_like_shared_data(cand):
            return cand.resolve()
    return None


def _require_data(data_dir: str | Path | None) -> Path:
    """Like :func:`find_shared_data` but raise a clear error naming the fix when nothing is found."""
    found = find_shared_data(data_dir)
    if found is None:
        raise MissingFileError(
            f"Shared data folder not found. Put it at {default_data_location()}, set {DATA_ENV} to its path, "
            "or pass data_dir=..."
        )
    return found


# --------------------------------------------------------------------------- readers


def _tsv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) of a tab-separated file, quotes taken literally (STS/MSR text has stray quotes)."""
    with open(path, encoding="utf-8-sig", newline="") as fh:  # -sig: MSR train starts with a BOM
        for lineno, row in enumerate(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if row and any(cell.strip() for cell in row):
                yield lineno, row


def _sts_file(path: Path) -> list[StsPair]:
    """Parse one SemEval STS file (no header: score, sentence 1, sentence 2); unscored rows are skipped."""
    pairs: list[StsPair] = []
    skipped = 0
    for lineno, row in _tsv_rows(path):
        if len(row) != 3 or not row[0].strip():
            skipped += 1
            continue
        try:
            score = float(row[0])
        except ValueError as exc:
            raise InputError(f"{path}:{lineno}: score {row[0]!r} is not a number") from exc
        pairs.append(StsPair(row[1].strip(), row[2].strip(), score))
    if skipped:
        logger.warning("%s: skipped %d malformed or unscored rows", path, skipped)
    return pairs


def read_sts(path: str | Path, split: str | None = None) -> list[StsPair]:
    """Read SemEval STS pairs from a ``.tsv`` file, or from every ``*.tsv`` (``*.<split>.tsv``) of a year folder."""
    path = Path(path)
    if path.is_dir():
        pattern = f"*.{split}.tsv" if split else "*.tsv"
        files = sorted(path.glob(pattern))
        if not files:
            raise MissingFileError(f"No {pattern} files in {path}")
        return [pair for f in files for pair in _sts_file(f)]
    return _sts_file(path)


def _header_index(path: Path, header: list[str], wanted: Sequence[str]) -> list[int]:
    """Column positions of ``wanted`` in ``header``, with an error naming the file if one is missing."""
    clean = [h.strip() for h in header]
    missing = [w for w in wanted if w not in clean]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; header is {clean}")
    return [clean.index(w) for w in wanted]


def read_sick(path: str | Path) -> list[SickPair]:
    """Read a SICK 2014 file (TSV with header pair_ID, sentence_A, sentence_B, relatedness_score, entailment_judgment)."""
    path = Path(path)
    rows = _tsv_rows(path)
    _, header = next(rows)
    cols = _header_index(path, header, ["pair_ID", "sentence_A", "sentence_B", "relatedness_score", "entailment_judgment"])
    out: list[SickPair] = []
    for lineno, row in rows:
        try:
            pid, a, b, score, label = (row[i] for i in cols)
            out.append(SickPair(pid.strip(), a.strip(), b.strip(), float(score), label.strip().upper()))
        except (IndexError, ValueError) as exc:
            raise InputError(f"{path}:{lineno}: malformed SICK row {row!r}") from exc
    return out


def read_msr(path: str | Path) -> list[MsrPair]:
    """Read an MSR paraphrase file (TSV with header Quality, #1 ID, #2 ID, #1 String, #2 String)."""
    path = Path(path)
    rows = _tsv_rows(path)
    _, header = next(rows)
    cols = _header_index(path, header, ["Quality", "#1 String", "#2 String"])
    out: list[MsrPair] = []
    for lineno, row in rows:
        try:
            quality, s1, s2 = (row[i] for i in cols)
            out.append(MsrPair(s1.strip(), s2.strip(), int(quality)))
        except (IndexError, ValueError) as exc:
            raise InputError(f"{path}:{lineno}: malformed MSR row {row!r}") from exc
    return out


def read_wang(path: str | Path) -> list[WangRow]:
    """Read a TREC answer-selection CSV (header qtext, label, atext; standard CSV quoting)."""
    path = Path(path)
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        _header_index(path, list(reader.fieldnames or []), ["qtext", "label", "atext"])
        out: list[WangRow] = []
        for row in reader:
            try:
                out.append(WangRow(row["qtext"].strip(), row["atext"].strip(), int(row["label"])))
            except (TypeError, ValueError, AttributeError) as exc:
                raise InputError(f"{path}:{reader.line_num}: malformed row {row!r}") from exc
    return out


def subsample(items: list, limit: int | None, seed: int = 0) -> list:
    """A deterministic, order-preserving sample of at most ``limit`` items (spread over all subsets)."""
    if limit is None or limit >= len(items):
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def wang_samples(data_dir: str | Path | None = None, split: str = "dev", max_queries: int | None = None) -> list[dict]:
    """Reranking samples {query, positive, negative} from the Wang split, keeping queries with both kinds of answers."""
    rows = read_wang(_require_data(data_dir) / WANG_DIR / f"{split}.csv")
    grouped: dict[str, dict[int, list[str]]] = defaultdict(lambda: {0: [], 1: []})
    for row in rows:  # dicts keep first-seen query order
        grouped[row.question][1 if row.label else 0].append(row.answer)
    samples = [
        {"query": q, "positive": by[1], "negative": by[0]} for q, by in grouped.items() if by[1] and by[0]
    ]
    return samples[:max_queries] if max_queries is not None else samples


# --------------------------------------------------------------------------- training sets


def _unique(items: Iterator[str]) -> list[str]:
    """Unique non-empty strings in first-seen order."""
    return list(dict.fromkeys(s for s in items if s))


def simcse_sentences(data_dir: str | Path | None = None, limit: int | None = None, *, seed: int | None = None) -> list[str]:
    """Unique sentences of SICK train then MSR train (file order; shuffled with ``seed`` if given), for SimCSE."""
    root = _require_data(data_dir)
    sick = read_sick(root / SICK_DIR / "SICK_train.txt")
    msr = read_msr(root / MSR_DIR / "msr-para-train.tsv")

    def gen() -> Iterator[str]:
        for p in sick:
            yield p.sentence_a
            yield p.sentence_b
        for m in msr:
            yield m.sentence1
            yield m.sentence2

    sentences = _unique(gen())
    if seed is not None:
        random.Random(seed).shuffle(sentences)
    return sentences[:limit] if limit is not None else sentences


def training_sentences(data_dir: str | Path | None = None, limit: int | None = None, *, seed: int = 0) -> tuple[list[str], str]:
    """Sentences for MNTP and SimCSE: :func:`simcse_sentences` shuffled with ``seed``, or without the shared data
    ``limit`` (default 2000) sentences written for this project (:mod:`st_llm2vec.builtin_text`); returns
    ``(sentences, source description)``."""
    if find_shared_data(data_dir) is not None:
        sentences = simcse_sentences(data_dir, limit, seed=seed)
        return sentences, f"SICK+MSR train sentences ({len(sentences)})"
    from .builtin_text import builtin_training_text

    sentences = builtin_training_text(limit or 2000, seed=seed)
    return sentences, (f"{len(sentences)} sentences generated for this project (scenes, news items, statements; "
                       "no shared data found)")


def sick_triplets(
    data_dir: str | Path | None = None, limit: int | None = None, *, symmetric: bool = False
) -> list[tuple[str, str, str]]:
    """SICK train (anchor, entailed positive, contradicting hard negative) for anchors having both kinds of pair.

    Each ENTAILMENT pair gives one triplet; its negative cycles through that anchor's CONTRADICTION pairs.
    ``symmetric`` also uses sentence_B as anchor (148 -> 532 triplets), treating entailment as two-way.
    """
    rows = read_sick(_require_data(data_dir) / SICK_DIR / "SICK_train.txt")
    pos: dict[str, dict[str, None]] = defaultdict(dict)  # dicts as ordered sets: deterministic order
    neg: dict[str, dict[str, None]] = defaultdict(dict)
    for r in rows:
        sides = [(r.sentence_a, r.sentence_b)] + ([(r.sentence_b, r.sentence_a)] if symmetric else [])
        for anchor, other in sides:
            if r.entailment == "ENTAILMENT":
                pos[anchor][other] = None
            elif r.entailment == "CONTRADICTION":
                neg[anchor][other] = None
    triplets = []
    for anchor, positives in pos.items():
        negatives = list(neg.get(anchor, ()))
        if negatives:
            triplets.extend((anchor, p, negatives[i % len(negatives)]) for i, p in enumerate(positives))
    return triplets[:limit] if limit is not None else triplets


def msr_pairs(data_dir: str | Path | None = None, limit: int | None = None, *, split: str = "train") -> list[tuple[str, str]]:
    """MSR paraphrase pairs (label 1) from ``msr-para-<split>.tsv`` as (sentence1, sentence2)."""
    rows = read_msr(_require_data(data_dir) / MSR_DIR / f"msr-para-{split}.tsv")
    pairs = [(r.sentence1, r.sentence2) for r in rows if r.label == 1]
    return pairs[:limit] if limit is not None else pairs


# --------------------------------------------------------------------------- evaluators


def _similarity_evaluator(pairs: Sequence[tuple[str, str, float]], scale: tuple[float, float], name: str,
                          batch_size: int, truncate_dim: int | None = None):
    """An EmbeddingSimilarityEvaluator (cosine Spearman primary; scores mapped to 0..1), cut to ``truncate_dim``."""
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    lo, hi = scale
    return EmbeddingSimilarityEvaluator(
        sentences1=[p[0] for p in pairs], sentences2=[p[1] for p in pairs],
        scores=[(p[2] - lo) / (hi - lo) for p in pairs], main_similarity="cosine", batch_size=batch_size,
        name=name if truncate_dim is None else f"{name}_dim{truncate_dim}", truncate_dim=truncate_dim,
    )


def sts_evaluators(
    data_dir: str | Path | None = None,
    max_pairs: int | None = None,
    *,
    batch_size: int = 16,
    fallback: bool = True,
    truncate_dim: int | None = None,  # embeddings cut to their leading dims; each evaluator named <name>_dim<d>
) -> list[EmbeddingSimilarityEvaluator]:
    """Cosine-Spearman evaluators for STS 2012 test ("sts12"), STS 2013 test ("sts13") and SICK trial ("sick-trial").

    Without the shared folder (and no explicit ``data_dir``) returns ``[builtin_sts_evaluator()]`` if ``fallback``.
    """
    found = find_shared_data(data_dir)
    if found is None:
        if not fallback:
            _require_data(None)
        logger.warning("shared data not found (set %s); using the built-in STS pairs only", DATA_ENV)
        return [builtin_sts_evaluator(batch_size=batch_size, truncate_dim=truncate_dim)]
    evaluators = []
    for name, year in STS_YEARS.items():
        pairs = subsample(read_sts(found / STS_DIR / year, split="test"), max_pairs)
        evaluators.append(_similarity_evaluator(pairs, (0.0, 5.0), name, batch_size, truncate_dim))
    sick = [(p.sentence_a, p.sentence_b, p.relatedness) for p in read_sick(found / SICK_DIR / "SICK_trial.txt")]
    evaluators.append(_similarity_evaluator(subsample(sick, max_pairs), (1.0, 5.0), "sick-trial", batch_size, truncate_dim))
    return evaluators


def wang_reranking_evaluator(
    data_dir: str | Path | None = None, max_queries: int | None = None, *, batch_size: int = 32
) -> RerankingEvaluator:
    """RerankingEvaluator (:data:`WANG_DEV`, MAP primary, MRR@10 also reported) over the Wang TREC-QA dev questions."""
    from sentence_transformers.sentence_transformer.evaluation import RerankingEvaluator

    evaluator = RerankingEvaluator(
        samples=wang_samples(data_dir, "dev", max_queries), name=WANG_DEV, batch_size=batch_size
    )
    evaluator.primary_metric = "map"  # the standard metric for this set (the class defaults to ndcg@10)
    return evaluator


def dev_evaluators(
    data_dir: str | Path | None = None,
    max_pairs: int | None = None,
    *,
    wang_queries: int | None = 0,
    batch_size: int = 32,
) -> list[EmbeddingSimilarityEvaluator | RerankingEvaluator]:
    """The dev sets the quick start and the benchmarks score: :func:`sts_evaluators` (the built-in pairs
    without the shared data), then, with the shared data, :func:`wang_reranking_evaluator` over
    ``wang_queries`` questions (None: all, 0: left out)."""
    evaluators: list[EmbeddingSimilarityEvaluator | RerankingEvaluator] = list(
        sts_evaluators(data_dir, max_pairs, batch_size=batch_size)
    )
    if wang_queries != 0 and find_shared_data(data_dir) is not None:
        evaluators.append(wang_reranking_evaluator(data_dir, wang_queries, batch_size=batch_size))
    return evaluators


def dev_set_size(evaluator: EmbeddingSimilarityEvaluator | RerankingEvaluator) -> int:
    """How many items an evaluator scores: pairs of an STS set, questions of a reranking set."""
    samples = getattr(evaluator, "samples", None)
    return len(samples) if samples is not None else len(evaluator.scores)


def builtin_sts_evaluator(*, batch_size: int = 16, truncate_dim: int | None = None) -> EmbeddingSimilarityEvaluator:
    """Cosine-Spearman evaluator ("builtin-sts") over :func:`builtin_sts_pairs`, scores mapped to 0..1."""
    return _similarity_evaluator(builtin_sts_pairs(), (0.0, 5.0), "builtin-sts", batch_size, truncate_dim)

