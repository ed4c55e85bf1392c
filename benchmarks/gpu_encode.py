#!/usr/bin/env python
"""GPU encoding check: unpadded (packed) bidirectional encoding vs padded SDPA, tokens/s and MFU.

    python benchmarks/gpu_encode.py            # on a machine with an NVIDIA GPU (H100 / H200: a few minutes)
    python benchmarks/gpu_encode.py --tiny     # CPU smoke test of the same code path (seconds)

A random-init model with the Llama-3.2-1B shape (hidden 2048, 16 layers, 32 heads / 8 KV heads,
MLP 8192, vocabulary 128256), bf16, behind ``st_llm2vec.from_llm`` (bidirectional, mean pooling). A
word-level tokenizer (one token per word) makes every document exactly as long as asked:

1. mixed corpus, lengths uniform in 16..512 tokens: packed path vs SDPA padded, both through
   ``SentenceTransformer.encode`` (ST sorts by length; the packed path interleaves long and short);
2. a corpus of 512-token documents: MFU of the packed path and of SDPA (no padding there);

The packed path is flash-attn 2's varlen kernel (``attn_implementation="flash_attention_2"``) when
flash-attn is installed; otherwise torch-native flex_attention with a document BlockMask (said so in
the output). Tokens/s counts real tokens; MFU = 2 * non-embedding params * tokens / time / peak (bf16
dense peak by GPU name; attention FLOPs not counted, so MFU is conservative).

Self-checks (exit status 1 if one fails): each model passes the bidirectionality probe at load under
its attention; a packed batch is bidirectional inside each text and isolated across texts; packed and
padded embeddings agree (cosine >= 0.99 in bf16, max |diff| <= 1e-4 in float32 with ``--tiny``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# bf16 dense tensor-core peak, TFLOPS (NVIDIA data sheets; no sparsity)
PEAK_BF16_TFLOPS = {
    "H100 SXM": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIE": 756.0,
    "H200": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
}

LLAMA_3_2_1B = dict(
    hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
    head_dim=64, vocab_size=128256, max_position_embeddings=8192, tie_word_embeddings=True,
)
TINY = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    head_dim=16, vocab_size=1000, max_position_embeddings=512, tie_word_embeddings=True,
)


def peak_tflops(name: str) -> float | None:
    """bf16 dense peak for a CUDA device name (e.g. 'NVIDIA H100 80GB HBM3' -> H100 SXM)."""
    upper = name.upper()
    if "H100" in upper:
        if "PCIE" in upper:
            return PEAK_BF16_TFLOPS["H100 PCIE"]
        if "NVL" in upper:
            return PEAK_BF16_TFLOPS["H100 NVL"]
        return PEAK_BF16_TFLOPS["H100 SXM"]  # 'H100 80GB HBM3' is the SXM part
    for key in ("GH200", "H200", "B200", "A100", "L40S", "L4", "A10G"):
        if key in upper:
            return PEAK_BF16_TFLOPS[key]
    return None


def word(i: int) -> str:
    return f"t{i:06d}"  # same character count for every word: ST's char-length sort is a token sort


def make_checkpoint(out: Path, shape: dict, dtype, device: str, seed: int = 0) -> Path:
    """A random-init Llama causal LM with ``shape`` and a word-level tokenizer (BOS added, EOS = pad)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({word(i): i for i in range(3, shape["vocab_size"])})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.model_max_length = 512
    fast.save_pretrained(out)
    config = LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, pad_token_id=None)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(out)
    del model
    return out


def corpus(count: int, low: int, high: int, vocab: int, seed: int) -> list[str]:
    """``count`` documents of uniform random length in [low, high] tokens (BOS included)."""
    rng = random.Random(seed)
    docs = []
    for _ in range(count):
        length = rng.randint(low, high) - 1  # + BOS
        docs.append(" ".join(word(rng.randrange(3, vocab)) for _ in range(length)))
    return docs


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def time_encode(model, docs, batch_size: int, device: str, repeats: int) -> tuple[list[float], object]:
    """Wall times of ``encode(docs)`` (after one warm-up encode), and the last embeddings."""
    import torch

    emb = model.encode(docs, batch_size=batch_size, convert_to_tensor=True)  # warm-up (kernels, compile)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        emb = model.encode(docs, batch_size=batch_size, convert_to_tensor=True)
        sync(device)
        times.append(time.perf_counter() - start)
    return times, emb.float().cpu() if isinstance(emb, torch.Tensor) else emb


def packed_probe(model) -> dict[str, float]:
    """On one packed batch: the first token sees the last (bidirectional), a neighbour text does not."""
    import torch

    encoder = model[0]
    a = " ".join(word(i) for i in range(10, 30))
    a_changed = " ".join(word(i) for i in range(10, 29)) + " " + word(500)
    b = " ".join(word(i) for i in range(40, 52))
    outs = []
    for first in (a, a_changed):
        features = encoder.preprocess([first, b])
        assert "cu_seq_lens_q" in features, "the probe batch was not packed"
        features = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
        with torch.inference_mode():
            out = model(features)
        outs.append((out["token_embeddings"].float(), out["attention_mask"]))
    (t1, m1), (t2, _) = outs
    # the rows come back padded (right-padded under inference_mode): find each text's tokens by its mask
    first_a = int(m1[0].nonzero()[0])
    tokens_b = m1[1].bool()
    rel = lambda x, y: float((x - y).norm() / x.norm().clamp_min(1e-12))
    return {
        "early_token_shift": rel(t1[0, first_a], t2[0, first_a]),
        "neighbour_shift": rel(t1[1, tokens_b], t2[1, tokens_b]),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny model, float32, small corpus")
    ap.add_argument("--docs", type=int, default=None, help="mixed-corpus size (default 4096; 48 with --tiny)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="also write the JSON summary here")
    ap.add_argument(
        "--packed-attention", choices=["flash_attention_2", "flex_attention", "sdpa"], default=None,
        help="attention of the packed path (default: flash_attention_2 if installed, else flex_attention; sdpa with --tiny)",
    )
    args = ap.parse_args(argv)

    import torch

    import st_llm2vec

    tiny = args.tiny
    device = "cpu" if tiny else "cuda"
    if not tiny and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --tiny for the CPU smoke test")
    dtype = torch.float32 if tiny else torch.bfloat16
    shape = TINY if tiny else LLAMA_3_2_1B
    low, high = (16, 64) if tiny else (16, 512)
    full_length = high
    n_docs = args.docs or (48 if tiny else 4096)
    n_full = max(8, n_docs // 4)
    if tiny:
        torch.set_num_threads(1)

    have_flash = importlib.util.find_spec("flash_attn") is not None and not tiny
    if have_flash:
        from transformers.utils import is_flash_attn_2_available

        have_flash = is_flash_attn_2_available()
    packed_impl = args.packed_attention or ("flash_attention_2" if have_flash else ("sdpa" if tiny else "flex_attention"))
    if packed_impl == "flash_attention_2" and not have_flash:
        raise SystemExit("--packed-attention flash_attention_2: flash-attn 2 is not installed (or no GPU)")
    have_flash = packed_impl == "flash_attention_2"
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    peak = peak_tflops(gpu) if device == "cuda" else None
    print(f"device: {gpu}; dtype {str(dtype).replace('torch.', '')}; batch {args.batch_size}; repeats {args.repeats}")
    if have_flash:
        print("packed path: flash-attn 2 varlen kernels (attn_implementation='flash_attention_2')")
    elif args.packed_attention:
        print(f"packed path: {packed_impl} with a document mask (chosen with --packed-attention)")
    elif tiny:
        print("packed path: sdpa with a document mask (CPU smoke test)")
    else:
        print("flash-attn is NOT installed: packed path measured with torch-native flex_attention + document BlockMask")

    workdir = Path(tempfile.mkdtemp(prefix="gpu_encode-"))
    start = time.perf_counter()
    ckpt = make_checkpoint(workdir / "model", shape, dtype, device)
    print(f"random-init checkpoint written in {time.perf_counter() - start:.1f}s")

    load = dict(pooling_mode="mean", max_seq_length=full_length, doc_max_length=None, dtype=dtype, device=device)
    if device == "cuda":
        load["device_map"] = device  # weights straight onto the GPU: the load-time probe runs there
    packed = st_llm2vec.from_llm(str(ckpt), attn_implementation=packed_impl, **load)
    packed[0].unpad_inputs = True
    padded = st_llm2vec.from_llm(str(ckpt), attn_implementation="sdpa", **load)
    padded[0].unpad_inputs = False
    checks: dict[str, bool] = {}
    if not packed[0].can_flatten_inputs:
        print(f"FAIL: the packed model cannot pack with attn_implementation={packed_impl!r}")
        return 1
    params = sum(p.numel() for p in packed[0].model.parameters())
    non_embedding = params - packed[0].model.get_input_embeddings().weight.numel()
    print(f"model: {params / 1e9:.3f}B params ({non_embedding / 1e9:.3f}B non-embedding)")

    # -- bidirectionality -------------------------------------------------------------------------
    for name, model in (("packed", packed), ("padded", padded)):
        probe = model[0].probe
        print(f"probe at load ({name}, {model[0].model.config._attn_implementation}): "
              f"early_token_shift {probe['early_token_shift']:.3e}, padding_mismatch {probe['padding_mismatch']:.3e}")
    result = packed_probe(packed)
    min_shift = 1e-5 if dtype == torch.float32 else 1e-3
    max_leak = 1e-6 if dtype == torch.float32 else 1e-2
    checks["bidirectional"] = result["early_token_shift"] > min_shift
    checks["isolated"] = result["neighbour_shift"] <= max_leak
    print(f"packed batch: early_token_shift {result['early_token_shift']:.3e} (bidirectional: "
          f"{'OK' if checks['bidirectional'] else 'FAIL'}), neighbour text shift {result['neighbour_shift']:.3e} "
          f"(isolated: {'OK' if checks['isolated'] else 'FAIL'})")

    # -- mixed lengths --------------------------------------------------------------------------
    mixed = corpus(n_docs, low, high, shape["vocab_size"], seed=1)
    tokens = sum(len(d.split()) + 1 for d in mixed)
    rows = []
    t_packed, e_packed = time_encode(packed, mixed, args.batch_size, device, args.repeats)
    t_padded, e_padded = time_encode(padded, mixed, args.batch_size, device, args.repeats)
    cos = torch.nn.functional.cosine_similarity(e_packed, e_padded, dim=1)
    diff = float((e_packed - e_padded).abs().max())
    if tiny:
        checks["agree"] = diff <= 1e-4
    else:
        checks["agree"] = float(cos.min()) >= 0.99
    print(f"packed == padded: min cosine {float(cos.min()):.6f}, max |diff| {diff:.2e} "
          f"({'OK' if checks['agree'] else 'FAIL'})")

    def row(label, times, n_tokens):
        median = statistics.median(times)
        tps = n_tokens / median
        mfu = 2 * non_embedding * tps / (peak * 1e12) if peak else None
        rows.append({"case": label, "median_s": median, "tokens_per_s": tps, "mfu": mfu, "runs_s": times})
        return median

    m_packed = row(f"mixed {low}-{high}, packed ({packed_impl})", t_packed, tokens)
    m_padded = row(f"mixed {low}-{high}, padded (sdpa)", t_padded, tokens)

    # -- full-length documents (MFU) ------------------------------------------------------------
    full = corpus(n_full, full_length, full_length, shape["vocab_size"], seed=2)
    full_tokens = n_full * full_length
    t_full_packed, _ = time_encode(packed, full, args.batch_size, device, args.repeats)
    row(f"{full_length}-token docs, packed ({packed_impl})", t_full_packed, full_tokens)
    t_full_padded, _ = time_encode(padded, full, args.batch_size, device, args.repeats)
    row(f"{full_length}-token docs, sdpa (no padding)", t_full_padded, full_tokens)

    print()
    print("| case | median s | tokens/s | MFU |")
    print("|---|---:|---:|---:|")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"| {r['case']} | {r['median_s']:.3f} | {r['tokens_per_s']:,.0f} | {mfu} |")
    speedup = m_padded / m_packed
    print(f"\nmixed lengths: packed / padded speedup {speedup:.2f}x ({tokens:,} tokens in {n_docs} docs)")
    if peak is None:
        print(f"MFU: n/a (no bf16 peak known for {gpu!r})")
    else:
        print(f"MFU against {peak:.0f} TFLOPS bf16 dense ({gpu})")
    ok = all(checks.values())
    summary = {
        "device": gpu, "dtype": str(dtype), "packed_attention": packed_impl, "flash_attn": have_flash,
        "batch_size": args.batch_size, "params": params, "non_embedding_params": non_embedding,
        "peak_tflops": peak, "rows": rows, "mixed_speedup": speedup, "checks": checks,
        "packed_probe": result, "probes": {"packed": packed[0].probe, "padded": padded[0].probe},
    }
    print(json.dumps(summary))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print("all checks passed" if ok else f"FAILED checks: {[k for k, v in checks.items() if not v]}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
