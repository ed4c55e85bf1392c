"""Matryoshka embeddings in the contrastive stages (``matryoshka_dims``, ``matryoshka_weights``): the stage's loss is
wrapped in Sentence Transformers' ``MatryoshkaLoss`` (:func:`~.losses.build_loss`), so the leading dimensions of an
embedding carry a usable embedding of their own; a stock ``SentenceTransformer(path, truncate_dim=d)`` cuts them.

Here: the dims checked against the model (before it loads, from its config; again once it has), and the dev
quality at each dim after training — the same dev evaluators the stage reports, on embeddings cut to ``d`` —
stored in the model card (ST's evaluation section, one table per dim) and the stage's result.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ..errors import InputError

logger = logging.getLogger(__name__)


def hidden_size_on_disk(model_name_or_path: str) -> int | None:
    """The hidden size in a model's config.json (a local dir, or a Hub model in the local cache), or None."""
    from .scorer import model_json

    config = model_json(model_name_or_path, "config.json")
    if not isinstance(config, dict):
        return None
    size = config.get("hidden_size") or (config.get("text_config") or {}).get("hidden_size")
    return int(size) if isinstance(size, int) else None


def check_dims(dims: Sequence[int] | None, weights: Sequence[float] | None, model_name_or_path: str | None) -> None:
    """What ``matryoshka_dims`` / ``matryoshka_weights`` refuse before anything loads: weights without dims or of
    another length, a dim given twice, and a dim larger than the model's hidden size (read from its config.json)."""
    if weights is not None and not dims:
        raise InputError("matryoshka_weights is set without matryoshka_dims: give the dims the weights are for.")
    if not dims:
        return
    if weights is not None and len(weights) != len(dims):
        raise InputError(f"matryoshka_weights has {len(weights)} weights for {len(dims)} matryoshka_dims {list(dims)}: "
                         "give one weight per dim.")
    if len(set(dims)) != len(dims):
        raise InputError(f"matryoshka_dims {list(dims)} names a dimension twice.")
    size = hidden_size_on_disk(model_name_or_path) if model_name_or_path else None
    if size is not None and max(dims) > size:
        raise InputError(f"matryoshka_dims: {max(dims)} is more than the {size} dimensions of {model_name_or_path}'s "
                         f"embeddings (its hidden size): use dims up to {size}.")


def check_dims_fit(dims: Sequence[int] | None, model: Any) -> None:
    """The same check on the loaded model (whose config may not have been readable before it loaded)."""
    size = model.get_embedding_dimension()
    if dims and size and max(dims) > size:
        raise InputError(f"matryoshka_dims: {max(dims)} is more than the model's {size} embedding dimensions: use "
                         f"dims up to {size}.")


def dims_quality(model: Any, evaluator_at: Any, dims: Sequence[int]) -> dict[str, dict[str, float]]:
    """``{str(dim): dev scores}`` for each of ``dims`` below the full size: ``evaluator_at(dim)`` (the stage's dev
    evaluator cutting embeddings to ``dim``) run on ``model``, which stores its figures in the model card."""
    from .contrastive import sts_scores

    full = model.get_embedding_dimension()
    out = {}
    for dim in sorted(set(dims), reverse=True):
        if dim >= full:
            continue
        out[str(dim)] = sts_scores(evaluator_at(dim)(model))
        logger.info("dev quality at %d dimensions: %s", dim, out[str(dim)])
    return out
