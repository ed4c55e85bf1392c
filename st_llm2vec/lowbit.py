"""Low-bit weights through bitsandbytes: 4-bit (NF4 / FP4) or 8-bit (LLM.int8) loading, and the k-bit preparation
QLoRA training needs (peft's ``prepare_model_for_kbit_training``).

bitsandbytes >= 0.50 runs both on CPU as well as on CUDA, so the low-bit paths are tested without a GPU. Only
the loader kwargs and peft's own preparation are assembled here; the quantization is bitsandbytes' and
transformers'.
"""

from __future__ import annotations

import copy
import importlib.util
from typing import Any

from .errors import InputError, MissingExtraError

QUANTIZATIONS = ("nf4", "fp4", "int8")
INSTALL_HINT = 'pip install -e ".[lowbit]"  (from the st-llm2vec clone: bitsandbytes)'


def loading_kwargs(quantization: str | None, compute_dtype: str = "bfloat16") -> dict[str, Any]:
    """``from_pretrained`` kwargs that load the weights ``quantization``-bit (nothing for None)."""
    if quantization is None:
        return {}
    if quantization not in QUANTIZATIONS:
        raise InputError(f"quantization must be one of {', '.join(QUANTIZATIONS)} or None, got {quantization!r}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MissingExtraError(f"{quantization} loading needs bitsandbytes: {INSTALL_HINT}")
    import logging

    import torch
    from transformers import BitsAndBytesConfig

    # bitsandbytes' CPU backend warns at import that an optional Hub kernel is absent; it runs without it
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if quantization == "int8":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quantization, bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=getattr(torch, compute_dtype))
    return {"quantization_config": config}


def is_quantized(hf_model: Any) -> bool:
    """The model's weights were loaded low-bit by bitsandbytes."""
    return bool(getattr(hf_model, "is_loaded_in_4bit", False) or getattr(hf_model, "is_loaded_in_8bit", False))


def keep_autograd(hf_model: Any) -> None:
    """Keep bitsandbytes' 4-bit layers differentiable on CPU (a no-op for other models).

    On a CPU with AVX512-BF16, bitsandbytes 0.50 repacks a 4-bit layer's weights at its first forward pass in eval
    mode into a layout whose kernel (``gemv_4bit``) has no autograd: from then on, training passes no gradient
    through the frozen weights (the input's grad is None), so QLoRA would silently train wrong. The
    layer's ``support_avx512bf16_for_cpu`` switch turns the repacking off; inference then uses the standard
    4-bit kernel, which computes the same product.
    """
    if not is_quantized(hf_model):
        return
    for module in hf_model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def prepare_for_training(hf_model: Any, gradient_checkpointing: bool) -> Any:
    """QLoRA's preparation of a low-bit backbone (peft): frozen quantized weights, float32 norms, input grads."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(hf_model, use_gradient_checkpointing=gradient_checkpointing)


def merge_into_full_precision(trained: Any, full: Any) -> Any:
    """The QLoRA-trained backbone ``trained`` (a peft model over low-bit weights) as a plain float model: each
    quantized projection replaced by ``full``'s float weights of the same name plus the LoRA's delta (peft's
    ``get_delta_weight``), the quantization state dropped. ``full``: the same start model loaded in float32;
    every other weight (norms, embeddings, a resized vocabulary) is kept from ``trained``.

    Written here because peft's ``merge_and_unload`` on bitsandbytes layers re-quantizes the merged sum: the
    saved model would be neither the trained one (the adapter learnt a delta over the float weights' quantized
    view, which QLoRA's merged model is defined as adding to the float weights) nor a float32 model.
    """
    import bitsandbytes as bnb
    import torch
    from peft.tuners.lora import LoraLayer

    originals = dict(full.named_modules())
    quantized = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    for name, module in list(trained.named_modules()):
        if isinstance(module, LoraLayer):
            continue  # its base layer is handled with it, by its parent
        for child_name, child in list(module.named_children()):
            base = child.get_base_layer() if isinstance(child, LoraLayer) else child
            if not isinstance(base, quantized):
                continue
            # peft wraps the backbone as base_model.model.<name>
            plain = f"{name}.{child_name}".removeprefix("base_model.model.").lstrip(".")
            if plain not in originals:
                raise RuntimeError(f"{plain} of the QLoRA-trained model is missing from the float32 start model")
            linear = copy.deepcopy(originals[plain])
            if isinstance(child, LoraLayer):
                with torch.no_grad():
                    for adapter in child.active_adapters:
                        linear.weight += child.get_delta_weight(adapter).to(linear.weight.dtype)
            setattr(module, child_name, linear)
    base_model = getattr(trained, "get_base_model", lambda: trained)()
    quantizer = getattr(base_model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(base_model)  # no longer quantized: its saved config must not say so
    for flag in ("is_loaded_in_4bit", "is_loaded_in_8bit"):
        if getattr(base_model, flag, False):
            setattr(base_model, flag, False)
    return base_model
