"""The contrastive losses, one entry each: llm2vec's names for it, and the Sentence Transformers loss that computes
it. The ``loss_class`` key's choices, its ``--help`` and :func:`build_loss` read this table; a new loss is an entry.

llm2vec's ``HardNegativeNLLLoss`` (cosine × ``loss_scale``, cross-entropy over in-batch positives and hard
negatives, gathered across processes) is ``MultipleNegativesRankingLoss`` with ``scale=loss_scale`` and
``gather_across_devices`` under DDP; ``CachedMultipleNegativesRankingLoss`` (GradCache) reaches large batches on
small GPUs. The distillation losses learn a teacher's scores (``teacher`` in the supervised stage, see
:mod:`.distill`): ``MarginMSELoss`` its margins pos − neg, ``DistillKLDivLoss`` its distribution over the
candidates (positive and negatives) at temperature ``1 / loss_scale``; both compare cosines, as the teacher's
scores are. ``matryoshka_dims`` wraps any of them in ST's ``MatryoshkaLoss``. Importing this is cheap: the losses
are built from their names when training starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Loss:
    """One contrastive loss: ``st_class`` of ``sentence_transformers.sentence_transformer.losses``, known by the
    ``names`` a config may use (llm2vec's first); ``cached``: it takes ``mini_batch_size`` (GradCache);
    ``distills``: it learns a teacher's scores over (positive, negatives), which the data must carry."""

    st_class: str
    names: tuple[str, ...]
    cached: bool = False
    distills: bool = False


LOSSES: tuple[Loss, ...] = (
    Loss("MultipleNegativesRankingLoss", ("HardNegativeNLLLoss", "MultipleNegativesRankingLoss", "MNRL")),
    Loss("CachedMultipleNegativesRankingLoss", ("CachedMultipleNegativesRankingLoss", "CachedMNRL"), cached=True),
    Loss("MarginMSELoss", ("MarginMSELoss", "MarginMSE"), distills=True),
    Loss("DistillKLDivLoss", ("DistillKLDivLoss", "KLDiv"), distills=True),
)
# llm2vec's loss names (and ours) → the ST loss that computes the same.
LOSS_ALIASES: dict[str, str] = {name: loss.st_class for loss in LOSSES for name in loss.names}


def loss_entry(loss_class: str) -> Loss:
    """The table's entry for any of its names."""
    return next(loss for loss in LOSSES if loss_class in loss.names)


def build_loss(
    model: Any,
    loss_class: str = "MultipleNegativesRankingLoss",
    scale: float = 20.0,
    mini_batch_size: int = 32,
    gather_across_devices: bool | str | None = "auto",
    world_size: int = 1,
    matryoshka_dims: Sequence[int] | None = None,
    matryoshka_weights: Sequence[float] | None = None,
):
    """The loss ``loss_class`` names (any of :data:`LOSS_ALIASES`), cosine × ``scale``; ``gather_across_devices``
    "auto" gathers when there is more than one process; with ``matryoshka_dims``, wrapped in ``MatryoshkaLoss``
    (the loss at each leading-dimension cut, weighted by ``matryoshka_weights``, default 1 each)."""
    from sentence_transformers import util
    from sentence_transformers.sentence_transformer import losses

    loss = loss_entry(loss_class)
    cls = getattr(losses, loss.st_class)
    if loss.distills:
        kwargs: dict[str, Any] = {"similarity_fct": util.pairwise_cos_sim}
        if loss.st_class == "DistillKLDivLoss":
            kwargs["temperature"] = 1.0 / float(scale)
        built = cls(model, **kwargs)
    else:
        gather = world_size > 1 if gather_across_devices in (None, "auto") else bool(gather_across_devices)
        kwargs = {"scale": float(scale), "gather_across_devices": gather}
        if loss.cached:
            kwargs["mini_batch_size"] = int(mini_batch_size)
        built = cls(model, **kwargs)
    if matryoshka_dims:
        built = losses.MatryoshkaLoss(model, built, list(matryoshka_dims),
                                      list(matryoshka_weights) if matryoshka_weights else None)
    return built


def inner_loss(loss: Any) -> Any:
    """The loss a ``MatryoshkaLoss`` wraps (or ``loss`` itself): where its scale and gathering are read."""
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss

    return loss.loss if isinstance(loss, MatryoshkaLoss) else loss
