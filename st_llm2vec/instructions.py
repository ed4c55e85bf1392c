"""How an (instruction, text) pair becomes one string, and which tokens of it are pooled, in each of the two
formats: ``exact`` (llm2vec 0.2.3's semantics) and ``portable`` (stock sentence-transformers' prompts).

llm2vec joins ``instruction.strip() + " " + text``, optionally wraps the whole string in an instruct
model's chat format and appends an EOS suffix for ``eos_token`` pooling, and pools only the text part:
the last N tokens, N being the length of the text part (with any wrapper suffix) tokenized alone.
ST has no notion of this (its ``prompt_length`` counts from the left), so it is reproduced here. The portable
format stores each instruction as a stock prompt (:func:`stored_prompt`) that stock code prepends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    from .pooling_modes import PoolingMode

# llm2vec marks where the text starts with the separator "!@#$%^&*()" and splits on it afterwards,
# which breaks on inputs that contain it. We split structurally instead (``format_text``); only a chat
# template, which is opaque, is rendered once on a marker chosen absent from the instruction and the
# text, and checked to come out exactly once.
_MARKER_CANDIDATES = tuple(chr(c) for c in range(0xE000, 0xE040))

# The two formats (``LLM2VecTransformer.format``; how ``save`` writes a model, see ``portable.py``) and "auto".
PORTABLE, EXACT, AUTO = "portable", "exact", "auto"
FORMATS = (AUTO, PORTABLE, EXACT)

# llm2vec picks these wrappers by ``config.name_or_path`` (prepare_for_tokenization). They are kept
# as chat templates so a user can also give their own.
LLM2VEC_CHAT_TEMPLATES: dict[str, str] = {
    "meta-llama/Meta-Llama-3-8B-Instruct": (
        "<|start_header_id|>user<|end_header_id|>\n\n{{ messages[0]['content'] | trim }}<|eot_id|>"
    ),
    "mistralai/Mistral-7B-Instruct-v0.2": "[INST] {{ messages[0]['content'] | trim }} [/INST]",
    "meta-llama/Llama-2-7b-chat-hf": "[INST] {{ messages[0]['content'] | trim }} [/INST]",
    "google/gemma-2-9b-it": "<bos><start_of_turn>user\n{{ messages[0]['content'] | trim }}<end_of_turn>",
    "Qwen/Qwen2-1.5B-Instruct": "<|im_start|>user\n{{ messages[0]['content'] | trim }}<|im_end|>",
    "Qwen/Qwen2-7B-Instruct": "<|im_start|>user\n{{ messages[0]['content'] | trim }}<|im_end|>",
}

# llm2vec appends these for eos_token pooling, by config class (Llama-3 base by name).
_LLM2VEC_EOS_SUFFIX_BY_TYPE = {"llama": " </s>", "mistral": " </s>", "gemma": "<eos>", "qwen2": "<|endoftext|>"}

# The feature marking the tokens to pool (the text part): written by the encoder, read by pooling.
EMBED_MASK = "embed_mask"
# Per row, what a mean divides by where that is not the number of pooled tokens: stock ST's WordWeights
# (the portable format's BOS exclusion) divides by the weights of every attended token, an excluded
# instruction's too. Same name and meaning as the feature WordWeights writes.
TOKEN_WEIGHTS_SUM = "token_weights_sum"
# Features for pooling only: the encoder keeps them away from the HF model's forward.
POOLING_FEATURES = (EMBED_MASK, TOKEN_WEIGHTS_SUM)


def stored_prompt(instruction: str) -> str:
    """An llm2vec instruction as a stock ST prompt: ``prompt + text`` == ``instruction.strip() + " " + text``."""
    stripped = instruction.strip()
    return f"{stripped} " if stripped else ""


def prompt_for(model, instruction: str | None) -> str | None:
    """What to pass as ``prompt=`` for an llm2vec ``instruction``: the stock prompt unless the model is ours
    in the exact format (a stock-loaded model is portable)."""
    if instruction and getattr(model[0], "format", PORTABLE) == PORTABLE:
        return stored_prompt(instruction)
    return instruction


def stock_prompt_length(tokenizer, prompt: str, max_length: int | None = None) -> int:
    """How many leading tokens stock ST's ``Pooling(include_prompt=False)`` skips for ``prompt``: the prompt
    tokenized alone, less a trailing special token (``Transformer._get_prompt_length``)."""
    ids = tokenizer([prompt], truncation=max_length is not None, max_length=max_length)["input_ids"][0]
    special = set(getattr(tokenizer, "all_special_ids", None) or ())
    return len(ids) - (1 if ids and ids[-1] in special else 0)


def llm2vec_chat_template(name_or_path: str | None) -> str | None:
    """The instruct wrapper llm2vec applies for this original model name, if any."""
    return LLM2VEC_CHAT_TEMPLATES.get(name_or_path or "")


def llm2vec_text_suffix(
    model_type: str, name_or_path: str | None, mode: PoolingMode, eos_token: str | None
) -> str | None:
    """The suffix llm2vec appends for eos_token pooling; other models get their own EOS token."""
    if not mode.eos_suffix:
        return None
    if name_or_path == "meta-llama/Meta-Llama-3-8B-Instruct":
        return None  # llm2vec returns early after the Llama-3 instruct wrapper
    if name_or_path == "meta-llama/Meta-Llama-3-8B":
        return "<|end_of_text|>"
    suffix = _LLM2VEC_EOS_SUFFIX_BY_TYPE.get(model_type)
    if suffix is not None and (eos_token is None or suffix.strip() == eos_token):
        return suffix
    # e.g. SmolLM2 is a Llama whose EOS is <|im_end|>: llm2vec's " </s>" would be plain text there
    return eos_token


@dataclass(frozen=True)
class FormattedText:
    """What the model sees (``full``) and the part whose tokens are pooled (``text_part``)."""

    full: str
    text_part: str


def format_text(
    text: str,
    instruction: str | None,
    render_template=None,
    text_suffix: str | None = None,
) -> FormattedText:
    """Join instruction and text exactly as llm2vec does; ``render_template(str) -> str`` wraps it.

    llm2vec builds ``instruction.strip() + " " + SEP + text``, wraps and strips that string, appends
    the suffix and pools what follows SEP. Here the split is computed without any separator character,
    so instructions and texts may contain any character: without a template from the known parts
    (``strip`` stops at the text's start, as at llm2vec's non-blank separator); with a template by
    rendering it on a marker absent from the inputs (see :func:`_render_around_text`).
    """
    head = f"{instruction.strip()} " if instruction else ""
    if render_template is None:
        if text_suffix is None:
            return FormattedText(full=head + text, text_part=text)
        part = text.rstrip() + text_suffix
        return FormattedText(full=head.lstrip() + part, text_part=part)
    before, after = _render_around_text(head, text, render_template, text_suffix is not None)
    part = after + text_suffix if text_suffix is not None else after
    return FormattedText(full=before + part, text_part=part)


def _render_around_text(head: str, text: str, render_template, strip: bool) -> tuple[str, str]:
    """``render_template(head + text)`` split where the text starts: (before, text part)."""
    for marker in _MARKER_CANDIDATES:
        if marker not in head and marker not in text:
            break
    else:  # 64 distinct private-use characters all present: fall back to a long unique marker
        marker = "\ue000st_llm2vec_text_start\ue000"
        while marker in head or marker in text:
            marker += "\ue000"
    rendered = render_template(head + marker + text)
    if strip:
        rendered = rendered.strip()
    if rendered.count(marker) != 1:
        raise InputError(
            "chat_template must contain the message content exactly once, unchanged (e.g. "
            "\"[INST] {{ messages[0]['content'] | trim }} [/INST]\"); this one renders it "
            f"{rendered.count(marker)} times. Fix the template or pass chat_template=None."
        )
    before, _, after = rendered.partition(marker)
    return before, after


def truncate_words(text: str, count_tokens, doc_max_length: int | None) -> str:
    """llm2vec's ``doc_max_length``: drop trailing words until the text has at most that many tokens.

    Where llm2vec's word truncation is not well defined — the cut keeps under half the budget because a
    word-less run (Chinese, Japanese, Thai, a URL, code) straddles the limit, which llm2vec turns into
    the empty string or a few words, so that different texts get the same embedding — the text is cut by
    tokens instead: the longest prefix with at most ``doc_max_length`` tokens. Spaced text is truncated
    as llm2vec does.
    """
    if doc_max_length is None:
        return text
    if isinstance(doc_max_length, bool) or not isinstance(doc_max_length, int) or doc_max_length < 1:
        raise InputError(f"doc_max_length must be a positive int or None (no truncation), got {doc_max_length!r}")
    # No tokenizer splits text into more tokens than UTF-8 bytes (+ a prefix-space token), so short
    # texts, the usual case, skip the extra tokenization llm2vec does for every text.
    if len(text.encode("utf-8")) + 2 <= doc_max_length:
        return text
    original = text
    length = count_tokens(text)
    if length <= doc_max_length:
        return text
    while length > doc_max_length:
        words = text.split()
        text = " ".join(words[: int(len(words) * doc_max_length / length)])
        length = count_tokens(text)
    if length < doc_max_length // 2 and original.strip():
        # the words cut away held more than half the budget (an unspaced run: "a <2,000 CJK characters>"
        # would become "a", or ""): llm2vec's cut is not well defined here; keep the token prefix instead
        return _token_prefix(original, count_tokens, doc_max_length)
    return text


def _token_prefix(text: str, count_tokens, limit: int) -> str:
    """The longest character prefix of ``text`` with at most ``limit`` tokens (binary search)."""
    low, high = 0, len(text)  # count_tokens(text[:low]) <= limit < count_tokens(text[:high])
    while high - low > 1:
        middle = (low + high) // 2
        if count_tokens(text[:middle]) <= limit:
            low = middle
        else:
            high = middle
    return text[:low]
