"""Where a model comes from and whether its files can be read: a Hugging Face Hub id or a local path, safetensors
weights that are complete, and the JSON files of a model dir that st_llm2vec reads itself, each declared once
(:class:`~st_llm2vec.schema.FileType`: what we rely on in it; other fields are the loaders' business). Checked
before loading, so a corrupt download or a hand-edited file is named, not a traceback from deep inside a loader."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub.utils import HFValidationError, validate_repo_id

from .errors import InputError
from .schema import LIST, MAP, FileType, Key, obj


class CheckpointError(InputError):
    """A checkpoint (a model's weights, an adapter, an llm2vec stack) that cannot be used as given; the message names
    the fix."""


def looks_like_hub_id(ref: str) -> bool:
    """``ref`` has the form of a Hugging Face Hub id ("name" or "owner/name"); anything else
    (``./x``, ``~/x``, ``/abs/path``, ``a/b/c``) can only be a local path."""
    try:
        validate_repo_id(ref)
    except HFValidationError:
        return False
    return True


def check_safetensors(path: Path) -> list[str]:
    """The tensor names of a safetensors file; a CheckpointError if its header or size is corrupt."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(
            f"{path} is not a valid safetensors file ({exc}); it is truncated or corrupt. Re-download or re-save it."
        ) from exc


# --------------------------------------------------------------------------- the JSON files of a model dir

_REFIX = "fix it, or restore it from the original checkpoint or re-save the model"
_SIMILARITIES = ("cosine", "dot", "dot_product", "euclidean", "manhattan", "maxsim", "meanmaxsim")


def _default_prompt_is_a_prompt(config: dict) -> None:
    name, prompts = config.get("default_prompt_name"), config.get("prompts") or {}
    if name is not None and name not in prompts:
        raise ValueError(f"default_prompt_name {name!r} is not one of the prompts ({sorted(prompts) or 'none'})")


HF_CONFIG = FileType("config.json", "the model's transformers config", obj({
    "_name_or_path": Key("str"), "model_type": Key("str"), "is_causal": Key("bool"),
    "use_bidirectional_attention": Key("bool"), "max_position_embeddings": Key("int", low=-1),
    "architectures": Key("list_str"),
}), _REFIX)
MODULES = FileType("modules.json", "the model's module list", Key(LIST, nullable=False, item=obj({
    "idx": Key("int", low=0), "name": Key("str"), "path": Key("str", nullable=False), "type": Key("str", nullable=False),
}, required=("path", "type"))), _REFIX)
ST_CONFIG = FileType("config_sentence_transformers.json", "the model's prompts and similarity", Key(
    "object", nullable=False, fields={
        "prompts": Key(MAP, item=Key("str")), "default_prompt_name": Key("str"),
        "similarity_fn_name": Key("str", choices=_SIMILARITIES + (None,)),
    }, check=_default_prompt_is_a_prompt), _REFIX)
TOKENIZER_CONFIG = FileType("tokenizer_config.json", "the tokenizer's settings", obj({
    "model_max_length": Key("int", low=1), "bos_token": Key("any"), "eos_token": Key("any"),
}), _REFIX)
# A stock Pooling module's config.json (in its folder of a portable dir).
POOLING_CONFIG = FileType("config.json", "the pooling settings", obj({
    "pooling_mode": Key("str"), "include_prompt": Key("bool", nullable=False),
    "embedding_dimension": Key("int", low=1), "word_embedding_dimension": Key("int", low=1),
}), _REFIX)
# A stock Transformer's sentence_bert_config.json, as far as a portable dir's rebuild relies on it.
TRANSFORMER_CONFIG = FileType("sentence_bert_config.json", "the Transformer module's settings", obj({
    "max_seq_length": Key("int", low=1), "do_lower_case": Key("bool"),
    "processor_kwargs": Key("dict"), "tokenizer_args": Key("dict"), "processing_kwargs": Key("dict"),
}), _REFIX)
# A stock WordWeights module's config.json (a portable dir's BOS weighting).
WORD_WEIGHTS_CONFIG = FileType("config.json", "the word weights", obj({
    "vocab": Key("list_str", nullable=False), "word_weights": Key(MAP, nullable=False, item=Key("float", nullable=False)),
    "unknown_word_weight": Key("float", nullable=False),
}, required=("vocab", "word_weights")), _REFIX)
# Any module's config.json, as far as sizing an embed job's shards reads it (Dense, Pooling, Transformer).
MODULE_DIMENSIONS = FileType("config.json", "the module's settings", obj({
    "out_features": Key("int", low=1), "embedding_dimension": Key("int", low=1),
    "word_embedding_dimension": Key("int", low=1),
}), _REFIX)
# The weight map of a sharded checkpoint (model.safetensors.index.json, pytorch_model.bin.index.json).
WEIGHT_INDEX = FileType("model.safetensors.index.json", "the checkpoint's shard index", obj({
    "weight_map": Key(MAP, item=Key("str", nullable=False)),
}), "re-download the checkpoint")
