"""Saving in the portable format: the stock sentence-transformers files written into a temp dir, proven through
stock code in a process without st_llm2vec, and only then put in place (:func:`save_portable`).

What is written, where stock code reads it:

- ``config.json``: ``is_causal: false`` (transformers >= 5.2, vLLM, llama.cpp's GGUF converter) and, for
  the model types text-embeddings-inference reads it for, ``use_bidirectional_attention: true``;
- ``sentence_bert_config.json``: a stock ``Transformer`` with the plain ``text`` modality only (no chat
  template wrapping);
- pooling: ``mean`` = [``WordWeights`` (weight 0 for the BOS token, 1 for every other token), only for
  tokenizers that add a BOS] + ``Pooling("mean", include_prompt=False)`` — llm2vec pools the text tokens,
  never the BOS token nor an instruction's, and ``WordWeights`` is the stock way to leave one token id out
  of a mean; ``eos_token`` = ``Pooling("lasttoken")`` with the EOS suffix appended by the saved tokenizer's
  own post-processor; ``bos_token`` = ``Pooling("cls")`` (the first attended token). The Pooling module
  lives in ``1_Pooling`` and its config carries the pre-6 ``pooling_mode_*`` booleans next to the 6.x
  keys: text-embeddings-inference reads only that file, only those keys (ST 6 ignores them when
  ``pooling_mode`` is present);
- prompts in ``config_sentence_transformers.json``, stored as ``instruction.strip() + " "`` so that stock
  ST's ``prompt + text`` is llm2vec's ``instruction.strip() + " " + text``;
- ``tokenizer_config.json`` names the generic ``TokenizersBackend`` class, so transformers reads
  ``tokenizer.json`` as saved (a model-specific class such as Qwen2's rebuilds its own normalizer and
  post-processor and would drop the EOS suffix and the prompt boundary below).

Proof: :func:`save_portable` writes into a temp dir, loads it in a fresh Python process in which
``import st_llm2vec`` fails and ``trust_remote_code`` is off, and checks there, against the in-memory
model: the stock modules, the bidirectionality probe (an early token moves when only the last word
changes), the same token ids and prompt lengths, and per text the cosine of the embeddings (≥ 0.99999
in float32, ≥ 0.999 in bf16 / fp16) and their largest difference (≤ 1e-4 of the largest value in
float32, 2e-2 in half precision), each computed batch for batch the same way on both sides (padding
moves half-precision results by more than these bounds). Only then is the dir put in place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from .console import status
from .files import move_into, normalize_permissions, temp_dir_beside
from .pooling_modes import adds_bos
from .instructions import PORTABLE
from .portable import TOLERANCE_FLOAT32, PortableFormatError, encode_padded, why_not_portable
from .proof import (
    BIDIRECTIONAL_PROBE,
    PROBE_TEXTS,
    foreign_modules,
    last_line,
    row_cosines,
    run_without_st_llm2vec,
)
from .upstream import st_model_config

logger = logging.getLogger(__name__)

# text-embeddings-inference reads ``use_bidirectional_attention`` for these model types (and
# ``is_causal`` for qwen2); vLLM and llama.cpp's converter read ``is_causal``.
TEI_BIDIRECTIONAL_TYPES = frozenset({"llama", "mistral", "qwen3", "gemma3_text"})
# The proof's bounds, per dtype of the saved weights: (min cosine per text, max difference / largest value).
PROOF_BOUNDS = {"float32": (0.99999, TOLERANCE_FLOAT32), "half": (0.999, 2e-2)}
# Stock Pooling's directory: text-embeddings-inference reads the pooling of every model from this path.
POOLING_DIR = "1_Pooling"
WORD_WEIGHTS_DIR = "0_WordWeights"  # runs before the pooling (modules.json order), named apart from 1_Pooling
# The pre-6 layout of a Pooling config (TEI parses these booleans; ST 6 drops them beside pooling_mode).
LEGACY_POOLING_KEYS = {
    "cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens", "mean": "pooling_mode_mean_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens", "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}


def class_ref(cls: type) -> str:
    return f"{cls.__module__}.{cls.__name__}"


# -- writing ------------------------------------------------------------------------------------


def _write_module_dirs(model: Any, directory: Path) -> list[dict[str, Any]]:
    """Write the stock module files into ``directory``; returns the modules.json entries."""
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling, WordWeights

    encoder, pooling = model[0], model[1]
    encoder.save(str(directory))
    config_path = directory / Transformer.config_file_name
    ours = json.loads(config_path.read_text(encoding="utf-8"))
    config_path.write_text(json.dumps({k: v for k, v in ours.items() if k in Transformer.config_keys}, indent=4), encoding="utf-8")
    _write_bidirectional_flags(directory / "config.json", encoder)
    # Left padding with pad = eos, as in memory (and llm2vec): stock loaders then lay batches out alike, so
    # RoPE's shift invariance is not even needed for the same numbers (right padding differs by ~1e-6).
    tokenizer_config = directory / "tokenizer_config.json"
    if tokenizer_config.is_file():
        data = json.loads(tokenizer_config.read_text(encoding="utf-8"))
        # TokenizersBackend: tokenizer.json as saved (suffix post-processor, prompt-boundary normalizer)
        data.update(padding_side="left", pad_token=encoder.tokenizer.pad_token, tokenizer_class="TokenizersBackend")
        tokenizer_config.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")

    entries = [{"idx": 0, "name": "0", "path": "", "type": class_ref(Transformer)}]
    dimension = pooling.get_embedding_dimension()
    mode = pooling.mode
    if mode.excludes_prompt and adds_bos(encoder.tokenizer):  # a mean: BOS weighted 0
        rows = encoder.model.get_input_embeddings().num_embeddings
        tokens = encoder.tokenizer.convert_ids_to_tokens(list(range(rows)))
        vocab = [t if t is not None else f"[unused{i}]" for i, t in enumerate(tokens)]
        weights = WordWeights(vocab, {encoder.tokenizer.bos_token: 0.0})
        import torch

        exact = torch.ones(rows, 1)
        exact[encoder.tokenizer.bos_token_id] = 0.0  # by id: a vocab string's lower-case twin must keep weight 1
        weights.emb_layer.weight.data.copy_(exact)
        (directory / WORD_WEIGHTS_DIR).mkdir()
        weights.save(str(directory / WORD_WEIGHTS_DIR))
        entries.append({"idx": len(entries), "name": str(len(entries)), "path": WORD_WEIGHTS_DIR,
                        "type": class_ref(WordWeights)})
    (directory / POOLING_DIR).mkdir()
    # include_prompt=False: an instruction's tokens are not pooled (llm2vec, mteb); lasttoken / cls read one
    # position, which ST would move past the prompt for cls
    Pooling(dimension, mode.stock, include_prompt=not mode.excludes_prompt).save(str(directory / POOLING_DIR))
    _add_legacy_pooling_keys(directory / POOLING_DIR / "config.json", mode.stock)
    entries.append({"idx": len(entries), "name": str(len(entries)), "path": POOLING_DIR, "type": class_ref(Pooling)})
    return entries


def _add_legacy_pooling_keys(path: Path, mode: str) -> None:
    """The pre-6 ``pooling_mode_*`` booleans beside ``pooling_mode`` (see ``LEGACY_POOLING_KEYS``)."""
    config = json.loads(path.read_text(encoding="utf-8"))
    config.update({key: name == mode for name, key in LEGACY_POOLING_KEYS.items()})
    path.write_text(json.dumps(config, indent=4), encoding="utf-8")


def _write_bidirectional_flags(path: Path, encoder: Any) -> None:
    """The attention flags every consumer reads: ``is_causal`` and, where TEI reads it, ``use_bidirectional_attention``."""
    config = json.loads(path.read_text(encoding="utf-8"))
    bidirectional = bool(getattr(encoder, "bidirectional", True))
    config["is_causal"] = not bidirectional
    if config.get("model_type") in TEI_BIDIRECTIONAL_TYPES or "use_bidirectional_attention" in config:
        config["use_bidirectional_attention"] = bidirectional
    path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")


def write_portable(model: Any, directory: Path) -> None:
    """All files of a portable dir (no model card) into the existing empty ``directory``."""
    entries = _write_module_dirs(model, directory)
    (directory / "modules.json").write_text(json.dumps(entries, indent=2), encoding="utf-8")
    (directory / "config_sentence_transformers.json").write_text(
        json.dumps(st_model_config(model), indent=2, sort_keys=True), encoding="utf-8"
    )


# -- proof --------------------------------------------------------------------------------------

# Runs in a fresh interpreter in which st_llm2vec cannot be imported (:func:`~st_llm2vec.proof.run_without_st_llm2vec`),
# so only stock code can load the dir.
_PROOF_SCRIPT = r"""
args = json.loads(sys.stdin.read())
import torch
torch.set_num_threads(1)
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(args["path"], device="cpu", local_files_only=True,
                            model_kwargs={"dtype": getattr(torch, args["dtype"])})
docs = args["docs"]
def encode(**kwargs):
    return model.encode(docs, convert_to_numpy=True, **kwargs).astype("float64").tolist()
def token_ids(prompt=None):
    texts = [prompt + d for d in docs] if prompt else docs
    features = model.preprocess(texts)
    return [row[mask.bool()].tolist() for row, mask in zip(features["input_ids"], features["attention_mask"])]
result = {"modules": [type(m).__module__ + "." + type(m).__name__ for m in model], "repr": repr(model)}
result["docs"] = encode(batch_size=8)
# one text per call: a batch without padding is where some attention kernels fall back to causal
result["docs_one_by_one"] = encode(batch_size=1)
result["queries"] = {name: encode(prompt_name=name, batch_size=8) for name in args["prompt_names"]}
result["tokens"] = {"": token_ids()}
result["prompt_length"] = {}
for name in args["prompt_names"]:
    prompt = model.prompts[name]
    result["tokens"][name] = token_ids(prompt)
    result["prompt_length"][name] = model[0]._get_prompt_length(prompt)
a, b = (model.encode([text], output_value="token_embeddings")[0].float().numpy() for text in args["probe"])
result["first_token_shift"] = first_token_shift(a, b)
report(result)
"""


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def proof_bounds(dtype: Any) -> tuple[float, float]:
    """(min cosine per text, max difference relative to the largest value) a portable save must meet,
    for the dtype (a ``torch.dtype``) of the saved weights."""
    return PROOF_BOUNDS["float32" if str(dtype) == "torch.float32" else "half"]


def compare_embeddings(ours: Any, theirs: Any) -> tuple[float, float]:
    """(min cosine over rows, max |difference| / max(1, largest |value|)) of two embedding matrices; two equal
    zero rows count as cosine 1."""
    import numpy as np

    a, b = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    zero = (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)) == 0
    cosine = np.where(zero, 1.0 * np.all(a == b, axis=1), row_cosines(a, b))
    return float(cosine.min()), float(np.abs(a - b).max()) / max(1.0, float(np.abs(a).max()))


def _stock_token_ids(model: Any, texts: list[str], prompt: str | None) -> list[list[int]]:
    """The token ids the in-memory model feeds its backbone (the portable format: stock ST's)."""
    from .encoder.tokenize import tokenize

    encoder = model[0]
    return tokenize(encoder, texts, prompt, encoder.max_seq_length).ids


def prove_portable(model: Any, directory: Path, texts: list[str] | None = None) -> dict[str, Any]:
    """Load ``directory`` with stock ST in a process where st_llm2vec cannot be imported; check it.

    Returns the report (``min_cosine``, ``max_difference``, their bounds, ``first_token_shift``, the stock
    module list and repr); raises :class:`PortableFormatError` when the dir needs st_llm2vec, runs
    causally where the model is bidirectional, tokenizes or counts a prompt otherwise, or gives other
    embeddings than the in-memory model.
    """
    from .instructions import stock_prompt_length

    encoder = model[0]
    dtype = next(encoder.model.parameters()).dtype
    texts = list(texts or PROBE_TEXTS)
    prompt_names = sorted(name for name, text in (model.prompts or {}).items() if text)
    payload = {"path": str(directory), "dtype": str(dtype).removeprefix("torch."), "docs": texts,
               "prompt_names": prompt_names, "probe": list(BIDIRECTIONAL_PROBE)}
    stock, proc = run_without_st_llm2vec(_PROOF_SCRIPT, payload, why="the portable format must load without it",
                                         env=_subprocess_env())
    if stock is None:
        raise PortableFormatError(f"stock sentence-transformers could not load the portable dir: {last_line(proc)}")
    foreign = foreign_modules(stock["modules"])
    if foreign:
        raise PortableFormatError(f"the portable dir loaded non-stock modules {foreign}")

    shift = stock["first_token_shift"]
    bidirectional = bool(getattr(encoder, "bidirectional", True))
    min_shift = 1e-5 if str(dtype) == "torch.float32" else 1e-3
    if bidirectional and not shift > min_shift:
        raise PortableFormatError(
            f"stock sentence-transformers runs this {encoder.model.config.model_type} model causally "
            f"(first-token shift {shift:.1e}): it needs st_llm2vec's per-module attention flags"
        )
    for name in ["", *prompt_names]:
        prompt = model.prompts[name] if name else None
        if stock["tokens"][name] != _stock_token_ids(model, texts, prompt):
            what = f"with the prompt {name!r}" if name else "documents"
            raise PortableFormatError(f"stock sentence-transformers tokenizes {what} otherwise than this model")
        if name and stock["prompt_length"][name] != stock_prompt_length(encoder.tokenizer, prompt, encoder.max_seq_length):
            raise PortableFormatError(f"stock sentence-transformers counts the prompt {name!r} as another number of tokens")

    # like with like: the same batches on both sides (padding moves half-precision results)
    ours = {"documents": encode_padded(model, texts), "documents, one per call": encode_padded(model, texts, batch_size=1)}
    theirs = {"documents": stock["docs"], "documents, one per call": stock["docs_one_by_one"]}
    for name in prompt_names:
        ours[f"prompt {name!r}"] = encode_padded(model, texts, prompt_name=name)
        theirs[f"prompt {name!r}"] = stock["queries"][name]
    min_cosine_bound, tolerance = proof_bounds(dtype)
    worst_cosine, worst_difference = 1.0, 0.0
    for key, value in ours.items():
        cosine, difference = compare_embeddings(value, theirs[key])
        worst_cosine, worst_difference = min(worst_cosine, cosine), max(worst_difference, difference)
        if not (cosine >= min_cosine_bound and difference <= tolerance):
            raise PortableFormatError(
                f"stock sentence-transformers gives other embeddings than this model for {key}: min cosine "
                f"{cosine:.6f} (must be >= {min_cosine_bound}), max relative difference {difference:.2e} (must be <= {tolerance:.0e})"
            )
    return {"min_cosine": worst_cosine, "min_cosine_bound": min_cosine_bound, "max_difference": worst_difference,
            "max_difference_bound": tolerance, "dtype": payload["dtype"], "first_token_shift": shift,
            "modules": stock["modules"], "repr": stock["repr"], "texts": len(texts), "prompts": prompt_names}


def describe_proof(report: dict[str, Any]) -> str:
    """The proof's figures in one line, as the CLI prints them and the model card states them."""
    prompts = f" and {len(report['prompts'])} prompt(s)" if report.get("prompts") else ""
    return (f"loaded by stock sentence-transformers without st_llm2vec: bidirectional (first-token shift "
            f"{report['first_token_shift']:.2e}), same tokens, per-text cosine vs the saved model >= "
            f"{report['min_cosine']:.7f} (bound {report['min_cosine_bound']}), max relative difference "
            f"{report['max_difference']:.1e} (bound {report['max_difference_bound']:.0e}) over {report['texts']} "
            f"texts{prompts}, {report['dtype']}")


# -- saving -------------------------------------------------------------------------------------


# Module dirs an earlier save into the same folder may have left (another format, another pooling).
STALE_MODULE_DIRS = ("1_LLM2VecPooling", "0_WordWeights", "1_WordWeights", "1_Pooling", "2_Pooling", "README.md")


def save_portable(model: Any, path: str | os.PathLike, *, card=None) -> dict[str, Any]:
    """Write ``model`` to ``path`` in the portable format, proven (see :func:`prove_portable`); returns the proof.

    Built in a hidden temp dir beside ``path`` and moved in only once proven; a failed proof leaves
    ``path`` as it was. ``card(directory, report) -> str`` writes the model card text (README.md).
    """
    reason = why_not_portable(model)
    if reason or model[0].format != PORTABLE:
        raise PortableFormatError(f"Cannot save in the portable format: {reason or 'the model is in the exact format'}.")
    target = Path(path).expanduser().absolute()
    tmp = temp_dir_beside(target)
    status(f"saving {target} and proving it loads in stock sentence-transformers (a fresh process)")
    try:
        write_portable(model, tmp)
        report = prove_portable(model, tmp)
        if card is not None:
            (tmp / "README.md").write_text(card(tmp, report), encoding="utf-8")
        normalize_permissions(tmp)
        move_into(tmp, target, STALE_MODULE_DIRS)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Saved %s in the portable format: %s", target, describe_proof(report))
    return report
