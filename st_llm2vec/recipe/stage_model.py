"""The model a stage trains: where it starts (a causal LM, or a saved st_llm2vec dir, with an optional llm2vec LoRA
merged), the fresh LoRA it trains, the merge at the end (into the float32 start weights after QLoRA), and the
LLM2Vec settings and citation added to ST's generated model card."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cards import LLM2VEC_CITATION
from ..errors import InputError

if TYPE_CHECKING:
    from .arguments import RecipeArguments

logger = logging.getLogger(__name__)


@dataclass
class StartModel:
    """Where a stage started from, and whether that state exists on disk as is."""

    model_name_or_path: str
    peft_model_name_or_path: str | None
    merged_in_memory: bool


def load_start_model(
    model_name_or_path: str,
    peft_model_name_or_path: str | None = None,
    *,
    pooling_mode: str | None = None,
    bidirectional: bool = True,
    torch_dtype: Any = None,
    attn_implementation: str | None = None,
    format: str = "auto",
    quantization: str | None = None,
):
    """The model a stage starts from, any earlier LoRA merged into its weights; ``(model, StartModel)``.

    ``model_name_or_path`` is a causal-LM checkpoint (made an embedding model with
    :func:`st_llm2vec.from_llm`) or a saved st_llm2vec model dir (either format, e.g. the MNTP output);
    ``peft_model_name_or_path`` an adapter trained on that backbone (llm2vec's MNTP adapters), merged.
    Bidirectionality is proven once, on the final weights. ``quantization`` loads the weights low-bit
    (:mod:`st_llm2vec.lowbit`) for QLoRA; an adapter cannot be merged into those, so that start must be merged on disk.
    """
    from peft import PeftModel

    from ..build import from_llm, load_model, model_kwargs
    from ..pooling_modes import pooling_mode as canonical_mode

    kwargs = model_kwargs(torch_dtype, attn_implementation)
    if quantization and peft_model_name_or_path:
        raise InputError(
            f"quantization {quantization!r} with peft_model_name_or_path: an adapter merged into low-bit weights is "
            "not the model it was trained on. Merge it on disk first (a stage's merged output, or st-llm2vec convert) "
            "and start from that dir.")
    merged = False
    if os.path.isfile(os.path.join(model_name_or_path, "modules.json")):
        model = load_model(model_name_or_path, format=format, device="cpu", quantization=quantization, **kwargs)
        if pooling_mode is not None:
            _set_pooling(model, canonical_mode(pooling_mode), model_name_or_path)
        merged = _merge_injected_adapters(model[0].model, quantization)
    else:
        model = from_llm(
            model_name_or_path, pooling_mode or "mean", bidirectional=bidirectional, format=format, device="cpu",
            quantization=quantization, **kwargs
        )
    if peft_model_name_or_path:
        adapted = PeftModel.from_pretrained(model[0].model, peft_model_name_or_path)
        model[0].set_backbone(adapted.merge_and_unload(), probe=False)
        merged = True
    if merged:
        model[0].set_backbone(model[0].model)  # re-prove bidirectionality once, on the final merged weights
    return model, StartModel(model_name_or_path, peft_model_name_or_path, merged)


def _set_pooling(model: Any, mode: Any, source: str) -> None:
    """The saved model's pooling replaced by ``mode`` (a :class:`~st_llm2vec.pooling_modes.PoolingMode`)."""
    pooling = model[1]
    if getattr(pooling, "pooling_mode", mode.name) == mode.name:
        return
    if mode.eos_suffix or pooling.mode.eos_suffix:
        raise InputError(
            f"{source} pools with {pooling.pooling_mode!r}; switching to {mode.name!r} changes the text suffix too. "
            "Build the model with st_llm2vec.from_llm(..., pooling_mode=...) instead."
        )
    logger.warning("pooling_mode %r replaces the model's %r", mode.name, pooling.pooling_mode)
    pooling.pooling_mode = mode


def _merge_injected_adapters(hf_model: Any, quantization: str | None = None) -> bool:
    """Fold LoRA layers that transformers' PEFT integration injected at load time (an ST dir saved as base +
    adapter) into the weights. Returns True if there were any."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from ..upstream import forget_injected_adapters

    parents = {}
    for name, module in hf_model.named_modules():
        for child_name, child in module.named_children():
            if isinstance(child, BaseTunerLayer):
                parents[f"{name}.{child_name}" if name else child_name] = (module, child_name, child)
    if parents and quantization:
        raise InputError(f"quantization {quantization!r}: this start dir holds an unmerged LoRA adapter, which cannot be "
                         "merged into low-bit weights. Start from a merged dir (save_mode: merged / merge_lora: true).")
    for module, child_name, child in parents.values():
        child.merge()
        setattr(module, child_name, child.get_base_layer())
    if parents:
        forget_injected_adapters(hf_model)
    return bool(parents)


def _loading(arguments: RecipeArguments) -> dict[str, Any]:
    """How a stage's start model is loaded, from its keys (the weights' quantization aside)."""
    return {name: getattr(arguments, name) for name in ("pooling_mode", "torch_dtype", "attn_implementation", "format")}


def start_model(arguments: RecipeArguments, peft_model_name_or_path: str | None = None, bidirectional: bool = True):
    """:func:`load_start_model` with a stage's arguments; says before training when the output cannot be portable."""
    model, start = load_start_model(arguments.model_name_or_path, peft_model_name_or_path, bidirectional=bidirectional,
                                    quantization=arguments.quantization, **_loading(arguments))
    reason = exact_output_reason(model, arguments)
    if reason:
        logger.warning("%s: the trained model will be saved in the exact format (loading it needs st-llm2vec): %s",
                       arguments.TITLE, reason)
    return model, start


def exact_output_reason(model: Any, arguments: RecipeArguments) -> str | None:
    """Why a stage's output will not be portable, known before training (None: it will be, if the save-time
    proof passes). ``format: portable`` with a model that cannot be has already raised when it was built."""
    from ..instructions import PORTABLE
    from ..portable import why_not_portable

    if arguments.unmerged_output():
        return "the output keeps its LoRA adapter unmerged (merge_lora: false / save_mode: adapter)"
    if model[0].format == PORTABLE:
        return None
    if arguments.format == "exact":
        return "format: exact was asked for"
    return why_not_portable(model) or "the start model is in the exact format"


def add_lora(model: Any, arguments: RecipeArguments) -> None:
    """A fresh LoRA on the backbone (llm2vec: rank ``lora_r``, alpha 2r, dropout 0.05, all projections)."""
    from .. import lowbit
    from . import lora

    if lowbit.is_quantized(model[0].model):  # QLoRA: peft's k-bit preparation first
        model[0].set_backbone(lowbit.prepare_for_training(model[0].model, gradient_checkpointing=False), probe=False)
    lora.add_lora(model, lora.lora_config(arguments.lora_r, arguments.lora_alpha, arguments.lora_dropout,
                                          arguments.lora_target_modules))


def merge_trained_lora(model: Any, arguments: RecipeArguments) -> None:
    """Fold the trained LoRA into the weights; after QLoRA into the float32 start weights (reloaded), not the
    low-bit ones (:func:`st_llm2vec.lowbit.merge_into_full_precision`)."""
    from .. import lowbit
    from .lora import merge_lora

    if lowbit.is_quantized(model[0].model):
        full, _ = load_start_model(arguments.model_name_or_path, **_loading(arguments))
        model[0].set_backbone(lowbit.merge_into_full_precision(model[0].model, full[0].model))
        return
    merge_lora(model)


# -- the model card ------------------------------------------------------------------------------------


def describe_in_card(model: Any, arguments: RecipeArguments, start: StartModel, extra: Mapping[str, Any] = (),
                     figures: Mapping[str, Any] = ()) -> None:
    """Add the LLM2Vec stage, its settings and the paper to ST's model card (which has data, loss, trainer args), and
    the recipe so far (``model.st_llm2vec_recipe``, saved as ``st_llm2vec_recipe.json`` and rendered in the card):
    the start model and data as the user named them, ``figures`` (steps, batch size, learning rate) and ``extra``."""
    from ..cards import extend_recipe

    stage = {"stage": arguments.STAGE, "title": arguments.TITLE, "data": training_data_name(arguments),
             **dict(figures), "lora_r": arguments.lora_r, "max_seq_length": arguments.max_seq_length,
             **{k: v for k, v in dict(extra).items() if v is not None}}
    model.st_llm2vec_recipe = extend_recipe(start.model_name_or_path, stage, arguments.model_label)
    card = model.model_card_data
    card.tags = sorted(set((card.tags or []) + ["llm2vec", "st-llm2vec", arguments.STAGE]))
    start_name = model.st_llm2vec_recipe["start_model"] or start.model_name_or_path
    if not card.model_name or card.model_name == card.get_default_model_name():
        card.model_name = f"LLM2Vec {arguments.STAGE} model from {Path(start_name).name or start_name}"
    from ..model_files import looks_like_hub_id

    if not os.path.exists(os.path.expanduser(start_name)) and "/" in start_name and looks_like_hub_id(start_name):
        card.base_model = start_name  # a Hub id
    recipe = {
        "llm2vec_stage": arguments.STAGE,
        "start_model": start_name,
        "start_adapter_merged": start.peft_model_name_or_path,
        "lora_r": arguments.lora_r,
        "lora_alpha": arguments.lora_alpha if arguments.lora_alpha is not None else 2 * arguments.lora_r,
        "lora_dropout": arguments.lora_dropout,
        "train_max_seq_length": arguments.max_seq_length,
        **dict(extra),
    }
    recipe = {k: v for k, v in recipe.items() if v is not None}
    card.non_default_hyperparameters = {**recipe, **(card.non_default_hyperparameters or {})}
    card.all_hyperparameters = {**recipe, **(card.all_hyperparameters or {})}
    card.citations = {**(card.citations or {}), "LLM2Vec": LLM2VEC_CITATION}


def training_data_name(arguments: RecipeArguments) -> str | None:
    """The training data as the user named it: ``data_label``, else the dataset name and files of the config."""
    if arguments.data_label:
        return arguments.data_label
    name = getattr(arguments, "dataset_name", None)
    files = getattr(arguments, "train_file", None) or getattr(arguments, "dataset_file_path", None)
    files = ", ".join(files) if isinstance(files, (list, tuple)) else files
    if name and files:
        return f"{name} ({files})"
    return name or files
