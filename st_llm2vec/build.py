"""``from_llm``: one call from a causal-LM checkpoint to a bidirectional ST embedding model."""

from __future__ import annotations

import json
import os
from typing import Any

from sentence_transformers import SentenceTransformer

from .encoder import LLM2VecTransformer
from .instructions import llm2vec_chat_template, llm2vec_text_suffix, normalize_pooling_mode
from .pooling import LLM2VecPooling

AUTO = "auto"


def original_name_or_path(model_name_or_path: str) -> str | None:
    """``_name_or_path`` as written in config.json: llm2vec keys its instruct wrappers on it.

    transformers overwrites ``config._name_or_path`` with the load path, so read the file itself.
    """
    path = os.path.join(model_name_or_path, "config.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f).get("_name_or_path") or None
    return model_name_or_path  # a Hub id names itself


def from_llm(
    model_name_or_path: str,
    pooling_mode: str = "mean",
    *,
    skip_instruction: bool = True,
    max_seq_length: int | None = 512,
    doc_max_length: int | None = 400,
    chat_template: str | None = AUTO,
    text_suffix: str | None = AUTO,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
    bidirectional: bool = True,
    max_batch_tokens: int | None = None,
    device: str | None = None,
    **model_kwargs: Any,
) -> SentenceTransformer:
    """Load a decoder LLM as a bidirectional ``SentenceTransformer`` with llm2vec pooling.

    Defaults follow llm2vec 0.2.3 (``max_length`` 512, ``doc_max_length`` 400, ``skip_instruction``).
    ``chat_template`` / ``text_suffix`` = "auto" apply llm2vec's instruct wrapper and eos suffix for the
    model; pass None to turn them off or a string to set them. Extra kwargs (``dtype``,
    ``attn_implementation``, …) reach the HF loader. ``bidirectional=False`` keeps the model causal
    (a baseline, or llm2vec's causal Qwen2). ``max_batch_tokens`` caps the tokens of one backbone call
    (token-budget batching; see ``LLM2VecTransformer``). Raises ``BidirectionalityError`` for a model that
    cannot be made bidirectional.
    """
    pooling_mode = normalize_pooling_mode(pooling_mode)
    name = original_name_or_path(model_name_or_path)
    encoder = LLM2VecTransformer(
        model_name_or_path,
        doc_max_length=doc_max_length,
        chat_template=llm2vec_chat_template(name) if chat_template == AUTO else chat_template,
        max_seq_length=max_seq_length,
        bidirectional=bidirectional,
        max_batch_tokens=max_batch_tokens,
        model_kwargs=model_kwargs,
    )
    if text_suffix == AUTO:
        text_suffix = llm2vec_text_suffix(encoder.config.model_type, name, pooling_mode, encoder.tokenizer.eos_token)
    encoder.text_suffix = text_suffix
    if pooling_mode == "bos_token" and not _adds_bos(encoder):
        raise ValueError(
            f"pooling_mode='bos_token' needs a tokenizer that starts every input with a BOS token; "
            f"{model_name_or_path!r} adds none. Use 'mean', 'weighted_mean' or 'eos_token'."
        )

    pooling = LLM2VecPooling(encoder.get_embedding_dimension(), pooling_mode, skip_instruction)
    return SentenceTransformer(
        modules=[encoder, pooling], prompts=prompts, default_prompt_name=default_prompt_name, device=device
    )


def _adds_bos(encoder: LLM2VecTransformer) -> bool:
    tokenizer = encoder.tokenizer
    ids = tokenizer("a")["input_ids"]
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id
