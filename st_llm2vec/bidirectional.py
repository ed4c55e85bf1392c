"""Switch a transformers decoder to bidirectional attention, and prove that it worked.

transformers 5.x honours ``config.is_causal = False`` for most decoders, but not all (StableLM with
SDPA stays causal, some attention kernels read a per-module ``is_causal`` flag). So the switch sets
every flag we know of and a behavioural probe then checks the result: a silently causal model is
never handed back.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from .errors import InputError
from .upstream import attn_implementation


class BidirectionalityError(InputError):
    """The model could not be made bidirectional (or is not a decoder-only LLM)."""


class NonFiniteWeightsError(InputError):
    """The model computes NaN / inf: corrupt weights, or a dtype too narrow for them."""


def check_decoder_only(config) -> None:
    """Refuse encoders (BERT, …) and encoder-decoders: the recipe is for decoder-only LLMs."""
    model_type = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False):
        raise BidirectionalityError(
            f"{model_type!r} is an encoder-decoder model; st_llm2vec converts decoder-only LLMs "
            "(Llama, Mistral, Qwen, Gemma, …). Use sentence_transformers.SentenceTransformer for it."
        )
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        raise BidirectionalityError(
            f"{model_type!r} is not a decoder-only LLM (it is an encoder or has no causal-LM head in transformers); "
            "st_llm2vec converts decoder-only LLMs (Llama, Mistral, Qwen, Gemma, …). "
            "For encoders use sentence_transformers.SentenceTransformer directly."
        )


def enable_bidirectional(model: PreTrainedModel) -> PreTrainedModel:
    """Set every causality switch transformers reads: config flags and per-module ``is_causal``."""
    configs = [model.config]
    configs += [getattr(model.config, name) for name in getattr(model.config, "sub_configs", {}) or {}]
    for config in configs:
        if config is None:
            continue
        config.is_causal = False
        if hasattr(config, "use_bidirectional_attention"):
            config.use_bidirectional_attention = True
    for module in model.modules():
        if getattr(module, "is_causal", None) is True:
            module.is_causal = False
    return model


def _probe_ids(model: PreTrainedModel, length: int) -> torch.Tensor:
    """Ordinary (non-special) token ids, fixed by a seed, so the probe is repeatable."""
    vocab = model.get_input_embeddings().num_embeddings
    low = min(vocab // 4, 100)
    generator = torch.Generator().manual_seed(0)
    return torch.randint(low, vocab, (1, length), generator=generator)


def _relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).float().norm() / a.float().norm().clamp_min(1e-12)).item()


def probe_bidirectional(model: PreTrainedModel, length: int = 8, pad: int = 3) -> dict[str, float]:
    """One tiny forward pass that measures bidirectionality.

    Returns ``early_token_shift`` (how much the first token's hidden state moves when only the last
    token changes: 0 for a causal model) and ``padding_mismatch`` (left-padded vs unpadded row).
    """
    device = next(model.parameters()).device
    ids = _probe_ids(model, length).to(device)
    changed = ids.clone()
    changed[0, -1] = ids[0, 0] if ids[0, 0] != ids[0, -1] else ids[0, 1] + 1
    padded = torch.cat([torch.full((1, pad), int(ids[0, 0]), device=device), ids], dim=1)
    padded_mask = torch.ones_like(padded)
    padded_mask[0, :pad] = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            full = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
            moved = model(input_ids=changed, attention_mask=torch.ones_like(changed)).last_hidden_state
            left = model(input_ids=padded, attention_mask=padded_mask).last_hidden_state
    finally:
        model.train(was_training)
    if not all(torch.isfinite(h).all() for h in (full, moved, left)):
        check_finite_weights(model)  # names corrupt weights, if that is the cause
        raise _overflow_error(model)
    return {
        "early_token_shift": _relative_change(full[0, 0], moved[0, 0]),
        "padding_mismatch": _relative_change(full[0], left[0, pad:]),
    }


def non_finite_parameters(model: torch.nn.Module) -> list[str]:
    """The floating-point parameters and buffers of ``model`` holding NaN / inf, found by reading them.

    A forward pass cannot be trusted to show corrupt weights: SDPA's AVX-512 kernels on CPU turned a NaN
    in ``q_proj`` into finite hidden states in a causal model (measured), so the model would have served
    finite, wrong vectors. One pass over the tensors finds every one. Integer tensors (8-/4-bit
    quantized weights) cannot hold NaN and are skipped.
    """
    bad = []
    for kind, named in (("", model.named_parameters()), ("buffer ", model.named_buffers())):
        for name, tensor in named:
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad.append(kind + name)
    return bad


def check_finite_weights(model: torch.nn.Module) -> None:
    """Raise :class:`NonFiniteWeightsError` naming the parameters that hold NaN / inf (see :func:`non_finite_parameters`)."""
    bad = non_finite_parameters(model)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteWeightsError(
            f"{type(model).__name__}: the weights are not finite (NaN / inf in {shown}); the checkpoint is corrupt or "
            "was saved after a diverged training run. Re-download it or use an earlier checkpoint."
        )


def _overflow_error(model: PreTrainedModel) -> NonFiniteWeightsError:
    """Finite weights whose forward pass gives NaN / inf: the activations overflow the dtype."""
    dtype = next(model.parameters()).dtype
    return NonFiniteWeightsError(
        f"{type(model).__name__}: the weights are finite but the forward pass gives NaN / inf in {dtype}: the "
        "activations overflow this dtype. Load with dtype=torch.bfloat16 or torch.float32."
    )


def check_finite(model: PreTrainedModel, length: int = 8) -> None:
    """Finite weights (read, :func:`check_finite_weights`) and finite outputs of one tiny forward pass
    (activation overflow); causal models get this instead of the bidirectionality probe."""
    check_finite_weights(model)
    device = next(model.parameters()).device
    ids = _probe_ids(model, length).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    finally:
        model.train(was_training)
    if not torch.isfinite(hidden).all():
        raise _overflow_error(model)


def _tolerances(model: PreTrainedModel) -> tuple[float, float]:
    """(minimum shift that counts as bidirectional, maximum padding mismatch) for the model's precision.

    Half precision gets wider bounds, low-bit weights wider still: bitsandbytes' LLM.int8 picks its float16
    outlier columns from the whole batch and nf4 computes in bf16, so padding a row changes its values by up to a few
    percent. Absolute position embeddings or an ignored mask give O(1)."""
    from .lowbit import is_quantized

    if is_quantized(model):
        return 1e-3, 0.2
    if next(model.parameters()).dtype in (torch.float16, torch.bfloat16):
        return 1e-3, 5e-2
    return 1e-5, 1e-3


def ensure_bidirectional(model: PreTrainedModel) -> dict[str, float]:
    """Switch ``model`` to bidirectional attention and prove it, or raise :class:`BidirectionalityError`
    (:class:`NonFiniteWeightsError` when the model computes NaN / inf, which no probe can judge)."""
    check_decoder_only(model.config)
    check_finite_weights(model)  # before the probe: no kernel can hide corrupt weights from a read
    enable_bidirectional(model)
    result = probe_bidirectional(model)
    min_shift, max_mismatch = _tolerances(model)
    arch = type(model).__name__
    impl = attn_implementation(model.config)
    if not result["early_token_shift"] > min_shift:
        alternatives = [i for i in ("eager", "sdpa", "flex_attention") if i != impl]
        raise BidirectionalityError(
            f"{arch} (model_type={model.config.model_type!r}) with attn_implementation={impl!r} stays causal "
            f"after setting config.is_causal=False: changing the last token moved the first token's hidden "
            f"state by {result['early_token_shift']:.2e}. Try attn_implementation="
            + " or ".join(repr(a) for a in alternatives)
            + ", or a transformers version whose model honours is_causal=False."
        )
    if not result["padding_mismatch"] < max_mismatch:
        raise BidirectionalityError(
            f"{arch} with attn_implementation={impl!r} gives different hidden states for a left-padded row "
            f"than for the same row unpadded (relative difference {result['padding_mismatch']:.2e}): either the "
            "attention mask is not applied bidirectionally (try attn_implementation='eager') or the model uses "
            "absolute position embeddings that shift under left padding (not supported: use a RoPE decoder)."
        )
    return result
