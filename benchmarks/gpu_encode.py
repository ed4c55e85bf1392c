#!/usr/bin/env python
"""GPU check of the encoding and training paths on a Llama-3.2-1B-shaped random model: packing, MFU, nf4, QLoRA.

    python benchmarks/gpu_encode.py                       # NVIDIA GPU (H200 / H100: a few minutes)
    python benchmarks/gpu_encode.py --peak-tflops 312     # a GPU whose bf16 peak is not in the table below
    python benchmarks/gpu_encode.py --out gpu.json        # also write the JSON summary to a file
    python benchmarks/gpu_encode.py --tiny                # CPU smoke test of every code path (seconds)

A random-init model with the Llama-3.2-1B shape (hidden 2048, 16 layers, 32 heads / 8 KV heads, MLP 8192,
vocabulary 128256, tied embeddings), saved as a local checkpoint with a locally built word-level tokenizer
(one token per word, so every document is exactly as long as asked; nothing is downloaded), loaded through
``st_llm2vec.from_llm`` (bidirectional, mean pooling), bf16. Measured in one run, each as a ratio:

1. packed vs padded, both SDPA, on mixed-length texts (uniform in 16..512 tokens): the corpus is encoded in
   batches of ``--batch-size`` texts as they come (one ``encode`` call per batch, so each batch mixes long and
   short texts), once with ``unpad_inputs=True`` (one packed row behind a document mask) and once with
   ``unpad_inputs=False`` (left-padded rows). Target: packed >= 2x padded. The matmul work padding adds
   (padded tokens / real tokens, printed) bounds what packing can gain; for uniform 16..512 it is about 1.9x.
   Also, through one ``encode`` of the whole corpus (ST sorts by length, so its batches are barely padded):
   the packed path (flash-attn 2 varlen kernels with ``attn_implementation="flash_attention_2"`` when
   flash-attn is installed, else flex_attention with a document BlockMask) vs SDPA padded.
2. bf16 MFU on 512-token documents, packed path and SDPA. Target: >= 45 % (the better of the two).
   MFU = 2 * non-embedding params * real tokens / time / peak; attention FLOPs are not counted, so MFU is
   conservative. The peak is ``--peak-tflops`` if given, else the bf16 dense tensor-core peak (no sparsity)
   from NVIDIA's data sheet for the device name (table ``PEAK_BF16_TFLOPS``; H200 SXM: 989 TFLOPS); a GPU not
   in the table needs ``--peak-tflops``. The figure and its source are printed and in the JSON.
3. nf4 vs bf16: ``torch.cuda.max_memory_allocated`` after loading (``from_llm(path, quantization="nf4")``,
   bitsandbytes, double quantization, bf16 compute) plus one ``encode`` of 256 mixed texts, against the same
   for the bf16 model; and the min cosine of the nf4 embeddings to the bf16 ones. Targets: memory <= 0.35x,
   min cosine >= 0.98. (The embedding matrix is not quantized: 0.26B of the 1.24B weights stay bf16.)
4. one MNTP training step, bf16 LoRA vs QLoRA (nf4): the pieces of ``st_llm2vec.recipe.stage_mntp.train_mntp``
   built from one recipe config (``quantization: "nf4"`` for QLoRA; ``torch_dtype: bfloat16``, ``bf16: true``,
   sdpa, LoRA r 16 on every projection, ``mask_token_type: eos``, 8 x 512-token blocks of a generated corpus,
   3 steps) and trained by ``LLM2VecTrainer``; nothing is saved (``train_mntp`` itself would also merge and
   write the model). As in the recipe, the start model loads on CPU (nf4 quantized there) and the trainer moves
   it to the GPU. Reported: the median time of the steps after the first, and ``torch.cuda.max_memory_allocated``
   over the run (weights, LoRA, optimizer state, activations). No target; both ratios QLoRA / LoRA.

The measurements run in that order of memory: (3) first, on an empty GPU, then (1)/(2), then (4). A phase that
raises is reported (traceback, ``errors`` in the JSON) and the others still run. With ``--tiny`` (CPU, float32
reference instead of bf16, a 2-layer hidden-64 model: bitsandbytes' CPU 4-bit kernels need in_features >= 64)
every path runs, nf4 load and QLoRA step included; CUDA-only figures (memory, MFU) are n/a.

Self-checks (exit status 1 if one fails or a phase raised; a missed target is reported, not an error): each
model passes the bidirectionality probe at load under its attention; a packed batch is bidirectional inside
each text and isolated across texts; packed and padded embeddings agree (cosine >= 0.99 in bf16, max |diff| <=
1e-4 in float32 with ``--tiny``), through ST's encode and batch by batch; the training losses are finite.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import random
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# bf16 dense tensor-core peak, TFLOPS (NVIDIA data sheets; no sparsity)
PEAK_BF16_TFLOPS = {
    "H100 SXM": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIE": 756.0,
    "H200": 989.0,  # H200 SXM data sheet: 1,979 TFLOPS BF16 with sparsity, 989 dense (H200 NVL: 835)
    "H200 NVL": 835.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
}

TARGETS = {  # (value name, comparison, threshold)
    "sdpa_packed_over_padded": (">=", 2.0),
    "mfu_512": (">=", 0.45),
    "nf4_memory_ratio": ("<=", 0.35),
    "nf4_min_cosine": (">=", 0.98),
}

LLAMA_3_2_1B = dict(
    hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
    head_dim=64, vocab_size=128256, max_position_embeddings=8192, tie_word_embeddings=True,
)
TINY = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    head_dim=16, vocab_size=1000, max_position_embeddings=512, tie_word_embeddings=True,
)


def peak_key(name: str) -> str | None:
    """The ``PEAK_BF16_TFLOPS`` entry for a CUDA device name (e.g. 'NVIDIA H100 80GB HBM3' -> H100 SXM)."""
    upper = name.upper()
    if "H100" in upper:
        if "PCIE" in upper:
            return "H100 PCIE"
        if "NVL" in upper:
            return "H100 NVL"
        return "H100 SXM"  # 'H100 80GB HBM3' is the SXM part
    if "GH200" in upper:
        return "GH200"
    if "H200" in upper:
        return "H200 NVL" if "NVL" in upper else "H200"
    for key in ("B200", "A100", "L40S", "L4", "A10G"):
        if key in upper:
            return key
    return None


def peak_tflops(name: str) -> float | None:
    """bf16 dense peak for a CUDA device name, or None if it is not in the table."""
    key = peak_key(name)
    return PEAK_BF16_TFLOPS[key] if key else None


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


def count_params(shape: dict) -> tuple[int, int]:
    """(params, non-embedding params) of the backbone ``from_llm`` loads (no LM head), on the meta device."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    with torch.device("meta"):
        model = LlamaModel(LlamaConfig(**shape))
    params = sum(p.numel() for p in model.parameters())
    return params, params - model.get_input_embeddings().weight.numel()


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


def time_calls(call, device: str, repeats: int) -> tuple[list[float], object]:
    """Wall times of ``call()`` (after one warm-up call: kernels, compile), and its last result as float32 on CPU."""
    import torch

    out = call()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        out = call()
        sync(device)
        times.append(time.perf_counter() - start)
    return times, out.float().cpu() if isinstance(out, torch.Tensor) else out


def time_encode(model, docs, batch_size: int, device: str, repeats: int) -> tuple[list[float], object]:
    """``encode(docs)`` as one call: ST sorts the texts by length, so its batches are barely padded."""
    return time_calls(lambda: model.encode(docs, batch_size=batch_size, convert_to_tensor=True), device, repeats)


def time_batches(model, batches: list[list[str]], device: str, repeats: int) -> tuple[list[float], object]:
    """One ``encode`` call per batch, in corpus order: each batch mixes long and short texts."""
    import torch

    def call():
        return torch.cat([model.encode(b, batch_size=len(b), convert_to_tensor=True) for b in batches])

    return time_calls(call, device, repeats)


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


# ----------------------------------------------------------------------------------------------- memory


def free_memory(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def memory_start(device: str) -> int | None:
    """Free what can be freed, reset the peak counter; the bytes still allocated (the baseline), None on CPU."""
    import torch

    free_memory(device)
    if device != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def memory_peak(device: str, base: int | None) -> int | None:
    """``torch.cuda.max_memory_allocated`` since :func:`memory_start`, less its baseline; None on CPU."""
    import torch

    if device != "cuda" or base is None:
        return None
    sync(device)
    return torch.cuda.max_memory_allocated() - base


def memory_now(device: str, base: int | None) -> int | None:
    import torch

    if device != "cuda" or base is None:
        return None
    sync(device)
    return torch.cuda.memory_allocated() - base


def ratio(a, b):
    return a / b if a is not None and b else None


# ----------------------------------------------------------------------------------------------- (3) nf4


def measure_lowbit(ckpt: Path, load: dict, texts: list[str], batch_size: int, device: str) -> dict:
    """Memory after load + one encode (and after load alone) of the reference and the nf4 model; their cosines."""
    import torch

    import st_llm2vec

    out: dict = {"texts": len(texts)}
    embeddings = {}
    for name, quantization in (("reference", None), ("nf4", "nf4")):
        base = memory_start(device)
        start = time.perf_counter()
        model = st_llm2vec.from_llm(str(ckpt), attn_implementation="sdpa", quantization=quantization, **load)
        load_s = time.perf_counter() - start
        weights = memory_now(device, base)
        sync(device)
        start = time.perf_counter()
        emb = model.encode(texts, batch_size=batch_size, convert_to_tensor=True)
        sync(device)
        encode_s = time.perf_counter() - start
        embeddings[name] = emb.float().cpu()
        layer = model[0].model.layers[0].self_attn.q_proj
        out[name] = {
            "quantization": quantization, "load_s": load_s, "encode_s": encode_s,
            "weights_bytes": weights, "peak_bytes": memory_peak(device, base),
            "q_proj": type(layer).__name__, "probe": dict(model[0].probe),
        }
        del model, emb, layer
        free_memory(device)
    if out["nf4"]["q_proj"] != "Linear4bit":
        raise RuntimeError(f"the nf4 model's q_proj is {out['nf4']['q_proj']}, not bitsandbytes' Linear4bit")
    cos = torch.nn.functional.cosine_similarity(embeddings["nf4"], embeddings["reference"], dim=1)
    out["min_cosine"] = float(cos.min())
    out["mean_cosine"] = float(cos.mean())
    out["memory_ratio"] = ratio(out["nf4"]["peak_bytes"], out["reference"]["peak_bytes"])
    out["weights_ratio"] = ratio(out["nf4"]["weights_bytes"], out["reference"]["weights_bytes"])
    return out


# ----------------------------------------------------------------------------------------------- (4) QLoRA


def write_training_corpus(path: Path, vocab: int, lines: int, words: int, seed: int = 3) -> Path:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(lines):
            f.write(" ".join(word(rng.randrange(3, vocab)) for _ in range(words)) + "\n")
    return path


def mntp_step(config: dict, device: str) -> dict:
    """What ``train_mntp(config)`` does up to ``trainer.train()`` (stage_mntp._train), with a step timer and no
    save; ``config`` is an ordinary MNTP recipe dict."""
    from transformers import TrainerCallback, set_seed

    from st_llm2vec.recipe.mntp_loss import MNTPLoss
    from st_llm2vec.recipe.mntp_masking import MNTPDataCollator, setup_mask_token
    from st_llm2vec.recipe.arguments import read_arguments, training_arguments
    from st_llm2vec.recipe.stage_model import add_lora, start_model
    from st_llm2vec.recipe.stage_mntp import MNTPArguments, _corpus, _max_seq_length
    from st_llm2vec.recipe.trainer import LLM2VecTrainer

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            sync(device)
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync(device)
            self.times.append(time.perf_counter() - self.start)

    arguments, training = read_arguments(MNTPArguments, config)
    training = dict(training, eval_strategy="no")
    args = training_arguments(training)
    base = memory_start(device)
    set_seed(args.seed)
    start = time.perf_counter()
    model, _ = start_model(arguments)  # loads on CPU (quantizing there for nf4); the trainer moves it
    load_s = time.perf_counter() - start
    tokenizer = model[0].tokenizer
    mask_id = setup_mask_token(model, arguments.mask_token_type)
    max_seq_length = _max_seq_length(arguments, tokenizer)
    train_ds, _, _ = _corpus(arguments, args, tokenizer, max_seq_length)
    add_lora(model, arguments)
    loss = MNTPLoss(model, lm_head=arguments.lm_head, freeze_lm_head=arguments.freeze_lm_head,
                    mlm_probability=arguments.mlm_probability, strategy=arguments.data_collator_type,
                    mask_token_id=mask_id)
    timer = StepTimer()
    trainer = LLM2VecTrainer(model=model, args=args, train_dataset=train_ds, loss=loss,
                             data_collator=MNTPDataCollator(tokenizer, max_length=max_seq_length), callbacks=[timer])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    backbone = model[0].model
    quantized = any(type(m).__name__ == "Linear4bit" for m in backbone.modules())
    device_of = str(next(backbone.parameters()).device)
    peak = memory_peak(device, base)
    del trainer, model, loss, backbone, train_ds
    free_memory(device)
    steady = timer.times[1:] or timer.times
    return {
        "quantization": arguments.quantization, "load_s": load_s, "steps_s": timer.times,
        "step_s": statistics.median(steady), "peak_bytes": peak, "losses": losses,
        "tokens_per_step": args.per_device_train_batch_size * max_seq_length, "trainable_params": trainable,
        "linear4bit": quantized, "device": device_of,
    }


def measure_training(ckpt: Path, workdir: Path, shape: dict, tiny: bool, device: str, steps: int) -> dict:
    length, batch = (32, 4) if tiny else (512, 8)
    corpus_file = write_training_corpus(workdir / "mntp_corpus.txt", shape["vocab_size"],
                                        lines=(steps + 1) * batch * 2, words=length)
    out: dict = {"max_seq_length": length, "batch_size": batch, "steps": steps}
    for name, quantization in (("lora", None), ("qlora", "nf4")):
        config = {
            "model_name_or_path": str(ckpt), "train_file": str(corpus_file), "max_seq_length": length,
            "per_device_train_batch_size": batch, "learning_rate": 1e-4, "lora_r": 16, "max_steps": steps,
            "logging_steps": 1, "save_strategy": "no", "disable_tqdm": True, "seed": 7,
            "attn_implementation": "sdpa", "mask_token_type": "eos",  # the word-level vocabulary has no '_'
            "output_dir": str(workdir / f"mntp_{name}"), "overwrite_output_dir": True,
            "quantization": quantization, "dataloader_num_workers": 0,
        }
        if tiny:
            config["use_cpu"] = True
        else:
            config.update(torch_dtype="bfloat16", bf16=True)
        out[name] = mntp_step(config, device)
        if out[name]["linear4bit"] != (quantization is not None):
            raise RuntimeError(f"{name}: 4-bit layers {'missing' if quantization else 'present'} in the trained model")
    out["time_ratio"] = out["qlora"]["step_s"] / out["lora"]["step_s"]
    out["memory_ratio"] = ratio(out["qlora"]["peak_bytes"], out["lora"]["peak_bytes"])
    return out


# ----------------------------------------------------------------------------------------------- output


def mib(n):
    return f"{n / 2**20:,.0f} MiB" if n is not None else "n/a"


def pct(x):
    return f"{100 * x:.1f}%" if x is not None else "n/a"


def target_of(name: str, value) -> dict:
    op, threshold = TARGETS[name]
    met = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
    return {"value": value, "target": f"{op} {threshold:g}", "met": met}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny model, float32, small corpus")
    ap.add_argument("--docs", type=int, default=None, help="mixed-corpus size (default 4096; 48 with --tiny)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=None, help="MNTP steps per training case (default 3; 2 with --tiny)")
    ap.add_argument("--out", default=None, help="also write the JSON summary here")
    ap.add_argument(
        "--peak-tflops", type=float, default=None,
        help="bf16 dense peak of the device for MFU (default: NVIDIA's data-sheet figure for the device name, e.g. "
             "989 for H200 SXM; required for a GPU not in the table)",
    )
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
    ref = "float32" if tiny else "bf16"  # the reference precision (nf4's and QLoRA's comparison)
    shape = TINY if tiny else LLAMA_3_2_1B
    low, high = (16, 64) if tiny else (16, 512)
    full_length = high
    n_docs = args.docs or (48 if tiny else 4096)
    n_full = max(8, n_docs // 4)
    n_lowbit = min(n_docs, 16 if tiny else 256)
    train_steps = args.train_steps or (2 if tiny else 3)
    if tiny:
        torch.set_num_threads(1)

    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    if args.peak_tflops is not None:
        peak, peak_source = args.peak_tflops, "--peak-tflops"
    elif device == "cuda":
        key = peak_key(gpu)
        if key is None:
            raise SystemExit(f"no bf16 peak known for {gpu!r}: pass --peak-tflops (dense bf16, from its data sheet)")
        peak, peak_source = PEAK_BF16_TFLOPS[key], f"NVIDIA data sheet, {key} bf16 dense (no sparsity)"
    else:
        peak, peak_source = None, "n/a on CPU"

    have_flash = importlib.util.find_spec("flash_attn") is not None and not tiny
    if have_flash:
        from transformers.utils import is_flash_attn_2_available

        have_flash = is_flash_attn_2_available()
    packed_impl = args.packed_attention or ("flash_attention_2" if have_flash else ("sdpa" if tiny else "flex_attention"))
    if packed_impl == "flash_attention_2" and not have_flash:
        raise SystemExit("--packed-attention flash_attention_2: flash-attn 2 is not installed (or no GPU)")
    have_flash = packed_impl == "flash_attention_2"
    print(f"device: {gpu}; dtype {str(dtype).replace('torch.', '')}; batch {args.batch_size}; repeats {args.repeats}")
    print(f"MFU peak: {f'{peak:g} TFLOPS' if peak else 'n/a'} ({peak_source})")
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
    print(f"random-init checkpoint written in {time.perf_counter() - start:.1f}s ({ckpt})")
    params, non_embedding = count_params(shape)
    print(f"model: {params:,} params ({non_embedding:,} non-embedding)")

    load = dict(pooling_mode="mean", max_seq_length=full_length, doc_max_length=None, dtype=dtype, device=device)
    if device == "cuda":
        load["device_map"] = device  # weights straight onto the GPU: the load-time probe runs there
    mixed = corpus(n_docs, low, high, shape["vocab_size"], seed=1)
    tokens = sum(len(d.split()) + 1 for d in mixed)
    checks: dict[str, bool] = {}
    errors: dict[str, str] = {}
    rows: list[dict] = []  # the table: throughput / memory rows and ratio rows
    summary: dict = {
        "device": gpu, "dtype": str(dtype), "packed_attention": packed_impl, "flash_attn": have_flash,
        "batch_size": args.batch_size, "peak_tflops": peak, "peak_source": peak_source,
        "params": params, "non_embedding_params": non_embedding,
    }

    def phase(name, fn):
        print(f"\n== {name}")
        start = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:  # reported; the other phases still run
            traceback.print_exc()
            errors[name] = f"{type(exc).__name__}: {exc}"
            print(f"ERROR in {name}: {errors[name]}")
            free_memory(device)
            return None
        print(f"({name}: {time.perf_counter() - start:.1f}s)")
        return result

    def row(case, seconds=None, n_tokens=None, mfu_ok=False, memory=False, value=None, target=None, fmt="x"):
        """A table row; ``memory``: the peak bytes where the row measures memory (None: n/a on CPU)."""
        tps = n_tokens / seconds if n_tokens and seconds else None
        mfu = 2 * non_embedding * tps / (peak * 1e12) if mfu_ok and peak and tps else None
        entry = {"case": case, "seconds": seconds, "tokens_per_s": tps, "mfu": mfu,
                 "peak_bytes": None if memory is False else memory, "memory_measured": memory is not False,
                 "value": value, "target": target, "format": fmt}
        rows.append(entry)
        return entry

    # -- (3) nf4 vs the reference: memory and cosine, first, on an empty GPU -------------------------------
    def lowbit_phase():
        res = measure_lowbit(ckpt, load, mixed[:n_lowbit], args.batch_size, device)
        lowbit_tokens = sum(len(d.split()) + 1 for d in mixed[:n_lowbit])
        for name, label in (("reference", ref), ("nf4", "nf4")):
            r = res[name]
            print(f"{label}: load {r['load_s']:.1f}s, weights {mib(r['weights_bytes'])}, peak {mib(r['peak_bytes'])}; "
                  f"probe early_token_shift {r['probe']['early_token_shift']:.3e}, "
                  f"padding_mismatch {r['probe']['padding_mismatch']:.3e}")
            row(f"load + encode {n_lowbit} mixed texts, {label} (one cold encode)", r["encode_s"], lowbit_tokens,
                memory=r["peak_bytes"])
        print(f"nf4 vs {ref}: min cosine {res['min_cosine']:.4f}, mean {res['mean_cosine']:.4f}; "
              f"weights ratio {res['weights_ratio'] if res['weights_ratio'] is None else round(res['weights_ratio'], 3)}")
        row(f"nf4 / {ref} peak memory (load + encode)", value=res["memory_ratio"],
            target=target_of("nf4_memory_ratio", res["memory_ratio"]))
        row(f"nf4 vs {ref} embeddings, min cosine", value=res["min_cosine"],
            target=target_of("nf4_min_cosine", res["min_cosine"]), fmt="f")
        return res

    summary["lowbit"] = phase("nf4 vs reference memory and cosine", lowbit_phase)

    # -- (1) packed vs padded, (2) MFU at full length ------------------------------------------------------
    def encode_phase():
        res: dict = {}
        packed = st_llm2vec.from_llm(str(ckpt), attn_implementation=packed_impl, **load)
        packed[0].unpad_inputs = True
        padded = st_llm2vec.from_llm(str(ckpt), attn_implementation="sdpa", **load)
        padded[0].unpad_inputs = False
        if not packed[0].can_flatten_inputs:
            raise RuntimeError(f"the packed model cannot pack with attn_implementation={packed_impl!r}")
        loaded = sum(p.numel() for p in packed[0].model.parameters())
        if loaded != params:
            raise RuntimeError(f"the loaded backbone has {loaded:,} params, the shape {params:,}")
        for name, model in (("packed", packed), ("padded", padded)):
            probe = model[0].probe
            print(f"probe at load ({name}, {model[0].model.config._attn_implementation}): "
                  f"early_token_shift {probe['early_token_shift']:.3e}, padding_mismatch {probe['padding_mismatch']:.3e}")
        res["probes"] = {"packed": dict(packed[0].probe), "padded": dict(padded[0].probe)}
        result = packed_probe(packed)
        res["packed_probe"] = result
        min_shift = 1e-5 if dtype == torch.float32 else 1e-3
        max_leak = 1e-6 if dtype == torch.float32 else 1e-2
        checks["bidirectional"] = result["early_token_shift"] > min_shift
        checks["isolated"] = result["neighbour_shift"] <= max_leak
        print(f"packed batch: early_token_shift {result['early_token_shift']:.3e} (bidirectional: "
              f"{'OK' if checks['bidirectional'] else 'FAIL'}), neighbour text shift {result['neighbour_shift']:.3e} "
              f"(isolated: {'OK' if checks['isolated'] else 'FAIL'})")

        def agree(name, a, b):
            cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
            diff = float((a - b).abs().max())
            checks[name] = diff <= 1e-4 if tiny else float(cos.min()) >= 0.99
            print(f"{name}: min cosine {float(cos.min()):.6f}, max |diff| {diff:.2e} ({'OK' if checks[name] else 'FAIL'})")

        # (1) SDPA packed vs SDPA padded, one encode call per batch of mixed lengths
        batches = [mixed[i:i + args.batch_size] for i in range(0, len(mixed), args.batch_size)]
        padded_tokens = sum(len(b) * max(len(d.split()) + 1 for d in b) for b in batches)
        t_pad, e_pad = time_batches(padded, batches, device, args.repeats)
        padded[0].unpad_inputs = True  # the same SDPA model, now packing every batch behind a document mask
        try:
            if not padded[0].can_flatten_inputs or "cu_seq_lens_q" not in padded[0].preprocess(batches[0]):
                raise RuntimeError("unpad_inputs=True did not pack the SDPA model's batches")
            t_pack, e_pack = time_batches(padded, batches, device, args.repeats)
        finally:
            padded[0].unpad_inputs = False
        agree("sdpa packed == padded (per batch)", e_pack, e_pad)
        m_pack = row(f"mixed {low}-{high}, per-batch encode, sdpa packed", statistics.median(t_pack), tokens,
                     mfu_ok=True)["seconds"]
        m_pad = row(f"mixed {low}-{high}, per-batch encode, sdpa padded", statistics.median(t_pad), tokens,
                    mfu_ok=True)["seconds"]
        res["sdpa_per_batch"] = {"packed_s": t_pack, "padded_s": t_pad, "speedup": m_pad / m_pack,
                                 "padding_bound": padded_tokens / tokens, "real_tokens": tokens,
                                 "padded_tokens": padded_tokens, "batches": len(batches)}
        row(f"sdpa packed / padded speedup, per batch (padding bound {padded_tokens / tokens:.2f}x)",
            value=m_pad / m_pack, target=target_of("sdpa_packed_over_padded", m_pad / m_pack))

        # ST encode of the whole corpus (sorted by length): the packed path vs SDPA padded
        t_packed, e_packed = time_encode(packed, mixed, args.batch_size, device, args.repeats)
        t_padded, e_padded = time_encode(padded, mixed, args.batch_size, device, args.repeats)
        agree(f"{packed_impl} packed == sdpa padded (ST encode)", e_packed, e_padded)
        m_packed = row(f"mixed {low}-{high}, ST encode, packed ({packed_impl})", statistics.median(t_packed), tokens,
                       mfu_ok=True)["seconds"]
        m_padded = row(f"mixed {low}-{high}, ST encode, padded (sdpa)", statistics.median(t_padded), tokens,
                       mfu_ok=True)["seconds"]
        res["st_encode"] = {"packed_s": t_packed, "padded_s": t_padded, "speedup": m_padded / m_packed}
        res["mixed_speedup"] = m_padded / m_packed  # the key earlier versions of this script wrote
        row(f"{packed_impl} packed / sdpa padded speedup, ST encode (sorted)", value=m_padded / m_packed)

        # (2) MFU on full-length documents (no padding in either)
        full = corpus(n_full, full_length, full_length, shape["vocab_size"], seed=2)
        full_tokens = n_full * full_length
        t_full_packed, _ = time_encode(packed, full, args.batch_size, device, args.repeats)
        a = row(f"{full_length}-token docs, packed ({packed_impl})", statistics.median(t_full_packed), full_tokens,
                mfu_ok=True)
        t_full_padded, _ = time_encode(padded, full, args.batch_size, device, args.repeats)
        b = row(f"{full_length}-token docs, sdpa (no padding)", statistics.median(t_full_padded), full_tokens,
                mfu_ok=True)
        best = max((r for r in (a, b) if r["mfu"] is not None), key=lambda r: r["mfu"], default=None)
        mfu = best["mfu"] if best else None
        res["mfu_512"] = {"packed": a["mfu"], "sdpa": b["mfu"], "best": mfu,
                          "packed_s": t_full_packed, "sdpa_s": t_full_padded, "tokens": full_tokens}
        row(f"MFU at {full_length} tokens, best of packed / sdpa", value=mfu, target=target_of("mfu_512", mfu), fmt="%")
        del packed, padded
        return res

    encode = phase("packed vs padded, MFU", encode_phase)
    if encode:
        summary.update(encode)

    # -- (4) one MNTP step: LoRA vs QLoRA ---------------------------------------------------------------
    def training_phase():
        res = measure_training(ckpt, workdir, shape, tiny, device, train_steps)
        checks["training losses finite"] = all(
            res[k]["losses"] and all(math.isfinite(x) for x in res[k]["losses"]) for k in ("lora", "qlora"))
        n = f"{res['batch_size']}x{res['max_seq_length']}"
        for name, label in (("lora", f"{ref} LoRA"), ("qlora", "QLoRA nf4")):
            r = res[name]
            print(f"{label}: steps {', '.join(f'{s:.3f}' for s in r['steps_s'])} s; losses "
                  f"{', '.join(f'{x:.3f}' for x in r['losses'])}; trainable {r['trainable_params']:,}; on {r['device']}")
            row(f"MNTP step ({n} tokens), {label}", r["step_s"], r["tokens_per_step"], memory=r["peak_bytes"])
        row(f"QLoRA / {ref} LoRA step time", value=res["time_ratio"])
        row(f"QLoRA / {ref} LoRA peak memory", value=res["memory_ratio"])
        return res

    summary["training"] = phase("MNTP step: LoRA vs QLoRA", training_phase)

    # -- the table ---------------------------------------------------------------------------------------
    print()
    print("| case | s | tokens/s | MFU | peak memory | ratio / value | target |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        seconds = f"{r['seconds']:.3f}" if r["seconds"] is not None else ""
        tps = f"{r['tokens_per_s']:,.0f}" if r["tokens_per_s"] is not None else ""
        mfu = pct(r["mfu"]) if r["tokens_per_s"] is not None else ""
        memory = mib(r["peak_bytes"]) if r["memory_measured"] else ""
        value = r["value"]
        if value is None:
            value_text = "n/a" if r["target"] is not None or r["seconds"] is None else ""
        elif r["format"] == "%":
            value_text = pct(value)
        elif r["format"] == "f":
            value_text = f"{value:.4f}"
        else:
            value_text = f"{value:.2f}x"
        target = r["target"]
        target_text = "" if target is None else (
            f"{target['target']} " + {True: "met", False: "MISSED", None: "n/a"}[target["met"]])
        print(f"| {r['case']} | {seconds} | {tps} | {mfu} | {memory} | {value_text} | {target_text} |")
    print(f"\n{tokens:,} real tokens in {n_docs} mixed docs; MFU against "
          f"{f'{peak:g} TFLOPS' if peak else 'n/a'} ({peak_source}); memory = torch.cuda.max_memory_allocated "
          f"{'(n/a on CPU)' if device != 'cuda' else 'above the phase baseline'}")

    targets = {}
    lowbit = summary.get("lowbit") or {}
    targets["sdpa_packed_over_padded"] = target_of(
        "sdpa_packed_over_padded", (summary.get("sdpa_per_batch") or {}).get("speedup"))
    targets["mfu_512"] = target_of("mfu_512", (summary.get("mfu_512") or {}).get("best"))
    targets["nf4_memory_ratio"] = target_of("nf4_memory_ratio", lowbit.get("memory_ratio"))
    targets["nf4_min_cosine"] = target_of("nf4_min_cosine", lowbit.get("min_cosine"))
    ok = all(checks.values()) and not errors
    summary.update(rows=rows, checks=checks, targets=targets, errors=errors, ok=ok)
    print(json.dumps(summary, default=str))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    missed = [k for k, v in targets.items() if v["met"] is False]
    if missed:
        print(f"targets missed: {missed}")
    if errors:
        print(f"phases that raised: {list(errors)}")
    print("all checks passed" if ok else f"FAILED checks: {[k for k, v in checks.items() if not v] + list(errors)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
