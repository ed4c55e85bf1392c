"""A measured precision plan: bf16 where it does not move the embeddings, float32 where it does, proven against
the float32 model on calibration texts before it is used.

Where bf16 breaks these vectors (measured on SmolLM2-135M, see ``benchmarks/encode_quantized.py``): not in the
pooling (float32 already) nor in any one projection type, but in (1) the residual stream, which carries the
first tokens' massive activations (a bf16 stream alone: min cosine 0.95–0.98 whatever else is float32), and (2)
the first decoder layers, where those activations form (bf16 matmuls everywhere: 0.92; the first three layers
float32: 0.9989). So the ``bf16-mixed`` mode keeps the weights, the residual stream, the norms, the attention
softmax and the pooling in float32 and runs only the projections (``nn.Linear``) of the later decoder layers in
bf16 (inputs rounded to bf16, products accumulated and returned in float32); :func:`plan_precision` picks how
many leading layers stay float32 by growing that prefix until the calibration texts' minimum cosine to the
float32 model reaches the threshold (default 0.99), and refuses the mode when that takes more than half of the
layers. Nothing in torch, transformers or sentence-transformers selects per-layer precision by measurement
(autocast converts every matmul, ``keep_in_fp32_modules`` is fixed per model class), hence this module.

The plan acts at inference only (``encode``: inference mode / no grad); training and saving see the float32
weights, which stay the model's truth. A saved dir gets the plan as ``st_llm2vec_precision.json`` beside the
stock files: stock sentence-transformers cannot express per-layer precision and loads the model in float32
(exact); ``st_llm2vec.load_model(path, precision="saved")`` applies the plan again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError
from .runtime import cpu_has_bf16

logger = logging.getLogger(__name__)

PRECISIONS = ("float32", "bf16-mixed", "auto", "saved")
PLAN_FILE = "st_llm2vec_precision.json"
DEFAULT_MIN_COSINE = 0.99


class PrecisionError(InputError):
    """No precision plan meets the threshold (or the one asked for cannot be applied); the message says what to use."""


@dataclass
class PrecisionPlan:
    """Which decoder layers stay float32 while the others' projections run in ``dtype``, and what that measured."""

    dtype: str = "bfloat16"
    float32_layers: list[int] = field(default_factory=list)
    layers: int = 0
    min_cosine: float = 1.0
    p05_cosine: float = 1.0
    mean_cosine: float = 1.0
    texts: int = 0
    threshold: float = DEFAULT_MIN_COSINE

    def describe(self) -> str:
        """One line: what runs in which precision and what it measured."""
        keep = f"layers {self.float32_layers[0]}-{self.float32_layers[-1]}" if self.float32_layers else "no layer"
        return (f"{self.dtype} projections in {self.layers - len(self.float32_layers)} of {self.layers} decoder layers "
                f"({keep} float32; residual stream, norms, attention and pooling float32): min cosine "
                f"{self.min_cosine:.5f} (5th percentile {self.p05_cosine:.5f}, mean {self.mean_cosine:.6f}) vs "
                f"float32 over {self.texts} calibration texts (threshold {self.threshold})")


def calibration_texts(count: int = 240, seed: int = 0) -> list[str]:
    """Texts of mixed length and kind for planning (no download), all written for this project: the portable
    probe texts, short lowercase phrases (where bf16 moves an embedding most: a 3-token gloss fell to cosine 0.92
    with every layer bf16), sentences, and passages of a few sentences joined (longer inputs)."""
    import random

    from .builtin_text import builtin_fragments, builtin_training_text
    from .proof import PROBE_TEXTS

    sentences = builtin_training_text(count // 2, seed=seed + 7)
    rng = random.Random(seed)
    passages = [" ".join(rng.sample(sentences, k)) for k in (3, 5, 8, 12) for _ in range(4)]
    fragments = builtin_fragments(count - len(sentences), seed=seed + 11)
    return list(PROBE_TEXTS) + fragments + sentences[: len(sentences) - len(passages)] + passages


# -- applying a plan ----------------------------------------------------------------------------------


def decoder_layers(hf_model: Any) -> Sequence[Any]:
    """The decoder layers of an HF base model (``model.layers`` in every architecture st_llm2vec supports)."""
    base = getattr(hf_model, "get_base_model", lambda: hf_model)()
    layers = getattr(base, "layers", None)
    if layers is None:
        raise PrecisionError(f"{type(base).__name__} has no .layers list of decoder layers: use precision='float32'")
    return layers


def _low_precision_forward(linear: Any, dtype: Any) -> Any:
    """``linear``'s forward with its weights in ``dtype`` at inference (float32 output), float32 otherwise."""
    import torch
    import torch.nn.functional as F

    full = linear.forward

    def forward(x):
        if torch.is_grad_enabled():
            return full(x)
        return F.linear(x.to(dtype), linear.weight_lowp, linear.bias_lowp).to(x.dtype)

    return forward


def apply_plan(hf_model: Any, plan: PrecisionPlan) -> None:
    """Run the projections of every decoder layer outside ``plan.float32_layers`` in ``plan.dtype`` at inference.

    Each such ``nn.Linear`` gets a non-persistent ``dtype`` copy of its weights (state dicts and saves keep the
    float32 ones) and a forward that uses it when no gradient is asked for. Replaces an earlier plan.
    """
    import torch

    remove_plan(hf_model)
    dtype = getattr(torch, plan.dtype)
    keep = set(plan.float32_layers)
    for index, layer in enumerate(decoder_layers(hf_model)):
        if index in keep:
            continue
        for module in layer.modules():
            if isinstance(module, torch.nn.Linear) and module.weight.dtype == torch.float32:
                module.register_buffer("weight_lowp", module.weight.detach().to(dtype), persistent=False)
                module.register_buffer("bias_lowp", None if module.bias is None else module.bias.detach().to(dtype),
                                       persistent=False)
                module.forward = _low_precision_forward(module, dtype)
    hf_model.st_llm2vec_precision = plan


def remove_plan(hf_model: Any) -> None:
    """Back to float32 everywhere (the low-precision copies dropped)."""
    for module in hf_model.modules():
        if "weight_lowp" in module._buffers:
            del module._buffers["weight_lowp"], module._buffers["bias_lowp"]
            module.__dict__.pop("forward", None)
    hf_model.__dict__.pop("st_llm2vec_precision", None)


def plan_of(hf_model: Any) -> PrecisionPlan | None:
    """The plan applied to ``hf_model``, if any."""
    return getattr(hf_model, "st_llm2vec_precision", None)


@contextlib.contextmanager
def full_precision(model: Any) -> Iterator[None]:
    """Within it, an st_llm2vec model computes in float32 whatever its plan (saving proves the float32 model)."""
    encoder = model[0]
    hf_model = getattr(encoder, "model", None)
    plan = plan_of(hf_model) if hf_model is not None else None
    if plan is None:
        yield
        return
    remove_plan(hf_model)
    try:
        yield
    finally:
        apply_plan(hf_model, plan)


# -- planning -----------------------------------------------------------------------------------------


def _encode(model: Any, texts: Sequence[str], batch_size: int = 32) -> Any:
    import numpy as np

    return np.asarray(model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False),
                      dtype=np.float64)


def _measure(model: Any, plan: PrecisionPlan, reference: Any, texts: Sequence[str], batch_size: int = 32) -> PrecisionPlan:
    """``plan`` applied to ``model`` and its cosines to the float32 ``reference`` embeddings of ``texts`` recorded."""
    apply_plan(model[0].model, plan)
    plan.min_cosine, plan.p05_cosine, plan.mean_cosine = _cosines(reference, _encode(model, texts, batch_size))
    plan.texts = len(texts)
    return plan


def _cosines(reference: Any, other: Any) -> tuple[float, float, float]:
    import numpy as np

    from .proof import row_cosines

    cosine = np.nan_to_num(row_cosines(reference, other), nan=-1.0)
    return float(cosine.min()), float(np.percentile(cosine, 5)), float(cosine.mean())


def plan_precision(
    model: Any,
    texts: Sequence[str] | None = None,
    *,
    min_cosine: float = DEFAULT_MIN_COSINE,
    dtype: str = "bfloat16",
    max_float32_share: float = 0.5,
    batch_size: int = 32,
) -> PrecisionPlan:
    """Measure and apply the cheapest plan whose calibration texts' min cosine to the float32 model is at least
    ``min_cosine``: the first k decoder layers float32, the smallest such k found by bisection (more float32
    layers move the vectors less). A :class:`PrecisionError` when that needs more than ``max_float32_share`` of
    the layers (the mode would gain little), the model then float32."""
    hf_model = model[0].model
    remove_plan(hf_model)
    texts = list(texts or calibration_texts())
    if not texts:
        raise PrecisionError("plan_precision needs calibration texts")
    reference = _encode(model, texts, batch_size)
    count = len(decoder_layers(hf_model))
    measured: dict[int, PrecisionPlan] = {}

    def measure(k: int) -> PrecisionPlan:
        if k not in measured:
            plan = PrecisionPlan(dtype=dtype, float32_layers=list(range(k)), layers=count, threshold=min_cosine)
            measured[k] = _measure(model, plan, reference, texts, batch_size)
        return measured[k]

    # the smallest float32 prefix that meets the threshold, by bisection (each try encodes every text once);
    # the plan returned is the one measured, applied last
    low, high = 0, int(count * max_float32_share)
    if measure(high).min_cosine >= min_cosine:
        while low < high:
            middle = (low + high) // 2
            if measure(middle).min_cosine >= min_cosine:
                high = middle
            else:
                low = middle + 1
        plan = measure(high)
        apply_plan(hf_model, plan)
        logger.info("Precision plan: %s", plan.describe())
        return plan
    tried = [f"{k}: {measured[k].min_cosine:.5f}" for k in sorted(measured)]
    remove_plan(hf_model)
    raise PrecisionError(
        f"bf16-mixed cannot reach min cosine {min_cosine} vs float32 on {len(texts)} calibration texts with at most "
        f"{int(count * max_float32_share)} of {count} layers in float32 (min cosine by float32 layers: "
        f"{', '.join(tried)}); use precision='float32', or lower precision_min_cosine if that loss is acceptable."
    )


def resolve(precision: str | None) -> str:
    """``precision`` checked; "auto" is bf16-mixed where bf16 is native (a CUDA device, or AVX512-BF16 / AMX)."""
    precision = precision or "float32"
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        import torch

        return "bf16-mixed" if torch.cuda.is_available() or cpu_has_bf16() else "float32"
    return precision


def save_plan(directory: str | os.PathLike, plan: PrecisionPlan | None) -> None:
    """``st_llm2vec_precision.json`` in a saved dir (removed when there is no plan)."""
    path = Path(directory) / PLAN_FILE
    if plan is None:
        path.unlink(missing_ok=True)
        return
    path.write_text(json.dumps({"precision": "bf16-mixed", **asdict(plan)}, indent=2), encoding="utf-8")


def load_plan(directory: str | os.PathLike) -> PrecisionPlan | None:
    """The plan a saved dir carries, if any (InputError naming the file when it does not parse)."""
    path = Path(directory) / PLAN_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data.pop("precision", None)
        return PrecisionPlan(**data)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{path} is not a precision plan ({exc}); delete it or re-save the model") from exc


def prepare(model: Any, precision: str | None, *, source: str | None = None, texts: Sequence[str] | None = None,
            min_cosine: float = DEFAULT_MIN_COSINE) -> PrecisionPlan | None:
    """What ``from_llm`` / ``load_model`` do with their ``precision``: nothing (float32), plan anew (bf16-mixed),
    or re-apply and re-measure the plan saved in ``source`` ("saved")."""
    precision = resolve(precision)
    if precision == "float32":
        return None
    if precision == "saved":
        saved = load_plan(source) if source else None
        if saved is None:
            raise PrecisionError(f"{source} carries no precision plan ({PLAN_FILE}); use precision='bf16-mixed'")
        return _reprove(model, saved, texts)
    return plan_precision(model, texts, min_cosine=min_cosine)


def _reprove(model: Any, plan: PrecisionPlan, texts: Sequence[str] | None) -> PrecisionPlan:
    """A saved plan applied again and measured on this machine (another CPU computes bf16 otherwise)."""
    hf_model = model[0].model
    texts = list(texts or calibration_texts())
    remove_plan(hf_model)
    _measure(model, plan, _encode(model, texts), texts)
    if plan.min_cosine < plan.threshold:
        remove_plan(hf_model)
        raise PrecisionError(f"the saved precision plan gives min cosine {plan.min_cosine:.5f} < {plan.threshold} on "
                             "this machine; plan anew with precision='bf16-mixed' or use float32")
    return plan
