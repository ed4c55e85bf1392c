"""Every private name of another library that st_llm2vec uses, and every patch of another library's objects, in one
place, with why no public API does it.

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
    """``owner`` (``module:Class``, or a ``module`` alone) has the private ``name`` we ``use`` (read, call, override,
    or replace: a patch of another library's object is listed too), and ``why``."""

    owner: str
    name: str
    use: str
    why: str

    @property
    def extra(self) -> str:
        """The optional extra that installs the owner's library ("": a dependency of st-llm2vec itself)."""
        return OPTIONAL_LIBRARIES.get(self.owner.partition(".")[0].partition(":")[0], "")

    def resolve(self) -> Any:
        """The owning class or module (ImportError / AttributeError if the library moved it)."""
        module, _, cls = self.owner.partition(":")
        return getattr(importlib.import_module(module), cls) if cls else importlib.import_module(module)


# The libraries of optional extras, by top-level module: the extra that installs each.
OPTIONAL_LIBRARIES = {"mteb": "eval", "bitsandbytes": "lowbit", "llama_cpp": "gguf"}
_ST_MODEL = "sentence_transformers.base.model:BaseModel"
_ST_TRANSFORMER = "sentence_transformers.base.modules.transformer:Transformer"
_PEFT_MIXIN = "transformers.integrations.peft:PeftAdapterMixin"
_CONFIG = "transformers:PretrainedConfig"
_TRAINER = "transformers:Trainer"
_MODULE = "torch.nn:Module"
_LINEAR = "torch.nn:Linear"
_TQDM = "tqdm:tqdm"
_MTEB_HASHES = "mteb._content_hashes"
_LINEAR_4BIT = "bitsandbytes.nn:Linear4bit"
_LLAMA_CPP = "llama_cpp.llama:llama_cpp"

# One entry, two lines: owner, name, use; then why no public API does it.
PRIVATE_USES: tuple[PrivateUse, ...] = (
    PrivateUse(_ST_MODEL, "_module_classes", "replace (st_llm2vec/__init__.py)",
               "the lookup ST consults before its trust_remote_code gate; ST has no registration API for classes"),
    PrivateUse(_ST_MODEL, "_get_model_config", "call (portable_save.write_portable)",
               "config_sentence_transformers.json exactly as ST's save writes it, without saving the whole model"),
    PrivateUse(_ST_TRANSFORMER, "_get_prompt_length", "call (the portable proof, in a process with stock ST)",
               "the prompt length stock pooling will skip, read from stock code to prove ours equal"),
    PrivateUse(_ST_TRANSFORMER, "_load_config", "override (encoder)",
               "between reading config.json and building the model: refuse non-decoders, build it bidirectional"),
    PrivateUse(_ST_TRANSFORMER, "_load_model", "override (encoder)",
               "the weight-loading hook, wrapped to silence the expected unused-lm_head report"),
    PrivateUse(_ST_TRANSFORMER, "_can_flatten_inputs", "override (encoder.layout)",
               "ST's packing decision, extended to document-masked sdpa / eager / flex packing"),
    PrivateUse(_ST_TRANSFORMER, "_merge_processing_kwargs", "call (encoder.tokenize)",
               "ST's precedence of per-call over module processing_kwargs, so ours matches it"),
    PrivateUse(_ST_TRANSFORMER, "_is_flash_attention_requested", "call (encoder)",
               "whether the varlen flash kernels will run, as ST decides it"),
    PrivateUse(_PEFT_MIXIN, "_hf_peft_config_loaded", "write (recipe.stage_model)",
               "marks injected adapters merged by hand: transformers cannot merge-and-unload its own injected ones"),
    PrivateUse(_CONFIG, "_attn_implementation", "read (encoder, bidirectional)",
               "the attention implementation a model runs, as transformers' own modules read it"),
    PrivateUse(_TRAINER, "_save", "override (recipe.trainer)",
               "transformers 5 calls it on every process; ours writes on the main process only"),
    PrivateUse(_TRAINER, "_save_checkpoint", "override (recipe.trainer)",
               "the one place a checkpoint is complete: our completion marker is written after it"),
    PrivateUse(_TRAINER, "_load_from_checkpoint", "override (recipe.trainer)",
               "resuming a LoRA run into the live PeftModel (transformers' own path renames its parameters)"),
    PrivateUse(_TRAINER, "_get_output_dir", "call (recipe.trainer)",
               "where the trainer writes checkpoints"),
    PrivateUse(_TRAINER, "_memory_tracker", "call (recipe.trainer)",
               "closing the metrics of a resumed run that has nothing left to train, as train() would"),
    PrivateUse(_MODULE, "_apply", "override (encoder)",
               "the one method every move (to, cuda, half) goes through: refuse the meta device before weights move"),
    PrivateUse(_MODULE, "_buffers", "read and delete (precision_apply.remove_plan)",
               "dropping the low-precision weight copies a plan registered: torch has no unregister_buffer"),
    PrivateUse(_MODULE, "forward", "replace per instance (precision_apply.apply_plan)",
               "a planned layer's attention and MLP blocks run in bf16 at inference: torch has no per-layer precision"),
    PrivateUse(_LINEAR, "forward", "replace per instance (precision_apply.apply_plan)",
               "a planned layer's projections run its bf16 copy at inference: torch has no per-layer precision"),
    PrivateUse(_TQDM, "__init__", "replace, then restore (console.no_progress_bars)",
               "bars without a switch (ST's model card) stay off with --no-progress; tqdm reads its env once"),
    PrivateUse(_MTEB_HASHES, "hash_item", "call (eval.cached_encoder)",
               "mteb's own key of a cached text, so our embedding cache is mteb's NumpyCache as mteb fills it"),
    PrivateUse(_LINEAR_4BIT, "support_avx512bf16_for_cpu", "write (lowbit.keep_autograd)",
               "turns off the 4-bit repacking whose kernel has no autograd (QLoRA would train wrong on CPU)"),
    PrivateUse(_LLAMA_CPP, "llama_model_default_params", "replace (the GGUF proof, --no-repack)",
               "llama-server's --no-repack: Llama() takes no model params of that kind, its loader reads this"),
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
