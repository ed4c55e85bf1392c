"""Every private name of another library that st_llm2vec uses, in one place, with why no public API does it.

Each is a break waiting for the next upgrade of that library, so ``tests/test_upstream.py`` checks that
every one still exists on the installed versions: an upgrade that drops or renames one fails there, by
name, instead of somewhere inside a training run. Where a public API does the job, the code uses it
instead (``tokenizer.backend_tokenizer``, ``Transformer.unpad_inputs``, ``generate_model_card``,
``PretrainedConfig.name_or_path``) and nothing is listed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PrivateUse:
    """``owner`` (``module:Class``) has the private ``name`` we ``use`` (read, call, or override); ``why``."""

    owner: str
    name: str
    use: str
    why: str

    def resolve(self) -> Any:
        """The owning class (ImportError / AttributeError if the library moved it)."""
        module, _, cls = self.owner.partition(":")
        return getattr(importlib.import_module(module), cls)


PRIVATE_USES: tuple[PrivateUse, ...] = (
    PrivateUse("sentence_transformers.base.model:BaseModel", "_module_classes", "replace (st_llm2vec/__init__.py)",
               "the one class lookup ST consults before its trust_remote_code gate: registering our two classes "
               "there lets exact-format dirs load after `import st_llm2vec`; ST has no registration API"),
    PrivateUse("sentence_transformers.base.model:BaseModel", "_get_model_config", "call (portable.write_portable)",
               "config_sentence_transformers.json exactly as ST's save writes it, without saving the whole model"),
    PrivateUse("sentence_transformers.base.modules.transformer:Transformer", "_get_prompt_length",
               "call (the portable proof, in a process with stock ST)",
               "the prompt length stock pooling will skip, read from stock code to prove ours equal"),
    PrivateUse("sentence_transformers.base.modules.transformer:Transformer", "_load_config", "override (encoder)",
               "the hook between reading config.json and building the model: refuse non-decoders before any weight "
               "loads and build the model bidirectional from the start"),
    PrivateUse("sentence_transformers.base.modules.transformer:Transformer", "_load_model", "override (encoder)",
               "the weight-loading hook, wrapped to silence the expected unused-lm_head report"),
    PrivateUse("sentence_transformers.base.modules.transformer:Transformer", "_can_flatten_inputs",
               "override (encoder)", "ST's packing decision, extended to document-masked sdpa / eager / flex packing"),
    PrivateUse("sentence_transformers.base.modules.transformer:Transformer", "_merge_processing_kwargs",
               "call (encoder)", "ST's precedence of per-call over module processing_kwargs, so ours matches it"),
    PrivateUse("sentence_transformers.base.modules.transformer:Transformer", "_is_flash_attention_requested",
               "call (encoder)", "whether the varlen flash kernels will run, as ST decides it"),
    PrivateUse("transformers.integrations.peft:PeftAdapterMixin", "_hf_peft_config_loaded",
               "write (train.recipe)", "marks injected adapters gone after we merge them by hand; transformers has no "
               "merge-and-unload for adapters its own integration injected"),
    PrivateUse("transformers:PretrainedConfig", "_attn_implementation", "read (encoder, packing)",
               "the attention implementation a model runs, as transformers' own modules read it"),
    PrivateUse("transformers:Trainer", "_save", "override (train.trainer)",
               "transformers 5 calls it on every process; ours writes on the main process only"),
    PrivateUse("transformers:Trainer", "_save_checkpoint", "override (train.trainer)",
               "the one place a checkpoint is complete: our completion marker is written after it"),
    PrivateUse("transformers:Trainer", "_load_from_checkpoint", "override (train.trainer)",
               "resuming a LoRA run into the live PeftModel (transformers' own path renames its parameters)"),
    PrivateUse("transformers:Trainer", "_get_output_dir", "call (train.trainer)", "where the trainer writes checkpoints"),
    PrivateUse("transformers:Trainer", "_memory_tracker", "call (train.trainer)",
               "closing the metrics of a resumed run that has nothing left to train, as train() would"),
)


def st_model_config(model: Any) -> dict[str, Any]:
    """What ST writes to config_sentence_transformers.json for ``model`` (see :data:`PRIVATE_USES`)."""
    return model._get_model_config()


def forget_injected_adapters(hf_model: Any) -> None:
    """After merging the adapters transformers' PEFT integration injected: the model carries none any more."""
    if hasattr(hf_model, "peft_config"):
        del hf_model.peft_config
    hf_model._hf_peft_config_loaded = False


def attn_implementation(config: Any) -> str | None:
    """The attention implementation a model with ``config`` runs."""
    return getattr(config, "_attn_implementation", None)
