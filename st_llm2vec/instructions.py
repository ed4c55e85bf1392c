"""llm2vec 0.2.3 prompt semantics: how an (instruction, text) pair becomes one string, and which tokens
of it are pooled.

llm2vec joins ``instruction.strip() + " " + text``, optionally wraps the whole string in an instruct
model's chat format and appends an EOS suffix for ``eos_token`` pooling, and pools only the text part:
the last N tokens, N being the length of the text part (with any wrapper suffix) tokenized alone.
ST has no notion of this (its ``prompt_length`` counts from the left), so it is reproduced here.
"""

from __future__ import annotations

from dataclasses import dataclass

# A private-use character marks where the text starts inside the formatted string; llm2vec uses
# "!@#$%^&*()" for the same purpose, which breaks on texts that contain it.
_TEXT_START = "\ue000"

# llm2vec picks these wrappers by ``config._name_or_path`` (prepare_for_tokenization). They are kept
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

POOLING_MODES = ("mean", "weighted_mean", "eos_token", "bos_token")
POOLING_ALIASES = {"last_token": "eos_token", "weightedmean": "weighted_mean", "lasttoken": "eos_token"}


def normalize_pooling_mode(mode: str) -> str:
    """Canonical pooling name, or a ValueError listing the valid ones."""
    mode = POOLING_ALIASES.get(mode, mode)
    if mode not in POOLING_MODES:
        raise ValueError(
            f"Unknown pooling mode {mode!r}; choose one of {', '.join(POOLING_MODES)} (or the alias 'last_token')."
        )
    return mode


def llm2vec_chat_template(name_or_path: str | None) -> str | None:
    """The instruct wrapper llm2vec applies for this original model name, if any."""
    return LLM2VEC_CHAT_TEMPLATES.get(name_or_path or "")


def llm2vec_text_suffix(
    model_type: str, name_or_path: str | None, pooling_mode: str, eos_token: str | None
) -> str | None:
    """The suffix llm2vec appends for eos_token pooling; other models get their own EOS token."""
    if normalize_pooling_mode(pooling_mode) != "eos_token":
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
    """Join instruction and text exactly as llm2vec does; ``render_template(str) -> str`` wraps it."""
    joined = f"{instruction.strip()} {_TEXT_START}{text}" if instruction else f"{_TEXT_START}{text}"
    if render_template is not None:
        joined = render_template(joined)
    if text_suffix is not None:
        joined = joined.strip() + text_suffix
    head, _, tail = joined.partition(_TEXT_START)
    return FormattedText(full=head + tail, text_part=tail)


def truncate_words(text: str, count_tokens, doc_max_length: int | None) -> str:
    """llm2vec's ``doc_max_length``: drop trailing words until the text has at most that many tokens."""
    # No tokenizer splits text into more tokens than UTF-8 bytes (+ a prefix-space token), so short
    # texts, the usual case, skip the extra tokenization llm2vec does for every text.
    if doc_max_length is None or len(text.encode("utf-8")) + 2 <= doc_max_length:
        return text
    length = count_tokens(text)
    while length > doc_max_length:
        words = text.split()
        text = " ".join(words[: int(len(words) * doc_max_length / length)])
        length = count_tokens(text)
    return text
