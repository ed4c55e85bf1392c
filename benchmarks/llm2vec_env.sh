#!/usr/bin/env bash
# Build the reference environment for the official llm2vec 0.2.3 package.
#
#   bash benchmarks/llm2vec_env.sh [VENV_DIR]      (default: benchmarks/.venv-llm2vec)
#
# The venv holds exactly the stack the shared fixtures were made with
# (shared/fixtures/llm2vec/README.md): llm2vec 0.2.3, transformers 4.44.2,
# peft 0.12 (<0.13), tokenizers 0.19, torch 2.13 CPU, float32.
# It is used by benchmarks/llm2vec_encode.py (run with this venv's python)
# to time and check the real llm2vec encode() against ours.
#
# torch goes in FIRST and pinned to 2.13.0: that release lies on disk as a CPU
# wheel (pip's find-links); any other torch spec would pull a multi-GB CUDA
# build from the index.  It is pinned again in the second step so that no
# dependency can move it.
#
# Idempotent: if VENV_DIR already imports llm2vec 0.2.3 / transformers 4.44.2 /
# torch 2.13.0, nothing is done.  Set LLM2VEC_ENV_FORCE=1 to rebuild.
# PYTHON selects the interpreter (default python3; must be 3.11 for the
# on-disk torch wheel, cp311).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-$here/.venv-llm2vec}"
python="${PYTHON:-python3}"

check() {
    "$venv/bin/python" - <<'EOF' 2>/dev/null
import importlib.metadata as md
import llm2vec  # noqa: F401  (the real import, not just metadata)
import torch
want = {"llm2vec": "0.2.3", "transformers": "4.44.2"}
for name, v in want.items():
    assert md.version(name) == v, (name, md.version(name))
assert torch.__version__.split("+")[0] == "2.13.0", torch.__version__
assert md.version("peft").startswith("0.12."), md.version("peft")
assert md.version("tokenizers").startswith("0.19."), md.version("tokenizers")
EOF
}

if [[ "${LLM2VEC_ENV_FORCE:-0}" != "1" && -x "$venv/bin/python" ]] && check; then
    echo "llm2vec env ready: $venv (already built)"
    exit 0
fi

pyver="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [[ "$pyver" != "3.11" ]]; then
    echo "warning: $python is Python $pyver; the on-disk torch 2.13.0 CPU wheel is for 3.11" >&2
fi

start=$(date +%s)
if [[ "${LLM2VEC_ENV_FORCE:-0}" == "1" ]]; then
    rm -rf "$venv"
fi
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)

# 1. torch first: the CPU wheel on disk.
"${pip[@]}" "torch==2.13.0"

# 2. llm2vec and the versions it pins.  Its other install_requires (datasets,
#    evaluate, scikit-learn, tqdm) resolve without conflict, so llm2vec is
#    installed with its dependencies (no --no-deps needed).
"${pip[@]}" "torch==2.13.0" "llm2vec==0.2.3" "transformers==4.44.2" "peft<0.13" \
    "tokenizers>=0.19,<0.20" numpy

if ! check; then
    echo "error: $venv does not import llm2vec with the expected versions" >&2
    "$venv/bin/python" -c "import llm2vec" || true
    exit 1
fi
"$venv/bin/python" -m pip freeze --disable-pip-version-check > "$venv/llm2vec-freeze.txt"
"$venv/bin/python" - <<'EOF'
import importlib.metadata as md
print("llm2vec env:", ", ".join(f"{n} {md.version(n)}" for n in
      ["llm2vec", "transformers", "torch", "peft", "tokenizers", "numpy"]))
EOF
echo "llm2vec env ready: $venv (built in $(( $(date +%s) - start ))s; pip freeze in $venv/llm2vec-freeze.txt)"
