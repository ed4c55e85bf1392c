"""Encode speed and agreement: stock torch fp32 vs dirs written by `st-llm2vec export` (ONNX Runtime).

    python benchmarks/onnx_speed.py PORTABLE_DIR EXPORTED_DIR [EXPORTED_DIR ...] [--threads 1] [--texts 64]

PORTABLE_DIR is the model the exports were made from (loaded with stock sentence-transformers, torch
fp32); each EXPORTED_DIR is run through ``st_llm2vec.export.onnx.load_onnx``. Best of ``--repeats`` timed
passes after one warm-up; prints ms/text, the speed ratio to torch and the min/mean cosine to torch over
the benchmark texts (other texts than the export's proof). Same process, same threads, same batches.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

WORDS = ("the model maps every sentence to a dense vector so that similar meanings land close together while "
         "unrelated texts end up far apart in the embedding space of a bidirectional decoder").split()


def bench_texts(count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 48)))).capitalize() + "." for _ in range(count)]


def timed(model, texts, batch_size: int, repeats: int) -> tuple[float, np.ndarray]:
    model.encode(texts[:batch_size], batch_size=batch_size)  # warm-up
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = model.encode(texts, batch_size=batch_size, convert_to_numpy=True)
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("portable")
    parser.add_argument("exported", nargs="+")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    from st_llm2vec.export.onnx import load_onnx

    torch.set_num_threads(args.threads)
    texts = bench_texts(args.texts)
    reference = SentenceTransformer(args.portable, device="cpu", model_kwargs={"dtype": torch.float32})
    base_s, base = timed(reference, texts, args.batch_size, args.repeats)
    rows = [{"model": "torch fp32 (stock ST)", "ms_per_text": 1000 * base_s / len(texts), "speedup": 1.0}]
    for path in args.exported:
        report = json.load(open(f"{path}/onnx/export_report.json"))
        model = load_onnx(path, threads=args.threads)
        seconds, emb = timed(model, texts, args.batch_size, args.repeats)
        cos = (emb * base).sum(1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(base, axis=1))
        rows.append({"model": f"onnx {report['quantize'] or 'fp32'} ({path})", "ms_per_text": 1000 * seconds / len(texts),
                     "speedup": base_s / seconds, "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
                     "proof_min_cosine": report["proof"]["min_cosine"]})
    print(f"{len(texts)} texts, batch {args.batch_size}, {args.threads} thread(s), best of {args.repeats}")
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
