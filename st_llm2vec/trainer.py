"""The one ``SentenceTransformerTrainer`` subclass both training stages (MNTP, contrastive) build on.

Two things the stock trainer (ST 6.2 + transformers 5.2x) gets wrong for us, and nothing else:

- resuming a LoRA run: ST rebuilds the model from ``checkpoint-N`` through transformers' PEFT
  integration, whose parameter names differ from a ``peft.get_peft_model`` backbone (and which needs
  peft >= 0.22 from transformers 5.24 on). We load the adapter weights into the live PeftModel instead;
- ``_save`` under DDP: transformers 5 calls ``_save`` on every process and lets it decide whether to
  write; ST's override does not check, so every rank would write the same files at once.

Built lazily (:func:`base_trainer_class`): importing the trainer stack costs seconds. Also here: the
``torch_dtype`` parsing both stages' configs share (:func:`training_dtype`).
"""

from __future__ import annotations

import functools
import logging
import os

logger = logging.getLogger(__name__)


def training_dtype(value):
    """A training config's ``torch_dtype`` ("bfloat16", "auto", a ``torch.dtype`` or None) for the HF loader."""
    import torch

    if value in (None, "auto") or isinstance(value, torch.dtype):
        return value
    if not isinstance(getattr(torch, str(value), None), torch.dtype):
        raise ValueError(f"torch_dtype {value!r} is not a torch dtype (use bfloat16, float16, float32 or auto).")
    return getattr(torch, value)


@functools.lru_cache(maxsize=None)
def base_trainer_class():
    """``LLM2VecTrainer``: ``SentenceTransformerTrainer`` with adapter-aware resume and main-process-only saves."""
    from accelerate.utils import extract_model_from_parallel
    from peft import PeftModel, set_peft_model_state_dict
    from peft.utils import load_peft_weights
    from sentence_transformers import SentenceTransformerTrainer

    class LLM2VecTrainer(SentenceTransformerTrainer):
        def _save(self, output_dir: str | None = None, state_dict=None) -> None:
            if not self.args.should_save:
                return
            super()._save(output_dir, state_dict)

        def _load_from_checkpoint(self, checkpoint_path: str, model=None) -> None:
            st_model = extract_model_from_parallel(self.model)
            backbone = st_model[0].model
            has_adapter = any(
                os.path.isfile(os.path.join(checkpoint_path, name))
                for name in ("adapter_model.safetensors", "adapter_model.bin")
            )
            if not (isinstance(backbone, PeftModel) and has_adapter):
                return super()._load_from_checkpoint(checkpoint_path)
            weights = load_peft_weights(checkpoint_path, device=str(st_model.device))
            result = set_peft_model_state_dict(backbone, weights)
            unexpected = list(getattr(result, "unexpected_keys", None) or [])
            if unexpected:
                raise ValueError(f"{checkpoint_path}: adapter weights do not fit the model: {unexpected[:5]} …")
            logger.info("Loaded adapter weights from %s", checkpoint_path)

    return LLM2VecTrainer
