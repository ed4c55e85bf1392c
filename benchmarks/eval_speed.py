"""Wall time of ``st-llm2vec eval`` vs plain ``mteb.evaluate(SentenceTransformer(path), same tasks)``, same scores.

    python benchmarks/eval_speed.py [--quick] [--rounds 2] [--threads 1] [--precision float32] [--model DIR]
                                    [--work-dir DIR]

The model (default: SmolLM2-135M-Instruct as ``from_llm`` makes it, untrained, bidirectional, mean pooling, saved
portable into the work dir) is evaluated with llm2vec's instructions, in float32, batch size 32, on the shared
dev tasks: sts12, sts13, sick-trial, wang-dev, wang-dev-retrieval (``--quick``: 80 pairs of each STS set and 16
Wang questions; otherwise the full sets, which is ``st-llm2vec eval MODEL --tasks dev``). Each round runs both,
each as a fresh process timed from start to exit (imports, model load, data, encoding, scoring), in alternating
order (round 0 ours first, round 1 plain first, ...), so a change in the machine's load falls on both:

- ours: ``st-llm2vec eval`` into an empty output dir (no cached result, no cached embedding): the command itself
  for the full sets; for ``--quick`` the same :func:`st_llm2vec.eval.runner.evaluate_models` call with the
  subsampled tasks (the command has no option to subsample);
- plain mteb: ``SentenceTransformer(MODEL)`` with the same prompts under mteb's task-type keys (``STS``,
  ``Reranking-query``, ``Retrieval-query``: mteb drops prompt keys naming tasks it does not know) and
  ``mteb.evaluate(model, the same tasks)``, no cache.

``--precision auto`` (or bf16-mixed) runs ours under the precision plan, measured at load; plain mteb stays
float32 (stock sentence-transformers has no per-layer precision), so the score differences then show what the
plan moves rather than an equality check.

Prints a row per run (whole run and encode step: the seconds mteb waited for embeddings, summed over its
``encode`` calls), the ratios plain / ours over all rounds (and the range per round), the largest score
difference per task (target: equal to the third decimal), the CPU (model name, the flags these kernels use,
torch's CPU capability), the threads and the load average; writes ``eval_speed.json`` into the work dir.
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

QUICK = {"max_pairs": 80, "max_queries": 16}

# The tasks both sides evaluate (argv: data_dir or "", quick 0/1).
TASKS = r"""
def quick_tasks(quick):
    from st_llm2vec.eval.tasks import SHARED_TASKS, shared_task
    from st_llm2vec import devdata
    out = []
    for name in SHARED_TASKS:
        if not quick:
            out.append(shared_task(name))
        elif name in devdata.STS_YEARS or name == "sick-trial":
            out.append(shared_task(name, max_pairs=%(max_pairs)d))
        else:
            out.append(shared_task(name, max_queries=%(max_queries)d))
    return out
""" % QUICK

# Timing of the encode step: the seconds mteb waits in the model wrapper's ``encode``.
TIMER = r"""
import time as _time
ENCODE = [0.0]
def timed_encode(cls):
    real = cls.encode
    def encode(self, *args, **kwargs):
        start = _time.perf_counter()
        try:
            return real(self, *args, **kwargs)
        finally:
            ENCODE[0] += _time.perf_counter() - start
    cls.encode = encode
"""

PLAIN = TIMER + TASKS + r"""
import json, sys, warnings
import torch
torch.set_num_threads(int(sys.argv[2]))
warnings.filterwarnings("ignore")
import logging
logging.getLogger("mteb").setLevel(logging.ERROR)
import mteb
from mteb.models import SentenceTransformerEncoderWrapper
from sentence_transformers import SentenceTransformer
from st_llm2vec.eval.instructions import task_instruction
from st_llm2vec.instructions import prompt_for
from datasets.utils import logging as datasets_logging
datasets_logging.disable_progress_bar()
timed_encode(SentenceTransformerEncoderWrapper)
tasks = quick_tasks(sys.argv[4] == "1")
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
json.dump({"scores": scores, "prompts": prompts, "encode_seconds": ENCODE[0]}, open(sys.argv[3], "w"), indent=2)
"""

# Ours with the quick tasks: what ``run_eval`` does, the tasks given as objects.
OURS = TIMER + TASKS + r"""
import json, sys
from pathlib import Path
from st_llm2vec.eval import command
from st_llm2vec.eval.cached_encoder import EvalEncoder
timed_encode(EvalEncoder)
from st_llm2vec.eval import runner
real = runner.evaluate_models
runner.evaluate_models = lambda models, _tasks, config: real(models, quick_tasks(sys.argv[4] == "1"), config)
from st_llm2vec import cli
code = cli.main(["eval", sys.argv[1], "--tasks", "dev", "--output", sys.argv[3], "--threads", sys.argv[2],
                 "--no-progress", "--no-chart", "--batch-size", "32", "--precision", sys.argv[5]])
summary = json.loads((Path(sys.argv[3]) / "summary.json").read_text())
json.dump({"scores": {s["task"]: s["value"] for s in summary["scores"]}, "encode_seconds": ENCODE[0],
           "plan": summary["scores"][0]["instruction"].get("plan")},
          open(Path(sys.argv[3]) / "timing.json", "w"), indent=2)
sys.exit(code)
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
        sys.exit(f"{shlex.join(command[:3])} ... failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a portable model dir (default: untrained SmolLM2-135M, bidirectional)")
    parser.add_argument("--work-dir", default=None, help="where the model, outputs and eval_speed.json go")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of both sides (default: 1)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of both runs, order alternating (default: 2)")
    parser.add_argument("--precision", default="float32", choices=("float32", "auto", "bf16-mixed"),
                        help="ours only (plain mteb stays float32; default: float32, scores then equal)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK['max_pairs']} pairs per STS set and {QUICK['max_queries']} Wang questions")
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
    quick = "1" if args.quick else "0"
    load = [os.getloadavg()[0]]
    runs: list[dict] = []
    for round_ in range(args.rounds):
        order = ["ours", "plain"] if round_ % 2 == 0 else ["plain", "ours"]
        for which in order:
            if which == "ours":
                out = work / f"eval-out-{round_}"  # fresh: no cached result, no cached embedding
                if args.quick:
                    command = [sys.executable, "-c", OURS, str(model), str(args.threads), str(out), quick,
                               args.precision]
                else:
                    command = [sys.executable, "-m", "st_llm2vec.cli", "eval", str(model), "--tasks", "dev",
                               "--output", str(out), "--threads", str(args.threads), "--no-progress", "--no-chart",
                               "--precision", args.precision]
                seconds = timed(command, env)
                timing = json.loads((out / "timing.json").read_text()) if args.quick else {
                    "scores": {s["task"]: s["value"] for s in json.loads((out / "summary.json").read_text())["scores"]},
                    "encode_seconds": None}
            else:
                result_file = work / f"plain-{round_}.json"
                command = [sys.executable, "-c", PLAIN, str(model), str(args.threads), str(result_file), quick]
                seconds = timed(command, env)
                timing = json.loads(result_file.read_text())
            runs.append({"run": which, "round": round_, "seconds": seconds, "encode_seconds": timing["encode_seconds"],
                         "scores": timing["scores"], "plan": timing.get("plan")})
            load.append(os.getloadavg()[0])
            encode = timing["encode_seconds"]
            print(f"round {round_} {which}: {seconds:.1f} s" + (f" (encode {encode:.1f} s)" if encode else ""),
                  flush=True)
    ours = [r for r in runs if r["run"] == "ours"]
    plain = [r for r in runs if r["run"] == "plain"]

    def ratio(key: str, rows_plain: list[dict], rows_ours: list[dict]) -> float | None:
        if any(r[key] is None for r in rows_plain + rows_ours):
            return None
        return sum(r[key] for r in rows_plain) / sum(r[key] for r in rows_ours)

    whole = ratio("seconds", plain, ours)
    encode = ratio("encode_seconds", plain, ours)
    per_round = {key: [ratio(key, [p], [o]) for p, o in zip(plain, ours)] for key in ("seconds", "encode_seconds")}
    tasks = list(ours[0]["scores"])
    diffs = {t: max(abs(o["scores"][t] - p["scores"][t]) for o in ours for p in plain) for t in tasks}
    report = {"model": str(model), "threads": args.threads, "quick": args.quick, "rounds": args.rounds,
              "precision_ours": args.precision, "runs": runs,
              "ratio_whole_run": whole, "ratio_encode_step": encode, "per_round": per_round,
              "max_score_diff": diffs, "loadavg_1min": load, "cpu": cpu_description(), "python": sys.version.split()[0]}
    (work / "eval_speed.json").write_text(json.dumps(report, indent=2) + "\n")

    def fmt(value: float | None) -> str:
        return "–" if value is None else f"{value:.2f}x"

    def span(values: list) -> str:
        return "" if not values or None in values else f" (rounds {min(values):.2f}–{max(values):.2f})"

    print("\n| round | run | whole run (s) | encode step (s) |\n|---|---|---:|---:|")
    for r in runs:
        name = "st-llm2vec eval" if r["run"] == "ours" else "plain mteb.evaluate"
        step = "–" if r["encode_seconds"] is None else f"{r['encode_seconds']:.1f}"
        print(f"| {r['round']} | {name} | {r['seconds']:.1f} | {step} |")
    plan = ours[0].get("plan")
    print(f"\nours in precision {args.precision}{f' ({plan})' if plan else ''}, plain mteb in float32")
    print(f"plain / st-llm2vec eval: whole run {fmt(whole)}{span(per_round['seconds'])}, encode step "
          f"{fmt(encode)}{span(per_round['encode_seconds'])} (target >= 1.3x)")
    print("\n| task | st-llm2vec eval | plain mteb | max difference |\n|---|---:|---:|---:|")
    for t in tasks:
        print(f"| {t} | {ours[0]['scores'][t]:.4f} | {plain[0]['scores'][t]:.4f} | {diffs[t]:.6f} |")
    cpu = report["cpu"]
    print(f"\nCPU: {cpu.get('model_name')}, {cpu['cores']} cores, flags {' '.join(cpu.get('flags', []))}; torch "
          f"{cpu['torch']}, cpu capability {cpu['cpu_capability']}; {args.threads} threads; load average (1 min) "
          + " → ".join(f"{x:.1f}" for x in load))
    print(f"wrote {work / 'eval_speed.json'}")


if __name__ == "__main__":
    main()
