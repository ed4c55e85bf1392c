"""Portable vs exact format on SmolLM2-135M-Instruct: how much the instruction semantics change dev STS.

"exact" = llm2vec 0.2.3 semantics (``instruction.strip() + " " + text``, only the text's tokens pooled);
"portable" = stock sentence-transformers semantics (``prompt + text`` tokenized together, ``Pooling(include_prompt=
False)`` leaving out the prompt's tokens and a leading BOS). The two differ only where tokenizing the prompt and
the text together merges tokens across the boundary. Documents (no instruction) must come out identical.

Models: (1) SmolLM2-135M-Instruct untrained, as ``from_llm`` gives it (bidirectional, mean pooling);
(2) optionally the quick-start model (``st-llm2vec quickstart``, saved portable): portable =
``load_model(dir)``, exact twin = ``from_llm(dir, format="exact")`` on the same weights.

Scores: cosine Spearman ×100 on the shared dev sets (STS12 test, STS13 test, SICK trial; a fixed sample of
``--eval-pairs`` pairs each), as ``st-llm2vec eval`` computes it (``st_llm2vec.eval.scores``), with the instruction on
both sides and without. Also: min / mean cosine between the exact and the portable embedding of every unique
dev text (instructed, and plain as a check). Mean pooling only (with eos pooling a saved tokenizer appends
EOS itself).

    OMP_NUM_THREADS=1 python benchmarks/portable_vs_exact.py --train-quickstart /tmp/qs-model
    OMP_NUM_THREADS=1 python benchmarks/portable_vs_exact.py --trained /tmp/qs-model   # already trained
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

INSTRUCTION = "Retrieve semantically similar text:"
SETS = ("sts12", "sts13", "sick-trial")


def hardware() -> dict:
    info = {"platform": platform.platform(), "cpu_count": os.cpu_count()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            key, _, val = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "Socket(s)"):
                info[key.strip()] = val.strip()
    except OSError:
        pass
    return info


def encode(model, texts: list[str], instruction: str | None, batch_size: int) -> np.ndarray:
    from st_llm2vec.instructions import prompt_for

    prompt = prompt_for(model, instruction) if instruction else None
    return model.encode(texts, prompt=prompt, batch_size=batch_size, convert_to_numpy=True,
                        normalize_embeddings=True, show_progress_bar=False)


def run_model(label: str, builders: dict, texts: list[str], evaluators: list, args, results: dict) -> None:
    """Score each format on the dev evaluators, with and without the instruction; encode every unique dev
    text each way and compare the formats' embeddings."""
    from st_llm2vec.eval.scores import evaluate

    embs: dict[tuple[str, str], np.ndarray] = {}
    for fmt, build in builders.items():
        t0 = time.perf_counter()
        model = build()
        model.max_seq_length = args.max_seq_length
        model.eval()
        enc = model[0]
        print(f"[{label}/{fmt}] loaded in {time.perf_counter() - t0:.1f}s: format={getattr(enc, 'format', '?')} "
              f"chat_template={getattr(enc, 'chat_template', None)!r} text_suffix={getattr(enc, 'text_suffix', None)!r} "
              f"modules={[type(m).__name__ for m in model]} "
              f"prompt_for={__import__('st_llm2vec.instructions', fromlist=['prompt_for']).prompt_for(model, INSTRUCTION)!r}",
              flush=True)
        for mode, instr in (("instructed", INSTRUCTION), ("plain", None)):
            t0 = time.perf_counter()
            embs[(fmt, mode)] = encode(model, texts, instr, args.batch_size)
            dt = time.perf_counter() - t0
            scores = evaluate(model, evaluators, instruction=instr, progress=False)
            results["sts"].append({"model": label, "format": fmt, "instruction": instr, "scores": scores,
                                   "encode_seconds": dt, "texts": len(texts)})
            print(f"[{label}/{fmt}/{mode}] {len(texts)} texts in {dt:.0f}s: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()), flush=True)
        del model
    for mode in ("instructed", "plain"):
        cos = np.sum(embs[("exact", mode)] * embs[("portable", mode)], axis=1)
        i = int(np.argmin(cos))
        results["cosine"].append({"model": label, "mode": mode, "min": float(cos.min()), "mean": float(cos.mean()),
                                  "median": float(np.median(cos)), "p05": float(np.percentile(cos, 5)),
                                  "max_abs_diff": float(np.abs(embs[("exact", mode)] - embs[("portable", mode)]).max()),
                                  "argmin_text": texts[i], "n": len(texts)})


def table(results: dict) -> str:
    cols = ["STS12", "STS13", "SICK", "mean"]
    keys = [*SETS, "sts_mean"]
    lines = [f"| model | format | instruction | {' | '.join(cols)} |", "|---|---|---|" + "---:|" * len(cols)]
    for r in results["sts"]:
        lines.append(f"| {r['model']} | {r['format']} | {'yes' if r['instruction'] else 'no'} | "
                     + " | ".join(f"{r['scores'][k]:.2f}" for k in keys) + " |")
    lines += ["", "exact vs portable embedding cosine, same text (all unique dev texts):",
              "| model | texts | n | min | p05 | median | mean | max abs diff |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for c in results["cosine"]:
        lines.append(f"| {c['model']} | {c['mode']} | {c['n']} | {c['min']:.4f} | {c['p05']:.4f} | {c['median']:.4f} | "
                     f"{c['mean']:.4f} | {c['max_abs_diff']:.2e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eval-pairs", type=int, default=300, help="pairs per dev set (a fixed sample, as devsets does)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-seq-length", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--trained", default=None, help="an existing quick-start (portable) model dir to compare too")
    p.add_argument("--train-quickstart", default=None, metavar="DIR",
                   help="train the quick-start model into DIR first (st-llm2vec quickstart --threads N), then compare it")
    p.add_argument("--budget-minutes", type=float, default=25.0,
                   help="skip training the quick-start model when the untrained part leaves too little of this")
    p.add_argument("--json", default="/tmp/portable_vs_exact.json")
    args = p.parse_args(argv)
    start = time.perf_counter()
    command = "OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "?") + " " + " ".join(
        shlex.quote(a) for a in [sys.executable.rsplit("/", 1)[-1], *sys.argv])

    import torch

    torch.set_num_threads(args.threads)
    from st_llm2vec import from_llm, load_model
    from st_llm2vec import devdata
    from st_llm2vec.eval import tasks as eval_tasks
    from st_llm2vec.smollm2 import ensure_smollm2

    if devdata.find_shared_data() is None:
        sys.exit("The benchmark needs the shared data folder (../shared/data or $ST_LLM2VEC_DATA).")
    # the STS dev sets as `st-llm2vec eval` scores them (st_llm2vec.eval.scores)
    evaluators = eval_tasks.dev_tasks(max_pairs=args.eval_pairs or None)
    sets = {t.metadata.name: eval_tasks.task_size(t) for t in evaluators}
    texts = list(dict.fromkeys(t for task in evaluators for p in task.pairs for t in (p.sentence1, p.sentence2)))
    print(f"dev sets: {', '.join(f'{k} {n} pairs' for k, n in sets.items())}; {len(texts)} unique texts; "
          f"instruction {INSTRUCTION!r}; torch threads {torch.get_num_threads()}", flush=True)

    results: dict = {"command": command, "instruction": INSTRUCTION, "torch_threads": torch.get_num_threads(),
                     "hardware": hardware(), "eval_pairs": sets,
                     "unique_texts": len(texts), "max_seq_length": args.max_seq_length, "sts": [], "cosine": [],
                     "notes": []}
    base = str(ensure_smollm2())
    run_model("untrained", {
        "exact": lambda: from_llm(base, format="exact", pooling_mode="mean"),
        "portable": lambda: from_llm(base, format="portable", pooling_mode="mean"),
    }, texts, evaluators, args, results)
    untrained_s = time.perf_counter() - start
    results["untrained_seconds"] = untrained_s

    trained = args.trained
    if args.train_quickstart:
        left = args.budget_minutes * 60 - untrained_s
        if left < untrained_s + 420:
            note = f"quick-start model skipped: {left / 60:.1f} min left of the {args.budget_minutes:.0f}-min budget"
            print(note, flush=True)
            results["notes"].append(note)
        else:
            qs_cmd = ["st-llm2vec", "quickstart", "--output", args.train_quickstart, "--threads", str(args.threads),
                      "--no-progress"]
            print("training:", " ".join(qs_cmd), flush=True)
            t0 = time.perf_counter()
            subprocess.run(qs_cmd, check=True)
            results["quickstart_command"] = " ".join(qs_cmd)
            results["quickstart_seconds"] = time.perf_counter() - t0
            trained = args.train_quickstart
    if trained:
        saved_len = json.loads((Path(trained) / "tokenizer_config.json").read_text()).get("model_max_length")
        results["trained_dir"] = trained
        results["trained_saved_max_seq_length"] = saved_len
        run_model("quickstart", {
            "exact": lambda: from_llm(trained, format="exact", pooling_mode="mean"),
            "portable": lambda: load_model(trained),
        }, texts, evaluators, args, results)

    results["wall_seconds"] = time.perf_counter() - start
    Path(args.json).write_text(json.dumps(results, indent=2))
    hw = results["hardware"]
    print()
    print(table(results))
    print()
    print(f"command: {command}")
    print(f"torch threads: {results['torch_threads']}; hardware: {hw.get('Model name', '?')}, {hw.get('CPU(s)', '?')} CPU(s)"
          f" ({hw.get('Core(s) per socket', '?')} core(s)/socket, {hw.get('Thread(s) per core', '?')} thread(s)/core)")
    print(f"wall time: {results['wall_seconds']:.0f}s (untrained part {untrained_s:.0f}s"
          + (f", quick-start training {results['quickstart_seconds']:.0f}s" if "quickstart_seconds" in results else "")
          + f"); JSON: {args.json}")
    for n in results["notes"]:
        print("note:", n)


if __name__ == "__main__":
    main()
