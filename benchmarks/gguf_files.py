#!/usr/bin/env python
"""GGUF files of one portable dir, per type: size, speed through llama-cpp-python vs torch float32, and min / mean
cosine to torch float32 on held-out public STS sentences (not the export's proof texts).

    python benchmarks/gguf_files.py DIR --types f16,q8_0:blocks-f16,q8_0,q4_k_m -n 256 --rounds 3 --threads 1

Each type is written by the export's own writer (``st_llm2vec.export.gguf_write.write_gguf``: llama.cpp's converter
as ``llama-embed``, llama.cpp's quantizer with the type's per-tensor overrides) and run as users run it:
``Llama(path, embedding=True, n_ctx=512, n_batch=512, n_ubatch=512).embed(texts)``, one list. Torch float32 is stock
sentence-transformers on DIR (``encode(texts, batch_size=32)``). Speed: ``--rounds`` rounds in this process, each
timing torch and every type once in turn (the order rotating by round), the median texts/s and the median of the
per-round ratios to torch. A type whose weight repacking crashes llama.cpp (probed in a child process first) runs
without repacking, as the export's proof does, and says so. ``--flash-attn``: llama.cpp with flash attention (off by
default in llama-cpp-python and so in LangChain). Sentences: ``-n`` distinct sentences (seeded sample) of
STS 2012 + 2013 test and SICK trial from ../shared/data, stripped. Prints a markdown table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

_PROBE = r"""
import sys, llama_cpp
llm = llama_cpp.Llama(sys.argv[1], embedding=True, n_ctx=512, n_batch=512, n_ubatch=512, n_threads=1, verbose=False)
llm.embed(["a probe", "another probe text"])
print("OK")
"""


def heldout_sentences(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct STS 2012/2013 test and SICK trial sentences, stripped, seeded sample."""
    from st_llm2vec.devdata import SICK_DIR, STS_DIR, _require_data, read_sick, read_sts

    root = _require_data(None)
    texts = [x for year in ("2012", "2013") for p in read_sts(root / STS_DIR / year, split="test")
             for x in (p.sentence1, p.sentence2)]
    texts += [x for p in read_sick(root / SICK_DIR / "SICK_trial.txt") for x in (p.sentence_a, p.sentence_b)]
    unique = list(dict.fromkeys(t.strip() for t in texts if t and t.strip()))
    random.Random(seed).shuffle(unique)
    return unique[:count]


def repack_crashes(path: Path) -> bool:
    """Whether llama.cpp dies loading and running ``path`` with its default weight repacking (a child process)."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    return proc.returncode < 0


def load_gguf(path: Path, threads: int, repack: bool, flash_attn: bool = False):
    import llama_cpp
    import llama_cpp.llama

    original = llama_cpp.llama_model_default_params
    if not repack:  # llama-server's --no-repack
        def without_repack():
            params = original()
            params.use_extra_bufts = False
            return params

        llama_cpp.llama.llama_cpp.llama_model_default_params = without_repack
    try:
        return llama_cpp.Llama(str(path), embedding=True, n_ctx=512, n_batch=512, n_ubatch=512, n_threads=threads,
                               flash_attn=flash_attn, verbose=False)
    finally:
        llama_cpp.llama.llama_cpp.llama_model_default_params = original


def cpu_line() -> str:
    import torch

    flags = ""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), "")
        have = set(next((ln.split(":", 1)[1].split() for ln in cpuinfo.splitlines() if ln.startswith("flags")), []))
        flags = ", ".join(f for f in ("avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8") if f in have)
    except OSError:
        model = platform.processor()
    return (f"{model or 'unknown CPU'} ({flags or 'no AVX-512'}; torch capability "
            f"{torch.backends.cpu.get_cpu_capability()}); load average {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", metavar="DIR", help="a portable model dir (stock sentence-transformers loads it)")
    parser.add_argument("--types", default="f16,q8_0:blocks-f16,q8_0,q4_k_m", help="comma-separated GGUF types")
    parser.add_argument("-n", "--texts", type=int, default=256, help="held-out STS sentences (default 256)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--flash-attn", action="store_true",
                        help="run llama.cpp with flash attention (llama-cpp-python's default, and LangChain's: off)")
    parser.add_argument("--workdir", default=None, help="keep the GGUF files here (default: a temp dir)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from st_llm2vec.export.gguf import _pooling_dir, find_converter
    from st_llm2vec.export.gguf_write import parse_type, tensor_types, write_gguf
    from st_llm2vec.proof import row_cosines

    torch.set_num_threads(args.threads)
    model_dir = Path(args.model).expanduser().absolute()
    texts = heldout_sentences(args.texts)
    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    model.eval()
    pooling = json.loads((model_dir / _pooling_dir(model_dir) / "config.json").read_text())["pooling_mode"]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gguf-files-"))
    workdir.mkdir(parents=True, exist_ok=True)
    converter = find_converter()

    files, notes = {}, {}
    for spec in [s for s in args.types.split(",") if s.strip()]:
        gguf_type = parse_type(spec)
        path = workdir / f"model-{gguf_type.name.replace(':', '.')}.gguf"
        if not path.exists():
            started = time.perf_counter()
            write_gguf(model_dir, path, gguf_type, pooling, converter)
            print(f"wrote {path.name} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
        repack = not repack_crashes(path)
        notes[gguf_type.name] = "" if repack else "no repack (repacking crashed)"
        files[gguf_type.name] = (path, load_gguf(path, args.threads, repack, args.flash_attn))

    def run_torch():
        return model.encode(texts, batch_size=32, convert_to_numpy=True, show_progress_bar=False)

    runners = {"torch fp32": run_torch}
    for name, (_, llm) in files.items():
        runners[name] = lambda llm=llm: np.asarray(llm.embed(texts))
    names = list(runners)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    vectors = {}
    for name in names:  # warm-up, and the vectors
        vectors[name] = runners[name]()
    for round_ in range(args.rounds):
        order = names[round_ % len(names):] + names[:round_ % len(names)]
        for name in order:
            start = time.perf_counter()
            runners[name]()
            seconds[name].append(time.perf_counter() - start)
        print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(f"{n} {len(texts) / seconds[n][-1]:.1f}/s"
                                                               for n in names), file=sys.stderr, flush=True)

    reference = vectors["torch fp32"]
    rows = []
    for name in names:
        ratio = statistics.median(seconds["torch fp32"][i] / seconds[name][i] for i in range(args.rounds))
        row = {"type": name, "texts_per_s": round(len(texts) / statistics.median(seconds[name]), 2),
               "vs_torch": round(ratio, 3)}
        if name in files:
            path = files[name][0]
            cosine = row_cosines(vectors[name], reference)
            worst = int(cosine.argmin())
            counts: dict[str, int] = {}
            for kind in tensor_types(path).values():
                counts[kind] = counts.get(kind, 0) + 1
            row.update(size_mb=round(path.stat().st_size / 1e6, 1), min_cosine=round(float(cosine.min()), 5),
                       mean_cosine=round(float(cosine.mean()), 6), below_0_99=int((cosine < 0.99).sum()),
                       worst_text=texts[worst], tensor_types=counts, note=notes[name])
        rows.append(row)

    print(f"\n{len(texts)} held-out STS sentences, {args.threads} thread(s), {args.rounds} alternating rounds, flash "
          f"attention {'on' if args.flash_attn else 'off'}; "
          f"{cpu_line()}")
    print("\n| type | size MB | texts/s | vs torch fp32 | min cosine | mean cosine | < 0.99 |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        if row["type"] in files:
            print(f"| {row['type']}{' (' + row['note'] + ')' if row['note'] else ''} | {row['size_mb']} | "
                  f"{row['texts_per_s']} | {row['vs_torch']:.2f}x | {row['min_cosine']:.5f} | {row['mean_cosine']:.6f} "
                  f"| {row['below_0_99']} |")
        else:
            print(f"| {row['type']} | | {row['texts_per_s']} | 1.00x | | | |")
    result = {"model": str(model_dir), "texts": len(texts), "threads": args.threads, "rounds": args.rounds,
              "flash_attn": args.flash_attn,
              "cpu": cpu_line(), "rows": rows}
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
