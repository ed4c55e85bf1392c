"""The eval path (mteb tasks, mteb's metrics) gives the numbers of Sentence Transformers' own evaluators on the same
pairs, to 0.01 points: cosine Spearman (EmbeddingSimilarityEvaluator), MAP and MRR@10 (RerankingEvaluator), with
and without an instruction. The quick start, the benchmarks and ``st-llm2vec eval`` score through this path; the
training stages' in-loop dev STS runs the ST evaluators, so both report the same scores."""

from __future__ import annotations

import pytest

pytest.importorskip("mteb")

from st_llm2vec import devdata as devsets  # noqa: E402
from st_llm2vec.eval import scores, tasks  # noqa: E402
from st_llm2vec.instructed_evaluator import InstructedSequentialEvaluator  # noqa: E402

TOLERANCE = 0.01  # points (scores ×100)
INSTRUCTION = "Retrieve semantically similar text:"


def reranking_samples(pairs, count: int = 10) -> list[dict]:
    """Each pair's first sentence as a query, its partner as the positive, the next sentences as negatives."""
    return [{"query": a, "positive": [b], "negative": [x for x, _, _ in pairs[i + 1: i + 5]]}
            for i, (a, b, _) in enumerate(pairs[:count])]


def as_task(name: str, samples: list[dict]):
    return tasks.reranking_task(name, [tasks.RerankingSample(s["query"], tuple(s["positive"]), tuple(s["negative"]))
                                       for s in samples])


def st_scores(model, sts_evaluators, rerank_evaluators, instruction=None) -> dict[str, float]:
    """What Sentence Transformers' evaluators say, ×100, under the eval path's keys."""
    out = {}
    for evaluator in sts_evaluators:
        metrics = InstructedSequentialEvaluator([evaluator], instruction)(model)
        out[evaluator.name] = 100 * metrics[evaluator.primary_metric]
    for evaluator in rerank_evaluators:
        metrics = evaluator(model)
        out[f"{evaluator.name}_map"] = 100 * metrics[f"{evaluator.name}_map"]
        out[f"{evaluator.name}_mrr@10"] = 100 * metrics[f"{evaluator.name}_mrr@10"]
    return out


def assert_agree(ours: dict[str, float], theirs: dict[str, float]) -> None:
    assert set(theirs) <= set(ours)
    diffs = {k: abs(ours[k] - theirs[k]) for k in theirs}
    assert max(diffs.values()) <= TOLERANCE, diffs


@pytest.mark.parametrize("fmt", ["portable", "exact"])
def test_the_eval_path_gives_sentence_transformers_evaluators_scores_on_the_same_pairs(tiny_llm, fmt):
    from sentence_transformers.sentence_transformer.evaluation import RerankingEvaluator

    from st_llm2vec import from_llm

    model = from_llm(str(tiny_llm("llama")), max_seq_length=64, format=fmt)
    pairs = devsets.builtin_sts_pairs()
    samples = reranking_samples(pairs)
    theirs = st_scores(model, [devsets.builtin_sts_evaluator()], [RerankingEvaluator(samples, name="rr")])
    ours = scores.evaluate(model, [tasks.builtin_task(), as_task("rr", samples)], progress=False)
    assert_agree(ours, theirs)
    assert ours["sts_mean"] == ours["builtin-sts"]
    instructed = scores.evaluate(model, [tasks.builtin_task()], instruction=INSTRUCTION, progress=False)
    assert_agree(instructed, st_scores(model, [devsets.builtin_sts_evaluator()], [], INSTRUCTION))
    assert instructed["builtin-sts"] != ours["builtin-sts"]  # the instruction reached the texts


@pytest.mark.slow
@pytest.mark.skipif(devsets.find_shared_data() is None, reason="no shared data folder")
def test_on_smollm2_and_the_shared_dev_sets_the_eval_path_gives_the_st_evaluators_scores():
    """The quick start's model on 300 pairs per STS set and 40 Wang questions (what the quality benchmark scores)."""
    import torch

    from st_llm2vec import from_llm
    from st_llm2vec.smollm2 import ensure_smollm2

    torch.set_num_threads(2)
    model = from_llm(str(ensure_smollm2()), max_seq_length=128)
    evaluators = devsets.dev_evaluators(max_pairs=300, wang_queries=40)
    sts, rerank = evaluators[:-1], evaluators[-1:]
    dev = tasks.dev_tasks(max_pairs=300, wang_queries=40)
    assert_agree(scores.evaluate(model, dev, progress=False), st_scores(model, sts, rerank))
    assert_agree(scores.evaluate(model, dev[:-1], instruction=INSTRUCTION, progress=False),
                 st_scores(model, sts, [], INSTRUCTION))
