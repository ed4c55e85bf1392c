"""LoRA on the backbone of an st_llm2vec model, through peft's own API.

transformers' PEFT integration (what ST's ``add_adapter`` calls) pins peft versions that move with
each transformers release; peft's ``get_peft_model`` / ``merge_and_unload`` do not, so use them.
"""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model
from sentence_transformers import SentenceTransformer

# llm2vec's train configs: every attention and MLP projection.
LLM2VEC_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_config(
    r: int = 16, alpha: int | None = None, dropout: float = 0.05, target_modules: list[str] | None = None
) -> LoraConfig:
    """llm2vec's LoRA defaults: r=16, alpha=2r, dropout 0.05, all projections."""
    return LoraConfig(
        r=r,
        lora_alpha=alpha if alpha is not None else 2 * r,
        lora_dropout=dropout,
        target_modules=list(target_modules or LLM2VEC_LORA_TARGETS),
        bias="none",
        task_type=None,
    )


def add_lora(model: SentenceTransformer, config: LoraConfig | None = None) -> PeftModel:
    """Wrap the backbone (``model[0].model``) in a fresh trainable LoRA; the rest is frozen."""
    encoder = model[0]
    # a fresh LoRA's B matrices are zero: the wrapped backbone computes what the proven one did
    encoder.set_backbone(get_peft_model(encoder.model, config or lora_config()), probe=False)
    return encoder.model


def merge_lora(model: SentenceTransformer) -> None:
    """Fold the backbone's LoRA into its weights, then re-prove bidirectionality on the result."""
    encoder = model[0]
    if isinstance(encoder.model, PeftModel):
        encoder.set_backbone(encoder.model.merge_and_unload())
