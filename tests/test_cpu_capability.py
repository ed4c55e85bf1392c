"""The numerics-sensitive tests (marker ``numerics``) again under the next lower CPU capability torch offers.

Development machines and CI differ in CPU from day to day (AVX2 only, or AVX-512 with VNNI / BF16), and
torch picks other kernels on each: SDPA's AVX-512 path turned a NaN weight into finite outputs where the
AVX2 path did not. torch can run its lower kernels on a higher CPU (``ATEN_CPU_CAPABILITY``; oneDNN's
``ONEDNN_MAX_CPU_ISA`` for its matmuls), not the other way round, so a developer on an AVX-512 machine sees
an AVX2 machine's failures here. By hand: ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python -m pytest -m "numerics and not slow"``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO

# torch's capability names, highest first, and oneDNN's ISA cap that matches each
LOWER = {"AVX512": ("avx2", "AVX2"), "AVX512_VNNI": ("avx2", "AVX2"), "AVX512_BF16": ("avx2", "AVX2"),
         "AMX": ("avx2", "AVX2"), "AVX2": ("default", "SSE41")}


def test_numerics_hold_under_the_next_lower_cpu_capability():
    current = torch.backends.cpu.get_cpu_capability()
    if os.environ.get("ATEN_CPU_CAPABILITY") or current not in LOWER:
        pytest.skip(f"already at a lowered or the lowest capability ({current})")
    aten, onednn = LOWER[current]
    env = dict(os.environ, ATEN_CPU_CAPABILITY=aten, ONEDNN_MAX_CPU_ISA=onednn, HF_HUB_OFFLINE="1")
    check = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                           env=env, capture_output=True, text=True)
    assert check.stdout.strip() == aten.upper(), check.stdout + check.stderr
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "numerics and not slow", "-x"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"under ATEN_CPU_CAPABILITY={aten} (this CPU: {current}):\n{proc.stdout[-4000:]}"
    assert " passed" in proc.stdout
