"""llm2vec's pooling as an ST module.

Written by hand because ST's ``Pooling`` cannot express llm2vec's semantics: its ``weightedmean``
numbers positions from the start of the padded row (llm2vec numbers the pooled tokens 1..N), it has
no ``bos_token`` mode, and ``include_prompt=False`` drops a prefix counted from the left, whereas
llm2vec pools the last N tokens (text part plus any wrapper suffix). The encoder supplies that
selection as ``embed_mask``; everything here is vectorised (llm2vec loops over rows in Python).
"""

from __future__ import annotations

from typing import Any

import torch
from sentence_transformers.base.modules.module import Module

from .encoder import EMBED_MASK
from .instructions import normalize_pooling_mode


class LLM2VecPooling(Module):
    """Pool token embeddings into a sentence embedding: mean, weighted_mean, eos_token or bos_token.

    ``skip_instruction`` (llm2vec's default) pools only the text tokens; without it, every attended
    token. A row whose text part is empty falls back to all its attended tokens.
    """

    config_keys: list[str] = ["embedding_dimension", "pooling_mode", "skip_instruction"]
    config_file_name: str = "config.json"

    def __init__(self, embedding_dimension: int, pooling_mode: str = "mean", skip_instruction: bool = True) -> None:
        super().__init__()
        self.embedding_dimension = embedding_dimension
        self.pooling_mode = normalize_pooling_mode(pooling_mode)
        self.skip_instruction = skip_instruction

    def get_embedding_dimension(self) -> int:
        return self.embedding_dimension

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        tokens = features["token_embeddings"]
        attention_mask = features["attention_mask"]
        if self.pooling_mode == "eos_token":
            # the last attended position (with left padding: the last column)
            width = attention_mask.shape[1]
            last = width - 1 - attention_mask.flip(1).argmax(dim=1)
            pooled = tokens[torch.arange(tokens.shape[0], device=tokens.device), last]
        elif self.pooling_mode == "bos_token":
            first = attention_mask.argmax(dim=1)
            pooled = tokens[torch.arange(tokens.shape[0], device=tokens.device), first]
        else:
            mask = features.get(EMBED_MASK) if self.skip_instruction else None
            if mask is None:
                mask = attention_mask
            else:
                empty = mask.sum(dim=1, keepdim=True) == 0
                mask = torch.where(empty, attention_mask, mask)
            mask = mask.to(tokens.dtype)
            if self.pooling_mode == "weighted_mean":
                # weights 1..N over the pooled tokens, counted within the row (left padding safe)
                mask = mask.cumsum(dim=1) * mask
            weights = mask / mask.sum(dim=1, keepdim=True).clamp_min(1e-9)
            pooled = torch.einsum("bs,bsd->bd", weights, tokens)
        features["sentence_embedding"] = pooled
        return features

    def save(self, output_path: str, *args: Any, **kwargs: Any) -> None:
        """Only a config: the module has no weights."""
        self.save_config(output_path)
