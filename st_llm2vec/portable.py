"""The portable save format: a model dir made only of stock sentence-transformers modules, proven at save time.

Such a dir loads with ``SentenceTransformer(path)`` — and so in LlamaIndex, LangChain, mteb — with no
flag and without st_llm2vec installed, because everything it needs is written where stock code reads it
(:mod:`st_llm2vec.portable_save` writes and proves it). This module holds what the format computes, and switches
a model to it.

Instructions: ``include_prompt=False`` skips the first ``len(tokenize(prompt))`` tokens, the prompt counted
alone. That count includes the prompt's trailing space as a token of its own (``"passages: "`` ends in
``"Ġ"``), while in ``prompt + text`` most tokenizers merge that space into the text's first token
(``"Ġhow"``): stock pooling would drop the text's first token, and a one-token query would pool nothing.
Where it makes the count match llm2vec's text part more often (:func:`prompt_boundary_normalizer`, decided
on probe texts), the saved tokenizer drops one space at the very end of an input — which changes only
texts that end in a space, by that one token. A model in the portable format computes queries the stock
way in memory too (``LLM2VecTransformer.format == "portable"``), so what is trained, evaluated and served
is the same; :func:`make_portable` switches a model to it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from .errors import InputError
from .instructions import EXACT, PORTABLE, stored_prompt
from .pooling_modes import adds_bos
from .proof import PROBE_TEXTS, foreign_modules, module_types, row_cosines

logger = logging.getLogger(__name__)

# How far (relative) documents may move when a model is switched to the portable format.
TOLERANCE_FLOAT32 = 1e-4
# Instructions the prompt-boundary choice is tried on (with the model's own prompts).
BOUNDARY_PROMPTS = ("Retrieve semantically similar text: ", "Given a web search query, retrieve relevant passages: ")


class PortableFormatError(InputError):
    """The model cannot be written in the portable format; the message says why and what to use instead."""


def saved_format(path: str | os.PathLike) -> str:
    """The format of a saved model dir, read from its modules.json: "portable" when every module is a stock
    sentence-transformers class, else "exact" (FileNotFoundError without modules.json)."""
    return EXACT if foreign_modules(module_types(path)) else PORTABLE


# -- switching a model to the portable semantics ------------------------------------------------


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
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=f"{single} {single.replace('$A', '$B:1')}",
        special_tokens=list(dict(zip(tokens, specials)).items()),
    )


def _text_part_matches(tokenizer: Any, prompts: list[str], texts: list[str]) -> int:
    """On how many (prompt, text) pairs stock's prompt length equals llm2vec's: the tokens of
    ``prompt + text`` before the text's own tokens (llm2vec pools the last ``len(tokenize(text))``)."""
    from .instructions import stock_prompt_length

    matches = 0
    for prompt in prompts:
        skip = stock_prompt_length(tokenizer, prompt)
        for text in texts:
            joint = len(tokenizer(prompt + text)["input_ids"])
            matches += skip == joint - len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return matches


def prompt_boundary_normalizer(tokenizer: Any, prompts: list[str]) -> bool:
    """Make the (fast) tokenizer drop one space at the very end of an input, if that makes stock ST's
    prompt length (the prompt tokenized alone, trailing space included) match llm2vec's text part on
    more probe pairs (see the module doc). Returns whether it did; the tokenizer is unchanged otherwise.

    Written as a tokenizers normalizer (saved in tokenizer.json, so every stock loader applies it):
    nothing in sentence-transformers counts a prompt's tokens in context.
    """
    from tokenizers import Regex, normalizers

    backend = tokenizer.backend_tokenizer
    texts = PROBE_TEXTS + ["7 days", "(see below)", "  indented", "Übersicht", "python"]
    prompts = sorted({*BOUNDARY_PROMPTS, *(p for p in prompts if p and p.endswith(" "))})
    before = _text_part_matches(tokenizer, prompts, texts)
    original = backend.normalizer
    strip = normalizers.Replace(Regex(r" \z"), "")
    backend.normalizer = strip if original is None else normalizers.Sequence([strip, original])
    if _text_part_matches(tokenizer, prompts, texts) > before:
        return True
    backend.normalizer = original
    return False


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
    mode = pooling.mode
    if mode.stock is None:
        return f"pooling_mode={pooling.pooling_mode!r} has no stock equivalent ({mode.why_not_stock})"
    if encoder.chat_template:
        return "the instruction wrapper (llm2vec's instruct-model chat format) has no stock equivalent"
    if encoder.backend != "torch":
        return f"backend {encoder.backend!r}"
    if getattr(encoder.tokenizer, "backend_tokenizer", None) is None:
        return "the tokenizer is not a fast (tokenizers) tokenizer"
    if mode.needs_bos and not adds_bos(encoder.tokenizer):
        return f"{mode.name} pooling needs a tokenizer that adds BOS"
    return None


def make_portable(model: Any) -> Callable[[], None]:
    """Switch an st_llm2vec model, in place, to what the portable format computes (see the module doc).

    Documents keep their embeddings (save the word-level ``doc_max_length`` cut, which stock ST has not:
    it truncates at ``max_seq_length`` tokens, and a text's one trailing space where the prompt boundary
    needs it); instructions become stock prompts, excluded from mean pooling as stock ST excludes them.
    Returns a function that undoes the switch. Raises :class:`PortableFormatError` naming why when the
    model cannot be portable (the model is then unchanged).
    """
    reason = why_not_portable(model)
    if reason:
        raise PortableFormatError(f"Cannot use the portable format: {reason}. Use format='exact'.")
    encoder = model[0]
    if encoder.format == PORTABLE:
        return lambda: None
    backend = encoder.tokenizer.backend_tokenizer
    before = (encoder.format, encoder.doc_max_length, encoder.text_suffix, backend.post_processor, backend.normalizer,
              dict(model.prompts or {}))

    def undo() -> None:
        """Back to exactly the model before the switch."""
        (encoder.format, encoder.doc_max_length, encoder.text_suffix, backend.post_processor, backend.normalizer,
         model.prompts) = before

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
    if model[1].mode.excludes_prompt:
        prompt_boundary_normalizer(encoder.tokenizer, list(model.prompts.values()))
    return undo


def encode_padded(model: Any, texts: list[str], batch_size: int = 8, **kwargs: Any):
    """``encode`` with padding forced, so that two formats (or two loaders) are compared like with like."""
    encoder = model[0]
    previous = encoder.unpad_inputs
    encoder.unpad_inputs = False
    try:
        return model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False, **kwargs)
    finally:
        encoder.unpad_inputs = previous


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
    reference_docs = encode_padded(model, texts)
    reference_queries = {name: encode_padded(model, texts, prompt=text) for name, text in prompts.items()}
    try:
        undo = make_portable(model)
    except PortableFormatError as exc:
        return None, str(exc).removeprefix("Cannot use the portable format: ")
    docs = encode_padded(model, texts)
    scale = max(1.0, float(np.abs(reference_docs).max()))
    difference = float(np.abs(docs - reference_docs).max()) / scale
    if not difference <= TOLERANCE_FLOAT32:
        undo()
        return None, f"documents would differ from llm2vec's by {difference:.1e} (relative) in the portable format"
    comparison: dict[str, Any] = {"documents_max_difference": difference, "texts": len(texts)}
    for name, reference in reference_queries.items():
        queries = encode_padded(model, texts, prompt_name=name)
        cosine = row_cosines(queries, reference)
        comparison[f"query_min_cosine[{name}]"] = float(cosine.min())
        comparison[f"query_mean_cosine[{name}]"] = float(cosine.mean())
    return comparison, None


