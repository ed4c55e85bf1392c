"""Wall time of ``st-llm2vec eval`` vs plain ``mteb.evaluate(SentenceTransformer(path), same tasks)``, same scores.

    python benchmarks/eval_speed.py [--model PORTABLE_DIR] [--work-dir DIR] [--threads 2] [--repeats 1]

The model (default: SmolLM2-135M-Instruct as ``from_llm`` makes it, untrained, bidirectional, saved portable
into the work dir) is evaluated on the shared dev tasks (``--tasks dev``: sts12, sts13, sick-trial, wang-dev,
wang-dev-retrieval, full sets) with llm2vec's instructions, twice, each as a fresh process timed from start
to exit (imports, model load, data, encoding, scoring):

- ``st-llm2vec eval MODEL --tasks dev`` into an empty output dir (no cached result, no cached embedding);
- plain mteb: ``SentenceTransformer(MODEL)`` with the same prompts under mteb's task-type keys (``STS``,
  ``Reranking-query``, ``Retrieval-query``: mteb drops prompt keys naming tasks it does not know) and
  ``mteb.evaluate(model, the same task objects)``, no cache.

Both run in float32 with ``--threads`` torch threads and batch size 32; ``--repeats 2`` runs the pair again in
the other order (the machine's load moves between runs). Prints each wall time, the ratio, the largest score
difference per task (≤ 0.01 points is the target), the rerun time of ``st-llm2vec eval`` (everything cached),
the CPU (lscpu model name, the flags that matter for these kernels, torch's CPU capability) and the load
average; writes ``eval_speed.json`` into the work dir.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PLAIN = r"""
import json, sys, time, warnings
import torch
torch.set_num_threads(int(sys.argv[2]))
warnings.filterwarnings("ignore")
import mteb
from sentence_transformers import SentenceTransformer
from st_llm2vec.eval.tasks import resolve_tasks
from st_llm2vec.eval.instructions import task_instruction
from st_llm2vec.instructions import prompt_for
from datasets.utils import logging as datasets_logging
datasets_logging.disable_progress_bar()
tasks = resolve_tasks(["dev"])
model = SentenceTransformer(sys.argv[1])
prompts = {}
for task in tasks:
    item = task_instruction(task)
    key = task.metadata.type if item.symmetric else f"{task.metadata.type}-query"
    text = prompt_for(model, item.instruction)
    assert prompts.setdefault(key, text) == text, (key, prompts[key], text)
model.prompts = prompts
result = mteb.evaluate(model, tasks, cache=None, co2_tracker=False, show_progress_bar=False,
                       encode_kwargs={"batch_size": 32, "show_progress_bar": False})
scores = {r.task_name: 100 * r.get_score() for r in result.task_results}
json.dump({"scores": scores, "prompts": prompts}, open(sys.argv[3], "w"), indent=2)
"""


def cpu_description() -> dict:
    import torch

    info = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cores": os.cpu_count()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        info["model_name"] = fields.get("Model name", "").strip()
        flags = set(fields.get("Flags", "").split())
        info["flags"] = sorted(flags & {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16",
                                         "amx_tile", "amx_int8", "avx512_fp16"})
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{shlex.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a portable model dir (default: untrained SmolLM2-135M, bidirectional)")
    parser.add_argument("--work-dir", default=None, help="where the model, outputs and eval_speed.json go")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="run the pair again in the other order")
    args = parser.parse_args()

    from st_llm2vec import devdata

    if devdata.find_shared_data() is None:
        sys.exit("The benchmark needs the shared data folder (../shared/data or $ST_LLM2VEC_DATA).")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="eval_speed-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    model = Path(args.model).resolve() if args.model else work / "smollm2-bi"
    if not (model / "modules.json").is_file():
        import st_llm2vec
        from st_llm2vec.smollm2 import ensure_smollm2

        st_llm2vec.from_llm(str(ensure_smollm2()), format="portable").save(str(model))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    load = [os.getloadavg()[0]]
    runs: list[dict] = []
    order = ["eval", "plain"] + (["plain", "eval"] if args.repeats > 1 else [])
    for i, which in enumerate(order):
        if which == "eval":
            out = work / f"eval-out-{i}"
            command = [sys.executable, "-m", "st_llm2vec.cli", "eval", str(model), "--tasks", "dev", "--output", str(out),
                       "--threads", str(args.threads), "--no-progress", "--no-chart"]
            seconds = timed(command, env)
            summary = json.loads((out / "summary.json").read_text())
            scores = {s["task"]: s["value"] for s in summary["scores"]}
            rerun = timed(command, env)
            runs.append({"run": "st-llm2vec eval", "seconds": seconds, "rerun_seconds": rerun, "scores": scores,
                         "command": shlex.join(command)})
        else:
            result_file = work / f"plain-{i}.json"
            command = [sys.executable, "-c", PLAIN, str(model), str(args.threads), str(result_file)]
            seconds = timed(command, env)
            scores = json.loads(result_file.read_text())["scores"]
            runs.append({"run": "plain mteb.evaluate(SentenceTransformer(path))", "seconds": seconds, "scores": scores})
        load.append(os.getloadavg()[0])
        print(f"{runs[-1]['run']}: {seconds:.0f} s" + (f" (rerun {runs[-1]['rerun_seconds']:.1f} s)"
                                                         if "rerun_seconds" in runs[-1] else ""), flush=True)
    ours = [r for r in runs if r["run"] == "st-llm2vec eval"]
    plain = [r for r in runs if r["run"] != "st-llm2vec eval"]
    ratio = sum(r["seconds"] for r in plain) / sum(r["seconds"] for r in ours)
    tasks = list(ours[0]["scores"])
    diffs = {t: max(abs(o["scores"][t] - p["scores"][t]) for o in ours for p in plain) for t in tasks}
    report = {"model": str(model), "threads": args.threads, "runs": runs, "ratio": ratio, "max_score_diff": diffs,
              "loadavg_1min": load, "cpu": cpu_description(), "python": sys.version.split()[0]}
    (work / "eval_speed.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nplain / st-llm2vec eval wall time: {ratio:.2f}x (target >= 1.3x)")
    print("| task | st-llm2vec eval | plain mteb | max difference |\n|---|---:|---:|---:|")
    for t in tasks:
        print(f"| {t} | {ours[0]['scores'][t]:.2f} | {plain[0]['scores'][t]:.2f} | {diffs[t]:.4f} |")
    cpu = report["cpu"]
    print(f"\nCPU: {cpu.get('model_name')}, {cpu['cores']} cores, flags {' '.join(cpu.get('flags', []))}; torch "
          f"{cpu['torch']}, cpu capability {cpu['cpu_capability']}; {args.threads} threads; load average "
          + " → ".join(f"{x:.1f}" for x in load))
    print(f"wrote {work / 'eval_speed.json'}")


if __name__ == "__main__":
    main()
