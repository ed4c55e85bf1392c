"""What every proof shares: the texts it runs on, how two embeddings are compared, how bidirectionality is seen
in token states, whether a saved dir needs st_llm2vec, and a fresh process in which ``import st_llm2vec`` fails.

The portable save, the ONNX and GGUF exports and the precision plan each prove their result against the float32
torch model before anything is written or used; they all measure it with these, written once.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# Texts of mixed length and kind that proofs encode (the precision plan calibrates on them too).
PROBE_TEXTS = [
    "A man is playing a guitar on the street.",
    "Two dogs are running through a field of grass, chasing a red ball.",
    "The cat sleeps.",
    "Stock prices fell sharply on Monday after the central bank raised interest rates by half a point.",
    "x",
    "How do bidirectional LLM embeddings work?",
]
# Two texts that differ only in their last word: in a bidirectional model an early token's state moves.
BIDIRECTIONAL_PROBE = ("The quick brown fox jumps over the lazy dog", "The quick brown fox jumps over the lazy cat")
# The package a proof process must run without, and the modules stock sentence-transformers provides.
PACKAGE = "st_llm2vec"
STOCK_PREFIX = "sentence_transformers."


def row_cosines(a: Any, b: Any) -> Any:
    """The cosine of each row of ``a`` with the same row of ``b`` (float64; a zero row gives 0)."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def first_token_shift(a: Any, b: Any) -> float:
    """How far token 1's state moves between the two texts of :data:`BIDIRECTIONAL_PROBE`, relative to its norm:
    ``a`` and ``b`` are their token states (tokens x hidden, each text's own tokens from the first). 0 in a causal
    model, where no token sees the last word. Token 1, not 0: token 0 may be a BOS whose weight is 0."""
    import numpy as np

    x, y = np.asarray(a[1], dtype=np.float64), np.asarray(b[1], dtype=np.float64)
    return float(np.linalg.norm(x - y) / max(np.linalg.norm(x), 1e-12))


def modules_of(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The entries of a saved dir's ``modules.json`` (FileNotFoundError without one)."""
    return json.loads((Path(path) / "modules.json").read_text(encoding="utf-8"))


def foreign_modules(types: Iterable[str]) -> list[str]:
    """The module classes among ``types`` that stock sentence-transformers does not provide."""
    return [name for name in types if not name.startswith(STOCK_PREFIX)]


def module_types(path: str | os.PathLike) -> list[str]:
    """The module classes a saved dir names in its ``modules.json``, in order."""
    return [entry.get("type", "") for entry in modules_of(path)]


# Put ahead of every script that must run without st_llm2vec: importing it fails, loudly.
_BLOCK = r"""
import json, sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name == PACKAGE or name.startswith(PACKAGE + "."):
            raise ImportError(f"{PACKAGE} is blocked: {WHY}")
        return None
sys.meta_path.insert(0, _Blocked())
def report(result):
    print("PROOF" + json.dumps(result))
"""


def run_without_st_llm2vec(script: str, payload: Mapping[str, Any], *, why: str,
                           env: Mapping[str, str] | None = None) -> tuple[dict[str, Any] | None, subprocess.CompletedProcess]:
    """Run ``script`` in a fresh interpreter in which ``import st_llm2vec`` fails (``why`` says why in the error),
    ``payload`` as JSON on its stdin; the script reads it with ``json.loads(sys.stdin.read())``, may call
    ``first_token_shift`` and hands its result to ``report(result)``. Returns (that result, or None when the
    script failed or reported nothing; the finished process, for its exit status and output)."""
    prelude = f"from __future__ import annotations\nPACKAGE = {PACKAGE!r}\nWHY = {why!r}\n" + _BLOCK + inspect.getsource(first_token_shift)
    proc = subprocess.run([sys.executable, "-c", prelude + script], input=json.dumps(dict(payload)),
                          capture_output=True, text=True, env=None if env is None else dict(env))
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("PROOF")), None)
    if proc.returncode != 0 or line is None:
        return None, proc
    return json.loads(line[len("PROOF"):]), proc


def last_line(proc: subprocess.CompletedProcess) -> str:
    """The last line a failed process wrote (stderr first), to name what failed in one line."""
    lines = (proc.stderr or proc.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit status {proc.returncode}"
