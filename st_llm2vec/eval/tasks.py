"""Evaluation tasks for ``st-llm2vec eval``: any task mteb knows, and local tasks made from files a user has.

Every task is an mteb task, so mteb computes every metric: a local task is a subclass of mteb's own
``AbsTaskSTS`` (scored pairs) or ``AbsTaskRetrieval`` (a BEIR retrieval dir; reranking = retrieval with
``top_ranked`` candidates, as mteb 2 runs its own reranking tasks) whose ``load_data`` reads the user's
data instead of the Hub. Files are parsed when the task is made, so a bad file is reported (file and
line) before any model loads.

The shared dev data (``../shared/data``, see :mod:`st_llm2vec.devdata`) ships as ready local tasks
under the names the quick start's tables use: ``sts12``, ``sts13``, ``sick-trial`` (cosine Spearman),
``wang-dev`` (reranking each TREC-QA dev question's candidate answers) and ``wang-dev-retrieval``
(retrieving them from the pool of all the dev questions' candidates).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import devdata
from ..errors import InputError, MissingFileError
from . import require_mteb
from .task_files import RerankingSample, looks_like_reranking, read_beir, read_reranking, read_scored_pairs

require_mteb()

import mteb  # noqa: E402  (after the check that names the extra to install)
from datasets import Dataset, DatasetDict  # noqa: E402
from mteb.abstasks.abstask import AbsTask  # noqa: E402
from mteb.abstasks.retrieval import AbsTaskRetrieval  # noqa: E402
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData  # noqa: E402
from mteb.abstasks.sts import AbsTaskSTS  # noqa: E402
from mteb.abstasks.task_metadata import TaskMetadata  # noqa: E402

# Main score of each local task kind: mteb's own choice for its STS / reranking / retrieval tasks.
STS, RERANKING, RETRIEVAL = "sts", "reranking", "retrieval"
MAIN_SCORES = {STS: "cosine_spearman", RERANKING: "map_at_1000", RETRIEVAL: "ndcg_at_10"}
MTEB_TYPES = {STS: "STS", RERANKING: "Reranking", RETRIEVAL: "Retrieval"}

# The shared dev sets as local tasks (name -> what it is); ``dev`` on the command line means all of them.
WANG_RETRIEVAL = f"{devdata.WANG_DEV}-retrieval"
SHARED_TASKS: dict[str, str] = {
    "sts12": "SemEval STS 2012 test (MSRpar, OnWN, SMTeuroparl, SMTnews), cosine Spearman",
    "sts13": "SemEval STS 2013 test (FNWN, headlines, OnWN), cosine Spearman",
    "sick-trial": "SICK 2014 trial relatedness, cosine Spearman",
    devdata.WANG_DEV: "Wang TREC-QA dev: rerank each question's candidate answers (MAP)",
    WANG_RETRIEVAL: "Wang TREC-QA dev: retrieve the answers from the pool of all dev candidates (nDCG@10)",
}
SHARED_GROUP = "dev"
SHARED_SOURCE = "https://github.com/brmson/dataset-sts"  # where the shared data folder's sets were collected from


def content_revision(*parts: Any) -> str:
    """A short hash of a local task's data: its mteb dataset revision, so results of other data are never reused."""
    digest = hashlib.sha256(json.dumps(parts, ensure_ascii=False, sort_keys=True).encode("utf-8"))
    return digest.hexdigest()[:16]


def _metadata(name: str, kind: str, description: str, reference: str | None, revision: str) -> TaskMetadata:
    return TaskMetadata(
        name=name,
        description=description,
        reference=reference,
        dataset={"path": f"local:{name}", "revision": revision},
        type=MTEB_TYPES[kind],
        category="t2t",
        modalities=["text"],
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score=MAIN_SCORES[kind],
    )


def _unload(task: AbsTask) -> None:
    """Free a local task's dataset and keep its metadata: mteb's ``unload_data`` drops the instance's metadata
    (to restore a Hub task's class-level one), which is all a local task has."""
    task.dataset = None
    task.data_loaded = False


class LocalSTSTask(AbsTaskSTS):
    """Scored sentence pairs as an mteb STS task (cosine Spearman and every other STS metric mteb computes)."""

    def __init__(self, name: str, pairs: Sequence[devdata.StsPair], scale: tuple[float, float], description: str,
                 reference: str | None = None) -> None:
        self.metadata = _metadata(name, STS, description, reference, content_revision(STS, list(pairs), scale))
        self.min_score, self.max_score = scale  # mteb maps the scores to 0..1 (Spearman reads only their order)
        self.pairs = list(pairs)
        super().__init__()

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        self.dataset = DatasetDict({"test": Dataset.from_dict({
            "sentence1": [p.sentence1 for p in self.pairs],
            "sentence2": [p.sentence2 for p in self.pairs],
            "score": [float(p.score) for p in self.pairs],
        })})
        self.data_loaded = True

    def unload_data(self) -> None:
        _unload(self)


class LocalRetrievalTask(AbsTaskRetrieval):
    """A corpus, queries and relevance judgements as an mteb retrieval task; with ``top_ranked`` (each query's
    candidates) it is a reranking task, as mteb 2 runs its own."""

    def __init__(self, name: str, kind: str, corpus: dict[str, tuple[str, str]], queries: dict[str, str],
                 qrels: dict[str, dict[str, int]], top_ranked: dict[str, list[str]] | None, description: str,
                 reference: str | None = None) -> None:
        revision = content_revision(kind, corpus, queries, qrels, top_ranked)
        self.metadata = _metadata(name, kind, description, reference, revision)
        self.corpus_rows, self.query_rows, self.qrels, self.candidates = corpus, queries, qrels, top_ranked
        super().__init__()

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        corpus = Dataset.from_dict({"id": list(self.corpus_rows),
                                    "title": [title for title, _ in self.corpus_rows.values()],
                                    "text": [text for _, text in self.corpus_rows.values()]})
        queries = Dataset.from_dict({"id": list(self.query_rows), "text": list(self.query_rows.values())})
        top_ranked = {q: list(d) for q, d in self.candidates.items()} if self.candidates else None
        split = RetrievalSplitData(corpus=corpus, queries=queries,
                                   relevant_docs={q: dict(d) for q, d in self.qrels.items()}, top_ranked=top_ranked)
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True

    def unload_data(self) -> None:
        _unload(self)


# --------------------------------------------------------------------------- building local tasks


def sts_task(name: str, pairs: Sequence[devdata.StsPair], *, scale: tuple[float, float] | None = None,
             description: str = "", reference: str | None = None) -> AbsTask:
    """An mteb STS task over ``pairs``; ``scale`` (min, max) defaults to the pairs' own range."""
    if not pairs:
        raise InputError(f"task {name!r}: no scored pairs")
    if scale is None:
        scores = [p.score for p in pairs]
        scale = (min(scores), max(scores) if max(scores) > min(scores) else min(scores) + 1.0)
    return LocalSTSTask(name, pairs, scale, description or f"scored pairs ({len(pairs)})", reference)


def reranking_task(name: str, samples: Sequence[RerankingSample], *, description: str = "",
                   reference: str | None = None, retrieval: bool = False) -> AbsTask:
    """An mteb reranking task (each query ranks its own candidates), or with ``retrieval`` a retrieval task over
    the pool of every query's candidates. Queries without a positive are left out (mteb drops them too); a text
    listed twice for one query counts once (mteb's relevance judgements are per document)."""
    corpus: dict[str, tuple[str, str]] = {}
    ids: dict[str, str] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    top_ranked: dict[str, list[str]] = {}
    for sample in samples:
        if not sample.positives:
            continue
        qid = f"q{len(queries)}"
        queries[qid] = sample.query
        judged: dict[str, int] = {}
        for text, relevance in [(t, 0) for t in sample.negatives] + [(t, 1) for t in sample.positives]:
            if text not in ids:
                ids[text] = f"d{len(ids)}"
                corpus[ids[text]] = ("", text)
            judged[ids[text]] = max(relevance, judged.get(ids[text], 0))
        top_ranked[qid] = list(judged)
        qrels[qid] = judged if not retrieval else {d: r for d, r in judged.items() if r > 0}
    if not queries:
        raise InputError(f"task {name!r}: no query has a positive candidate")
    kind = RETRIEVAL if retrieval else RERANKING
    return LocalRetrievalTask(name, kind, corpus, queries, qrels, None if retrieval else top_ranked,
                              description or f"{len(queries)} queries, {len(corpus)} candidate documents", reference)


def retrieval_task(name: str, corpus: dict[str, tuple[str, str]], queries: dict[str, str],
                   qrels: dict[str, dict[str, int]], *, description: str = "", reference: str | None = None) -> AbsTask:
    """An mteb retrieval task: ``corpus`` id -> (title, text), ``queries`` id -> text, ``qrels`` query -> doc -> grade."""
    return LocalRetrievalTask(name, RETRIEVAL, corpus, queries, qrels, None,
                              description or f"{len(queries)} queries, {len(corpus)} documents", reference)


def local_task(spec: str) -> AbsTask:
    """A local task from ``[KIND:]PATH``: a BEIR dir (retrieval), a JSONL of reranking samples, or a file of scored
    pairs (TSV/CSV/JSONL, :func:`~st_llm2vec.eval.devdata.read_scored_pairs`). Without KIND (``sts``, ``retrieval``,
    ``reranking``) a dir is retrieval and a JSONL whose first object has ``query`` and ``positive(s)`` is
    reranking. The task is named after the file (its stem) or the dir."""
    kind, _, rest = spec.partition(":")
    if kind not in (STS, RETRIEVAL, RERANKING) or not rest:
        kind, rest = "", spec
    path = Path(rest).expanduser()
    if not path.exists():
        raise MissingFileError(f"{path}: no such file or directory")
    name = path.name if path.is_dir() else path.stem
    description = f"local {{}} task from {path.resolve()}"
    reference = path.resolve().as_uri()
    if not kind:
        kind = RETRIEVAL if path.is_dir() else (RERANKING if looks_like_reranking(path) else STS)
    if kind == RETRIEVAL:
        if not path.is_dir():
            raise InputError(f"{path}: a retrieval task is a BEIR dir (corpus.jsonl, queries.jsonl, qrels/test.tsv)")
        corpus, queries, qrels = read_beir(path)
        return retrieval_task(name, corpus, queries, qrels, description=description.format(RETRIEVAL),
                              reference=reference)
    if path.is_dir():
        raise InputError(f"{path} is a directory; a {kind} task is a file")
    if kind == RERANKING:
        return reranking_task(name, read_reranking(path), description=description.format(RERANKING),
                              reference=reference)
    return sts_task(name, read_scored_pairs(path), description=description.format("STS"), reference=reference)


# --------------------------------------------------------------------------- the shared dev data


def shared_task(name: str, data_dir: str | Path | None = None, *, max_pairs: int | None = None,
                max_queries: int | None = None) -> AbsTask:
    """One of :data:`SHARED_TASKS` from the shared data folder (``max_pairs`` / ``max_queries``: the samples the
    quick start and the benchmarks score, :func:`devdata.sts_evaluators`' and :func:`devdata.wang_samples`')."""
    if name not in SHARED_TASKS:
        raise InputError(f"{name!r} is not a shared dev task ({', '.join(SHARED_TASKS)})")
    root = devdata.find_shared_data(data_dir)
    if root is None:
        raise MissingFileError(
            f"task {name!r} reads the shared dev data folder, which is not here: put it at "
            f"{Path.cwd().parent / 'shared' / 'data'} (beside the folder you run from) or set "
            f"{devdata.DATA_ENV}=/path/to/data (it holds sts/, anssel/: SemEval STS, SICK, Wang TREC-QA). Without it, "
            "evaluate on your own files (--tasks pairs.tsv, a BEIR dir, reranking.jsonl) or on mteb tasks (--tasks STS12).")
    reference = SHARED_SOURCE
    description = f"{SHARED_TASKS[name]}; read from {root}"
    if name in devdata.STS_YEARS:
        pairs = devdata.read_sts(root / devdata.STS_DIR / devdata.STS_YEARS[name], split="test")
        return sts_task(name, devdata.subsample(pairs, max_pairs), scale=(0.0, 5.0),
                        description=description, reference=reference)
    if name == "sick-trial":
        sick = [devdata.StsPair(p.sentence_a, p.sentence_b, p.relatedness)
                for p in devdata.read_sick(root / devdata.SICK_DIR / "SICK_trial.txt")]
        return sts_task(name, devdata.subsample(sick, max_pairs), scale=(1.0, 5.0),
                        description=description, reference=reference)
    samples = [RerankingSample(s["query"], tuple(s["positive"]), tuple(s["negative"]))
               for s in devdata.wang_samples(root, "dev", max_queries)]
    return reranking_task(name, samples, description=description, reference=reference,
                          retrieval=name == WANG_RETRIEVAL)


def builtin_task() -> AbsTask:
    """The project's hand-written STS pairs (``builtin-sts``), scored when the shared data is absent."""
    pairs = [devdata.StsPair(*p) for p in devdata.builtin_sts_pairs()]
    return sts_task("builtin-sts", pairs, scale=(0.0, 5.0),
                    description="40 STS pairs hand-written for st-llm2vec (0-5 scale)")


def dev_tasks(data_dir: str | Path | None = None, max_pairs: int | None = None, *,
              wang_queries: int | None = 0) -> list[AbsTask]:
    """The dev sets the quick start and the benchmarks score, as mteb tasks (the same samples as
    :func:`devdata.dev_evaluators`): STS 2012 / 2013 / SICK trial, then Wang reranking over ``wang_queries``
    questions (None: all, 0: left out); :func:`builtin_task` alone without the shared data."""
    if devdata.find_shared_data(data_dir) is None:
        return [builtin_task()]
    tasks = [shared_task(name, data_dir, max_pairs=max_pairs) for name in ("sts12", "sts13", "sick-trial")]
    if wang_queries != 0:
        tasks.append(shared_task(devdata.WANG_DEV, data_dir, max_queries=wang_queries))
    return tasks


def task_size(task: AbsTask) -> int:
    """How many items a local task scores: pairs of an STS task, queries of a retrieval or reranking task."""
    if isinstance(task, LocalSTSTask):
        return len(task.pairs)
    if isinstance(task, LocalRetrievalTask):
        return len(task.query_rows)
    raise InputError(f"{task.metadata.name} is not a local task")


# --------------------------------------------------------------------------- resolving --tasks


def _looks_like_path(spec: str) -> bool:
    kind, _, rest = spec.partition(":")
    if kind in (STS, RETRIEVAL, RERANKING) and rest:
        return True
    return os.sep in spec or spec.startswith(".") or Path(spec).suffix in (".tsv", ".csv", ".jsonl", ".txt") \
        or Path(spec).exists()


def mteb_task_names() -> list[str]:
    """Every task name mteb knows (superseded ones too: llm2vec's table names several)."""
    return [t.metadata.name for t in mteb.get_tasks(exclude_superseded=False, exclude_private=False)]


def closest_names(name: str, names: Sequence[str], n: int = 5) -> list[str]:
    """The names closest to ``name``, case ignored (``sts12`` finds ``STS12``)."""
    by_lower: dict[str, list[str]] = {}
    for known in names:
        by_lower.setdefault(known.lower(), [])
        if known not in by_lower[known.lower()]:
            by_lower[known.lower()].append(known)
    matches = difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=0.5)
    return [known for m in matches for known in by_lower[m]][:n]


def resolve_tasks(specs: Sequence[str], data_dir: str | Path | None = None) -> list[AbsTask]:
    """The tasks ``--tasks`` names, in order, duplicates dropped: ``dev`` (all shared dev tasks), a shared dev task
    name, a local file or dir (:func:`local_task`), an mteb benchmark name (its tasks) or an mteb task name."""
    tasks: list[AbsTask] = []
    for spec in specs:
        if spec == SHARED_GROUP:
            tasks += [shared_task(name, data_dir) for name in SHARED_TASKS]
        elif spec in SHARED_TASKS:
            tasks.append(shared_task(spec, data_dir))
        elif _looks_like_path(spec):
            tasks.append(local_task(spec))
        else:
            tasks += _mteb_tasks(spec)
    unique: dict[str, AbsTask] = {}
    for task in tasks:
        previous = unique.setdefault(task.metadata.name, task)
        if previous is not task and previous.metadata.revision != task.metadata.revision:
            raise InputError(f"two tasks are named {task.metadata.name!r} ({previous.metadata.description}; "
                             f"{task.metadata.description}): rename one file")
    return list(unique.values())


def _mteb_tasks(name: str) -> list[AbsTask]:
    try:
        return [mteb.get_task(name)]
    except KeyError:
        pass
    try:
        return list(mteb.get_benchmark(name).tasks)
    except (KeyError, ValueError):
        pass
    known = mteb_task_names()
    benchmarks = [b.name for b in mteb.get_benchmarks()]
    suggestions = closest_names(name, [*SHARED_TASKS, SHARED_GROUP, *known, *benchmarks])
    hint = f"closest names: {', '.join(suggestions)}" if suggestions else "no similar name"
    raise InputError(f"unknown task {name!r} ({hint}). A task is an mteb task or benchmark name, "
                     f"a shared dev task ({', '.join(SHARED_TASKS)}, or {SHARED_GROUP!r} for all), or a local file or "
                     "BEIR dir (a path).")
