"""llm2vec's pooling as an ST module.

Written by hand because ST's ``Pooling`` cannot express llm2vec's semantics: its ``weightedmean``
numbers positions from the start of the padded row (llm2vec numbers the pooled tokens 1..N), it has
no ``bos_token`` mode, and ``include_prompt=False`` drops a prefix counted from the left, whereas
llm2vec pools the last N tokens (text part plus any wrapper suffix). The encoder supplies that
selection as ``embed_mask``; everything here is vectorised (llm2vec loops over rows in Python).
Rows arrive padded on either side (the encoder unpacks a packed batch, see ``packing.py``), and
pooling reads positions only through the masks, so either layout pools the same.

Token-level outputs in ``encode`` (inside ``torch.inference_mode``): rows are laid out right-padded
(each text's own tokens first, then zeros), on the padded and the packed path alike (the encoder
unpacks straight into this layout), so that ST's ``encode(output_value="token_embeddings")``, which
cuts each row after its last attended position, returns each text's own tokens only, as for a stock
model. Outside ``encode`` (training, direct ``model(features)`` calls) the left-padded layout of the
inputs is kept.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from sentence_transformers.base.modules.module import Module

from .encoder import LLM2VecTransformer
from .instructions import EMBED_MASK, TOKEN_WEIGHTS_SUM
from .modes import check_tokenizer, normalize_pooling_mode
from .errors import InputError, MissingFileError


class LLM2VecPooling(Module):
    """Pool token embeddings into a sentence embedding: mean, weighted_mean, eos_token or bos_token.

    ``skip_instruction`` (llm2vec's default) pools only the text tokens; without it, every attended
    token. A row whose text part is empty falls back to all its attended tokens.
    """

    config_keys: list[str] = ["embedding_dimension", "pooling_mode", "skip_instruction"]
    config_file_name: str = "config.json"

    def __init__(self, embedding_dimension: int, pooling_mode: str = "mean", skip_instruction: bool = True) -> None:
        super().__init__()
        if isinstance(embedding_dimension, bool) or not isinstance(embedding_dimension, int) or embedding_dimension < 1:
            raise InputError(f"embedding_dimension must be a positive int, got {embedding_dimension!r}")
        if not isinstance(skip_instruction, bool):
            raise InputError(f"skip_instruction must be true or false, got {skip_instruction!r}")
        self.embedding_dimension = embedding_dimension
        self.pooling_mode = normalize_pooling_mode(pooling_mode)
        self.skip_instruction = skip_instruction

    def get_embedding_dimension(self) -> int:
        return self.embedding_dimension

    @classmethod
    def load_config(cls, model_name_or_path: str, subfolder: str = "", config_filename: str | None = None, **kwargs: Any):
        """ST's loader, plus errors naming the file for invalid JSON and unknown keys."""
        where = os.path.join(model_name_or_path, subfolder, config_filename or cls.config_file_name)
        try:
            config = super().load_config(model_name_or_path, subfolder=subfolder, config_filename=config_filename, **kwargs)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{where} is not valid JSON ({exc}); fix it or re-save the model.") from exc
        if not config:
            raise MissingFileError(f"{where} is missing or empty: it holds the pooling settings. Restore it or re-save the model.")
        unknown = sorted(set(config) - set(cls.config_keys))
        if unknown:
            raise InputError(f"{where}: unknown key(s) {unknown}; valid keys: {cls.config_keys}. Remove or rename them.")
        return config

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", *args: Any, **kwargs: Any) -> LLM2VecPooling:
        """ST's loader; bad values are reported with the file they came from."""
        where = os.path.join(model_name_or_path, subfolder, cls.config_file_name)
        try:
            module = super().load(model_name_or_path, subfolder, *args, **kwargs)
        except ValueError as exc:
            if where in str(exc):
                raise
            raise InputError(f"{where}: {exc}") from None
        module.config_path = where
        return module

    def on_model_ready(self, model: Any) -> None:
        """The pooled size must be the backbone's hidden size (a hand-edited config would be believed)."""
        modules = list(model._modules.values())
        position = next((i for i, module in enumerate(modules) if module is self), 0)
        backbone = next((m for m in reversed(modules[:position]) if isinstance(m, LLM2VecTransformer)), None)
        if backbone is None:
            return
        hidden = backbone.get_embedding_dimension()
        where = getattr(self, "config_path", None) or "LLM2VecPooling"
        if hidden != self.embedding_dimension:
            raise InputError(
                f"{where}: embedding_dimension is {self.embedding_dimension} but the backbone's hidden size is "
                f"{hidden}, and pooling does not change the size. Set embedding_dimension to {hidden}."
            )
        if backbone.tokenizer is not None:
            check_tokenizer(self.pooling_mode, backbone.tokenizer, where)

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
            # given: the portable format's stock divisor (see the encoder's _tokenize_stock)
            divisor = features.get(TOKEN_WEIGHTS_SUM) if self.skip_instruction else None
            if mask is None:
                mask = attention_mask
            elif divisor is None:  # llm2vec: a row without text tokens pools all its tokens
                empty = mask.sum(dim=1, keepdim=True) == 0
                mask = torch.where(empty, attention_mask, mask)
            # As ST's Pooling: weights and sums in float32 under half precision (1/N, and weights 1..N
            # past 256, are not exact in bf16), the embedding in the model's dtype. llm2vec's fixtures
            # are float32, where nothing changes.
            accumulate = torch.float32 if tokens.dtype in (torch.float16, torch.bfloat16) else tokens.dtype
            mask = mask.to(accumulate)
            if self.pooling_mode == "weighted_mean":
                # weights 1..N over the pooled tokens, counted within the row (either padding side)
                mask = mask.cumsum(dim=1) * mask
            divisor = mask.sum(dim=1, keepdim=True) if divisor is None else divisor.to(accumulate).unsqueeze(1)
            weights = mask / divisor.clamp_min(1e-9)
            pooled = torch.einsum("bs,bsd->bd", weights, tokens.to(accumulate)).to(tokens.dtype)
        features["sentence_embedding"] = pooled
        if torch.is_inference_mode_enabled():
            _right_align(features)
        return features

    def save(self, output_path: str, *args: Any, **kwargs: Any) -> None:
        """Only a config: the module has no weights."""
        self.save_config(output_path)


def _right_align(features: dict[str, Any]) -> None:
    """Padded ``(batch, width, …)`` token-level features re-laid out right-padded: each row's attended
    positions first, in order, then padding (zeros in ``token_embeddings``)."""
    attention_mask = features["attention_mask"]
    if not bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any()):
        return  # no attended position after a padding one: right-padded already (or no padding)
    rows, width = attention_mask.shape
    order = torch.argsort((attention_mask == 0).to(torch.int8), dim=1, stable=True)  # attended first
    keep = torch.gather(attention_mask, 1, order) != 0
    for key in ("token_embeddings", "input_ids", "attention_mask", EMBED_MASK, "position_ids", "token_type_ids"):
        value = features.get(key)
        if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[:2] == (rows, width):
            index = order.view(rows, width, *([1] * (value.dim() - 2))).expand_as(value)
            moved = torch.gather(value, 1, index)
            mask = keep.view(rows, width, *([1] * (value.dim() - 2)))
            features[key] = torch.where(mask, moved, torch.zeros((), dtype=moved.dtype, device=moved.device))

