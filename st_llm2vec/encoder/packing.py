"""Packing: the texts of a batch as one row without padding, for the backbone call only.

The encoder packs in ``preprocess`` (ST's ``unpad_inputs``) and unpacks right after the backbone, so
every later module (pooling) sees padded rows, as on the padded path. Flash attention reads the
``cu_seq_lens_*`` metadata (varlen kernels); sdpa / eager / flex_attention get a document mask that
keeps each text's attention inside that text.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from ..instructions import EMBED_MASK
from ..upstream import attn_implementation

if TYPE_CHECKING:
    from transformers import PretrainedConfig

# Keys of a packed batch (ST's / transformers' names for flattened inputs).
CU_SEQ_LENS = "cu_seq_lens_q"
PACKED_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
# Attention implementations for which a packed batch gets a 4D document mask built by transformers'
# own mask interface (flash attention instead reads cu_seq_lens_* and runs its varlen kernel).
DOCUMENT_MASK_IMPLEMENTATIONS = ("sdpa", "eager", "flex_attention")


def segment_ids(cu: torch.Tensor, total: int) -> torch.Tensor:
    """The index of the text each position of a packed row belongs to."""
    cu = cu.long()
    return torch.repeat_interleave(torch.arange(cu.numel() - 1, device=cu.device), cu.diff(), output_size=total)


def pack(ids: list[list[int]], lengths: torch.Tensor, pooled: torch.Tensor) -> dict[str, Any]:
    """All texts in one row: positions restart at 0 per text, ``embed_mask`` marks each text's last
    ``pooled`` tokens (llm2vec's text part)."""
    total = int(lengths.sum())
    cu = torch.zeros(len(ids) + 1, dtype=torch.int32)
    cu[1:] = lengths.cumsum(0)
    segment = segment_ids(cu, total)
    position = torch.arange(total) - cu[:-1].long()[segment]
    embed_mask = position >= (lengths - pooled)[segment]
    longest = int(lengths.max())
    return {
        "input_ids": torch.tensor([token for row in ids for token in row], dtype=torch.long).unsqueeze(0),
        "position_ids": position.unsqueeze(0),
        EMBED_MASK: embed_mask.long().unsqueeze(0),
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "max_length_q": longest,
        "max_length_k": longest,
        "modality": "text",
    }


def split(features: dict[str, Any], budget: int) -> Iterator[dict[str, Any]]:
    """A packed batch as consecutive packed batches of at most ``budget`` tokens each (a text longer
    than the budget alone), cut at text boundaries; their outputs concatenate back in order."""
    cu = features[CU_SEQ_LENS].long()
    pieces, start = [], 0
    for end in range(1, cu.numel()):
        if end - start > 1 and int(cu[end] - cu[start]) > budget:
            pieces.append((start, end - 1))
            start = end - 1
    pieces.append((start, cu.numel() - 1))
    shared = {k: v for k, v in features.items() if k not in PACKED_KEYS and k not in ("input_ids", "position_ids")}
    for first, last in pieces:
        a, b = int(cu[first]), int(cu[last])
        sub_cu = (cu[first : last + 1] - a).to(features[CU_SEQ_LENS].dtype)
        longest = int(sub_cu.diff().max())
        yield {
            **shared,
            "input_ids": features["input_ids"][:, a:b],
            "position_ids": features["position_ids"][:, a:b],
            "cu_seq_lens_q": sub_cu,
            "cu_seq_lens_k": sub_cu,
            "max_length_q": longest,
            "max_length_k": longest,
        }


def flop_coefficients(model: torch.nn.Module) -> tuple[float, float]:
    """(matmul FLOPs per token, attention FLOPs per query-key pair) of ``model``, summed over layers."""
    config = model.config
    embedding = model.get_input_embeddings()
    params = sum(p.numel() for p in model.parameters()) - embedding.weight.numel()
    layers = getattr(config, "num_hidden_layers", 1) or 1
    heads = getattr(config, "num_attention_heads", 1) or 1
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2.0 * params, 4.0 * heads * head_dim * layers


def packs_cheaper(lengths: torch.Tensor, per_token: float, per_pair: float) -> bool:
    """Packing the texts of ``lengths`` tokens costs fewer FLOPs than padding them.

    A packed row of T tokens spends T^2 on (document-masked, dense) attention but no compute on
    padding; B rows padded to width W spend B*W tokens of matmuls and B*W^2 of attention. Texts of
    mixed lengths (ST sorts batches by characters, not tokens) usually pack cheaper.
    """
    total, width, count = int(lengths.sum()), int(lengths.max()), len(lengths)
    packed = total * per_token + total * total * per_pair
    padded = count * width * per_token + count * width * width * per_pair
    return packed < padded


def budget_groups(lengths: torch.Tensor, budget: int) -> list[list[int]]:
    """Row indices grouped by length so that each group, padded to its own longest row, holds at most
    ``budget`` tokens (a row longer than the budget alone): token-budget batching of padded rows."""
    groups: list[list[int]] = []
    current: list[int] = []
    for row in torch.argsort(lengths, stable=True).tolist():
        if current and (len(current) + 1) * int(lengths[row]) > budget:
            groups.append(current)
            current = []
        current.append(row)
    groups.append(current)
    return groups


def document_mask_supported(config: PretrainedConfig, max_seq_length: int | None) -> bool:
    """A 4D document mask reproduces every layer's attention: no sliding window can cut a text."""
    if attn_implementation(config) not in DOCUMENT_MASK_IMPLEMENTATIONS:
        return False
    layer_types = getattr(config, "layer_types", None) or []
    window = getattr(config, "sliding_window", None)
    if getattr(config, "use_sliding_window", True) is False and not any(t != "full_attention" for t in layer_types):
        window = None
    if window is None and not any(t != "full_attention" for t in layer_types):
        return True
    return window is not None and max_seq_length is not None and max_seq_length < window


def document_mask(model: torch.nn.Module, features: dict[str, Any]) -> Any:
    """The 4D mask (sdpa / eager) or BlockMask (flex) that keeps attention inside each packed text."""
    from transformers.masking_utils import (
        ALL_MASK_ATTENTION_FUNCTIONS,
        and_masks,
        causal_mask_function,
        packed_sequence_mask_function,
    )

    input_ids = features["input_ids"]
    total = input_ids.shape[1]
    segment = segment_ids(features[CU_SEQ_LENS].to(input_ids.device), total)
    mask_function = packed_sequence_mask_function(segment.unsqueeze(0))
    config = model.config
    if config.is_causal:
        mask_function = and_masks(causal_mask_function, mask_function)
    return ALL_MASK_ATTENTION_FUNCTIONS[attn_implementation(config)](
        batch_size=1,
        q_length=total,
        kv_length=total,
        q_offset=0,
        kv_offset=0,
        mask_function=mask_function,
        attention_mask=None,
        allow_is_causal_skip=False,
        allow_is_bidirectional_skip=False,
        dtype=model.dtype,
        config=config,
        use_vmap=False,
        device=input_ids.device,
    )


def unpack(features: dict[str, Any], right: bool = False) -> dict[str, Any]:
    """A packed ``(1, total, …)`` batch after the backbone back to padded ``(batch, width, …)`` rows.

    Left-padded like the padded path's inputs, or right-padded when ``right`` (the layout ``encode``
    returns, see ``pooling.py``: written here directly, so it costs no second copy); padding
    positions hold zeros, ``attention_mask`` is rebuilt and the packing metadata dropped.
    """
    tokens = features["token_embeddings"]
    device = tokens.device
    total = tokens.shape[1]
    cu = features[CU_SEQ_LENS].to(device=device, dtype=torch.long)
    lengths = cu.diff()
    segment = segment_ids(cu, total)
    width = int(features.get("max_length_q") or lengths.max())
    column = torch.arange(total, device=device) - cu[:-1][segment]
    if not right:
        column = column + (width - lengths)[segment]
    count = lengths.numel()
    attention_mask = torch.zeros(count, width, device=device, dtype=torch.long)
    attention_mask[segment, column] = 1
    for key in ("token_embeddings", "input_ids", EMBED_MASK):
        value = features.get(key)
        if isinstance(value, torch.Tensor) and value.shape[:2] == (1, total):
            padded = value.new_zeros((count, width) + tuple(value.shape[2:]))
            padded[segment, column] = value[0]
            features[key] = padded
    features["attention_mask"] = attention_mask
    for key in PACKED_KEYS + ("position_ids", "seq_idx"):
        features.pop(key, None)
    return features
