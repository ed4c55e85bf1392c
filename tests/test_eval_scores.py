"""st_llm2vec/eval/scores.py: dev tasks scored through st-llm2vec eval's path with their scores named as the tables
name them, an instruction applied and taken off afterwards; the training stages' instructed dev evaluator."""

from __future__ import annotations

from st_llm2vec import devdata as devsets
from st_llm2vec.eval import scores
from st_llm2vec.eval.scores import evaluate


def test_evaluate_reports_the_tasks_scores_under_the_table_keys(tiny_llm):
    """Scores ×100 keyed as the tables name them (tests/test_eval_agreement.py: the same numbers as Sentence
    Transformers' evaluators); an instruction reaches the texts and leaves the model's prompts as they were."""
    from st_llm2vec import from_llm
    from st_llm2vec.eval import tasks

    model = from_llm(str(tiny_llm("llama")), max_seq_length=32)
    pairs = devsets.builtin_sts_pairs()
    samples = [tasks.RerankingSample(a, (b,), tuple(x for x, _, _ in pairs[i + 1 : i + 4]))
               for i, (a, b, _) in enumerate(pairs[:8])]
    scores = evaluate(model, [tasks.builtin_task(), tasks.reranking_task("rr", samples)], progress=False)
    assert list(scores) == ["builtin-sts", "rr_map", "rr_mrr@10", "sts_mean"]
    assert scores["builtin-sts"] == scores["sts_mean"]
    prompts = dict(model.prompts)
    instructed = evaluate(model, [tasks.builtin_task()], instruction="Retrieve semantically similar text:", progress=False)
    assert instructed["builtin-sts"] != scores["builtin-sts"] and model.prompts == prompts


def test_dev_evaluator_applies_the_eval_instruction_and_restores_prompts(tiny_llm):
    from st_llm2vec import from_llm
    from st_llm2vec.instructed_evaluator import InstructedSequentialEvaluator

    model = from_llm(str(tiny_llm()))
    sts = devsets.builtin_sts_evaluator()
    plain = InstructedSequentialEvaluator([sts], None)(model)
    seen = []
    preprocess = model.preprocess
    model.preprocess = lambda texts, prompt=None, **kw: seen.append(prompt) or preprocess(texts, prompt=prompt, **kw)
    instructed = InstructedSequentialEvaluator([sts], "Retrieve semantically similar text:")(model)
    assert set(seen) == {"Retrieve semantically similar text: "}  # portable model: the stock prompt form
    assert instructed["builtin-sts_spearman_cosine"] != plain["builtin-sts_spearman_cosine"]
    assert model.default_prompt_name is None and "st_llm2vec_eval" not in model.prompts


def test_markdown_table_aligns_numbers_and_marks_missing():
    rows = [{"stage": "a", "x": 12.345, "t": "3 s"}, {"stage": "b", "x": None, "t": "4 s"}]
    table = scores.markdown_table(rows, [("stage", "step"), ("x", "X"), ("t", "time")])
    assert table.splitlines() == [
        "| step | X | time |",
        "|---|---:|---|",
        "| a | 12.3 | 3 s |",
        "| b | – | 4 s |",
    ]


def test_score_columns_fixed_order():
    keys = ["sts_mean", "wang-dev_map", "sts12", "unknown"]
    assert [h for _, h in scores.score_columns(keys)] == ["STS12", "STS mean", "wang MAP"]
