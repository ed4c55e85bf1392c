"""Texts to token ids, and how many trailing tokens of each row are pooled, in the encoder's format.

``exact``: llm2vec 0.2.3's tokenization (its instruction joining, instruct wrapper, EOS suffix and word-level
``doc_max_length``); the pooled count of a row is llm2vec's text-part length. ``portable``: stock
sentence-transformers' ``prompt + text``; pooled is what stock ``Pooling(include_prompt=False)`` [+ ``WordWeights``]
pools. Rows come back unpadded: laying them out is :mod:`.layout`'s job.

Each function takes the ``LLM2VecTransformer`` whose settings apply (tokenizer, format, doc_max_length,
chat_template, text_suffix, max_seq_length).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

from ..errors import InputError
from ..instructions import PORTABLE, format_text, stock_prompt_length, truncate_words
from .checks import check_positive

logger = logging.getLogger(__name__)

# (prompt, text) pairs already warned about pooling nothing in the portable format (once each).
_WARNED_EMPTY: set[tuple[str, str]] = set()


class Tokenized(NamedTuple):
    """Token id lists of the full strings; per row, how many trailing tokens are pooled; per row, the mean's
    divisor where it is not that count (the portable format's stock ``WordWeights``), else None."""

    ids: list[list[int]]
    pooled: list[int]
    weights_sum: list[int] | None


def check_texts(inputs: Sequence[Any]) -> None:
    """Every input is a string (an instruction goes in ``prompt=``, not in a pair)."""
    for index, text in enumerate(inputs):
        if not isinstance(text, str):
            raise TypeError(
                f"Input {index} is {type(text).__name__}, not str: st_llm2vec encodes text. "
                "Pass instructions with encode(..., prompt=instruction) or prompt_name=..."
            )


def call_max_length(encoder: Any, kwargs: dict[str, Any]) -> int | None:
    """This call's token limit, by ST's precedence: ``processing_kwargs`` (per call over the module's)
    ``text`` / ``common`` ``max_length``, then ``max_length=`` (ST's trainer), then ``max_seq_length``.
    Other processing overrides are refused: llm2vec's tokenization (left padding with EOS,
    truncation) is fixed, and silently ignoring them would give a different result than asked."""
    merged = encoder._merge_processing_kwargs(kwargs.get("processing_kwargs"))
    unsupported = [
        f"{group}.{key}" for group, values in merged.items() for key in (values or {})
        if group not in ("text", "common") or key != "max_length"
    ]
    if unsupported:
        raise InputError(
            f"processing_kwargs {unsupported} are not supported by st_llm2vec, which tokenizes as llm2vec "
            "does (left padding with EOS, truncation to max_length); only 'max_length' can be overridden."
        )
    limit = merged.get("text", {}).get("max_length", merged.get("common", {}).get("max_length"))
    if limit is None:
        limit = kwargs.get("max_length")
    if limit is None:
        return encoder.max_seq_length
    check_positive("max_length", limit, "max_seq_length")
    return limit


def render(encoder: Any, text: str) -> str:
    """``text`` as the user message of the encoder's chat template."""
    conversation = [{"role": "user", "content": text}]
    return encoder.tokenizer.apply_chat_template(conversation, chat_template=encoder.chat_template, tokenize=False)


def check_prompt(encoder: Any, prompt: Any, max_length: int | None) -> None:
    """A prompt must be a string and leave room for text: one that fills ``max_length`` tokens would
    leave no text token, so every text would get the same embedding."""
    if not isinstance(prompt, str):  # a ValueError: ST retries a TypeError as prompt + text, garbling it
        raise InputError(f"prompt must be a str (an instruction), got {type(prompt).__name__}: {prompt!r}")
    if max_length is None:
        return
    portable = getattr(encoder, "format", "exact") == PORTABLE
    key = (prompt, max_length, encoder.chat_template, encoder.text_suffix, portable, id(encoder.tokenizer))
    checked = getattr(encoder, "_checked_prompts", None)
    if checked is None or len(checked) > 256:
        checked = encoder._checked_prompts = set()
    if key in checked:
        return
    if portable:
        head = prompt  # stock ST: prompt + text
    else:
        wrap = (lambda text: render(encoder, text)) if encoder.chat_template else None
        formatted = format_text("x", prompt, wrap, encoder.text_suffix)
        head = formatted.full[: len(formatted.full) - len(formatted.text_part)]
    length = len(encoder.tokenizer(head.rstrip())["input_ids"])
    if length >= max_length:
        name = "max_seq_length" if max_length == encoder.max_seq_length else "max_length"
        wrapper = ", chat template" if encoder.chat_template and not portable else ""
        raise InputError(
            f"The prompt is {length} tokens long (with special tokens{wrapper}) and {name} is {max_length}: "
            "no token of the text would be encoded, so every text would get the same embedding. Shorten the "
            f"prompt, or raise max_seq_length (model.max_seq_length = {length + 64}, within the model's context)."
        )
    checked.add(key)


def special_tokens_added(encoder: Any) -> int | None:
    """How many tokens the tokenizer adds around one text, if that is the same for every text.

    Then, for a text tokenized without truncation, len(with specials) - this = len(without), so
    llm2vec's second tokenization (of the text part alone) is redundant when the text part is
    the whole string. Measured once per tokenizer on a few probe strings (None: not constant).
    """
    tokenizer = encoder.tokenizer
    cached = getattr(encoder, "_special_count_cache", None)
    if cached is not None and cached[0] is tokenizer:
        return cached[1]
    probes = ["", " ", "a", "Two dogs run.", "  leading spaces and UPPER case 12345 émoji 🙂", tokenizer.eos_token or ""]
    with_special = tokenizer(probes, add_special_tokens=True)["input_ids"]
    without = tokenizer(probes, add_special_tokens=False)["input_ids"]
    added = {len(a) - len(b) for a, b in zip(with_special, without)}
    count = added.pop() if len(added) == 1 else None
    if count is not None:
        # the content tokens must sit unchanged at one fixed offset (specials before / after them)
        offsets = set()
        for a, b in zip(with_special, without):
            if b:
                found = [k for k in range(count + 1) if a[k : k + len(b)] == b]
                offsets.add(found[0] if found else -1)
        if len(offsets) > 1 or -1 in offsets:
            count = None
    encoder._special_count_cache = (tokenizer, count)
    return count


def tokenize(encoder: Any, inputs: Sequence[str], prompt: str | None, max_length: int | None) -> Tokenized:
    """The encoder's tokenization of ``inputs`` (with an optional instruction ``prompt``), unpadded.

    In the exact format, the text-part length N is llm2vec's ``len(tokenize(text_part, add_special_tokens=False))``,
    exactly: without an instruction, wrapper or suffix the text part is the whole string and N is
    read off the full tokenization (rows cut by ``max_length`` are re-tokenized); otherwise the
    text parts are tokenized in one batched call.
    """
    tokenizer = encoder.tokenizer
    texts = list(inputs)
    if encoder.format == PORTABLE:
        return _tokenize_stock(tokenizer, texts, prompt, max_length)
    if encoder.doc_max_length is not None:
        texts = [truncate_words(text, encoder._count_tokens, encoder.doc_max_length) for text in texts]
    plain = not prompt and not encoder.chat_template and encoder.text_suffix is None
    if plain:
        full, text_parts = texts, texts
    else:
        wrap = (lambda text: render(encoder, text)) if encoder.chat_template else None
        formatted = [format_text(text, prompt, wrap, encoder.text_suffix) for text in texts]
        full = [f.full for f in formatted]
        text_parts = [f.text_part for f in formatted]
    ids = tokenizer(full, truncation=True, max_length=max_length)["input_ids"]
    empty = [i for i, row in enumerate(ids) if not row]
    if empty:
        # A text that tokenizes to nothing (e.g. "" without BOS) is encoded as the EOS token alone.
        eos = tokenizer([tokenizer.eos_token] * len(empty), truncation=True, max_length=max_length)["input_ids"]
        for i, row in zip(empty, eos):
            ids[i] = row
    added = special_tokens_added(encoder) if plain else None
    if added is not None:
        empty_set = set(empty)
        lengths = [0 if i in empty_set else len(row) - added for i, row in enumerate(ids)]
        limit = max_length if max_length is not None else tokenizer.model_max_length
        cut = [i for i, row in enumerate(ids) if len(row) >= limit and i not in empty_set]
        if cut:  # truncated rows: the text alone is truncated differently (no room kept for specials)
            again = tokenizer(
                [text_parts[i] for i in cut], add_special_tokens=False, truncation=True, max_length=max_length
            )["input_ids"]
            for i, row in zip(cut, again):
                lengths[i] = len(row)
    else:
        parts = tokenizer(text_parts, add_special_tokens=False, truncation=True, max_length=max_length)
        lengths = [len(row) for row in parts["input_ids"]]
    return Tokenized(ids, lengths, None)


def _tokenize_stock(tokenizer: Any, texts: list[str], prompt: str | None, max_length: int | None) -> Tokenized:
    """Stock ST's tokenization and pooling (the portable format, see ``portable.py``): ``prompt + text`` as
    given; pooled: every token after the prompt (``Pooling(include_prompt=False)``, which skips the first
    ``prompt_length`` tokens, counted as ST counts them), and of a text without a prompt every token but a
    leading BOS (``WordWeights`` with BOS weight 0). With a prompt, each row also gets the divisor of its
    mean, as stock computes it: with that BOS weighting the weights of the whole row, the prompt's tokens
    included (``WordWeights`` + ``Pooling``); and a text the prompt leaves no token of pools to zeros."""
    full = [prompt + text for text in texts] if prompt else texts
    ids = tokenizer(full, truncation=True, max_length=max_length)["input_ids"]
    for i, row in enumerate(ids):
        if not row:  # only possible without BOS: encoded as the EOS token alone, as in the exact format
            ids[i] = tokenizer([tokenizer.eos_token], truncation=True, max_length=max_length)["input_ids"][0]
    bos = tokenizer.bos_token_id
    weighted = [len(row) - (1 if bos is not None and row[0] == bos else 0) for row in ids]
    if not prompt:
        return Tokenized(ids, weighted, None)
    skip = stock_prompt_length(tokenizer, prompt, max_length)
    pooled = [max(len(row) - skip, 0) for row in ids]
    empty = [text for text, n in zip(texts, pooled) if n == 0 and text]
    if empty and (prompt, empty[0]) not in _WARNED_EMPTY:
        _WARNED_EMPTY.add((prompt, empty[0]))
        logger.warning(
            "%d text(s) such as %r keep no token after the prompt %r: in context the text's first token holds the "
            "prompt's trailing space, and stock sentence-transformers (include_prompt=False) pools nothing for it, "
            "a zero vector. Rephrase the prompt so it ends with a character that does not merge (e.g. a newline).",
            len(empty), empty[0], prompt,
        )
    uses_word_weights = bos is not None and any(row[0] == bos for row in ids)
    return Tokenized(ids, pooled, weighted if uses_word_weights else pooled)
