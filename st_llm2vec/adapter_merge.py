"""LoRA adapters folded into an st_llm2vec model's backbone, in order, after checking that each fits the backbone it
lands on (architecture family, every tensor's place and shape): an llm2vec checkpoint stack
(:mod:`st_llm2vec.llm2vec_checkpoints`) becomes one model. LoRA deltas add up, so merging each adapter in turn
equals llm2vec's merge-MNTP-then-apply-supervised.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import torch
from sentence_transformers import SentenceTransformer

from .llm2vec_checkpoints import ADAPTER_CONFIG
from .model_files import CheckpointError

if TYPE_CHECKING:
    from .llm2vec_checkpoints import Adapter

logger = logging.getLogger(__name__)

_PEFT_PREFIX = "base_model.model."


def _family(class_name: str) -> str | None:
    """'LlamaBiModel' / 'MistralForCausalLM' / 'GPT2LMHeadModel' -> 'llama' / 'mistral' / 'gpt2'."""
    match = re.match(r"^([A-Za-z0-9]+?)(?:Bi)?(?:For[A-Z]\w*|LMHeadModel|Model)$", class_name or "")
    return match.group(1).lower() if match else None


def check_architecture(adapter: Adapter, backbone: torch.nn.Module) -> None:
    """Refuse an adapter whose recorded base class belongs to another architecture family."""
    recorded = (adapter.config.get("auto_mapping") or {}).get("base_model_class")
    family = _family(recorded) if recorded else None
    model_type = str(getattr(backbone.config, "model_type", "")).replace("_", "").replace("-", "").lower()
    if family and model_type and family != model_type:
        raise CheckpointError(
            f"Adapter {adapter.name!r} was trained on {recorded} ({family}), but the base is a {model_type} model "
            f"({type(backbone).__name__}): use the adapter with the base it was trained on."
        )


def _remap_keys(keys: list[str], backbone: torch.nn.Module) -> dict[str, str]:
    """Adapter key -> key relative to ``backbone``; adapters trained on a ``*ForCausalLM`` carry its prefix."""
    prefix = f"{getattr(backbone, 'base_model_prefix', '') or 'model'}."
    names = {n for n, _ in backbone.named_modules()}
    mapping = {}
    for key in keys:
        rel = key[len(_PEFT_PREFIX):] if key.startswith(_PEFT_PREFIX) else key
        module = rel.split(".lora_")[0] if ".lora_" in rel else rel.rsplit(".", 1)[0]
        if module not in names and module.startswith(prefix) and module[len(prefix):] in names:
            rel = rel[len(prefix):]
        mapping[key] = rel
    return mapping


def _expected_shape(backbone: torch.nn.Module, rel: str, shape: tuple[int, ...]) -> tuple[str, Any] | None:
    """(module path, what the base needs) when adapter tensor ``rel`` does not fit the backbone, else None."""
    match = re.match(r"^(.*)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)(?:\.weight)?$", rel)
    if match is None:  # a full weight (modules_to_save)
        try:
            param = backbone.get_parameter(rel)
        except AttributeError:
            return rel, "no such parameter"
        return None if tuple(param.shape) == shape else (rel, tuple(param.shape))
    path, kind = match.groups()
    try:
        module = backbone.get_submodule(path)
    except AttributeError:
        return path, "no such module"
    weight = getattr(module, "weight", None)
    if weight is None or weight.dim() != 2:
        return path, f"a {type(module).__name__} without a 2-D weight"
    if isinstance(module, torch.nn.Embedding):
        rows, cols = module.embedding_dim, module.num_embeddings  # lora_embedding_A is (r, vocab)
    else:
        rows, cols = weight.shape
    checks = {
        "lora_A": (1, cols), "lora_B": (0, rows), "lora_embedding_A": (1, cols),
        "lora_embedding_B": (0, rows), "lora_magnitude_vector": (-1, rows),
    }
    axis, size = checks[kind]
    if len(shape) == 0 or shape[axis] != size:
        return path, f"{kind} dimension {size} (adapter has shape {list(shape)})"
    return None


def load_adapter_weights(adapter: Adapter, backbone: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors keyed for ``backbone``, after checking every one has a place of the right shape."""
    if adapter.weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(adapter.weights))
    else:
        tensors = torch.load(str(adapter.weights), map_location="cpu", weights_only=True)
    mapping = _remap_keys(list(tensors), backbone)
    lm_head = [k for k, rel in mapping.items() if rel.split(".")[0] == "lm_head"]
    if lm_head:  # an MNTP adapter may train the LM head, which an embedding model drops
        logger.info("Adapter %s: skipping %d LM-head tensors (not part of the embedding model)", adapter.name, len(lm_head))
    problems = []
    for key, rel in mapping.items():
        if key not in lm_head:
            problem = _expected_shape(backbone, rel, tuple(tensors[key].shape))
            if problem:
                problems.append(problem)
    if problems:
        shown = "; ".join(f"{path}: base has {need}" for path, need in problems[:3])
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CheckpointError(
            f"Adapter {adapter.name!r} does not fit the base model {type(backbone).__name__} "
            f"(hidden size {getattr(backbone.config, 'hidden_size', '?')}, "
            f"{getattr(backbone.config, 'num_hidden_layers', '?')} layers): {shown}{more}. "
            "It was trained on a different base; pass the base it was trained on."
        )
    return {_PEFT_PREFIX + rel: tensors[key] for key, rel in mapping.items() if key not in lm_head}


def merge_adapters(model: SentenceTransformer, adapters: tuple[Adapter, ...] | list[Adapter]) -> None:
    """Merge each LoRA into the backbone (``model[0].model``) in order, then re-prove bidirectionality."""
    from peft import LoraConfig, PeftModel, set_peft_model_state_dict

    encoder = model[0]
    for number, adapter in enumerate(adapters, 1):
        backbone = encoder.model
        check_architecture(adapter, backbone)
        state = load_adapter_weights(adapter, backbone)
        config = LoraConfig.from_pretrained(str(adapter.path))
        config.inference_mode = True
        config.base_model_name_or_path = None
        peft_model = PeftModel(backbone, config)
        dtype = next(backbone.parameters()).dtype
        result = set_peft_model_state_dict(peft_model, {k: v.to(dtype) for k, v in state.items()})
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        missing = [k for k in getattr(result, "missing_keys", []) or [] if ".lora_" in k]
        if unexpected or missing:
            example = (unexpected or missing)[0]
            raise CheckpointError(
                f"Adapter {adapter.name!r} does not match its own {ADAPTER_CONFIG}: {len(unexpected)} tensors have "
                f"no target module and {len(missing)} target modules have no tensors (e.g. {example}). "
                "The adapter files are incomplete or from different adapters."
            )
        # re-prove bidirectionality once, on the final merged weights
        encoder.set_backbone(peft_model.merge_and_unload(), probe=number == len(adapters))
        logger.info("Merged adapter %s", adapter.name)
