#!/usr/bin/env python
"""Every faster inference path against the same model's float32 embeddings: speed, cosine and dev STS.

    python benchmarks/encode_quantized.py --model DIR [--model DIR ...]   # 512 sentences, batch 32, 2 threads

``DIR``: a portable model dir (e.g. the quick start's output) or a causal-LM checkpoint (e.g. SmolLM2-135M-Instruct
from ``st-llm2vec fetch-smollm2``; made an embedding model with ``st_llm2vec.from_llm`` and saved portable first).
Paths, each loaded once, then timed in alternating rounds (median of ``--rounds``) on the same 512 mixed-length
shared-data sentences, ``torch.set_num_threads`` / llama.cpp ``n_threads`` = ``--threads`` everywhere:

- ``torch fp32 (stock ST)``: ``SentenceTransformer(dir)`` — the reference every cosine is measured against;
- ``ours fp32``: ``st_llm2vec.load_model(dir)`` (packed batches);
- ``ours bf16-mixed (plan)``: ``load_model(dir, precision="bf16-mixed")`` (st_llm2vec/precision.py; the plan's
  own calibration texts are built in and are not these sentences);
- ``autocast bf16``: stock ST under ``torch.autocast("cpu", bfloat16)``; ``bf16 weights``: stock ST, dtype bfloat16;
- ``bnb int8`` / ``bnb nf4``: ``load_model(dir, quantization=...)`` (bitsandbytes on CPU);
- ``GGUF f32 / f16 / q8_0 / q4_k_m``: llama.cpp's converter and quantizer (st_llm2vec/export/gguf.py), run by
  llama-cpp-python in a subprocess per round (load, warm-up, timed ``embed``); weight repacking off where it
  crashes on this CPU;
- ``llm2vec 0.2.3 fp32``: with ``--llm2vec-python`` (``bash benchmarks/llm2vec_env.sh``), llm2vec's own encode
  on a transformers-4.44 view of the weights (benchmarks/llm2vec_view.py), one subprocess per round.

Per path: sentences/s, × ours fp32, × llm2vec, min / 5th-percentile / mean cosine vs the reference, and the dev
STS Spearman (STS12 + STS13 + SICK trial, ``--sts-pairs`` pairs each, cosine, ST's EmbeddingSimilarityEvaluator
metric computed by scipy on the path's own embeddings). Prints a markdown table per model and a JSON line;
``--out`` writes the JSON. Report the CPU flags printed in the header beside any figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from encode_vs_llm2vec import benchmark_sentences, cosines, run_llm2vec  # noqa: E402

GGUF_TYPES = ("f32", "f16", "q8_0", "q4_k_m")

# One llama-cpp-python process: load, warm up, embed all texts once timed; prints the embeddings as JSON.
_GGUF_RUN = r"""
import json, sys, time
import numpy as np, llama_cpp, llama_cpp.llama
args = json.loads(sys.stdin.read())
if not args["repack"]:
    default = llama_cpp.llama_model_default_params
    def without_repack():
        params = default(); params.use_extra_bufts = False; return params
    llama_cpp.llama.llama_cpp.llama_model_default_params = without_repack
llm = llama_cpp.Llama(args["path"], embedding=True, n_ctx=args["n_ctx"], n_batch=args["n_ctx"], n_ubatch=args["n_ctx"],
                      n_threads=args["threads"], flash_attn=True, verbose=False)
llm.embed(args["texts"][:8], normalize=False)
start = time.perf_counter()
out = [llm.embed(t, normalize=False) for t in args["texts"]] if args["one_by_one"] else llm.embed(args["texts"], normalize=False)
seconds = time.perf_counter() - start
np.save(args["out"], np.asarray(out, dtype=np.float32))
print("RESULT" + json.dumps({"seconds": seconds}))
"""


def cpu_flags() -> str:
    import torch

    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    shown = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in flags]
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), "?") if Path("/proc/cpuinfo").exists() else "?"
    return f"{model}; torch CPU capability {torch.backends.cpu.get_cpu_capability()}; flags {' '.join(shown)}"


def portable_dir(path: str, workdir: Path) -> Path:
    """``path`` itself when it is a saved sentence-transformers dir, else ``from_llm(path)`` saved portable."""
    import st_llm2vec

    if (Path(path) / "modules.json").is_file():
        return Path(path)
    out = workdir / "portable"
    st_llm2vec.from_llm(path, format="portable").save(str(out))
    return out


def dev_pairs(limit: int) -> list[tuple[str, str, float]]:
    """(sentence1, sentence2, gold 0..1) of STS12 + STS13 test and SICK trial, ``limit`` each (seeded)."""
    from st_llm2vec.devdata import sts_evaluators

    pairs = []
    for evaluator in sts_evaluators(max_pairs=limit, fallback=False):
        pairs += list(zip(evaluator.sentences1, evaluator.sentences2, evaluator.scores))
    return pairs


def spearman(first, second, gold) -> float:
    from scipy.stats import spearmanr

    return 100 * float(spearmanr(cosines(first, second), gold).statistic)


def gguf_runner(model_dir: Path, quantize: str, workdir: Path, threads: int) -> Callable[[list[str]], tuple]:
    """Convert once; each call runs the file in a fresh llama-cpp-python process: (embeddings, seconds)."""
    import numpy as np

    from st_llm2vec.export.gguf import LLAMA_POOLING, find_converter, write_gguf

    pooling = json.loads(next(model_dir.glob("*_Pooling/config.json")).read_text())["pooling_mode"]
    if pooling not in LLAMA_POOLING:
        raise SystemExit(f"llama.cpp has no pooling for {pooling!r}: run without --gguf")
    path = workdir / f"model-{quantize}.gguf"
    if not path.exists():
        write_gguf(model_dir, path, quantize, pooling, find_converter())
    state = {"repack": True}

    def run(texts: list[str]) -> tuple:
        out = workdir / f"{quantize}.npy"
        payload = {"path": str(path), "texts": texts, "n_ctx": 512, "threads": threads, "out": str(out),
                   "repack": state["repack"], "one_by_one": False}
        for _ in range(2):
            proc = subprocess.run([sys.executable, "-c", _GGUF_RUN], input=json.dumps(payload), capture_output=True,
                                  text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), None)
            if line is not None:
                return np.load(out), json.loads(line[len("RESULT"):])["seconds"]
            if proc.returncode < 0 and payload["repack"]:  # repacking crashes on some CPUs (AMX): --no-repack
                state["repack"] = payload["repack"] = False
                continue
            raise SystemExit(f"llama.cpp failed on {path.name} ({proc.returncode}): {proc.stderr[-2000:]}")
        raise SystemExit(f"llama.cpp crashed on {path.name} with and without repacking")

    return run


def in_process(model: Any, batch_size: int, context: Callable[[], Any] | None = None) -> Callable[[list[str]], tuple]:
    import contextlib

    def run(texts: list[str]) -> tuple:
        with (context or contextlib.nullcontext)():
            start = time.perf_counter()
            embeddings = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
            return embeddings, time.perf_counter() - start

    with (context or contextlib.nullcontext)():
        model.encode(texts_for_warmup, batch_size=batch_size, show_progress_bar=False)
    return run


texts_for_warmup = ["A warm-up sentence of a few words.", "Another one, a little longer than the first one is."] * 16


def paths(model_dir: Path, args, workdir: Path) -> dict[str, tuple[Callable, dict]]:
    """name → (runner(texts) -> (embeddings, seconds), notes)."""
    import torch
    from sentence_transformers import SentenceTransformer

    import st_llm2vec

    out: dict[str, tuple[Callable, dict]] = {}
    bs = args.batch_size
    out["torch fp32 (stock ST)"] = (in_process(SentenceTransformer(str(model_dir), device="cpu"), bs), {})
    out["ours fp32"] = (in_process(st_llm2vec.load_model(str(model_dir)), bs), {})
    start = time.perf_counter()
    mixed = st_llm2vec.load_model(str(model_dir), precision="bf16-mixed")
    out["ours bf16-mixed (plan)"] = (in_process(mixed, bs), {
        "plan": mixed.precision_plan.describe(), "planning_seconds": round(time.perf_counter() - start, 1)})
    stock = SentenceTransformer(str(model_dir), device="cpu")
    out["autocast bf16 (stock ST)"] = (in_process(stock, bs, lambda: torch.autocast("cpu", dtype=torch.bfloat16)), {})
    out["bf16 weights (stock ST)"] = (in_process(
        SentenceTransformer(str(model_dir), device="cpu", model_kwargs={"dtype": torch.bfloat16}), bs), {})
    if not args.no_bnb:
        for quantization in ("int8", "nf4"):
            out[f"bnb {quantization}"] = (in_process(st_llm2vec.load_model(str(model_dir), quantization=quantization),
                                                     bs), {})
    for quantize in args.gguf:
        out[f"GGUF {quantize}"] = (gguf_runner(model_dir, quantize, workdir, args.threads), {})
    if args.llm2vec_python and Path(args.llm2vec_python).exists():
        view = workdir / "llm2vec-view"
        if not view.exists():
            subprocess.run([sys.executable, str(HERE / "llm2vec_view.py"), str(model_dir), str(view)], check=True,
                           capture_output=True)

        def llm2vec(texts: list[str]) -> tuple:
            embeddings, seconds, _ = run_llm2vec(args, view, {"docs": texts}, "docs", workdir)
            return embeddings, statistics.median(seconds)

        out["llm2vec 0.2.3 fp32"] = (llm2vec, {})
    return out


def benchmark(model: str, args, sentences: list[str], pairs: list) -> dict[str, Any]:
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="encode-quantized-") as tmp:
        workdir = Path(tmp)
        model_dir = portable_dir(model, workdir)
        runners = paths(model_dir, args, workdir)
        seconds: dict[str, list[float]] = {name: [] for name in runners}
        embeddings: dict[str, Any] = {}
        for round_ in range(args.rounds):
            for name, (run, _) in runners.items():
                vectors, took = run(sentences)
                seconds[name].append(took)
                embeddings.setdefault(name, vectors)
            print(f"  round {round_ + 1}/{args.rounds}: " + ", ".join(
                f"{n} {len(sentences) / s[-1]:.1f}/s" for n, s in seconds.items()), file=sys.stderr, flush=True)
        first, second, gold = [p[0] for p in pairs], [p[1] for p in pairs], [p[2] for p in pairs]
        reference = embeddings["torch fp32 (stock ST)"]
        rows = {}
        for name, (run, notes) in runners.items():
            speed = len(sentences) / statistics.median(seconds[name])
            cos = cosines(np.asarray(embeddings[name], np.float64), np.asarray(reference, np.float64))
            pair_vectors, _ = run(first + second)
            rows[name] = {
                "sentences_per_s": round(speed, 2), "min_cosine": float(cos.min()),
                "p05_cosine": float(np.percentile(cos, 5)), "mean_cosine": float(cos.mean()),
                "worst_text": sentences[int(cos.argmin())],
                "dev_sts": round(spearman(pair_vectors[: len(first)], pair_vectors[len(first):], gold), 2), **notes,
            }
        base = rows["ours fp32"]["sentences_per_s"]
        ref_llm2vec = rows.get("llm2vec 0.2.3 fp32", {}).get("sentences_per_s")
        for row in rows.values():
            row["x_ours_fp32"] = round(row["sentences_per_s"] / base, 2)
            row["x_llm2vec"] = round(row["sentences_per_s"] / ref_llm2vec, 2) if ref_llm2vec else None
        return {"model": model, "rows": rows}


def table(result: dict[str, Any]) -> str:
    lines = [f"### {result['model']}", "",
             "| path | sentences/s | × ours fp32 | × llm2vec | min cos | 5th pct | mean cos | dev STS |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in result["rows"].items():
        lines.append(f"| {name} | {r['sentences_per_s']:.1f} | {r['x_ours_fp32']:.2f} | "
                     f"{'—' if r['x_llm2vec'] is None else format(r['x_llm2vec'], '.2f')} | {r['min_cosine']:.5f} | "
                     f"{r['p05_cosine']:.5f} | {r['mean_cosine']:.6f} | {r['dev_sts']:.2f} |")
    plan = result["rows"]["ours bf16-mixed (plan)"]
    lines += ["", f"bf16-mixed plan: {plan['plan']} (planned in {plan['planning_seconds']} s)"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True, help="a portable dir or a causal-LM checkpoint")
    ap.add_argument("-n", "--sentences", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sts-pairs", type=int, default=200, help="dev STS pairs per set (STS12, STS13, SICK trial)")
    ap.add_argument("--gguf", type=lambda s: [t for t in s.split(",") if t], default=list(GGUF_TYPES),
                    help=f"GGUF types to run (comma-separated; '' for none; default {','.join(GGUF_TYPES)})")
    ap.add_argument("--no-bnb", action="store_true", help="skip the bitsandbytes rows")
    ap.add_argument("--llm2vec-python", default=str(HERE / ".venv-llm2vec" / "bin" / "python"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(f"CPU: {cpu_flags()}; {args.threads} threads; batch {args.batch_size}; {args.sentences} sentences; "
          f"{args.rounds} alternating rounds (median)", flush=True)
    sentences = benchmark_sentences(args.sentences)
    pairs = dev_pairs(args.sts_pairs)
    results = []
    for model in args.model:
        result = benchmark(model, args, sentences, pairs)
        print(table(result), flush=True)
        results.append(result)
    summary = {"cpu": cpu_flags(), "threads": args.threads, "batch_size": args.batch_size, "results": results}
    print(json.dumps(summary))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
