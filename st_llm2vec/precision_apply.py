"""Applying a precision plan: the attention and MLP blocks of the planned decoder layers computed in bf16 at inference,
everything between them (residual stream, norms, pooling) in float32.

Each such block gets a forward that, without grad, casts its floating inputs (hidden states, rotary cos/sin, a float
attention mask) to bf16 once, runs the block's own forward with bf16 copies of its projection weights (the products
stay bf16 through the block: q/k/v, attention, o; gate/up, activation, down) and returns float32, which the decoder
layer adds to its float32 residual. Rounding to bf16 at every ``nn.Linear`` instead (an earlier version) measured 1.37x
float32 where this measures 1.46x with the same layers (SmolLM2-135M, 1 thread, CPU time): the casts and the float32
attention were a third of a bf16 layer's time. autocast cannot be told which layers, and transformers'
``keep_in_fp32_modules`` is fixed per model class, hence this module.

The float32 weights stay the model's truth: the bf16 copies are non-persistent buffers (state dicts and saves never
see them), and with grad enabled (training) every block runs its float32 forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError

# The blocks of a decoder layer that run in the plan's dtype (every architecture st_llm2vec supports names them so).
BLOCKS = ("self_attn", "mlp")
_FULL = "_st_llm2vec_full_forward"
DEFAULT_MIN_COSINE = 0.99  # the min cosine to float32 a plan must keep, unless the user sets another


class PrecisionError(InputError):
    """No precision plan meets the threshold (or the one asked for cannot be applied); the message says what to use."""


@dataclass
class PrecisionPlan:
    """Which decoder layers stay float32 while the others' blocks run in ``dtype``, and what that measured."""

    dtype: str = "bfloat16"
    float32_layers: list[int] = field(default_factory=list)
    layers: int = 0
    min_cosine: float = 1.0
    p05_cosine: float = 1.0
    mean_cosine: float = 1.0
    texts: int = 0
    threshold: float = DEFAULT_MIN_COSINE
    target: float = DEFAULT_MIN_COSINE  # what the plan had to reach: the threshold with its margin
    check_texts: int = 0
    check_min_cosine: float | None = None
    check_used: bool = False  # the checking texts raised the float32 prefix (they were not only a check then)

    def describe(self) -> str:
        """One line: what runs in which precision and what it measured."""
        keep = f"layers {self.float32_layers[0]}-{self.float32_layers[-1]}" if self.float32_layers else "no layer"
        line = (f"{self.dtype} attention and MLP in {self.layers - len(self.float32_layers)} of {self.layers} decoder "
                f"layers ({keep} float32; residual stream, norms and pooling float32): min cosine "
                f"{self.min_cosine:.5f} (5th percentile {self.p05_cosine:.5f}, mean {self.mean_cosine:.6f}) vs "
                f"float32 over {self.texts} calibration texts (target {self.target:.4f} for threshold {self.threshold})")
        if self.check_texts:
            how = "also used to choose the plan" if self.check_used else "not used to choose it"
            line += f"; {self.check_min_cosine:.5f} over {self.check_texts} more ({how})"
        return line


def decoder_layers(hf_model: Any) -> Sequence[Any]:
    """The decoder layers of an HF base model (``model.layers`` in every architecture st_llm2vec supports)."""
    base = getattr(hf_model, "get_base_model", lambda: hf_model)()
    layers = getattr(base, "layers", None)
    if layers is None:
        raise PrecisionError(f"{type(base).__name__} has no .layers list of decoder layers: use precision='float32'")
    return layers


def _cast(value: Any, dtype: Any) -> Any:
    """Floating tensors (also inside tuples: rotary cos/sin) cast to ``dtype``; anything else as it is."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, tuple):
        return tuple(_cast(item, dtype) for item in value)
    return value


class _BlockForward:
    """A block's forward in ``dtype`` at inference: inputs cast in, the first output cast back to the input's dtype."""

    def __init__(self, full: Any, dtype: Any) -> None:
        self.full, self.dtype = full, dtype

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import torch

        if torch.is_grad_enabled():
            return self.full(*args, **kwargs)
        hidden = args[0] if args else kwargs.get("hidden_states", kwargs.get("x"))
        out = self.full(*_cast(args, self.dtype), **{key: _cast(value, self.dtype) for key, value in kwargs.items()})
        if isinstance(out, tuple):
            return (out[0].to(hidden.dtype), *out[1:])
        return out.to(hidden.dtype)


class _LinearForward:
    """An ``nn.Linear`` on its ``weight_lowp`` copy when the block hands it ``dtype`` inputs, its own forward else."""

    def __init__(self, linear: Any, full: Any, dtype: Any) -> None:
        self.linear, self.full, self.dtype = linear, full, dtype

    def __call__(self, x: Any) -> Any:
        import torch.nn.functional as F

        if x.dtype != self.dtype:
            return self.full(x)
        return F.linear(x, self.linear.weight_lowp, self.linear.bias_lowp)


def _patch(module: Any, forward: Any) -> None:
    setattr(module, _FULL, module.__dict__.get("forward"))
    module.forward = forward


def _unpatch(module: Any) -> None:
    previous = module.__dict__.pop(_FULL)
    module.__dict__.pop("forward", None)
    if previous is not None:
        module.forward = previous


def apply_plan(hf_model: Any, plan: Any) -> None:
    """Run the blocks of every decoder layer outside ``plan.float32_layers`` in ``plan.dtype`` at inference.

    A :class:`PrecisionError` when the layers do not match the plan's count or a projection's weights are not
    float32 (a bf16 or quantized model: nothing would change, yet the plan would say it does). Replaces an
    earlier plan.
    """
    import torch

    remove_plan(hf_model)
    dtype = getattr(torch, plan.dtype)
    layers = decoder_layers(hf_model)
    if len(layers) != plan.layers:
        raise PrecisionError(f"the precision plan is for {plan.layers} decoder layers, this model has {len(layers)}; "
                             "plan anew with precision='bf16-mixed'")
    keep = set(plan.float32_layers)
    for index, layer in enumerate(layers):
        if index in keep:
            continue
        blocks = [getattr(layer, name, None) for name in BLOCKS]
        if any(block is None for block in blocks):
            raise PrecisionError(f"decoder layer {type(layer).__name__} has no {' / '.join(BLOCKS)} blocks: "
                                 "use precision='float32'")
        linears = [m for block in blocks for m in block.modules() if isinstance(m, torch.nn.Linear)]
        odd = sorted({str(m.weight.dtype) for m in linears if m.weight.dtype != torch.float32})
        if odd or not linears:
            remove_plan(hf_model)
            raise PrecisionError(f"precision='bf16-mixed' needs float32 projection weights, this model's are "
                                 f"{', '.join(odd) or 'absent'} (loaded with dtype= or quantization=): load it in "
                                 "float32, or use precision='float32'")
        for linear in linears:
            linear.register_buffer("weight_lowp", linear.weight.detach().to(dtype), persistent=False)
            bias = None if linear.bias is None else linear.bias.detach().to(dtype)
            linear.register_buffer("bias_lowp", bias, persistent=False)
            _patch(linear, _LinearForward(linear, linear.forward, dtype))
        for block in blocks:
            _patch(block, _BlockForward(block.forward, dtype))
    hf_model.st_llm2vec_precision = plan


def remove_plan(hf_model: Any) -> None:
    """Back to float32 everywhere (the low-precision copies dropped, the forwards restored)."""
    for module in hf_model.modules():
        if _FULL in module.__dict__:
            _unpatch(module)
        if "weight_lowp" in module._buffers:
            del module._buffers["weight_lowp"], module._buffers["bias_lowp"]
    hf_model.__dict__.pop("st_llm2vec_precision", None)


def plan_of(hf_model: Any) -> Any:
    """The plan applied to ``hf_model``, if any."""
    return getattr(hf_model, "st_llm2vec_precision", None)
