"""The portable save format: a model dir made only of stock sentence-transformers modules, proven at save time.

Such a dir loads with ``SentenceTransformer(path)`` — and so in LlamaIndex, LangChain, mteb — with no
flag and without st_llm2vec installed, because everything it needs is written where stock code reads it:

- ``config.json``: ``is_causal: false`` (transformers >= 5.2, vLLM, llama.cpp's GGUF converter) and, for
  the model types text-embeddings-inference reads it for, ``use_bidirectional_attention: true``;
- ``sentence_bert_config.json``: a stock ``Transformer`` with the plain ``text`` modality only (no chat
  template wrapping);
- pooling: ``mean`` = ``WordWeights`` (weight 0 for the BOS token, 1 for every other token) + ``Pooling
  ("mean")`` — llm2vec pools the text tokens and never the BOS token, and ``WordWeights`` is the stock way
  to leave one token id out of a mean; ``eos_token`` = ``Pooling("lasttoken")`` with the EOS suffix
  appended by the saved tokenizer's own post-processor; ``bos_token`` = ``Pooling("cls")`` (the first
  attended token);
- prompts in ``config_sentence_transformers.json``, stored as ``instruction.strip() + " "`` so that stock
  ST's ``prompt + text`` is llm2vec's ``instruction.strip() + " " + text``.

Instructions: stock ST pools ``prompt + text`` as a whole (``include_prompt=True``): an instruction's
tokens are pooled with the text's. llm2vec pools only the text (its last N tokens). A model in the
portable format computes queries the stock way in memory too (``LLM2VecTransformer.format ==
"portable"``), so what is trained, evaluated and served is the same; :func:`make_portable` switches a
model to it. Documents (no instruction) are unchanged by the switch.

Proof: :func:`save_portable` writes into a temp dir, loads it in a fresh Python process in which
``import st_llm2vec`` fails and ``trust_remote_code`` is off, runs the behavioural bidirectionality probe
through stock ST and compares embeddings with the in-memory model; only then is the dir put in place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .runs import normalize_permissions, temp_dir_beside

logger = logging.getLogger(__name__)

PORTABLE, EXACT, AUTO = "portable", "exact", "auto"
FORMATS = (AUTO, PORTABLE, EXACT)
# text-embeddings-inference reads ``use_bidirectional_attention`` for these model types (and
# ``is_causal`` for qwen2); vLLM and llama.cpp's converter read ``is_causal``.
TEI_BIDIRECTIONAL_TYPES = frozenset({"llama", "mistral", "qwen3", "gemma3_text"})
STOCK_POOLING = {"mean": "mean", "eos_token": "lasttoken", "bos_token": "cls"}
PROBE_TEXTS = [
    "A man is playing a guitar on the street.",
    "Two dogs are running through a field of grass, chasing a red ball.",
    "The cat sleeps.",
    "Stock prices fell sharply on Monday after the central bank raised interest rates by half a point.",
    "x",
    "How do bidirectional LLM embeddings work?",
]
BIDIRECTIONAL_PROBE = ("The quick brown fox jumps over the lazy dog", "The quick brown fox jumps over the lazy cat")
TOLERANCE_FLOAT32 = 1e-4


class PortableFormatError(ValueError):
    """The model cannot be written in the portable format; the message says why and what to use instead."""


def class_ref(cls: type) -> str:
    return f"{cls.__module__}.{cls.__name__}"


def stored_prompt(instruction: str) -> str:
    """An llm2vec instruction as a stock ST prompt: ``prompt + text`` == ``instruction.strip() + " " + text``."""
    stripped = instruction.strip()
    return f"{stripped} " if stripped else ""


def prompt_for(model: Any, instruction: str | None) -> str | None:
    """What to pass as ``prompt=`` for an llm2vec ``instruction``: the stock prompt unless the model is ours
    in the exact format (a stock-loaded model is portable)."""
    if instruction and getattr(model[0], "format", PORTABLE) == PORTABLE:
        return stored_prompt(instruction)
    return instruction


# -- switching a model to the portable semantics ------------------------------------------------


def adds_bos(tokenizer: Any) -> bool:
    """The tokenizer starts every input with its BOS token."""
    ids = tokenizer("a")["input_ids"]
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


_SUFFIX_PROBES = ("A man is playing a guitar.", "Two dogs run", "x", "hello world 123", "Ünïcode — test!")


def suffix_token_ids(tokenizer: Any, suffix: str) -> list[int] | None:
    """The token ids ``suffix`` adds after any text (llm2vec appends it after ``text.strip()``), if constant."""
    found = set()
    for text in _SUFFIX_PROBES:
        base = tokenizer(text)["input_ids"]
        full = tokenizer(text + suffix)["input_ids"]
        if full[: len(base)] != base:
            return None
        found.add(tuple(full[len(base):]))
    return list(found.pop()) if len(found) == 1 else None


def append_suffix_in_tokenizer(tokenizer: Any, suffix_ids: list[int]) -> None:
    """Make the (fast) tokenizer itself append ``suffix_ids`` after every text, through its post-processor.

    The post-processor is saved in tokenizer.json, so stock loaders reproduce it. It becomes one template:
    the special tokens the tokenizer already adds around a text (e.g. BOS), the text, then the suffix.
    """
    from tokenizers import processors

    content = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x")["input_ids"]
    start = next((k for k in range(len(full) - len(content) + 1) if full[k : k + len(content)] == content), None)
    if start is None:
        raise PortableFormatError("the tokenizer's special tokens around a text could not be located")
    ids = full[:start] + ["$A"] + full[start + len(content):] + list(suffix_ids)
    specials = [i for i in ids if i != "$A"]
    tokens = tokenizer.convert_ids_to_tokens(specials)
    if len(set(tokens)) != len(tokens):
        raise PortableFormatError(f"the tokens {tokens} around a text repeat, which a tokenizer template cannot express")
    names = dict(zip(specials, tokens))
    single = " ".join("$A" if i == "$A" else names[i] for i in ids)
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=f"{single} {single.replace('$A', '$B:1')}",
        special_tokens=list(dict(zip(tokens, specials)).items()),
    )


def why_not_portable(model: Any) -> str | None:
    """One line saying why ``model`` cannot be portable, or None when it can (before any proof)."""
    from peft import PeftModel

    from .encoder import LLM2VecTransformer
    from .pooling import LLM2VecPooling

    modules = list(model)
    if len(modules) != 2 or not isinstance(modules[0], LLM2VecTransformer) or not isinstance(modules[1], LLM2VecPooling):
        return "only an st_llm2vec encoder + pooling pair can be written as stock modules"
    encoder, pooling = modules
    if isinstance(encoder.model, PeftModel):
        return "the backbone carries an unmerged LoRA adapter (merge it first)"
    if not pooling.skip_instruction:
        return "skip_instruction=False (pool every token, BOS included) has no stock equivalent"
    if pooling.pooling_mode not in STOCK_POOLING:
        return (f"pooling_mode={pooling.pooling_mode!r} has no stock equivalent (ST's weightedmean numbers the "
                "BOS token as position 1; llm2vec weights the text tokens 1..N)")
    if encoder.chat_template:
        return "the instruction wrapper (llm2vec's instruct-model chat format) has no stock equivalent"
    if encoder.backend != "torch":
        return f"backend {encoder.backend!r}"
    if getattr(encoder.tokenizer, "_tokenizer", None) is None:
        return "the tokenizer is not a fast (tokenizers) tokenizer"
    if pooling.pooling_mode == "bos_token" and not adds_bos(encoder.tokenizer):
        return "bos_token pooling needs a tokenizer that adds BOS"
    return None


def make_portable(model: Any) -> Callable[[], None]:
    """Switch an st_llm2vec model, in place, to what the portable format computes (see the module doc).

    Documents keep their embeddings (save the word-level ``doc_max_length`` cut, which stock ST has not:
    it truncates at ``max_seq_length`` tokens); instructions become stock prompts (pooled with the text).
    Returns a function that undoes the switch. Raises :class:`PortableFormatError` naming why when the
    model cannot be portable (the model is then unchanged).
    """
    reason = why_not_portable(model)
    if reason:
        raise PortableFormatError(f"Cannot use the portable format: {reason}. Use format='exact'.")
    encoder = model[0]
    if encoder.format == PORTABLE:
        return lambda: None
    backend = encoder.tokenizer._tokenizer
    before = (encoder.format, encoder.doc_max_length, encoder.text_suffix, backend.post_processor, dict(model.prompts or {}))

    def undo() -> None:
        """Back to exactly the model before the switch."""
        encoder.format, encoder.doc_max_length, encoder.text_suffix, backend.post_processor, model.prompts = before

    if encoder.text_suffix:
        suffix_ids = suffix_token_ids(encoder.tokenizer, encoder.text_suffix)
        if not suffix_ids:
            raise PortableFormatError(
                f"Cannot use the portable format: the EOS suffix {encoder.text_suffix!r} does not tokenize to the same "
                "tokens after every text. Use format='exact'."
            )
        try:
            append_suffix_in_tokenizer(encoder.tokenizer, suffix_ids)
        except PortableFormatError as exc:
            raise PortableFormatError(f"Cannot use the portable format: {exc}. Use format='exact'.") from exc
        encoder.text_suffix = None
    encoder.doc_max_length = None
    encoder.format = PORTABLE
    model.prompts = {name: stored_prompt(text) for name, text in (model.prompts or {}).items()}
    return undo


def _encode_padded(model: Any, texts: list[str], **kwargs: Any):
    """``encode`` with padding forced, so that two formats (or two loaders) are compared like with like."""
    encoder = model[0]
    previous = encoder._unpad_inputs
    encoder._unpad_inputs = False
    try:
        return model.encode(texts, batch_size=8, convert_to_numpy=True, **kwargs)
    finally:
        encoder._unpad_inputs = previous


def switch_if_faithful(model: Any, texts: list[str] | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """Switch an exact-format model (e.g. a converted llm2vec stack) to the portable format when documents
    keep their embeddings (≤ 1e-4, relative); returns ``(comparison, None)`` or ``(None, why not)``.

    ``comparison``: ``documents_max_difference`` (portable vs llm2vec's semantics, no instruction) and,
    per stored prompt, ``query_min_cosine`` / ``query_mean_cosine`` (instructions are pooled the stock
    way in the portable format, so queries do differ).
    """
    import numpy as np

    reason = why_not_portable(model)
    if reason:
        return None, reason
    texts = list(texts or PROBE_TEXTS)
    prompts = {name: text for name, text in (model.prompts or {}).items() if text}
    reference_docs = _encode_padded(model, texts)
    reference_queries = {name: _encode_padded(model, texts, prompt=text) for name, text in prompts.items()}
    try:
        undo = make_portable(model)
    except PortableFormatError as exc:
        return None, str(exc).removeprefix("Cannot use the portable format: ")
    docs = _encode_padded(model, texts)
    scale = max(1.0, float(np.abs(reference_docs).max()))
    difference = float(np.abs(docs - reference_docs).max()) / scale
    if not difference <= TOLERANCE_FLOAT32:
        undo()
        return None, f"documents would differ from llm2vec's by {difference:.1e} (relative) in the portable format"
    comparison: dict[str, Any] = {"documents_max_difference": difference, "texts": len(texts)}
    for name, reference in reference_queries.items():
        queries = _encode_padded(model, texts, prompt_name=name)
        cosine = (queries * reference).sum(1) / (np.linalg.norm(queries, axis=1) * np.linalg.norm(reference, axis=1))
        comparison[f"query_min_cosine[{name}]"] = float(cosine.min())
        comparison[f"query_mean_cosine[{name}]"] = float(cosine.mean())
    return comparison, None


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
        data.update(padding_side="left", pad_token=encoder.tokenizer.pad_token)
        tokenizer_config.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")

    entries = [{"idx": 0, "name": "0", "path": "", "type": class_ref(Transformer)}]
    dimension = pooling.get_embedding_dimension()
    if pooling.pooling_mode == "mean" and adds_bos(encoder.tokenizer):
        rows = encoder.model.get_input_embeddings().num_embeddings
        tokens = encoder.tokenizer.convert_ids_to_tokens(list(range(rows)))
        vocab = [t if t is not None else f"[unused{i}]" for i, t in enumerate(tokens)]
        weights = WordWeights(vocab, {encoder.tokenizer.bos_token: 0.0})
        exact = torch.ones(rows, 1)
        exact[encoder.tokenizer.bos_token_id] = 0.0  # by id: a vocab string's lower-case twin must keep weight 1
        weights.emb_layer.weight.data.copy_(exact)
        name = f"{len(entries)}_WordWeights"
        (directory / name).mkdir()
        weights.save(str(directory / name))
        entries.append({"idx": len(entries), "name": str(len(entries)), "path": name, "type": class_ref(WordWeights)})
    name = f"{len(entries)}_Pooling"
    (directory / name).mkdir()
    Pooling(dimension, STOCK_POOLING[pooling.pooling_mode], include_prompt=True).save(str(directory / name))
    entries.append({"idx": len(entries), "name": str(len(entries)), "path": name, "type": class_ref(Pooling)})
    return entries


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
        json.dumps(model._get_model_config(), indent=2, sort_keys=True), encoding="utf-8"
    )


# -- proof --------------------------------------------------------------------------------------

# Runs in a fresh interpreter: st_llm2vec is made unimportable, so only stock code can load the dir.
_PROOF_SCRIPT = r"""
import json, sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name == "st_llm2vec" or name.startswith("st_llm2vec."):
            raise ImportError("st_llm2vec is blocked: the portable format must load without it")
        return None
sys.meta_path.insert(0, _Blocked())
args = json.loads(sys.stdin.read())
import torch
torch.set_num_threads(1)
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(args["path"], device="cpu", local_files_only=True,
                            model_kwargs={"dtype": getattr(torch, args["dtype"])})
result = {"modules": [type(m).__module__ + "." + type(m).__name__ for m in model], "repr": repr(model)}
result["docs"] = model.encode(args["docs"], batch_size=8, convert_to_numpy=True).astype("float64").tolist()
result["queries"] = {name: model.encode(args["docs"], prompt_name=name, batch_size=8, convert_to_numpy=True)
                     .astype("float64").tolist() for name in args["prompt_names"]}
# one text per call: a batch without padding is where some attention kernels fall back to causal
result["docs_one_by_one"] = model.encode(args["docs"], batch_size=1, convert_to_numpy=True).astype("float64").tolist()
a, b = (model.encode([text], output_value="token_embeddings")[0] for text in args["probe"])
# token 1: an early text token (token 0 may be a BOS that WordWeights zeroes in these outputs)
result["first_token_shift"] = float((a[1].float() - b[1].float()).norm() / a[1].float().norm().clamp_min(1e-12))
print("PROOF" + json.dumps(result))
"""


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def prove_portable(model: Any, directory: Path, texts: list[str] | None = None) -> dict[str, Any]:
    """Load ``directory`` with stock ST in a process where st_llm2vec cannot be imported; check it.

    Returns the report (max difference, first-token shift, the stock module list and repr); raises
    :class:`PortableFormatError` when the dir needs st_llm2vec, runs causally where the model is
    bidirectional, or gives other embeddings than the in-memory model.
    """
    import numpy as np

    encoder = model[0]
    dtype = next(encoder.model.parameters()).dtype
    texts = list(texts or PROBE_TEXTS)
    prompt_names = sorted(name for name, text in (model.prompts or {}).items() if text)
    payload = {"path": str(directory), "dtype": str(dtype).removeprefix("torch."), "docs": texts,
               "prompt_names": prompt_names, "probe": list(BIDIRECTIONAL_PROBE)}
    proc = subprocess.run([sys.executable, "-c", _PROOF_SCRIPT], input=json.dumps(payload), capture_output=True,
                          text=True, env=_subprocess_env())
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("PROOF")), None)
    if proc.returncode != 0 or line is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise PortableFormatError(f"stock sentence-transformers could not load the portable dir: {tail[0]}")
    stock = json.loads(line[len("PROOF"):])
    foreign = [m for m in stock["modules"] if not m.startswith("sentence_transformers.")]
    if foreign:
        raise PortableFormatError(f"the portable dir loaded non-stock modules {foreign}")

    shift = stock["first_token_shift"]
    bidirectional = bool(getattr(encoder, "bidirectional", True))
    min_shift = 1e-5 if dtype == torch.float32 else 1e-3
    if bidirectional and not shift > min_shift:
        raise PortableFormatError(
            f"stock sentence-transformers runs this {encoder.model.config.model_type} model causally "
            f"(first-token shift {shift:.1e}): it needs st_llm2vec's per-module attention flags"
        )
    ours = {"documents": _encode_padded(model, texts)}
    for name in prompt_names:
        ours[f"prompt {name!r}"] = _encode_padded(model, texts, prompt_name=name)
    ours["documents, one per call"] = ours["documents"]
    theirs = {"documents": stock["docs"], "documents, one per call": stock["docs_one_by_one"],
              **{f"prompt {n!r}": stock["queries"][n] for n in prompt_names}}
    tolerance = TOLERANCE_FLOAT32 if dtype == torch.float32 else 2e-2
    worst = 0.0
    for key, value in ours.items():
        value = np.asarray(value, dtype=np.float64)
        scale = max(1.0, float(np.abs(value).max()))
        diff = float(np.abs(value - np.asarray(theirs[key])).max()) / scale
        worst = max(worst, diff)
        if not diff <= tolerance:
            raise PortableFormatError(
                f"stock sentence-transformers gives other embeddings than this model for {key} "
                f"(max relative difference {diff:.2e} > {tolerance:.0e})"
            )
    return {"max_difference": worst, "first_token_shift": shift, "modules": stock["modules"], "repr": stock["repr"],
            "texts": len(texts), "prompts": prompt_names}


# -- saving -------------------------------------------------------------------------------------


def move_into(source: Path, target: Path, stale: tuple[str, ...] = ()) -> None:
    """Move every entry of ``source`` into ``target`` (replacing same-named ones), after removing ``stale`` entries."""
    target.mkdir(parents=True, exist_ok=True)
    for name in stale:
        old = target / name
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        elif old.exists() or old.is_symlink():
            old.unlink()
    for entry in source.iterdir():
        destination = target / entry.name
        if destination.is_dir() and not destination.is_symlink():
            shutil.rmtree(destination)
        elif destination.exists() or destination.is_symlink():
            destination.unlink()
        os.replace(entry, destination)


# Module dirs an earlier save into the same folder may have left (another format, another pooling).
STALE_MODULE_DIRS = ("1_LLM2VecPooling", "1_WordWeights", "1_Pooling", "2_Pooling", "README.md")


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
    try:
        write_portable(model, tmp)
        report = prove_portable(model, tmp)
        if card is not None:
            (tmp / "README.md").write_text(card(tmp, report), encoding="utf-8")
        normalize_permissions(tmp)
        move_into(tmp, target, STALE_MODULE_DIRS)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Saved %s in the portable format (stock modules; max difference %.1e)", target, report["max_difference"])
    return report
