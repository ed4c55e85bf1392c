"""MNTP training step: our labelled-only LM-head loss vs full-vocabulary logits as llm2vec computes them.

Same model, batch, sequence length, masks, LoRA and gradient checkpointing for both; only the loss
differs:

- ``llm2vec``: transformers 4.44's ``LlamaForCausalLM`` loss that llm2vec's ``LlamaBiForMNTP`` uses:
  ``logits = lm_head(hidden).float()`` at every position (batch × seq × vocab), then
  ``logits[:, :-1]`` / ``labels[:, 1:]`` cross entropy;
- ``ours``: ``st_llm2vec.recipe.mntp_loss.MNTPLoss.masked_loss``: the LM head only on the hidden states that
  carry a label (~mlm_probability of them).

The model is a random-init Llama with SmolLM2-135M's shape (hidden 576, 9 heads, 3 KV heads,
intermediate 1536, vocab 49152 (``--vocab``: e.g. 128256 for Llama-3's), tied embeddings; ``--layers`` default 30
as in SmolLM2), float32 on CPU,
LoRA r=16 on all projections (llm2vec's setting), gradient checkpointing on (as in every llm2vec MNTP
config), frozen LM head for both.

Each variant runs in fresh processes, two per variant:

- memory: peak resident set size over the variant's first training step minus the resident size
  just before it (model paged in, LoRA and batch built), i.e. what training itself needs:
  activations, logits, gradients, AdamW state (the same small LoRA state for both). The peak is reset
  through /proc/self/clear_refs (Linux; else ``ru_maxrss`` of the whole process, and the script says
  so). This process runs with ``MALLOC_MMAP_THRESHOLD_=131072``: glibc then gives every tensor of
  128 KiB or more its own mapping and returns it to the OS when freed, so that RSS follows the live
  tensors. With glibc's default dynamic threshold, freed activations stay in a fragmented heap and
  RSS overstates the live memory of both variants by up to ~1 GB here.
- speed: default allocator; one warm-up step, then ``--steps`` steps (forward + backward + AdamW
  step); throughput = tokens in the batch (batch × seq, padding-free blocks as in llm2vec's grouped
  mode) / the CPU time of the fastest step, with one torch thread. CPU time, because on a shared
  machine the wall clock mostly measures the other tenants (wall-clock figures are printed too);
  the fastest step, because contention (caches, memory bandwidth) only ever adds; one thread, so that
  CPU time is compute time and not multi-threaded spinning.

    python benchmarks/mntp_vs_llm2vec_logits.py [--layers 30] [--batch-size 2] [--seq-len 512] [--steps 3] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# SmolLM2-135M's shape (the layer count and vocabulary are arguments) and llm2vec's LoRA rank: the
# model, the LoRA and the FLOP count below all read these.
HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, LORA_R = 576, 1536, 9, 3, 16


def build_model(path: str, layers: int, vocab: int) -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    # A word-level tokenizer over the vocab ids: the benchmark feeds ids directly, the tokenizer only
    # has to exist (with '_' for the blank mask token and EOS/BOS ids).
    words = {"<unk>": 0, "<s>": 1, "</s>": 2, "_": 3}
    words.update({f"w{i}": i for i in range(4, vocab)})
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(path)


def step_flops(layers: int, batch: int, seq: int, labelled: int, vocab: int = 49152) -> tuple[float, float]:
    """(llm2vec, ours) FLOPs of one training step by matmul count: what a loss-only change can win at most.

    Frozen base + LoRA with gradient checkpointing: every body matmul runs forward, again in the
    recomputation, and once more for the input gradient (no weight gradient), so 3x its forward cost;
    attention scores and values 4x (their backward needs two matmuls). The frozen LM head runs forward
    and input-gradient only (2x): at every position for llm2vec, at the labelled ones for ours.
    """
    d, inter, kv, r = HIDDEN, INTERMEDIATE, HIDDEN // HEADS * KV_HEADS, LORA_R
    tokens = batch * seq
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * inter  # q, o; k, v; gate, up, down
    lora = r * (2 * (d + d) + 2 * (d + kv) + 2 * (d + inter) + (inter + d))
    linear = 2 * tokens * layers * (3 * per_layer + 4 * lora)  # LoRA also gets its weight gradient
    attention = 4 * (4 * batch * seq * seq * d) * layers
    body = linear + attention
    return body + 2 * 2 * tokens * d * vocab, body + 2 * 2 * labelled * d * vocab


def worker(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    import st_llm2vec
    from st_llm2vec.recipe.lora import add_lora, lora_config
    from st_llm2vec.recipe.mntp_loss import MNTPLoss

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = st_llm2vec.from_llm(args.model_dir, attn_implementation="sdpa")
    add_lora(model, lora_config(r=LORA_R))
    model[0].model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    loss_fn = MNTPLoss(model, mlm_probability=args.mlm_probability)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(4, args.vocab, (args.batch_size, args.seq_len), generator=generator)
    mask = torch.ones_like(ids)
    inputs, labels = loss_fn.mask(ids, mask, generator=generator)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step_ours():
        return loss_fn.masked_loss(inputs, mask, labels)

    def step_llm2vec():
        # transformers 4.44 LlamaForCausalLM.forward(labels=...) as llm2vec's LlamaBiForMNTP runs it
        hidden = model({"input_ids": inputs, "attention_mask": mask})["token_embeddings"]
        weight = model[0].model.get_base_model().get_input_embeddings().weight.detach()  # tied, frozen
        logits = F.linear(hidden, weight).float()
        shift_logits = logits[..., :-1, :].contiguous().view(-1, logits.shape[-1])
        shift_labels = labels[..., 1:].contiguous().view(-1)
        return F.cross_entropy(shift_logits, shift_labels)

    step = step_ours if args.variant == "ours" else step_llm2vec

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        loss = step()
        loss.backward()
        optimizer.step()
        return loss.item()

    import gc

    with torch.no_grad():  # safetensors weights are memory-mapped: page them in now, not in the first step
        for tensor in list(model.parameters()) + list(model.buffers()):
            float(tensor.float().abs().sum())
    gc.collect()
    base = rss_kb("VmRSS")  # model (resident), LoRA, batch loaded; no step run yet
    exact = reset_peak()
    first_loss = train_step()  # warm-up (also the value both variants must agree on: same weights, same batch)
    peak = rss_kb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, cpu_times = [], []
    for _ in range(args.steps if args.measure == "speed" else 0):
        start, cpu_start = time.perf_counter(), time.process_time()
        train_step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return {
        "variant": args.variant,
        "first_loss": first_loss,
        "labelled": int((labels[:, 1:] != -100).sum()),
        "tokens": args.batch_size * args.seq_len,
        "times": times,
        "cpu_times": cpu_times,
        "base_rss_mb": base / 1024,
        "peak_rss_mb": peak / 1024,
        "step_peak_mb": (peak - base) / 1024,
        "peak_method": "VmHWM after clear_refs" if exact else "ru_maxrss (whole process)",
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--vocab", type=int, default=49152, help="vocabulary size (SmolLM2: 49152; Llama-3: 128256)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--mlm-probability", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (1: steadiest on a shared CPU)")
    parser.add_argument("--rounds", type=int, default=1, help="alternate llm2vec/ours processes this many times")
    parser.add_argument("--variant", choices=["ours", "llm2vec"], help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=["memory", "speed"], default="speed", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(worker(args)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        build_model(tmp, args.layers, args.vocab)
        runs: dict[str, dict[str, list[dict]]] = {v: {"memory": [], "speed": []} for v in ("llm2vec", "ours")}
        for _ in range(args.rounds):
            for variant in ("llm2vec", "ours"):
                for measure in ("memory", "speed"):
                    cmd = [sys.executable, os.path.abspath(__file__), "--variant", variant, "--model-dir", tmp]
                    cmd += ["--measure", measure]
                    for flag in ("layers", "vocab", "batch_size", "seq_len", "steps", "mlm_probability", "threads"):
                        cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
                    env = dict(os.environ)
                    if measure == "memory":
                        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
                    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
                    runs[variant][measure].append(json.loads(out.strip().splitlines()[-1]))

    def summary(r: dict[str, list[dict]]) -> dict:
        speed, memory = r["speed"], r["memory"]
        return {
            "first_loss": speed[0]["first_loss"],
            "losses": [x["first_loss"] for x in speed + memory],
            "cpu_s": min(t for x in speed for t in x["cpu_times"]),
            "wall_min_s": min(t for x in speed for t in x["times"]),
            "wall_median_s": statistics.median([t for x in speed for t in x["times"]]),
            "step_peak_mb": max(x["step_peak_mb"] for x in memory),
            "default_malloc_peak_mb": max(x["step_peak_mb"] for x in speed),
        }

    ref, ours = summary(runs["llm2vec"]), summary(runs["ours"])
    first = runs["ours"]["memory"][0]
    tokens = first["tokens"]
    print(
        f"model: random-init Llama, SmolLM2-135M shape with {args.layers} layers (SmolLM2: 30), vocab {args.vocab} tied, "
        f"float32, CPU, {args.threads} thread(s); LoRA r=16 on all projections, gradient checkpointing, frozen LM head"
    )
    print(
        f"batch {args.batch_size} x seq {args.seq_len} = {tokens} tokens per step, {first['labelled']} labelled "
        f"(mlm_probability {args.mlm_probability}); speed: fastest of {args.rounds * args.steps} step(s) after a warm-up"
    )
    print(f"memory: peak RSS of the first training step above the RSS before it ({first['peak_method']}, MALLOC_MMAP_THRESHOLD_=131072)")
    header = f"{'':9} {'loss':>10} {'CPU s/step':>11} {'tokens/s':>9} {'wall min s':>11} {'wall med s':>11} {'peak MB':>8} {'(default malloc)':>17}"
    print(header)
    for name, r in (("llm2vec", ref), ("ours", ours)):
        print(
            f"{name:9} {r['first_loss']:10.6f} {r['cpu_s']:11.2f} {tokens / r['cpu_s']:9.1f} {r['wall_min_s']:11.2f} "
            f"{r['wall_median_s']:11.2f} {r['step_peak_mb']:8.1f} {r['default_malloc_peak_mb']:17.1f}"
        )
    rel = max(abs(a - b) / abs(b) for a in ours["losses"] for b in ref["losses"])
    print(f"loss relative difference (ours vs llm2vec, same batch and masks): {rel:.2e}")
    print(f"tokens/s ratio (ours / llm2vec, CPU time): {ref['cpu_s'] / ours['cpu_s']:.2f}x")
    print(
        f"  wall clock, for reference: fastest step {ref['wall_min_s'] / ours['wall_min_s']:.2f}x, "
        f"median step {ref['wall_median_s'] / ours['wall_median_s']:.2f}x"
    )
    flops_ref, flops_ours = step_flops(args.layers, args.batch_size, args.seq_len, first["labelled"], args.vocab)
    print(
        f"  by FLOP count the most a loss-only change can give here is {flops_ref / flops_ours:.2f}x "
        f"({flops_ref / 1e9:.0f} vs {flops_ours / 1e9:.0f} GFLOP per step: the transformer body is the same for both)"
    )
    print(f"peak memory ratio (ours / llm2vec): {ours['step_peak_mb'] / ref['step_peak_mb']:.2f}x")
    print(f"  with the default allocator, for reference: {ours['default_malloc_peak_mb'] / ref['default_malloc_peak_mb']:.2f}x")


if __name__ == "__main__":
    main()
