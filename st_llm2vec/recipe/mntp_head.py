"""The causal LM's own head for MNTP: found in the checkpoint the model came from (read without loading the whole
causal LM), tied to the input embeddings, or given; with the post-projection step of the model's head (logit
capping or scaling), so that MNTP predicts tokens exactly as the causal LM does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import InputError


class LMHeadError(InputError):
    """No LM head could be found for the model (untied head without ``lm_head.weight``)."""


def ties_word_embeddings(config: Any) -> bool:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text_config, "tie_word_embeddings", None)
    if value is None:
        value = getattr(config, "tie_word_embeddings", False)
    return bool(value)


def _locate(path: str, filename: str) -> str | None:
    if os.path.isdir(path):
        candidate = os.path.join(path, filename)
        return candidate if os.path.isfile(candidate) else None
    from transformers.utils import cached_file

    return cached_file(
        path,
        filename,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )


def read_checkpoint_tensors(path: str, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Read only the named tensors of a (possibly sharded) safetensors or ``.bin`` checkpoint."""
    found: dict[str, torch.Tensor] = {}
    for index_name, single_name in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        files: dict[str, list[str]] = {}
        index_file = _locate(path, index_name)
        if index_file:
            with open(index_file, encoding="utf-8") as f:
                weight_map = json.load(f).get("weight_map", {})
            for name in names:
                if name in weight_map:
                    files.setdefault(weight_map[name], []).append(name)
        else:
            files = {single_name: list(names)}
        for filename, wanted in files.items():
            local = _locate(path, filename)
            if not local:
                continue
            if local.endswith(".safetensors"):
                from safetensors import safe_open

                with safe_open(local, framework="pt") as f:
                    keys = set(f.keys())
                    found.update({n: f.get_tensor(n) for n in wanted if n in keys})
            else:
                state = torch.load(local, map_location="cpu", weights_only=True)
                found.update({n: state[n] for n in wanted if n in state})
        if found or index_file:
            return found
    return found


def logit_transform(config: Any):
    """The post-projection step of the model's causal-LM head, from its config (identity for most).

    transformers' heads: Gemma 2/3 ``final_logit_softcapping`` (tanh capping), Cohere ``logit_scale``
    (multiply), Granite ``logits_scaling`` (divide). Llama, Mistral, Qwen2 and Gemma (1) — llm2vec's
    architectures — use a bare linear layer.
    """
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    model_type = getattr(text_config, "model_type", "") or ""
    cap = getattr(text_config, "final_logit_softcapping", None)
    if cap:
        return lambda logits: torch.tanh(logits / cap) * cap
    if model_type.startswith("cohere") and getattr(text_config, "logit_scale", None):
        scale = text_config.logit_scale
        return lambda logits: logits * scale
    if model_type.startswith("granite") and getattr(text_config, "logits_scaling", None):
        scaling = text_config.logits_scaling
        return lambda logits: logits / scaling
    return None


def load_lm_head(source: str, config: Any, dtype: torch.dtype | None = None) -> nn.Linear | None:
    """The untied LM head of the causal-LM checkpoint ``source``; None when the head is tied.

    Raises :class:`LMHeadError` for an untied checkpoint without ``lm_head.weight`` (e.g. a bare
    ``AutoModel`` save, or an st_llm2vec model dir: pass ``lm_head=`` the causal-LM checkpoint it came from).
    """
    if ties_word_embeddings(config):
        return None
    tensors = read_checkpoint_tensors(source, ["lm_head.weight", "lm_head.bias"])
    if "lm_head.weight" not in tensors:
        raise LMHeadError(
            f"{source!r} has no 'lm_head.weight' and its config does not tie the LM head to the input "
            "embeddings (tie_word_embeddings=False), so MNTP has no head to predict tokens with. Load the "
            "model from a causal-LM checkpoint (…ForCausalLM weights), or pass MNTPLoss(model, lm_head=...) "
            "a checkpoint path or an nn.Linear."
        )
    weight = tensors["lm_head.weight"]
    bias = tensors.get("lm_head.bias")
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    head.weight = nn.Parameter(weight.to(dtype) if dtype else weight)
    if bias is not None:
        head.bias = nn.Parameter(bias.to(dtype) if dtype else bias)
    return head


