"""The GGUF export's proof: the file run as users run it, held against the float32 torch model.

Users call llama-cpp-python's ``Llama(path, embedding=True, n_ctx=512, n_batch=512, n_ubatch=512).embed(texts)`` with
a list of texts (what LangChain's ``LlamaCppEmbeddings`` does): several sequences share one batch. The proof does
exactly that, with ~200 varied texts, in a fresh process without st_llm2vec, and measures:

- token ids: llama.cpp's tokenization of each text vs the sentence-transformers model's. A text that differs only
  by surrounding whitespace is flagged, not failed (sentence-transformers strips texts, llama.cpp does not: a
  trailing space moved a vector to cosine 0.817): the model card tells users to strip texts. Any other difference
  is a tokenizer mismatch and counts against the file;
- min / mean cosine of the list's vectors vs the float32 torch model, and of some texts embedded alone vs in the
  list (a file whose vectors depend on their batch-mates fails here);
- the bidirectionality probe on token states; the time the list took (one round, not a benchmark).

llama.cpp's CPU weight repacking crashed on some CPUs for quantized types (SIGILL for Q8_0 on an AVX-512 EPYC,
SIGSEGV on a Sapphire Rapids Xeon): the proof then runs again without it (``use_extra_bufts = False``, what
llama-server's ``--no-repack`` does) and records so; the card then tells users to pass it.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError

PROOF_TEXTS = 200  # texts the proof embeds in one embed() call
ALONE_TEXTS = 16  # of which this many are embedded alone too (batch independence)
USER_CONTEXT = 512  # n_ctx = n_batch = n_ubatch as users set them (LangChain's LlamaCppEmbeddings: n_ctx=512)


class GGUFProofError(InputError):
    """llama.cpp could not run the GGUF; the message says how it failed."""


@dataclass
class GGUFProof:
    """What the proof measured (see the module docstring); ``flagged``: texts whose llama.cpp token ids differ from
    sentence-transformers', each ``{"text", "reason", "cosine"}``."""

    finite: bool
    first_token_shift: float
    torch_first_token_shift: float
    min_cosine: float
    mean_cosine: float
    worst_text: str
    texts: int
    alone_min_cosine: float
    pooling_type: int | None
    architecture: str
    n_ctx: int
    threads: int
    repack: bool
    crash: str
    gguf_texts_per_s: float
    torch_texts_per_s: float
    flagged: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def proof_texts(count: int = PROOF_TEXTS) -> list[str]:
    """``count`` varied texts written for this project (captions, questions, headlines, formal and numbered
    sentences, names, quotes, openings, passages: the precision plan's calibration mix), the held texts first."""
    from ..precision_search import calibration_texts
    from .pipeline import HELD_TEXTS

    return list(dict.fromkeys([*HELD_TEXTS, *calibration_texts(count, seed=31)]))[:count]


# Runs in a fresh interpreter (llama.cpp aborts the process on some bad settings) without st_llm2vec
# (:func:`~st_llm2vec.proof.run_without_st_llm2vec`): the file as a user gets it, its own pooling key.
_PROOF_SCRIPT = r"""
import time
import numpy as np
import llama_cpp
import llama_cpp.llama
args = json.loads(sys.stdin.read())
if not args["repack"]:  # what llama-server's --no-repack does: no weight repacking into extra buffer types
    default_params = llama_cpp.llama_model_default_params
    def without_repack():
        params = default_params()
        params.use_extra_bufts = False
        return params
    llama_cpp.llama.llama_cpp.llama_model_default_params = without_repack
def load(pooling=None):
    kwargs = dict(embedding=True, n_ctx=args["n_ctx"], n_batch=args["n_ctx"], n_ubatch=args["n_ctx"],
                  n_threads=args["threads"], verbose=args["verbose"])
    if pooling is not None:
        kwargs["pooling_type"] = pooling
    return llama_cpp.Llama(args["path"], **kwargs)
llm = load()
texts = args["texts"]
result = {"pooling_type": int(llm.pooling_type()), "architecture": llm.metadata.get("general.architecture", "")}
result["token_ids"] = [llm.tokenize(t.encode("utf-8")) for t in texts]  # as embed() tokenizes
llm.embed(texts[:4])  # warm-up: first-call allocations are not what users wait for per list
start = time.perf_counter()
result["embeddings"] = llm.embed(texts, normalize=False)
result["seconds"] = time.perf_counter() - start
result["alone"] = [llm.embed(t, normalize=False) for t in texts[:args["alone"]]]
del llm
tokens = load(llama_cpp.LLAMA_POOLING_TYPE_NONE)
a, b = (np.asarray(tokens.embed(t, normalize=False), dtype=np.float64) for t in args["probe"])
result["first_token_shift"] = first_token_shift(a, b)
report(result)
"""


def _st_token_ids(model: Any, texts: list[str]) -> list[list[int]]:
    """Each text's token ids as the sentence-transformers model feeds them (its own preprocessing: stripped)."""
    ids = []
    for start in range(0, len(texts), 64):
        features = model.preprocess(texts[start:start + 64])
        for row, mask in zip(features["input_ids"].tolist(), features["attention_mask"].tolist()):
            ids.append([token for token, keep in zip(row, mask) if keep])
    return ids


def _run(payload: dict[str, Any], verbose: bool) -> tuple[dict[str, Any] | None, str]:
    """(what the proof script measured, or None; the signal that killed llama.cpp, '' if none). Other failures raise."""
    from ..proof import last_line, run_without_st_llm2vec

    env = dict(os.environ, OMP_NUM_THREADS=str(payload["threads"]))
    ran, proc = run_without_st_llm2vec(_PROOF_SCRIPT, payload, why="the GGUF must run without it", env=env)
    if verbose and proc.stderr:
        print(proc.stderr, end="", flush=True)
    if ran is not None:
        return ran, ""
    if proc.returncode < 0:
        try:
            return None, signal.Signals(-proc.returncode).name
        except ValueError:
            return None, f"signal {-proc.returncode}"
    raise GGUFProofError(f"llama.cpp could not run the GGUF: {last_line(proc)}")


def prove_gguf(model: Any, path: Path, texts: list[str] | None = None, *, threads: int | None = None,
               verbose: bool = False) -> GGUFProof:
    """Run the GGUF at ``path`` through llama-cpp-python as users do (one ``embed()`` of the whole list) in a fresh
    process and hold it against the float32 torch ``model`` (the stock-loaded portable dir)."""
    import numpy as np
    import torch

    from ..proof import BIDIRECTIONAL_PROBE, first_token_shift, row_cosines

    texts = list(texts) if texts is not None else proof_texts()
    ours_ids = _st_token_ids(model, [*texts, *BIDIRECTIONAL_PROBE])
    longest = max(len(ids) for ids in ours_ids) + 1  # + a BOS llama.cpp may add
    # non-causal: one ubatch must hold a whole text (llama.cpp aborts otherwise); users' 512 when that is enough
    n_ctx = USER_CONTEXT if longest <= USER_CONTEXT else 64 * (longest // 64 + 2)
    threads = threads or torch.get_num_threads()
    payload = {"path": str(path), "texts": texts, "probe": list(BIDIRECTIONAL_PROBE), "n_ctx": n_ctx,
               "threads": threads, "repack": True, "alone": min(ALONE_TEXTS, len(texts)), "verbose": verbose}
    ran, crash = _run(payload, verbose)
    if ran is None:
        payload["repack"] = False
        ran, again = _run(payload, verbose)
        if ran is None:
            raise GGUFProofError(f"llama.cpp crashed running {path.name} ({crash}), and without weight repacking "
                                 f"({again}); --verbose shows its log")
    gguf_vectors = np.asarray(ran["embeddings"], dtype=np.float64)
    start = time.perf_counter()
    reference = model.encode(texts, batch_size=32, convert_to_numpy=True, show_progress_bar=False)
    torch_seconds = time.perf_counter() - start
    cosine = np.nan_to_num(row_cosines(gguf_vectors, reference), nan=-1.0)
    alone = np.nan_to_num(row_cosines(np.asarray(ran["alone"]), gguf_vectors[:len(ran["alone"])]), nan=-1.0)

    flagged, counted = [], []
    for i, (text, theirs, ours) in enumerate(zip(texts, ran["token_ids"], ours_ids)):
        if theirs == ours:
            counted.append(i)
            continue
        whitespace = text != text.strip()
        flagged.append({"text": text, "cosine": round(float(cosine[i]), 6), "reason": (
            "surrounding whitespace: sentence-transformers strips texts, llama.cpp does not" if whitespace
            else "llama.cpp's tokenizer gives other ids")})
        if not whitespace:
            counted.append(i)  # a tokenizer mismatch is the file's fault: it counts
    judged = cosine[counted] if counted else np.array([-1.0])
    worst = counted[int(judged.argmin())] if counted else 0

    probe = model.preprocess(list(BIDIRECTIONAL_PROBE))
    with torch.no_grad():
        states = model[0].model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).last_hidden_state
    mask = probe["attention_mask"].bool()
    torch_shift = first_token_shift(states[0][mask[0]].numpy(), states[1][mask[1]].numpy())
    return GGUFProof(
        finite=bool(np.isfinite(gguf_vectors).all()), first_token_shift=ran["first_token_shift"],
        torch_first_token_shift=torch_shift, min_cosine=float(judged.min()), mean_cosine=float(judged.mean()),
        worst_text=texts[worst], texts=len(texts), alone_min_cosine=float(alone.min()),
        pooling_type=ran["pooling_type"], architecture=ran["architecture"], n_ctx=n_ctx, threads=threads,
        repack=payload["repack"], crash=crash, gguf_texts_per_s=len(texts) / max(ran["seconds"], 1e-9),
        torch_texts_per_s=len(texts) / max(torch_seconds, 1e-9), flagged=flagged,
    )
