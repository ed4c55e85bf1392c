"""A measured precision plan: bf16 where it does not move the embeddings, float32 where it does, proven against
the float32 model on calibration texts before it is used.

Where bf16 breaks these vectors (measured on SmolLM2-135M made bidirectional, see the README's precision section):
the first decoder layers feed a layer that turns a few tokens' states into massive activations (one hidden
dimension grows from ~50 to ~10000), and how large it makes them is so steep a function of its input that bf16's
rounding in any earlier layer — of the weights alone, of the activations alone, in attention or in the MLP alone —
moves some texts' vectors to cosine 0.93-0.97. The layers after it take bf16 without a measurable change. So the
``bf16-mixed`` mode keeps a prefix of decoder layers in float32 and computes the attention and MLP blocks of the
rest in bf16 (:mod:`st_llm2vec.precision_apply`); the residual stream, the norms and the pooling stay float32. How
many layers stay float32 is measured (:mod:`st_llm2vec.precision_search`): chosen on calibration texts with a
margin below the threshold, checked on calibration texts the choice did not see, refused when that takes more
than half of the layers. Nothing in torch, transformers or sentence-transformers selects per-layer precision by
measurement (autocast converts every matmul, ``keep_in_fp32_modules`` is fixed per model class), hence these
modules.

The plan acts at inference only (``encode``: inference mode / no grad); training and saving see the float32
weights, which stay the model's truth. A saved dir gets the plan as ``st_llm2vec_precision.json`` beside the
stock files: stock sentence-transformers cannot express per-layer precision and loads the model in float32
(exact); ``st_llm2vec.load_model(path, precision="saved")`` applies the plan again and re-measures it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from .errors import InputError
from .precision_apply import (DEFAULT_MIN_COSINE, PrecisionError, PrecisionPlan, apply_plan, decoder_layers, plan_of,
                              remove_plan)
from .precision_search import calibration_texts, plan_precision
from .runtime import cpu_has_bf16

__all__ = [
    "PRECISIONS", "PLAN_FILE", "DEFAULT_MIN_COSINE", "DTYPES", "PrecisionError", "PrecisionPlan", "apply_plan",
    "remove_plan", "plan_of", "decoder_layers", "calibration_texts", "plan_precision", "full_precision", "resolve",
    "save_plan", "load_plan", "prepare",
]

logger = logging.getLogger(__name__)

PRECISIONS = ("float32", "bf16-mixed", "auto", "saved")
PLAN_FILE = "st_llm2vec_precision.json"
DTYPES = ("bfloat16",)  # the low precision a plan may name (the only one measured)


def _plan_from_json(data: Any, path: Path, layers: int | None) -> PrecisionPlan:
    """Every field of a plan file checked (type, range, allowed values): an InputError naming the file and field."""

    def bad(name: str, why: str) -> InputError:
        return InputError(f"{path}: field {name!r} {why}; delete the file or re-save the model")

    if not isinstance(data, dict):
        raise InputError(f"{path} is not a precision plan (a JSON object); delete it or re-save the model")
    data = dict(data)
    if data.pop("precision", "bf16-mixed") != "bf16-mixed":
        raise bad("precision", "must be 'bf16-mixed'")
    known = {f.name for f in fields(PrecisionPlan)}
    for name in data:
        if name not in known:
            raise bad(name, f"is not a plan field (known: {', '.join(sorted(known))})")
    data.setdefault("target", data.get("threshold", DEFAULT_MIN_COSINE))  # files written before the margin
    plan = PrecisionPlan(**data)
    if plan.dtype not in DTYPES:
        raise bad("dtype", f"is {plan.dtype!r}, allowed: {', '.join(DTYPES)}")
    if not isinstance(plan.layers, int) or isinstance(plan.layers, bool) or plan.layers < 1:
        raise bad("layers", f"must be a positive int, got {plan.layers!r}")
    if layers is not None and plan.layers != layers:
        raise bad("layers", f"is {plan.layers} but the model has {layers} decoder layers")
    kept = plan.float32_layers
    if not isinstance(kept, list) or any(not isinstance(i, int) or isinstance(i, bool) for i in kept):
        raise bad("float32_layers", f"must be a list of layer indices, got {kept!r}")
    if any(not 0 <= i < plan.layers for i in kept) or len(set(kept)) != len(kept):
        raise bad("float32_layers", f"must hold distinct indices in 0..{plan.layers - 1}, got {kept!r}")
    for name in ("min_cosine", "p05_cosine", "mean_cosine", "threshold", "target", "check_min_cosine"):
        value = getattr(plan, name)
        if value is None and name == "check_min_cosine":
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or \
                not -1.0 <= value <= 1.0:
            raise bad(name, f"must be a cosine in [-1, 1], got {value!r}")
    if not 0.0 < plan.threshold or plan.target < plan.threshold:
        raise bad("target", f"must be at least the threshold {plan.threshold} (and that above 0), got {plan.target}")
    for name in ("texts", "check_texts"):
        value = getattr(plan, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise bad(name, f"must be a count (int >= 0), got {value!r}")
    if not isinstance(plan.check_used, bool):
        raise bad("check_used", f"must be true or false, got {plan.check_used!r}")
    return plan


def save_plan(directory: str | os.PathLike, plan: PrecisionPlan | None) -> None:
    """``st_llm2vec_precision.json`` in a saved dir (removed when there is no plan)."""
    path = Path(directory) / PLAN_FILE
    if plan is None:
        path.unlink(missing_ok=True)
        return
    path.write_text(json.dumps({"precision": "bf16-mixed", **asdict(plan)}, indent=2), encoding="utf-8")


def load_plan(directory: str | os.PathLike, layers: int | None = None) -> PrecisionPlan | None:
    """The plan a saved dir carries, if any, every field validated (``layers``: the model's decoder layer count)."""
    path = Path(directory) / PLAN_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not a precision plan ({exc}); delete it or re-save the model") from exc
    try:
        return _plan_from_json(data, path, layers)
    except TypeError as exc:  # a required field of the wrong shape reached the dataclass
        raise InputError(f"{path} is not a precision plan ({exc}); delete it or re-save the model") from exc


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


def resolve(precision: str | None, quantization: str | None = None) -> str:
    """``precision`` checked against ``quantization``; "auto" is bf16-mixed where bf16 is native (a CUDA device, or
    AVX512-BF16 / AMX with torch's AVX-512 kernels) and the weights are not quantized, else float32."""
    precision = precision or "float32"
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if quantization is not None and precision in ("bf16-mixed", "saved"):
        raise InputError(f"precision={precision!r} cannot be combined with quantization={quantization!r}: the plan "
                         "computes float32 weights in bf16 and quantized weights have none; pass one of the two")
    if precision == "auto":
        if quantization is not None:
            return "float32"
        import torch

        # the CPU's flags and the kernels torch runs: under ATEN_CPU_CAPABILITY=avx2 (or default) torch emulates
        # bf16 even on an AVX512-BF16 CPU, and the plan would be slower than float32
        native = cpu_has_bf16() and torch.backends.cpu.get_cpu_capability().startswith("AVX512")
        return "bf16-mixed" if torch.cuda.is_available() or native else "float32"
    return precision


def prepare(model: Any, precision: str | None, *, source: str | None = None, texts: Sequence[str] | None = None,
            min_cosine: float = DEFAULT_MIN_COSINE) -> PrecisionPlan | None:
    """What ``from_llm`` / ``load_model`` do with their ``precision``: nothing (float32), plan anew (bf16-mixed),
    or re-apply and re-measure the plan saved in ``source`` ("saved")."""
    from .lowbit import is_quantized
    from .precision_search import reprove

    precision = resolve(precision, "bitsandbytes" if is_quantized(model[0].model) else None)
    if precision == "float32":
        return None
    if not isinstance(min_cosine, (int, float)) or isinstance(min_cosine, bool) or not 0.0 < min_cosine <= 1.0:
        raise InputError(f"precision_min_cosine must be a cosine in (0, 1], got {min_cosine!r}")
    if precision == "saved":
        layers = len(decoder_layers(model[0].model))
        saved = load_plan(source, layers) if source else None
        if saved is None:
            raise PrecisionError(f"{source} carries no precision plan ({PLAN_FILE}); use precision='bf16-mixed'")
        return reprove(model, saved, texts)
    return plan_precision(model, texts, min_cosine=min_cosine)
