"""The contrastive losses, one entry each: llm2vec's names for it, and the Sentence Transformers loss that computes
it. The ``loss_class`` key's choices, its ``--help`` and :func:`build_loss` read this table; a new loss is an entry.

llm2vec's ``HardNegativeNLLLoss`` (cosine × ``loss_scale``, cross-entropy over in-batch positives and hard
negatives, gathered across processes) is ``MultipleNegativesRankingLoss`` with ``scale=loss_scale`` and
``gather_across_devices`` under DDP; ``CachedMultipleNegativesRankingLoss`` (GradCache) reaches large batches on
small GPUs. Importing this is cheap: the losses are built from their names when training starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Loss:
    """One contrastive loss: ``st_class`` of ``sentence_transformers.sentence_transformer.losses``, known by the
    ``names`` a config may use (llm2vec's first); ``cached``: it takes ``mini_batch_size`` (GradCache)."""

    st_class: str
    names: tuple[str, ...]
    cached: bool = False


LOSSES: tuple[Loss, ...] = (
    Loss("MultipleNegativesRankingLoss", ("HardNegativeNLLLoss", "MultipleNegativesRankingLoss", "MNRL")),
    Loss("CachedMultipleNegativesRankingLoss", ("CachedMultipleNegativesRankingLoss", "CachedMNRL"), cached=True),
)
# llm2vec's loss names (and ours) → the ST loss that computes the same.
LOSS_ALIASES: dict[str, str] = {name: loss.st_class for loss in LOSSES for name in loss.names}


def build_loss(
    model: Any,
    loss_class: str = "MultipleNegativesRankingLoss",
    scale: float = 20.0,
    mini_batch_size: int = 32,
    gather_across_devices: bool | str | None = "auto",
    world_size: int = 1,
):
    """The loss ``loss_class`` names (any of :data:`LOSS_ALIASES`), cosine × ``scale``; ``gather_across_devices``
    "auto" gathers when there is more than one process."""
    from sentence_transformers.sentence_transformer import losses

    loss = next(loss for loss in LOSSES if loss_class in loss.names)
    gather = world_size > 1 if gather_across_devices in (None, "auto") else bool(gather_across_devices)
    kwargs: dict[str, Any] = {"scale": float(scale), "gather_across_devices": gather}
    if loss.cached:
        kwargs["mini_batch_size"] = int(mini_batch_size)
    return getattr(losses, loss.st_class)(model, **kwargs)
