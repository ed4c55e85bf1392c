"""Choosing a precision plan by measurement: the smallest float32 prefix of decoder layers whose calibration texts stay
within a margin of the threshold, then checked on calibration texts the choice never saw.

Why a margin and a second set (measured on SmolLM2-135M made bidirectional, see the README's precision section):
the vectors bf16 moves far are a few texts in a hundred, scattered over every kind of text, and how far they move
depends on which layers run in bf16; the old planner stopped at the first prefix whose ~250 calibration texts
just passed (min 0.9931 against a threshold of 0.99) and unseen image captions then fell to 0.9645. A plan is now
chosen on two thirds of the calibration texts against a stricter target, ``1 - MARGIN * (1 - threshold)`` (0.995 for
0.99), and kept only if the remaining third, not used to choose it, meets that target too; otherwise more leading
layers stay float32 until both parts do, and the plan records that its check was used to choose it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any

from .precision_apply import PrecisionError, PrecisionPlan, apply_plan, decoder_layers, remove_plan

logger = logging.getLogger(__name__)

# The share of the threshold's distance from 1 a plan may use on its calibration texts: 0.5 plans at 0.995 for a
# promise of 0.99 (how it was measured: the README's "Precision plan").
MARGIN = 0.5
# Every third calibration text is held out of the choice and checks it.
CHECK_EVERY = 3
DEFAULT_CALIBRATION_TEXTS = 720


def calibration_texts(count: int = DEFAULT_CALIBRATION_TEXTS, seed: int = 0) -> list[str]:
    """``count`` texts of mixed kind and length for planning (no download), all written for this project: the
    portable probe texts, captions, questions, headlines, formal and numbered sentences, names, quotes
    (:mod:`st_llm2vec.calibration_text`), scene / news sentences and passages, dictionary-style glosses, and
    truncated sentence openings (where bf16 moves an embedding most)."""
    from .builtin_text import builtin_fragments, builtin_training_text
    from .calibration_text import openings, varied_text
    from .proof import PROBE_TEXTS

    rng = random.Random(seed)
    sentences = builtin_training_text(count // 3, seed=seed + 7)
    passages = [" ".join(rng.sample(sentences, k)) for k in (3, 5, 8, 12) for _ in range(max(count // 160, 1))]
    texts = list(PROBE_TEXTS) + varied_text(count * 7 // 20, seed=seed + 13)
    texts += openings(varied_text(count, seed=seed + 17) + sentences, count // 5, seed=seed + 19)
    texts += builtin_fragments(count // 8, seed=seed + 11) + passages
    texts += sentences[: max(count - len(texts), 0)]
    texts = list(dict.fromkeys(texts))[:count]
    rng.shuffle(texts)
    return texts


def split_texts(texts: Sequence[str]) -> tuple[list[int], list[int]]:
    """(indices that choose the plan, indices that check it): every :data:`CHECK_EVERY`-th text checks."""
    check = [i for i in range(len(texts)) if i % CHECK_EVERY == CHECK_EVERY - 1]
    chosen = set(check)
    return [i for i in range(len(texts)) if i not in chosen], check


def encode(model: Any, texts: Sequence[str], batch_size: int = 32) -> Any:
    """``texts`` embedded by ``model`` as it is now (float64 for the cosines)."""
    import numpy as np

    return np.asarray(model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False),
                      dtype=np.float64)


def cosines(reference: Any, other: Any) -> Any:
    """Per-row cosine of two embedding matrices (NaN counts as -1: a broken vector fails every threshold)."""
    import numpy as np

    from .proof import row_cosines

    return np.nan_to_num(row_cosines(reference, other), nan=-1.0)


def summarise(plan: Any, cosine: Any, choose: Sequence[int], check: Sequence[int]) -> Any:
    """``plan`` with the measured cosines of its choosing and checking texts recorded."""
    import numpy as np

    chosen = cosine[list(choose)]
    plan.min_cosine, plan.p05_cosine = float(chosen.min()), float(np.percentile(chosen, 5))
    plan.mean_cosine, plan.texts = float(chosen.mean()), len(chosen)
    checked = cosine[list(check)] if len(check) else chosen[:0]
    plan.check_texts = len(checked)
    plan.check_min_cosine = float(checked.min()) if len(checked) else None
    return plan


def plan_precision(
    model: Any,
    texts: Sequence[str] | None = None,
    *,
    min_cosine: float,
    dtype: str = "bfloat16",
    max_float32_share: float = 0.5,
    batch_size: int = 32,
) -> Any:
    """Measure and apply the cheapest plan (the first k decoder layers float32, the rest's blocks in ``dtype``)
    whose choosing texts' min cosine to the float32 model is at least the planning target, checked on the held-out
    third. A :class:`PrecisionError` when that needs more than ``max_float32_share`` of the layers (the mode would
    gain little), the model then float32."""
    hf_model = model[0].model
    remove_plan(hf_model)
    texts = list(texts or calibration_texts())
    if len(texts) < CHECK_EVERY:
        raise PrecisionError(f"plan_precision needs at least {CHECK_EVERY} calibration texts, got {len(texts)}")
    choose, check = split_texts(texts)
    reference = encode(model, texts, batch_size)
    count = len(decoder_layers(hf_model))
    target = 1.0 - MARGIN * (1.0 - min_cosine)
    limit = int(count * max_float32_share)
    measured: dict[int, Any] = {}

    def measure(k: int) -> Any:
        """Plan k measured on every calibration text (the check texts' cosines are only read where it says)."""
        if k not in measured:
            plan = PrecisionPlan(dtype=dtype, float32_layers=list(range(k)), layers=count, threshold=min_cosine,
                                 target=target)
            apply_plan(hf_model, plan)
            measured[k] = summarise(plan, cosines(reference, encode(model, texts, batch_size)), choose, check)
        return measured[k]

    # the smallest prefix whose choosing texts meet the target, by bisection (more float32 layers move them less)
    low, high = 0, limit
    if measure(high).min_cosine >= target:
        while low < high:
            middle = (low + high) // 2
            if measure(middle).min_cosine >= target:
                high = middle
            else:
                low = middle + 1
        chosen = high
        # the held-out third must meet the target too; where it does not, more layers stay float32
        for k in range(chosen, limit + 1):
            plan = measure(k)
            if plan.min_cosine >= target and plan.check_min_cosine >= target:
                plan.check_used = k != chosen
                apply_plan(hf_model, plan)
                logger.info("Precision plan: %s", plan.describe())
                return plan
    tried = [f"{k}: {measured[k].min_cosine:.5f}/{measured[k].check_min_cosine:.5f}" for k in sorted(measured)]
    remove_plan(hf_model)
    raise PrecisionError(
        f"bf16-mixed cannot keep {len(texts)} calibration texts at min cosine {target:.4f} (the margin kept for "
        f"a threshold of {min_cosine}) vs float32 with at most {limit} of {count} layers in float32 (min cosine "
        f"by float32 layers, choosing/checking texts: {', '.join(tried)}); use precision='float32', or lower "
        "precision_min_cosine if that loss is acceptable."
    )


def reprove(model: Any, plan: Any, texts: Sequence[str] | None, batch_size: int = 32) -> Any:
    """A saved plan applied again and measured on this machine (another CPU computes bf16 otherwise) against the
    target it was chosen for; refused below it."""
    hf_model = model[0].model
    texts = list(texts or calibration_texts())
    remove_plan(hf_model)
    reference = encode(model, texts, batch_size)
    apply_plan(hf_model, plan)
    choose, check = split_texts(texts)
    summarise(plan, cosines(reference, encode(model, texts, batch_size)), choose, check)
    worst = min(plan.min_cosine, plan.check_min_cosine if plan.check_min_cosine is not None else 1.0)
    if worst < plan.target:
        remove_plan(hf_model)
        raise PrecisionError(f"the saved precision plan gives min cosine {worst:.5f} < {plan.target:.4f} (threshold "
                             f"{plan.threshold} with its margin) on this machine; plan anew with "
                             "precision='bf16-mixed' or use float32")
    return plan
