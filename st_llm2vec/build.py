"""``from_llm``: one call from a causal-LM checkpoint to a bidirectional ST embedding model.

Also the one place dtypes and loader kwargs are parsed (:func:`parse_dtype`, :func:`model_kwargs`), for
training configs and export alike.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from .encoder import LLM2VecTransformer
from .instructions import llm2vec_chat_template, llm2vec_text_suffix
from .pooling_modes import check_tokenizer, from_stock, pooling_mode as canonical_mode
from .model import LLM2VecModel
from .pooling import LLM2VecPooling
from .instructions import AUTO as AUTO_FORMAT
from .instructions import EXACT, FORMATS, PORTABLE
from .portable import PortableFormatError, make_portable, why_not_portable_settings
from .precision import DEFAULT_MIN_COSINE
from .proof import foreign_modules
from .errors import InputError
from .model_files import (HF_CONFIG, MODULES, POOLING_CONFIG, ST_CONFIG, TOKENIZER_CONFIG, TRANSFORMER_CONFIG,
                          WORD_WEIGHTS_CONFIG)

logger = logging.getLogger(__name__)

AUTO = "auto"


def parse_dtype(value: Any) -> torch.dtype | str | None:
    """A dtype as configs and the CLI write it ("bfloat16", "auto", a ``torch.dtype`` or None) in the form
    the HF loader takes; the one parser training, config checks and export share."""
    if value is None or value == "auto" or isinstance(value, torch.dtype):
        return value
    dtype = getattr(torch, value, None) if isinstance(value, str) else None
    if not isinstance(dtype, torch.dtype):
        raise InputError(f"torch_dtype {value!r} is not a torch dtype (use bfloat16, float16, float32 or auto).")
    return dtype


def model_kwargs(torch_dtype: Any = None, attn_implementation: str | None = None) -> dict[str, Any]:
    """The ``from_pretrained`` kwargs for a dtype and an attention implementation, each only when given
    (so the loader's own defaults apply otherwise)."""
    kwargs: dict[str, Any] = {}
    if torch_dtype is not None:
        kwargs["dtype"] = parse_dtype(torch_dtype)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


def original_name_or_path(model_name_or_path: str) -> str | None:
    """``_name_or_path`` as written in config.json: llm2vec keys its instruct wrappers on it.

    transformers overwrites ``config.name_or_path`` with the load path, so read the file itself.
    """
    if os.path.isfile(os.path.join(model_name_or_path, HF_CONFIG.name)):
        return HF_CONFIG.read(model_name_or_path).get("_name_or_path") or None
    return model_name_or_path  # a Hub id names itself


def check_model_name(model_name_or_path: Any) -> str:
    """A model given as a path or Hub id (a ``str`` or ``os.PathLike``), as a str; an InputError naming the fix."""
    if isinstance(model_name_or_path, os.PathLike):
        model_name_or_path = os.fspath(model_name_or_path)
    if not isinstance(model_name_or_path, str) or not model_name_or_path.strip():
        raise InputError(f"model_name_or_path must be a checkpoint directory or a Hugging Face Hub id (a non-empty "
                         f"str), got {model_name_or_path!r}")
    return model_name_or_path


def from_llm(
    model_name_or_path: str,
    pooling_mode: str = "mean",
    *,
    skip_instruction: bool = True,
    max_seq_length: int | None = 512,
    doc_max_length: int | None = 400,
    chat_template: str | None = AUTO,
    text_suffix: str | None = AUTO,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
    bidirectional: bool = True,
    max_batch_tokens: int | None = None,
    format: str = AUTO_FORMAT,
    device: str | None = None,
    precision: str = "float32",
    precision_texts: list[str] | None = None,
    precision_min_cosine: float = DEFAULT_MIN_COSINE,
    quantization: str | None = None,
    **model_kwargs: Any,
) -> LLM2VecModel:
    """Load a decoder LLM as a bidirectional ``SentenceTransformer`` with llm2vec pooling.

    Defaults follow llm2vec 0.2.3 (``max_length`` 512, ``doc_max_length`` 400, ``skip_instruction``).
    ``chat_template`` / ``text_suffix`` = "auto" apply llm2vec's instruct wrapper and eos suffix for the
    model; pass None to turn them off or a string to set them. Extra kwargs (``dtype``,
    ``attn_implementation``, …) reach the HF loader. ``bidirectional=False`` keeps the model causal
    (a baseline, or llm2vec's causal Qwen2). ``max_batch_tokens`` caps the tokens of one backbone call
    (token-budget batching; see ``LLM2VecTransformer``). Raises ``BidirectionalityError`` for a model that
    cannot be made bidirectional.

    ``format`` decides what the model computes for instructions and how ``save()`` writes it (see
    ``portable.py``): ``"portable"`` — stock sentence-transformers semantics, saved as stock modules that
    load anywhere without st_llm2vec (a ``PortableFormatError`` if the model cannot be); ``"exact"`` —
    llm2vec's exact semantics, saved with our module classes; ``"auto"`` (default) — portable when the
    model can be (mean / eos_token / bos_token pooling, no instruct wrapper), else exact (logged).

    ``precision``: "float32" (default); "bf16-mixed" — a measured plan (:mod:`st_llm2vec.precision`): bf16
    projections where they keep every calibration text's cosine to the float32 model >= ``precision_min_cosine``
    (``precision_texts``: yours, default built-in), refused otherwise; "auto" — bf16-mixed where bf16 is native
    (CUDA, AVX512-BF16 / AMX), else float32; "saved" — the plan a saved dir carries, re-measured here.
    ``quantization``: "nf4", "fp4" or "int8" loads the weights through bitsandbytes (:mod:`st_llm2vec.lowbit`).
    """
    model_name_or_path = check_model_name(model_name_or_path)
    if format not in FORMATS:
        raise InputError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    from . import lowbit, precision as precisions

    precisions.resolve(precision, quantization)  # a bad value or combination fails before the weights load
    model_kwargs = {**model_kwargs, **lowbit.loading_kwargs(quantization)}
    mode = canonical_mode(pooling_mode)  # a name or alias: made a PoolingMode once, here
    name = original_name_or_path(model_name_or_path)
    chat_template = llm2vec_chat_template(name) if chat_template == AUTO else chat_template
    why = why_not_portable_settings(mode, skip_instruction, chat_template) if format == PORTABLE else None
    if why:  # refused where the two settings meet, before the weights load
        raise PortableFormatError(f"format='portable' cannot be used here: {why}. Use format='exact' or 'auto'.")
    encoder = LLM2VecTransformer(
        model_name_or_path,
        doc_max_length=doc_max_length,
        chat_template=chat_template,
        max_seq_length=max_seq_length,
        bidirectional=bidirectional,
        max_batch_tokens=max_batch_tokens,
        model_kwargs=model_kwargs,
    )
    if text_suffix == AUTO:
        text_suffix = llm2vec_text_suffix(encoder.config.model_type, name, mode, encoder.tokenizer.eos_token)
    encoder.text_suffix = text_suffix
    check_tokenizer(mode, encoder.tokenizer, repr(model_name_or_path))

    pooling = LLM2VecPooling(encoder.get_embedding_dimension(), mode, skip_instruction)
    model = LLM2VecModel(
        modules=[encoder, pooling], prompts=prompts, default_prompt_name=default_prompt_name, device=device
    )
    if format != EXACT:
        try:
            make_portable(model)
        except PortableFormatError as exc:
            if format == PORTABLE:
                raise
            logger.info("Using the exact format (saved models need st_llm2vec to load): %s", exc)
    model.portable_required = format == PORTABLE
    precisions.prepare(model, precision, source=model_name_or_path, texts=precision_texts,
                       min_cosine=precision_min_cosine)
    return model


def read_portable_dir(path: str) -> dict[str, Any] | None:
    """What ``from_llm`` needs to rebuild a portable dir so that it computes what stock ``SentenceTransformer(path)``
    does, or None if it is not one that can be (stock modules then load it as they are).

    A portable dir is stock ``Transformer`` [+ ``WordWeights`` weighting only BOS, to 0] + ``Pooling`` (see
    ``portable.py``). Its files are checked against their schemas (:mod:`.model_files`): a bad one is an error
    naming it. The token limit is stock's: the Transformer's own ``max_seq_length`` if it sets one, else the
    tokenizer's ``model_max_length`` capped at the model's ``max_position_embeddings``.
    """
    if not os.path.isfile(os.path.join(path, MODULES.name)):
        return None
    modules = MODULES.read(path)
    types = [m["type"] for m in modules]
    names = [name.rsplit(".", 1)[-1] for name in types]
    if foreign_modules(types) or names not in (["Transformer", "Pooling"], ["Transformer", "WordWeights", "Pooling"]):
        return None
    if modules[0]["path"]:
        return None  # the backbone in a subfolder: not a layout st_llm2vec writes
    tokenizer_config = TOKENIZER_CONFIG.read(path, missing_ok=True) or {}
    if "WordWeights" in names and not _weights_only_bos(os.path.join(path, modules[1]["path"]), tokenizer_config):
        return None
    pooling = POOLING_CONFIG.read(os.path.join(path, modules[-1]["path"]))
    stock = from_stock(pooling.get("pooling_mode"))
    transformer = TRANSFORMER_CONFIG.read(path, missing_ok=True) or {}
    if stock is None or transformer.get("do_lower_case") or transformer.get("processing_kwargs"):
        return None
    mode = stock.name
    if stock.excludes_prompt and pooling.get("include_prompt", True):
        logger.warning(
            "%s pools the prompt's tokens (include_prompt: true, saved by st-llm2vec < 0.2); it is rebuilt as this "
            "version writes it, the prompt excluded from the mean as llm2vec does: query embeddings change.", path)
    settings: dict[str, Any] = {"pooling_mode": mode}
    st_config = ST_CONFIG.read(path, missing_ok=True)
    if st_config is not None:
        settings["prompts"] = st_config.get("prompts") or None
        settings["default_prompt_name"] = st_config.get("default_prompt_name")
    loader_kwargs = transformer.get("processor_kwargs") or transformer.get("tokenizer_args") or {}
    # None: ST caps the tokenizer's model_max_length at max_position_embeddings, as stock loading does
    settings["max_seq_length"] = transformer.get("max_seq_length") or loader_kwargs.get("model_max_length")
    model_config = HF_CONFIG.read(path, missing_ok=True) or {}
    if model_config.get("is_causal") is not None:  # st-llm2vec writes it: a causal baseline stays causal
        settings["bidirectional"] = not model_config["is_causal"]
    return settings


def _weights_only_bos(folder: str, tokenizer_config: dict[str, Any]) -> bool:
    """A portable dir's ``WordWeights`` gives the BOS token weight 0 and every other token 1 (what the encoder's
    portable pooling computes); anything else is left to stock modules."""
    config = WORD_WEIGHTS_CONFIG.read(folder)
    bos = tokenizer_config.get("bos_token")
    bos = bos.get("content") if isinstance(bos, dict) else bos
    return config.get("unknown_word_weight", 1) == 1 and config.get("word_weights") == {bos: 0}


def load_model(path: str, format: str = AUTO_FORMAT, *, precision: str = "float32",
               precision_texts: list[str] | None = None, precision_min_cosine: float = DEFAULT_MIN_COSINE,
               quantization: str | None = None, **kwargs: Any) -> LLM2VecModel:
    """A saved model dir of either format, for more training or encoding with st_llm2vec's encoder.

    A portable dir (stock modules) is rebuilt with :func:`from_llm` (same embeddings, plus packing and
    the probe); an exact dir loads as it was saved. ``format``: "auto" keeps the saved format,
    "portable" / "exact" switch to it (``PortableFormatError`` if the model cannot be portable).
    ``precision`` and ``quantization`` as in :func:`from_llm` ("saved": the dir's own precision plan).
    ``kwargs`` (``dtype``, ``attn_implementation``, ``device``, …) reach the loader.
    """
    from . import lowbit, precision as precisions

    path = check_model_name(path)
    extra = {"precision": precision, "precision_texts": precision_texts, "precision_min_cosine": precision_min_cosine}
    if format not in FORMATS:
        raise InputError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    settings = read_portable_dir(path)
    if settings is not None:
        # the saved tokenizer appends any EOS suffix itself, and prompts are stored as stock prompts
        return from_llm(path, **settings, doc_max_length=None, text_suffix=None, chat_template=None,
                        format=PORTABLE if format == AUTO_FORMAT else format, quantization=quantization, **extra,
                        **kwargs)
    precisions.resolve(precision, quantization)  # a bad value or combination fails before the weights load
    device = kwargs.pop("device", None)
    kwargs.update(lowbit.loading_kwargs(quantization))
    model = LLM2VecModel(path, device=device, model_kwargs=kwargs or None)
    if format == PORTABLE:
        make_portable(model)
        model.portable_required = True
    elif format == EXACT and getattr(model[0], "format", EXACT) != EXACT:
        raise PortableFormatError(f"{path} computes in the portable format; rebuild it with from_llm(..., format='exact').")
    precisions.prepare(model, precision, source=path, texts=precision_texts, min_cosine=precision_min_cosine)
    return model
