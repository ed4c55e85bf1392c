#!/usr/bin/env python
"""Time the official llm2vec 0.2.3 ``LLM2Vec.encode()``.

Run INSIDE the llm2vec venv (``bash benchmarks/llm2vec_env.sh``), on a
transformers-4.44 checkpoint or view (``benchmarks/llm2vec_view.py``):

    benchmarks/.venv-llm2vec/bin/python benchmarks/llm2vec_encode.py \
        --model DIR --inputs JSON --out NPZ --pooling MODE \
        --batch-size N --threads T --repeats R [--peft DIR]

JSON is ``{"pairs": [[instruction, text], ...]}`` or ``{"docs": [text, ...]}``
(if it holds both, ``--key`` picks one; default ``pairs``).  Pairs are passed
to encode() as lists ``[instruction, text]`` (an empty instruction = none),
docs as plain strings, exactly as the shared fixtures were made.

Loading: ``LLM2Vec.from_pretrained(model, pooling_mode=MODE,
torch_dtype=torch.float32)``; with ``--peft DIR`` also
``peft_model_name_or_path=DIR, merge_peft=True`` (``--no-merge-peft`` keeps it
unmerged); ``--supervised DIR`` then wraps the model in
``PeftModel.from_pretrained(model, DIR)`` unmerged (the fixtures'
base+mntp+supervised stack).

Timing: ``torch.set_num_threads(T)`` first; one untimed warm-up encode of all
inputs; then R encodes of all inputs, each timed with ``time.perf_counter``
(wall) and ``time.process_time`` (CPU seconds of this process, all threads).
Every encode is ``encode(inputs, batch_size=N, show_progress_bar=False,
device="cpu")``.

Output NPZ keys: ``embeddings`` (float32, [n, dim], from the last timed
encode), ``timings`` (float64, [R], wall seconds per full encode), ``cpu_timings``
([R], CPU seconds per encode), ``load_s``,
``warmup_s``, ``n``, ``batch_size``, ``threads``.  The last line on stdout is
one JSON object: {"n", "key", "dim", "batch_size", "threads", "repeats", "pooling",
"timings", "cpu_timings", "loadavg_1m" (1-minute load average before and after the
timed encodes: a value above the core count means the machine was shared and
the timings are noisy), "load_s", "warmup_s", "median_s", "min_s", "texts_per_s" (n /
median), "versions", "out"}.  Everything else goes to stderr.
"""

import argparse
import json
import os
import statistics
import sys
import time
import warnings


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="time llm2vec 0.2.3 encode()")
    ap.add_argument("--model", required=True, help="transformers-4.44 loadable model dir (or view)")
    ap.add_argument("--inputs", required=True, help='JSON: {"pairs": [[instr, text], ...]} or {"docs": [...]}')
    ap.add_argument("--out", required=True, help="output .npz")
    ap.add_argument("--pooling", default="mean", help="mean | weighted_mean | eos_token | bos_token")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--peft", default=None, help="LoRA adapter dir (e.g. MNTP), merged like llm2vec does")
    ap.add_argument("--no-merge-peft", action="store_true", help="keep --peft unmerged")
    ap.add_argument("--supervised", default=None, help="second adapter on top, unmerged (PeftModel)")
    ap.add_argument("--key", choices=["pairs", "docs"], default=None, help="which list of the JSON to encode")
    ap.add_argument("--max-length", type=int, default=None, help="LLM2Vec max_length (default: llm2vec's)")
    ap.add_argument("--doc-max-length", type=int, default=None, help="LLM2Vec doc_max_length")
    return ap.parse_args(argv)


def load_inputs(path, key=None):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if key is None:
        key = "pairs" if "pairs" in data else "docs"
    if key not in data:
        raise SystemExit(f"{path} has no {key!r} list")
    items = data[key]
    if key == "pairs":
        items = [[str(p[0]), str(p[1])] for p in items]
    else:
        items = [str(t) for t in items]
    if not items:
        raise SystemExit(f"{path}: {key!r} is empty")
    return key, items


def main(argv=None):
    args = parse_args(argv)
    if args.repeats < 1 or args.batch_size < 1 or args.threads < 1:
        raise SystemExit("--repeats, --batch-size and --threads must be >= 1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)

    import importlib.metadata as md

    import llm2vec
    from llm2vec import LLM2Vec

    key, items = load_inputs(args.inputs, args.key)

    t0 = time.perf_counter()
    kwargs = {"pooling_mode": args.pooling, "torch_dtype": torch.float32}
    if args.max_length is not None:
        kwargs["max_length"] = args.max_length
    if args.doc_max_length is not None:
        kwargs["doc_max_length"] = args.doc_max_length
    if args.peft:
        kwargs["peft_model_name_or_path"] = args.peft
        kwargs["merge_peft"] = not args.no_merge_peft
    model = LLM2Vec.from_pretrained(args.model, **kwargs)
    if args.supervised:
        from peft import PeftModel

        model.model = PeftModel.from_pretrained(model.model, args.supervised)
    model.eval()
    load_s = time.perf_counter() - t0

    def encode():
        return model.encode(items, batch_size=args.batch_size, show_progress_bar=False, device="cpu")

    t0 = time.perf_counter()
    encode()
    warmup_s = time.perf_counter() - t0

    load_before = os.getloadavg()[0]
    timings, cpu_timings = [], []
    emb = None
    for _ in range(args.repeats):
        c0 = time.process_time()
        t0 = time.perf_counter()
        emb = encode()
        timings.append(time.perf_counter() - t0)
        cpu_timings.append(time.process_time() - c0)
    load_after = os.getloadavg()[0]

    emb = emb.detach().to(torch.float32).cpu().numpy()
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    np.savez(
        args.out,
        embeddings=emb,
        timings=np.asarray(timings, dtype=np.float64),
        cpu_timings=np.asarray(cpu_timings, dtype=np.float64),
        load_s=np.float64(load_s),
        warmup_s=np.float64(warmup_s),
        n=np.int64(len(items)),
        batch_size=np.int64(args.batch_size),
        threads=np.int64(args.threads),
    )
    median = statistics.median(timings)
    result = {
        "n": len(items),
        "key": key,
        "dim": int(emb.shape[1]),
        "batch_size": args.batch_size,
        "threads": args.threads,
        "repeats": args.repeats,
        "pooling": args.pooling,
        "timings": timings,
        "cpu_timings": cpu_timings,
        "loadavg_1m": [load_before, load_after],
        "load_s": load_s,
        "warmup_s": warmup_s,
        "median_s": median,
        "min_s": min(timings),
        "texts_per_s": len(items) / median,
        "versions": {
            "llm2vec": getattr(llm2vec, "__version__", None) or md.version("llm2vec"),
            "transformers": md.version("transformers"),
            "torch": torch.__version__,
            "peft": md.version("peft"),
            "tokenizers": md.version("tokenizers"),
        },
        "out": os.path.abspath(args.out),
    }
    sys.stdout.flush()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
