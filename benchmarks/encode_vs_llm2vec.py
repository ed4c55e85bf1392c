#!/usr/bin/env python
"""Our ``encode`` vs llm2vec 0.2.3's ``encode`` (and vs plain causal Sentence-Transformers), side by side.

    bash benchmarks/llm2vec_env.sh                 # once: the llm2vec 0.2.3 reference venv
    python benchmarks/encode_vs_llm2vec.py         # SmolLM2-135M, 512 sentences, batch 16, 2 threads

Same model (SmolLM2-135M-Instruct, ``st_llm2vec.smollm2.ensure_smollm2()``), same sentences (SICK
trial + SemEval STS 2012/2013 test from ``../shared/data``, unique, shuffled with seed 0), float32,
same batch size and ``torch.set_num_threads`` on every side, mean pooling, llm2vec's defaults
(max_length 512, doc_max_length 400) on both.

1. Agreement first: llm2vec (run in its own venv by ``benchmarks/llm2vec_encode.py`` on a
   transformers-4.44 view of the checkpoint, ``benchmarks/llm2vec_view.py``) and ours must give a
   per-sentence cosine >= 0.9999, without an instruction and with one. The timings are not reported
   otherwise (exit status 1).
2. Timings, in rounds, alternating: llm2vec (one subprocess per round: load, one untimed warm-up
   encode, one timed encode), ours (default: packs a batch when packing costs fewer FLOPs), ours with
   padding forced (``unpad_inputs=False``, the encoder as it was before packing), plain ST causal
   (``SentenceTransformer([Transformer(SmolLM2 dir), Pooling(mean)])``: no llm2vec semantics, causal).
   Each is the wall time of ``encode`` of all sentences; the table shows the median over rounds.

Prints a table (sentences/s, ratios) and a final JSON line; ``--out FILE`` writes that JSON too.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

INSTRUCTION = "Retrieve semantically similar text:"
MIN_COSINE = 0.9999


def benchmark_sentences(n: int, data_dir: str | None = None, seed: int = 0) -> list[str]:
    """``n`` unique sentences of SICK trial + STS 2012/2013 test, shuffled with ``seed`` (mixed lengths)."""
    from st_llm2vec.devdata import SICK_DIR, STS_DIR, _require_data, read_sick, read_sts

    root = _require_data(data_dir)
    sentences: list[str] = []
    for pair in read_sick(root / SICK_DIR / "SICK_trial.txt"):
        sentences += [pair.sentence_a, pair.sentence_b]
    for year in ("2012", "2013"):
        for pair in read_sts(root / STS_DIR / year, split="test"):
            sentences += [pair.sentence1, pair.sentence2]
    sentences = list(dict.fromkeys(s for s in sentences if s.strip()))
    random.Random(seed).shuffle(sentences)
    if len(sentences) < n:
        raise SystemExit(f"only {len(sentences)} sentences in {root}, asked for {n}")
    return sentences[:n]


def run_llm2vec(args, view: Path, payload: dict, tag: str, workdir: Path) -> tuple:
    """One llm2vec_encode.py subprocess: (embeddings, timings, result dict)."""
    import numpy as np

    inputs = workdir / f"{tag}.json"
    out = workdir / f"{tag}.npz"
    inputs.write_text(json.dumps(payload))
    cmd = [
        args.llm2vec_python, str(HERE / "llm2vec_encode.py"),
        "--model", str(view), "--inputs", str(inputs), "--out", str(out), "--pooling", "mean",
        "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--repeats", "1",
    ]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"llm2vec_encode.py failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    with np.load(out) as data:
        embeddings = data["embeddings"]
    return embeddings, result["timings"], result


def cosines(a, b):
    import numpy as np

    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="HF checkpoint dir (default: SmolLM2-135M-Instruct, provisioned)")
    ap.add_argument("--data-dir", default=None, help="the shared data folder (default: ../shared/data)")
    ap.add_argument("-n", "--sentences", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="alternating timing rounds (median reported)")
    ap.add_argument("--llm2vec-python", default=str(HERE / ".venv-llm2vec" / "bin" / "python"))
    ap.add_argument("--no-padded", action="store_true", help="skip the 'ours, padded' row (saves time)")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain causal ST row (saves time)")
    ap.add_argument("--out", default=None, help="also write the JSON summary here")
    args = ap.parse_args(argv)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not Path(args.llm2vec_python).is_file():
        raise SystemExit(
            f"{args.llm2vec_python} not found: build the llm2vec 0.2.3 venv first with `bash benchmarks/llm2vec_env.sh`"
        )

    import torch

    torch.set_num_threads(args.threads)
    from st_llm2vec.smollm2 import ensure_smollm2

    model_dir = Path(args.model) if args.model else ensure_smollm2()
    sentences = benchmark_sentences(args.sentences, args.data_dir)
    print(f"model {model_dir.name}, {len(sentences)} sentences, batch {args.batch_size}, {args.threads} threads, float32")

    with tempfile.TemporaryDirectory(prefix="encode_vs_llm2vec-") as tmp:
        return compare(args, model_dir, sentences, Path(tmp))


def compare(args, model_dir: Path, sentences: list[str], workdir: Path) -> int:
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    import st_llm2vec

    view = workdir / "view"
    subprocess.run(
        [sys.executable, str(HERE / "llm2vec_view.py"), str(model_dir), str(view)], check=True, capture_output=True
    )

    ours = st_llm2vec.from_llm(str(model_dir), dtype=torch.float32)
    padded = None
    if not args.no_padded:
        padded = st_llm2vec.from_llm(str(model_dir), dtype=torch.float32)
        padded[0].unpad_inputs = False
    plain = None
    if not args.no_plain:
        # plain text in, as in ours: without a pinned text-only modality ST would route each sentence
        # through the checkpoint's chat template (SmolLM2's adds a system prompt: ~30 more tokens)
        backbone = Transformer(
            str(model_dir),
            model_kwargs={"dtype": torch.float32},
            modality_config={"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
            module_output_name="token_embeddings",
        )
        plain = SentenceTransformer(modules=[backbone, Pooling(backbone.get_embedding_dimension(), "mean")])
    bs = args.batch_size

    def encode(model, prompt=None):
        return model.encode(sentences, prompt=prompt, batch_size=bs, convert_to_numpy=True)

    # warm-up (allocator, thread pool); llm2vec_encode.py does its own untimed warm-up encode
    for model in (m for m in (ours, padded, plain) if m is not None):
        model.encode(sentences[: 2 * bs], batch_size=bs)

    # -- 1. agreement (the first round's timings come with it) ----------------------------------
    timings: dict[str, list[float]] = {"llm2vec": [], "ours": [], "ours_padded": [], "plain_st_causal": []}
    ref, t_ref, info = run_llm2vec(args, view, {"docs": sentences}, "docs", workdir)
    timings["llm2vec"] += t_ref
    emb, t = timed(lambda: encode(ours))
    timings["ours"].append(t)
    agreement = {}
    cos = cosines(emb, ref)
    agreement["no_instruction"] = {"min_cosine": float(cos.min()), "max_abs_diff": float(np.abs(emb - ref).max())}
    pairs = [[INSTRUCTION, s] for s in sentences]
    ref_i, _, _ = run_llm2vec(args, view, {"pairs": pairs}, "pairs", workdir)
    # llm2vec's instruction semantics are the exact format's (the portable format pools a short text's own tokens,
    # which can differ from llm2vec's last-N tokens of the joint string: see the README's portable section)
    exact = st_llm2vec.from_llm(str(model_dir), dtype=torch.float32, format="exact")
    emb_i = encode(exact, INSTRUCTION)
    del exact
    cos_i = cosines(emb_i, ref_i)
    agreement["instruction"] = {"min_cosine": float(cos_i.min()), "max_abs_diff": float(np.abs(emb_i - ref_i).max())}
    if padded is not None:
        emb_p, t = timed(lambda: encode(padded))
        timings["ours_padded"].append(t)
        agreement["padded_vs_packed_max_abs_diff"] = float(np.abs(emb_p - emb).max())
    if plain is not None:
        _, t = timed(lambda: encode(plain))
        timings["plain_st_causal"].append(t)

    print(f"llm2vec {info['versions']['llm2vec']} (transformers {info['versions']['transformers']}) vs ours:")
    ok = True
    for name, a in agreement.items():
        if name == "padded_vs_packed_max_abs_diff":
            print(f"  ours packed vs ours padded: max |diff| {a:.2e}")
            continue
        good = a["min_cosine"] >= MIN_COSINE
        ok &= good
        print(f"  {name:15s} min cosine {a['min_cosine']:.7f}  max |diff| {a['max_abs_diff']:.2e}  {'OK' if good else 'FAIL'}")
    if not ok:
        print(f"embeddings disagree (cosine < {MIN_COSINE}): timings not reported")
        return 1

    # -- 2. the remaining timing rounds, alternating --------------------------------------------
    for round_ in range(1, args.rounds):
        _, t_ref, _ = run_llm2vec(args, view, {"docs": sentences}, "docs", workdir)
        timings["llm2vec"] += t_ref
        timings["ours"].append(timed(lambda: encode(ours))[1])
        if padded is not None:
            timings["ours_padded"].append(timed(lambda: encode(padded))[1])
        if plain is not None:
            timings["plain_st_causal"].append(timed(lambda: encode(plain))[1])
        print(f"  round {round_ + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in timings.items() if v))

    n = len(sentences)
    median = {k: statistics.median(v) for k, v in timings.items() if v}
    rows = [
        ("llm2vec 0.2.3 encode", "llm2vec"),
        ("ours (st_llm2vec encode)", "ours"),
        ("ours, padding forced", "ours_padded"),
        ("plain ST, causal, mean", "plain_st_causal"),
    ]
    print()
    print(f"| {'':26s} | median s | sentences/s | best s | sentences/s (best) | runs (s) |")
    print(f"|{'-' * 28}|---------:|------------:|-------:|-------------------:|----------|")
    for label, key in rows:
        if key in median:
            runs = ", ".join(f"{t:.1f}" for t in timings[key])
            best = min(timings[key])
            print(f"| {label:26s} | {median[key]:8.2f} | {n / median[key]:11.1f} | {best:6.2f} | {n / best:18.1f} | {runs} |")
    speedup = median["llm2vec"] / median["ours"]
    # the machine may be shared: ratios within a round (runs minutes apart) are steadier than medians
    per_round = [a / b for a, b in zip(timings["llm2vec"], timings["ours"])]
    print()
    print(f"ours vs llm2vec: {speedup:.2f}x sentences/s (target >= 1.3x); per round "
          + ", ".join(f"{r:.2f}x" for r in per_round) + f"; best runs {min(timings['llm2vec']) / min(timings['ours']):.2f}x")
    summary = {
        "model": model_dir.name, "n": n, "batch_size": bs, "threads": args.threads, "rounds": args.rounds,
        "agreement": agreement, "timings_s": timings, "median_s": median,
        "sentences_per_s": {k: n / v for k, v in median.items()},
        "speedup_vs_llm2vec": speedup, "speedup_vs_llm2vec_per_round": per_round,
        "speedup_vs_llm2vec_best_runs": min(timings["llm2vec"]) / min(timings["ours"]),
        "llm2vec_versions": info["versions"],
    }
    if "ours_padded" in median:
        summary["packing_speedup"] = median["ours_padded"] / median["ours"]
        print(f"ours vs ours padded: {summary['packing_speedup']:.2f}x (what packing buys)")
    if "plain_st_causal" in median:
        summary["time_vs_plain_st_causal"] = median["ours"] / median["plain_st_causal"]
        rounds = [a / b for a, b in zip(timings["ours"], timings["plain_st_causal"])]
        summary["time_vs_plain_st_causal_per_round"] = rounds
        print(f"ours time / plain causal ST time: {summary['time_vs_plain_st_causal']:.2f} (target <= 1.05); per round "
              + ", ".join(f"{r:.2f}" for r in rounds))
        if "ours_padded" in median:
            summary["padded_time_vs_plain_st_causal"] = median["ours_padded"] / median["plain_st_causal"]
            print(f"ours padded time / plain causal ST time: {summary['padded_time_vs_plain_st_causal']:.2f}")
    print(json.dumps(summary))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
