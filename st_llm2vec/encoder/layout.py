"""How a batch is laid out, decided once per call: padded rows or one packed row for the backbone, and the rows
handed on after pooling.

:func:`choose` decides in ``preprocess`` and the decision travels with the features (:data:`LAYOUT`):

- the backbone's input: left-padded rows (pad = eos, as llm2vec), or all texts packed into one row without
  padding (ST's ``unpad_inputs``, :mod:`.packing`): always with flash-attn 2's varlen kernels, with a document
  mask where asked (``unpad_inputs=True``) or, by default inside ``encode``, where packing costs fewer FLOPs;
- what comes out: inside ``encode`` (``torch.inference_mode``) right-padded rows, each text's own tokens first,
  so that ST's ``encode(output_value="token_embeddings")`` (which cuts each row after its last attended
  position) returns each text's own tokens, as for a stock model; outside it (training, direct
  ``model(features)`` calls) the inputs' left-padded rows. A packed batch is unpacked straight into that
  layout after the backbone; a padded one is re-laid once, after pooling (:func:`hand_on`).

Also here: running a batch over the ``max_batch_tokens`` budget in pieces (:func:`in_pieces`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..instructions import EMBED_MASK
from ..upstream import attn_implementation
from . import packing

# The feature that carries the layout from preprocess to pooling (kept away from the HF model, like embed_mask).
LAYOUT = "batch_layout"


@dataclass(frozen=True)
class Layout:
    """``packed``: the backbone runs one row of all texts; ``right_padded``: rows are handed on right-padded."""

    packed: bool
    right_padded: bool


def _encoding() -> bool:
    """Inside ``encode`` (ST runs it under ``torch.inference_mode``)."""
    return torch.is_inference_mode_enabled()


def choose(encoder: Any, lengths: torch.Tensor) -> Layout:
    """The layout of one batch of texts of ``lengths`` tokens (see the module doc)."""
    encoding = _encoding()
    packed = can_flatten(encoder) or (encoding and _packs_cheaper(encoder, lengths))
    return Layout(packed=packed, right_padded=encoding)


def of(features: dict[str, Any]) -> Layout:
    """The layout ``features`` carry (taken out of them); features built without ``preprocess`` (MNTP's loss calls
    the model directly) get the one their form and this call imply."""
    layout = features.pop(LAYOUT, None)
    return layout if layout is not None else Layout(packed=packing.CU_SEQ_LENS in features, right_padded=_encoding())


def uses_flash_varlen(encoder: Any) -> bool:
    """flash-attn 2 (or another flash kernel with a varlen function) is loaded and requested."""
    try:
        from transformers.modeling_flash_attention_utils import lazy_import_flash_attention
    except ImportError:
        return False
    if not encoder._is_flash_attention_requested():
        return False
    try:
        (_, flash_varlen_fn, *_), _ = lazy_import_flash_attention(attn_implementation(encoder.config))
    except (ImportError, ValueError, RuntimeError):
        return False
    return flash_varlen_fn is not None


def can_flatten(encoder: Any) -> bool:
    """Pack every batch: always with flash-attn varlen (unless unpad_inputs=False), with a document mask if asked."""
    if encoder.backend != "torch" or encoder.unpad_inputs is False:
        return False
    if uses_flash_varlen(encoder):
        if encoder.model_forward_params is not None:  # as ST does: let the varlen metadata reach the model
            encoder.model_forward_params |= {"position_ids", *packing.PACKED_KEYS}
        return True
    return encoder.unpad_inputs is True and packing.document_mask_supported(encoder.model.config, encoder.max_seq_length)


def _packs_cheaper(encoder: Any, lengths: torch.Tensor) -> bool:
    """``unpad_inputs=None`` without flash attention: pack an ``encode`` batch when that costs fewer FLOPs
    (:func:`packing.packs_cheaper`)."""
    if encoder.unpad_inputs is not None or len(lengths) < 2:
        return False
    if not packing.document_mask_supported(encoder.model.config, encoder.max_seq_length):
        return False
    cached = getattr(encoder, "_flop_cache", None)
    if cached is None or cached[0] is not encoder.model:
        cached = encoder._flop_cache = (encoder.model, packing.flop_coefficients(encoder.model))
    return packing.packs_cheaper(lengths, *cached[1])


def padded(ids: list[list[int]], lengths: torch.Tensor, pooled: torch.Tensor, pad_id: int) -> dict[str, Any]:
    """Left-padded rows (pad = ``pad_id``), ``embed_mask`` on each row's last ``pooled`` tokens (llm2vec pools the
    last N positions, N = the length of the text part tokenized alone)."""
    width = int(lengths.max())
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    flat = torch.tensor([token for row in ids for token in row], dtype=torch.long)
    columns = torch.arange(width)
    attention_mask = (columns >= (width - lengths).unsqueeze(1)).long()
    input_ids[attention_mask.bool()] = flat  # row-major order: each row's tokens, left-padded
    embed_mask = (columns >= (width - pooled).unsqueeze(1)).long()
    return {"input_ids": input_ids, "attention_mask": attention_mask, EMBED_MASK: embed_mask, "modality": "text"}


def in_pieces(features: dict[str, Any], budget: int, run: Callable[[dict[str, Any]], torch.Tensor],
              name: str) -> dict[str, Any]:
    """Token-budget batching inside one ST batch (ST batches by count; nothing in ST or transformers splits by
    tokens): rows (or packed texts) grouped so each ``run`` (the backbone's output ``name`` of a sub-batch) stays
    within the budget, outputs put back where the whole batch would have put them. Rows are independent, so the
    result equals one call's."""
    input_ids = features["input_ids"]
    if packing.CU_SEQ_LENS in features:  # one packed row: cut it at text boundaries
        features[name] = torch.cat([run(sub) for sub in packing.split(features, budget)], dim=1)
        return features
    # left-padded rows: group by length, each group trimmed to its own longest row
    rows, width = input_ids.shape
    lengths = features["attention_mask"].sum(dim=1)
    output = None
    for group in packing.budget_groups(lengths, budget):
        index = torch.tensor(group, device=input_ids.device)
        w = max(int(lengths[group].max()), 1)
        sub = {
            k: v[index, width - w :] if torch.is_tensor(v) and v.dim() >= 2 and v.shape[:2] == (rows, width) else v
            for k, v in features.items()
        }
        part = run(sub)
        if output is None:
            output = part.new_zeros((rows, width, *part.shape[2:]))
        output[index, width - w :] = part
    features[name] = output
    return features


def hand_on(features: dict[str, Any]) -> dict[str, Any]:
    """After pooling: the rows in the layout the call asked for (padded rows, right-padded in ``encode``; a packed
    batch was unpacked into it already), the layout taken out of the features."""
    layout = features.pop(LAYOUT, None)
    if layout is not None and layout.right_padded and not layout.packed:
        _right_align(features)
    return features


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
