"""What loading an encoder refuses, with the fix in the message: a path that cannot hold a checkpoint, unreadable
files, a ``sentence_bert_config.json`` with unknown keys or bad values, a tokenizer llm2vec's tokenization cannot
use, a chat template that does not render the text once.

Checked before any weight loads where the files allow it, so a bad input costs seconds, not a model load.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..errors import InputError, MissingFileError
from ..model_files import check_safetensors, looks_like_hub_id

logger = logging.getLogger(__name__)

# Keys of sentence_bert_config.json that __init__ does not name but ST's loader maps (old names).
LEGACY_CONFIG_KEYS = {"model_args", "tokenizer_args", "config_args", "cache_dir"}


class CheckedSetting:
    """An encoder setting that is checked whenever it is set (``check(encoder, value)`` raises for a bad value), so a
    bad value is refused where it is given, not at the next ``encode``."""

    def __init__(self, check: Callable[[Any, Any], None]) -> None:
        self.check = check

    def __set_name__(self, owner: type, name: str) -> None:
        self.attribute = f"_{name}"

    def __get__(self, encoder: Any, owner: type | None = None) -> Any:
        return self if encoder is None else getattr(encoder, self.attribute)

    def __set__(self, encoder: Any, value: Any) -> None:
        self.check(encoder, value)
        setattr(encoder, self.attribute, value)


def check_positive(name: str, value: Any, none_means: str) -> None:
    """``value`` is a positive int or None (``none_means`` says what None does)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InputError(f"{name} must be a positive int or None ({none_means}), got {value!r}")


def check_loadable(model_name_or_path: str) -> None:
    """A local directory must hold a transformers config (or a PEFT adapter naming its base) and
    readable safetensors; a path that cannot be a Hub id must exist."""
    path = os.path.expanduser(model_name_or_path)
    if os.path.isfile(path):
        raise InputError(
            f"{model_name_or_path!r} is a file; pass the directory that holds the checkpoint (config.json, "
            "weights and tokenizer files), or a Hub id."
        )
    if not os.path.isdir(path):
        if not looks_like_hub_id(str(model_name_or_path)):
            raise MissingFileError(
                f"{model_name_or_path!r} does not exist (looked relative to {os.getcwd()!r}): pass an existing "
                "checkpoint directory or a Hugging Face Hub id such as 'owner/name' — offline, SmolLM2-135M-Instruct: "
                '"$(st-llm2vec fetch-smollm2 --quiet)"'
            )
        return
    if os.path.isdir(model_name_or_path):
        names = ("config.json", "adapter_config.json")
        if not any(os.path.isfile(os.path.join(model_name_or_path, n)) for n in names):
            raise MissingFileError(
                f"{model_name_or_path!r} has no config.json: expected a Hugging Face causal-LM checkpoint "
                "directory (config.json + safetensors weights + tokenizer), a PEFT adapter directory, "
                "or a model saved by st_llm2vec."
            )
        for name in sorted(os.listdir(path)):
            if name.endswith(".safetensors"):
                check_safetensors(os.path.join(path, name))  # header and size: truncated / garbage files


def load_error(model_name_or_path: str, exc: Exception) -> Exception | None:
    """After ST's loader raised ``exc``: the error that names the cause (a missing local dir and a failed Hub
    lookup, or a JSON file of the dir that does not parse), or None to let ``exc`` through."""
    directory = os.path.expanduser(model_name_or_path)
    if isinstance(exc, OSError) and not os.path.isdir(directory):
        return MissingFileError(
            f"{model_name_or_path!r} is not a local directory (looked relative to {os.getcwd()!r}), and "
            f"loading it as a Hugging Face Hub id failed: {exc}"
        )
    if not os.path.isdir(directory):
        return None
    for name in sorted(os.listdir(directory)):
        file = os.path.join(directory, name)
        if name.endswith(".json") and os.path.isfile(file):
            try:
                with open(file, encoding="utf-8") as f:
                    json.load(f)
            except (ValueError, UnicodeDecodeError) as error:
                return InputError(f"{file} is not valid JSON ({error}); restore it from the original checkpoint or "
                                  "re-save the model.")
    return None


def check_saved_config(config: Mapping[str, Any], where: str, allowed: Iterable[str], config_keys: Iterable[str]) -> None:
    """A saved ``sentence_bert_config.json`` (read from ``where``): only ``allowed`` keys (and ST's old names), each
    value of its type; a warning when it keeps the model causal."""
    allowed = (set(allowed) | LEGACY_CONFIG_KEYS) - {"self", "model_name_or_path", "args", "kwargs"}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise InputError(
            f"{where}: unknown key(s) {unknown} (a typo, or a file written by a newer st_llm2vec?). "
            f"Valid keys: {sorted(config_keys)}. Remove or rename them."
        )
    try:
        check_positive("doc_max_length", config.get("doc_max_length"), "no truncation")
        check_positive("max_batch_tokens", config.get("max_batch_tokens"), "no budget")
        check_positive("max_seq_length", config.get("max_seq_length"), "the tokenizer's model_max_length")
        for key in ("chat_template", "text_suffix"):
            if config.get(key) is not None and not isinstance(config[key], str):
                raise InputError(f"{key} must be a string or null, got {config[key]!r}")
        if not isinstance(config.get("bidirectional", True), bool):
            raise InputError(f"bidirectional must be true or false, got {config['bidirectional']!r}")
    except ValueError as exc:
        raise InputError(f"{where}: {exc}") from None
    if config.get("bidirectional") is False:
        logger.warning(
            f'{where} has "bidirectional": false, so this model loads causal (every token sees only the tokens '
            "before it), as from_llm(..., bidirectional=False) saves it. If that is not intended, set it to true."
        )


def check_eos_and_length(tokenizer: Any, limit: Any, model_name_or_path: str) -> None:
    """An EOS token (llm2vec pads with it and encodes empty texts as it) and a positive length limit."""
    files = os.path.join(model_name_or_path, "tokenizer_config.json")
    if tokenizer.eos_token is None:
        raise InputError(
            f"The tokenizer of {model_name_or_path!r} has no EOS token: st_llm2vec pads with EOS (as llm2vec) "
            f"and encodes empty texts as EOS. Set \"eos_token\" in {files} (the model's end-of-text token)."
        )
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise InputError(
            f"max_seq_length is {limit!r} (the tokenizer's model_max_length): set \"model_max_length\" in {files} "
            "to a positive int, or pass max_seq_length=<positive int>."
        )


def check_chat_template_setting(encoder: Any, template: Any) -> None:
    """A chat template is a string (or None) that renders the message content exactly once, once the tokenizer is there."""
    if template is not None and not isinstance(template, str):
        raise InputError(f"chat_template must be a Jinja template string or None, got {template!r}")
    if template is not None and getattr(encoder, "processor", None) is not None and encoder.tokenizer is not None:
        check_chat_template(encoder.tokenizer, template)


def check_chat_template(tokenizer: Any, template: str) -> None:
    """A chat template must render, with the message content in it exactly once."""
    try:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": "\ue000"}], chat_template=template, tokenize=False
        )
    except Exception as exc:
        raise InputError(f"chat_template does not render ({type(exc).__name__}: {exc}); fix it or pass None.") from exc
    if rendered.count("\ue000") != 1:
        raise InputError(
            "chat_template must contain the message content exactly once (e.g. \"[INST] {{ messages[0]['content'] "
            f"| trim }} [/INST]\"); this one renders it {rendered.count(chr(0xE000))} times. Fix it or pass None."
        )
