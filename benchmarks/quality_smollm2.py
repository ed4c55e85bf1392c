"""The LLM2Vec recipe on SmolLM2-135M-Instruct at CPU-feasible scale, measured on every shared dev set.

Rows: causal mean-pool baseline → bidirectional (no training) → + MNTP → + SimCSE (from MNTP) →
+ supervised (from SimCSE by default, ``--supervised-from mntp`` as in LLM2Vec; SICK entailment
triplets with contradiction hard negatives + MSR paraphrase pairs). Columns: cosine Spearman ×100 on
STS 2012 / 2013 test and SICK trial (a fixed sample of ``--eval-pairs`` pairs each), MAP / MRR@10 ×100
on Wang TREC-QA dev (``--wang-queries``). Every model is scored twice: on the raw texts, and (STS only)
with the instruction the supervised stage trains MSR pairs with, on both texts (as llm2vec evaluates).

Runs in pieces and resumes: every stage writes ``<work-dir>/results/<stage>.json`` when done and is
skipped on the next run; training checkpoints every ``--save-steps`` steps, so a killed run continues
from its last checkpoint. Run it in the background and print the table at any time::

    nohup python benchmarks/quality_smollm2.py --work-dir /tmp/quality_smollm2 > /tmp/quality_smollm2.log 2>&1 &
    python benchmarks/quality_smollm2.py --work-dir /tmp/quality_smollm2 --report
    python benchmarks/quality_smollm2.py --work-dir /tmp/rerun --report --compare /tmp/quality_smollm2

Training uses bf16 autocast over float32 weights (llm2vec trains in bf16); evaluation runs in float32.
Needs the shared data folder (``../shared/data`` or ``$ST_LLM2VEC_DATA``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

STAGES = ("baseline", "bi", "mntp", "simcse", "supervised")
LABELS = {
    "baseline": "causal baseline",
    "bi": "bidirectional",
    "mntp": "+ MNTP",
    "simcse": "+ SimCSE",
    "supervised": "+ supervised",
}
LABELS.update({f"{k}_instructed": v for k, v in LABELS.items()})
# What a finished training run leaves in its output dir (written after the model).
DONE_FILES = {"mntp": "mntp_config.json", "simcse": "st_llm2vec_stage.json", "supervised": "st_llm2vec_stage.json"}
# Settings that change the numbers: a work dir refuses a run with other values.
RUN_KEYS = (
    "seed", "mntp_steps", "mntp_batch_size", "mntp_seq_length", "mntp_lr", "simcse_steps", "simcse_batch_size",
    "simcse_lr", "supervised_steps", "supervised_batch_size", "supervised_lr", "train_seq_length", "lora_r",
    "supervised_from", "bf16", "eval_pairs", "wang_queries", "eval_seq_length", "corpus_size", "model",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default="quality_smollm2_run", help="models, checkpoints and results (resumable)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--report", action="store_true", help="only print the table of the finished stages")
    p.add_argument("--compare", default=None, metavar="WORK_DIR",
                   help="with --report: how far this run's scores are from another run's (a rerun's reproducibility)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--mntp-steps", type=int, default=200)
    p.add_argument("--mntp-batch-size", type=int, default=8)
    p.add_argument("--mntp-seq-length", type=int, default=64, help="MNTP block length in tokens")
    p.add_argument("--mntp-lr", type=float, default=1e-3)
    p.add_argument("--simcse-steps", type=int, default=200)
    p.add_argument("--simcse-batch-size", type=int, default=16)
    p.add_argument("--simcse-lr", type=float, default=5e-4)
    p.add_argument("--supervised-steps", type=int, default=150)
    p.add_argument("--supervised-batch-size", type=int, default=16)
    p.add_argument("--supervised-lr", type=float, default=3e-4)
    p.add_argument("--supervised-from", choices=("mntp", "simcse"), default="simcse",
                   help="start of the supervised stage (default: the SimCSE model; LLM2Vec's own recipe, with "
                        "1000 steps on 1.5M E5 pairs, starts from the MNTP model)")
    p.add_argument("--train-seq-length", type=int, default=32, help="contrastive training token limit")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in float32 (default: bf16 autocast)")
    p.add_argument("--eval-pairs", type=int, default=300, help="pairs per STS dev set (0: all)")
    p.add_argument("--wang-queries", type=int, default=40, help="Wang dev questions (0: all)")
    p.add_argument("--eval-seq-length", type=int, default=128)
    p.add_argument("--corpus-size", type=int, default=0, help="MNTP/SimCSE sentences (0: all SICK+MSR train)")
    p.add_argument("--save-steps", type=int, default=50, help="training checkpoint interval (for resuming)")
    p.add_argument("--threads", default="auto", help="torch threads (auto: the cores not already busy)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--model", default=None, help="a local causal-LM checkpoint instead of SmolLM2 (for testing)")
    p.add_argument("--no-instructed", dest="instructed", action="store_false",
                   help="skip the second STS evaluation of every model with the instruction on both sides")
    p.add_argument("--force", action="store_true", help="use a work dir recorded with other settings anyway")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- bookkeeping


def hardware() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores"
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        text += f", {mem:.0f} GiB RAM"
    except (ValueError, OSError, AttributeError):
        pass
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text + f"; torch {torch.__version__}"


def load_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def check_run(work: Path, args: argparse.Namespace) -> dict:
    """Record the settings in ``run.json``; refuse a work dir made with other settings (unless --force)."""
    settings = {k: getattr(args, k) for k in RUN_KEYS}
    recorded = load_json(work / "run.json")
    if recorded is not None and recorded["settings"] != settings:
        diff = {k: (recorded["settings"].get(k), v) for k, v in settings.items() if recorded["settings"].get(k) != v}
        if not args.force:
            sys.exit(f"{work} was run with other settings {diff} (recorded, now); use another --work-dir or --force.")
        print(f"warning: settings differ from the recorded run: {diff}", file=sys.stderr)
    if recorded is None or args.force:
        write_json(work / "run.json", {"settings": settings, "hardware": hardware(), "created": time.strftime("%Y-%m-%d %H:%M:%S")})
    return settings


# --------------------------------------------------------------------------- stages


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work_dir).expanduser().resolve()
    if args.report:
        print(report(work))
        if args.compare:
            print()
            print(compare(work, Path(args.compare).expanduser().resolve()))
        return 0
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        sys.exit(f"unknown stage(s) {unknown}; choose from {STAGES}")

    import torch

    from st_llm2vec import devdata
    from st_llm2vec.eval import tasks as eval_tasks
    from st_llm2vec import quickstart as q
    from st_llm2vec.console import quiet_libraries
    from st_llm2vec.runtime import choose_threads
    from st_llm2vec.eval.scores import evaluate as evaluate_with
    from st_llm2vec.smollm2 import ensure_smollm2

    if devdata.find_shared_data(args.data_dir) is None:
        sys.exit("The benchmark needs the shared data folder (../shared/data or $ST_LLM2VEC_DATA).")
    work.mkdir(parents=True, exist_ok=True)
    check_run(work, args)
    command = " ".join(shlex.quote(a) for a in [sys.executable.rsplit("/", 1)[-1], *sys.argv])
    threads = choose_threads(args.threads)
    torch.set_num_threads(threads)
    quiet_libraries()
    base = str(Path(args.model).expanduser()) if args.model else str(ensure_smollm2())
    started, t_start = time.strftime("%Y-%m-%d %H:%M:%S"), time.perf_counter()
    # the same mteb tasks and scoring as `st-llm2vec eval` (st_llm2vec.eval.scores)
    dev = eval_tasks.dev_tasks(args.data_dir, args.eval_pairs or None, wang_queries=args.wang_queries or None)
    sts_tasks = [t for t in dev if t.metadata.type == "STS"]
    print("dev sets: " + ", ".join(f"{t.metadata.name} ({eval_tasks.task_size(t)})" for t in dev)
          + f"; torch threads {threads}", flush=True)
    sentences, corpus_desc = devdata.training_sentences(args.data_dir, args.corpus_size or None, seed=args.seed)
    corpus = work / "sentences.txt"
    if not corpus.is_file():
        q.write_lines(corpus, sentences)
    use_cpu = not torch.cuda.is_available()
    device = "cpu" if use_cpu else "cuda"
    common = dict(seed=args.seed, lora_r=args.lora_r, progress=True, save_steps=args.save_steps,
                  bf16=args.bf16, use_cpu=use_cpu)

    def retune_threads() -> int:
        """Re-read the load before each stage ("auto"): other jobs on the machine come and go."""
        nonlocal threads
        if str(args.threads) == "auto":
            threads = choose_threads("auto", own_load=torch.get_num_threads())
            torch.set_num_threads(threads)
        return threads

    def model_dir(stage: str) -> Path:
        return work / "models" / stage

    def trained(stage: str) -> bool:
        return (model_dir(stage) / DONE_FILES[stage]).is_file()

    def evaluate(stage: str, model, train_seconds: float | None, steps: int | None, instruction: str | None = None,
                 sts_only: bool = False, key: str | None = None) -> None:
        key = key or stage
        retune_threads()
        t0 = time.perf_counter()
        load0 = loadavg()
        model.max_seq_length = args.eval_seq_length
        model.eval()
        use = sts_tasks if sts_only else dev
        scores = evaluate_with(model, use, instruction=instruction)
        record = {
            "stage": key, "label": LABELS[key], "scores": scores, "steps": steps, "train_seconds": train_seconds,
            "eval_seconds": time.perf_counter() - t0, "instruction": instruction, "threads": threads,
            "loadavg": [load0, loadavg()], "eval_sets": {t.metadata.name: eval_tasks.task_size(t) for t in use}, "command": command,
            "corpus": corpus_desc, "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "hardware": hardware(),
        }
        write_json(work / "results" / f"{key}.json", record)
        print(f"{LABELS[key]}: " + ", ".join(f"{k} {v:.1f}" for k, v in scores.items()), flush=True)

    def done(key: str) -> bool:
        if (work / "results" / f"{key}.json").is_file():
            print(f"{LABELS[key]}: done (results/{key}.json)", flush=True)
            return True
        return False

    def train(stage: str, fn, config: dict) -> float | None:
        """Train unless finished; returns the seconds spent now (None if it was already done)."""
        if trained(stage):
            return None
        retune_threads()
        load0 = loadavg()
        t0 = time.perf_counter()
        print(f"== training {stage}: {config['max_steps']} steps, {threads} torch thread(s)", flush=True)
        fn(config)
        seconds = time.perf_counter() - t0
        write_json(work / "results" / f"{stage}_train.json",
                   {"seconds": seconds, "loadavg": [load0, loadavg()], "config": config, "threads": threads})
        return seconds

    def train_seconds(stage: str, now: float | None) -> float | None:
        if now is not None:
            return now
        info = load_json(work / "results" / f"{stage}_train.json")
        return info["seconds"] if info else None

    from sentence_transformers import SentenceTransformer

    from st_llm2vec import from_llm
    from st_llm2vec import train_mntp, train_simcse, train_supervised
    from st_llm2vec.recipe.pair_data import SHARED_INSTRUCTIONS, join_instruction
    from st_llm2vec.recipe.presets import contrastive_config, mntp_config

    instruction = join_instruction(SHARED_INSTRUCTIONS["msr"])

    def score(stage: str, load_model, seconds: float | None, steps: int | None) -> None:
        """Both evaluations of a model (plain; STS with the instruction), each skipped when recorded."""
        model = None
        if not done(stage):
            model = load_model()
            evaluate(stage, model, seconds, steps)
        if args.instructed and not done(f"{stage}_instructed"):
            model = model or load_model()
            evaluate(stage, model, None, steps, instruction=instruction, sts_only=True, key=f"{stage}_instructed")

    def saved(stage: str):
        return lambda: SentenceTransformer(str(model_dir(stage)), device=device)

    need_mntp = {"mntp", "simcse"} | ({"supervised"} if args.supervised_from == "mntp" else set())
    need_simcse = {"simcse"} | ({"supervised"} if args.supervised_from == "simcse" else set())
    if "baseline" in stages:
        score("baseline", lambda: from_llm(base, bidirectional=False, device=device), None, None)
    if "bi" in stages:
        score("bi", lambda: from_llm(base, device=device), None, None)
    if any(s in stages for s in need_mntp | need_simcse):
        t = train("mntp", train_mntp, mntp_config(
            base, corpus, model_dir("mntp"), steps=args.mntp_steps, batch_size=args.mntp_batch_size,
            max_seq_length=args.mntp_seq_length, learning_rate=args.mntp_lr, **common))
        score("mntp", saved("mntp"), train_seconds("mntp", t), args.mntp_steps)
    if any(s in stages for s in need_simcse):
        t = train("simcse", train_simcse, contrastive_config(
            "simcse", model_dir("mntp"), model_dir("simcse"), steps=args.simcse_steps,
            batch_size=args.simcse_batch_size, max_seq_length=args.train_seq_length, learning_rate=args.simcse_lr,
            dataset_file_path=corpus, **common))
        score("simcse", saved("simcse"), train_seconds("simcse", t), args.simcse_steps)
    if "supervised" in stages:
        t = train("supervised", train_supervised, contrastive_config(
            "supervised", model_dir(args.supervised_from), model_dir("supervised"), steps=args.supervised_steps,
            batch_size=args.supervised_batch_size, max_seq_length=args.train_seq_length,
            learning_rate=args.supervised_lr, dataset_file_path=args.data_dir, **common))
        score("supervised", saved("supervised"), train_seconds("supervised", t), args.supervised_steps)
    invocations = load_json(work / "invocations.json") or []
    invocations.append({"started": started, "seconds": time.perf_counter() - t_start, "stages": stages,
                        "threads": threads, "command": command})
    write_json(work / "invocations.json", invocations)
    print(report(work), flush=True)
    return 0


# --------------------------------------------------------------------------- the table


def report(work: Path) -> str:
    from st_llm2vec.eval.scores import markdown_table, score_columns

    run = load_json(work / "run.json")
    if run is None:
        return f"No run recorded in {work}."
    settings = run["settings"]
    plain = [r for r in (load_json(work / "results" / f"{k}.json") for k in STAGES) if r]
    instructed = [r for r in (load_json(work / "results" / f"{k}_instructed.json") for k in STAGES) if r]
    records = plain + instructed
    if not records:
        return f"No finished stage in {work} yet."

    def row(rec: dict) -> dict:
        train_s = rec.get("train_seconds")
        return {
            "stage": LABELS.get(rec["stage"], rec["label"]), **rec["scores"],
            "steps": rec["steps"] if rec["steps"] is not None else "–",
            "train": f"{train_s / 60:.1f} min" if train_s else "–",
            "eval": f"{rec['eval_seconds'] / 60:.1f} min",
        }

    tail = [("steps", "steps"), ("train", "train time"), ("eval", "eval time")]
    blocks = []
    if plain:
        keys = [k for r in plain for k in r["scores"]]
        blocks += ["No instruction (every model encodes the raw texts):", "",
                   markdown_table([row(r) for r in plain], [("stage", "model"), *score_columns(keys), *tail]), ""]
    if instructed:
        instr = instructed[0]["instruction"]
        keys = [k for r in instructed for k in r["scores"]]
        blocks += [f"STS with the instruction {instr!r} on both texts (how llm2vec evaluates; the supervised stage "
                   "trains MSR pairs with it):", "",
                   markdown_table([row(r) for r in instructed], [("stage", "model"), *score_columns(keys), *tail[:1], tail[2]]), ""]
    total = sum((r.get("train_seconds") or 0) + r["eval_seconds"] for r in records)
    invocations = load_json(work / "invocations.json") or []
    first = records[0]
    eval_sets = {}
    for r in records:
        eval_sets.update(r["eval_sets"])
    loads = [x for r in records for x in (r.get("loadavg") or []) if x is not None]
    lines = [
        *blocks,
        "- command(s): " + "; ".join(f"`{c}`" for c in dict.fromkeys(r["command"] for r in records)),
        f"- seed {settings['seed']}; MNTP {settings['mntp_steps']} steps × {settings['mntp_batch_size']} blocks of "
        f"{settings['mntp_seq_length']} tokens (lr {settings['mntp_lr']}); SimCSE {settings['simcse_steps']} steps × "
        f"{settings['simcse_batch_size']} (lr {settings['simcse_lr']}, dropout 0.3); supervised {settings['supervised_steps']} "
        f"steps × {settings['supervised_batch_size']} from {settings['supervised_from']} (lr {settings['supervised_lr']}); "
        f"LoRA r={settings['lora_r']} merged after each stage; contrastive max {settings['train_seq_length']} tokens; "
        f"{'bf16 autocast' if settings['bf16'] else 'float32'} training, float32 evaluation",
        "- dev sets (pairs / questions): " + ", ".join(f"{k} {v}" for k, v in eval_sets.items())
        + f"; MNTP/SimCSE text: {first['corpus']}",
        f"- hardware: {run['hardware']}; torch threads per stage: "
        + ", ".join(str(t) for t in sorted({r['threads'] for r in records}))
        + (f"; 1-min load average during stages {min(loads):.1f}–{max(loads):.1f} (other jobs shared the CPU)" if loads and max(loads) > (os.cpu_count() or 1) + 0.5 else ""),
        f"- time in training + evaluation of the finished stages: {total / 60:.0f} min"
        + (f"; wall time of the {len(invocations)} invocation(s), all included: {sum(i['seconds'] for i in invocations) / 60:.0f} min"
           if invocations else ""),
    ]
    return "\n".join(lines)


def compare(work: Path, other: Path) -> str:
    """Per finished stage, the largest score difference between two runs (×100 points) and the two means."""
    lines = [f"Scores of {work} vs {other} (finished in both):", "",
             "| stage | scoring | largest \\|Δ\\| | STS mean, this run | STS mean, other run |", "|---|---|---:|---:|---:|"]
    worst = 0.0
    for stage in STAGES:
        for suffix, scoring in (("", "raw texts"), ("_instructed", "instruction")):
            mine, theirs = (load_json(d / "results" / f"{stage}{suffix}.json") for d in (work, other))
            if not mine or not theirs:
                continue
            shared = [k for k in mine["scores"] if k in theirs["scores"]]
            delta = max(abs(mine["scores"][k] - theirs["scores"][k]) for k in shared)
            worst = max(worst, delta)
            lines.append(f"| {LABELS[stage]} | {scoring} | {delta:.2f} | {mine['scores'].get('sts_mean', float('nan')):.1f} "
                         f"| {theirs['scores'].get('sts_mean', float('nan')):.1f} |")
    if len(lines) == 4:
        return f"No stage finished in both {work} and {other}."
    lines += ["", f"largest difference over every score: {worst:.2f} points"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
