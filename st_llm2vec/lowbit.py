"""Low-bit weights through bitsandbytes: 4-bit (NF4 / FP4) or 8-bit (LLM.int8) loading, and the k-bit preparation
QLoRA training needs (peft's ``prepare_model_for_kbit_training``).

bitsandbytes >= 0.50 runs both on CPU as well as on CUDA, so the low-bit paths are tested without a GPU. Only
the loader kwargs and peft's own preparation are assembled here; the quantization is bitsandbytes' and
transformers'.
"""

from __future__ import annotations

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


def prepare_for_training(hf_model: Any, gradient_checkpointing: bool) -> Any:
    """QLoRA's preparation of a low-bit backbone (peft): frozen quantized weights, float32 norms, input grads."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(hf_model, use_gradient_checkpointing=gradient_checkpointing)
