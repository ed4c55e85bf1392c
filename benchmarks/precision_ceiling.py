#!/usr/bin/env python
"""How fast a precision plan can be on this CPU: encode speed as a function of the plan's float32 prefix.

    python benchmarks/precision_ceiling.py [--threads 2] [--rounds 3] [-n 256] [--prefixes 0,6,12] [--int8]

A plan keeps decoder layers 0..k-1 float32 and runs the attention and MLP blocks of the others in bf16
(:mod:`st_llm2vec.precision_apply`). Its speed over float32 is Amdahl's: with L layers and the bf16 layers ``x``
times faster than float32 ones, ``L / (k + (L - k) / x)``. This applies each prefix ``k`` by hand (no search, no
proof: speed only, plus the min cosine to float32 on the same texts so the cost of a shorter prefix is visible),
times it against float32 in alternating rounds in this process, and reads ``x`` off the all-bf16 run (k = 0).
``--int8``: also the layers after the longest prefix as torch's dynamic int8 ``Linear`` (VNNI kernels), the
other candidate the issue names, for speed and cosine (not a plan st_llm2vec offers).

SmolLM2-135M-Instruct, bidirectional, mean pooling; texts: held-out public sentences and phrases
(``precision_heldout.heldout_texts``, sealed split). Prints a markdown table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-n", type=int, default=256, help="held-out texts each timing round encodes")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--prefixes", default="0,6,12", help="float32 prefixes k to time (comma separated)")
    ap.add_argument("--int8", action="store_true", help="also: layers after the longest prefix as dynamic int8")
    args = ap.parse_args(argv)

    import copy

    import numpy as np
    import torch

    import st_llm2vec
    from encode_quantized import cpu_flags
    from precision_heldout import heldout_texts
    from st_llm2vec.precision import PrecisionPlan, apply_plan, decoder_layers, remove_plan
    from st_llm2vec.precision_search import cosines
    from st_llm2vec.smollm2 import ensure_smollm2

    torch.set_num_threads(args.threads)
    texts = [t for group in heldout_texts("sealed", 600, 600).values() for t in group]
    texts = random.Random(2).sample(texts, args.n)
    model = st_llm2vec.from_llm(str(ensure_smollm2()), pooling_mode="mean")
    hf_model = model[0].model
    layers = len(decoder_layers(hf_model))
    prefixes = sorted({int(k) for k in args.prefixes.split(",")})

    variants: dict[str, object] = {"float32": None}
    for k in prefixes:
        variants[f"bf16, layers 0-{k - 1} float32" if k else "bf16 in every layer"] = k
    int8_model = None
    if args.int8:
        from torch.ao.quantization import quantize_dynamic

        int8_model = copy.deepcopy(model)
        for layer in decoder_layers(int8_model[0].model)[max(prefixes):]:
            quantize_dynamic(layer, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
        variants[f"int8 dynamic, layers 0-{max(prefixes) - 1} float32"] = "int8"

    def use(variant: object):
        remove_plan(hf_model)
        if isinstance(variant, int):
            apply_plan(hf_model, PrecisionPlan(float32_layers=list(range(variant)), layers=layers))
        return int8_model if variant == "int8" else model

    def run(variant: object) -> tuple[float, np.ndarray]:
        chosen = use(variant)
        start = time.perf_counter()
        vectors = chosen.encode(texts, batch_size=args.batch_size, show_progress_bar=False)
        return time.perf_counter() - start, np.asarray(vectors, dtype=np.float64)

    print(f"CPU: {cpu_flags()}; {args.threads} threads; {args.n} held-out texts, batch {args.batch_size}; "
          f"{layers} decoder layers", flush=True)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    vectors: dict[str, np.ndarray] = {}
    for name, variant in variants.items():  # warm-up, and the vectors for the cosines
        vectors[name] = run(variant)[1]
    for r in range(args.rounds):
        order = list(variants.items()) if r % 2 == 0 else list(variants.items())[::-1]
        for name, variant in order:
            seconds[name].append(run(variant)[0])
        print(f"round {r}: " + ", ".join(f"{n} {s[-1]:.1f} s" for n, s in seconds.items()), flush=True)
    remove_plan(hf_model)

    base = statistics.median(seconds["float32"])
    rows = {}
    for name, variant in variants.items():
        ratio = statistics.median(f / s for f, s in zip(seconds["float32"], seconds[name]))
        rows[name] = {"prefix": variant if isinstance(variant, int) else None, "seconds": statistics.median(seconds[name]),
                      "ratio": ratio, "min_cosine": float(cosines(vectors["float32"], vectors[name]).min())}
    x = rows["bf16 in every layer"]["ratio"] if 0 in prefixes else None
    print(f"\n| variant | s per round (median) | × float32 | Amdahl from the all-bf16 x | min cosine to float32 |")
    print("|---|---:|---:|---:|---:|")
    for name, row in rows.items():
        k = row["prefix"]
        amdahl = f"{layers / (k + (layers - k) / x):.2f}" if x and k is not None else ""
        print(f"| {name} | {row['seconds']:.1f} | {row['ratio']:.2f} | {amdahl} | {row['min_cosine']:.5f} |")
    if x:
        need = next((k for k in range(layers, -1, -1) if layers / (k + (layers - k) / x) >= 1.8), None)
        print(f"\nbf16 layers are x = {x:.2f} times float32 ones here; 1.8x needs a float32 prefix of at most "
              f"{need} layers at this x (with k = 12 it needs x >= {(layers - 12) / (layers / 1.8 - 12):.2f})" if need is not None
              else f"\nbf16 layers are x = {x:.2f}; 1.8x is out of reach at any prefix")
    print(json.dumps({"cpu": cpu_flags(), "threads": args.threads, "texts": args.n, "base_seconds": base,
                      "rounds": seconds, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
