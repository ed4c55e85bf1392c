"""The Sentence-Transformers input module: a decoder LLM with proven bidirectional attention.

A thin subclass of ST's ``Transformer``: loading, saving, adapters, dtype/attention passthrough and the
trainer integration stay ST's. What changes is what ST cannot be told, one idea per module here:

- ``checks``: what loading refuses (unusable paths and files, bad saved settings, a tokenizer without EOS);
- the backbone is switched to bidirectional attention and probed at every load (``bidirectional.py``);
- ``tokenize``: text is tokenized with llm2vec's semantics (instruction joining, instruct wrapper, EOS suffix,
  word-level truncation) or, in the portable format, stock ST's; each row's pooled tokens are counted;
- ``layout``: each batch's layout is decided once: left-padded rows with pad = eos and an ``embed_mask`` that
  marks the tokens to pool, or all texts packed into one row (``packing``, ST's ``unpad_inputs``: flash-attn 2's
  varlen kernels, or a document mask that keeps each text's attention inside that text); pieces within the
  ``max_batch_tokens`` budget; rows handed on left- or right-padded.

The class stays here, at ``st_llm2vec.encoder.LLM2VecTransformer``: saved models name it in ``modules.json``.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Sequence
from typing import Any

import torch
from sentence_transformers.base.modules.transformer import TRANSFORMER_TASK_DEFAULTS, Transformer
from transformers.utils import logging as hf_logging

from ..bidirectional import check_decoder_only, check_finite, ensure_bidirectional
from ..errors import InputError, MissingFileError
from ..instructions import EXACT, PORTABLE, POOLING_FEATURES, TOKEN_WEIGHTS_SUM
from ..lowbit import keep_autograd
from . import layout, packing, tokenize
from .checks import (
    CheckedSetting,
    check_chat_template_setting,
    check_eos_and_length,
    check_loadable,
    check_positive,
    check_saved_config,
    load_error,
)


class LLM2VecTransformer(Transformer):
    """A bidirectional decoder LLM as an ST input module, tokenizing the way llm2vec does.

    Args:
        model_name_or_path: HF causal-LM checkpoint (id or dir), or a saved st_llm2vec model dir.
        doc_max_length: llm2vec's word-level truncation of each text to this many tokens (None: off);
            a text whose first word alone exceeds it (no spaces) is cut by tokens instead of emptied.
        chat_template: Jinja template wrapping ``instruction + text`` (off by default; llm2vec's
            instruct wrappers are such templates, see ``instructions.LLM2VEC_CHAT_TEMPLATES``).
        text_suffix: appended after stripping, as llm2vec does for ``eos_token`` pooling.
        bidirectional: False keeps the model causal, explicitly: for a causal baseline, or to
            reproduce llm2vec's Qwen2 models (llm2vec 0.2.3 leaves Qwen2 causal).
        max_seq_length: token limit of the whole input (llm2vec's ``max_length``).
        model_kwargs: passed to the HF loader (``dtype``, ``attn_implementation``, …).
        unpad_inputs: pack each batch into one row without padding (ST's option). None (default):
            every batch where flash-attn 2's varlen kernels are in use (``attn_implementation=
            "flash_attention_2"`` and flash-attn installed); otherwise, in ``encode``, each batch
            whose packed form costs fewer FLOPs than its padded form (sdpa / eager / flex_attention
            with a document mask). True: every batch, with any of these. False: always padded.
        max_batch_tokens: token budget of one backbone call (None: off). A batch whose padded
            size (rows x longest row; packed: its length) exceeds it runs as several calls of at most
            this many tokens, rows grouped by length: pass a large ``batch_size`` to ``encode`` and
            short texts go through in big batches, long ones in small batches, with bounded memory.
        format: how instructions are tokenized and pooled, and so how ``save`` writes the model.
            ``"exact"``: llm2vec's ``instruction.strip() + " " + text``, only the text's last N tokens
            pooled (saved with these module classes). ``"portable"``: stock ST's ``prompt + text``, every
            token but a leading BOS pooled (saved as stock modules, see ``portable.py``).
    """

    config_keys: list[str] = Transformer.config_keys + [
        "doc_max_length", "chat_template", "text_suffix", "bidirectional", "max_batch_tokens", "format",
    ]

    def __init__(
        self,
        model_name_or_path: str,
        *,
        doc_max_length: int | None = None,
        chat_template: str | None = None,
        text_suffix: str | None = None,
        bidirectional: bool = True,
        max_batch_tokens: int | None = None,
        format: str = EXACT,
        max_seq_length: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        config_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        check_loadable(model_name_or_path)
        self.model_name_or_path = model_name_or_path  # where the weights came from (e.g. for an LM head)
        self.bidirectional = bidirectional  # read by _load_config during super().__init__
        modality_config, output_name = TRANSFORMER_TASK_DEFAULTS["feature-extraction"]
        # Plain text only: ST would otherwise route text through the tokenizer's chat template.
        kwargs["modality_config"] = {"text": dict(modality_config["text"])}
        kwargs["module_output_name"] = output_name
        kwargs["transformer_task"] = "feature-extraction"
        kwargs.setdefault("unpad_inputs", None)
        check_positive("max_seq_length", max_seq_length, "the tokenizer's model_max_length")
        try:
            super().__init__(
                model_name_or_path,
                model_kwargs=model_kwargs,
                processor_kwargs=processor_kwargs,
                config_kwargs=config_kwargs,
                max_seq_length=max_seq_length,
                **kwargs,
            )
        except Exception as exc:  # a broken JSON file surfaces as unrelated errors: name it instead
            error = load_error(model_name_or_path, exc)
            if error is None:
                raise
            raise error from exc
        self.doc_max_length = doc_max_length
        self.chat_template = chat_template
        self.text_suffix = text_suffix
        self.max_batch_tokens = max_batch_tokens
        if format not in (EXACT, PORTABLE):
            raise InputError(f"format must be 'exact' or 'portable', got {format!r}")
        self.format = format
        tokenizer = self.tokenizer
        if tokenizer is None:
            raise InputError(f"{model_name_or_path!r} has no tokenizer; st_llm2vec needs a text tokenizer.")
        check_eos_and_length(tokenizer, self.max_seq_length, model_name_or_path)
        vocab_rows = self.model.get_input_embeddings().num_embeddings
        if tokenizer.pad_token_id is None or tokenizer.pad_token_id >= vocab_rows:
            # transformers' Qwen2 tokenizer invents an <|endoftext|> pad past the embedding matrix
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        keep_autograd(self.model)  # before any forward pass: bitsandbytes repacks 4-bit weights at the first one
        if bidirectional:
            self.set_backbone(self.model)  # proves the loaded backbone bidirectional
        else:
            self.model.config.is_causal = True
            check_finite(self.model)  # the probe checks this for bidirectional models

    def set_backbone(self, hf_model: torch.nn.Module, probe: bool = True) -> None:
        """Use ``hf_model`` (an HF model, or a PEFT wrapper of one) as the backbone; for a bidirectional
        encoder with ``probe``, re-prove bidirectional attention on it into ``self.probe``, since new
        weights or wrappers can undo it (``BidirectionalityError``). ``probe=False`` skips those forward
        passes where the attention cannot have changed (a fresh LoRA) or another swap follows."""
        self.model = hf_model
        if self.bidirectional and probe:
            self.probe = ensure_bidirectional(hf_model)

    # -- settings, checked when set ---------------------------------------------------------------

    doc_max_length = CheckedSetting(lambda encoder, value: check_positive("doc_max_length", value, "no truncation"))
    max_batch_tokens = CheckedSetting(lambda encoder, value: check_positive("max_batch_tokens", value, "no budget"))
    chat_template = CheckedSetting(check_chat_template_setting)

    @property
    def max_seq_length(self) -> int | None:
        return Transformer.max_seq_length.fget(self)

    @max_seq_length.setter
    def max_seq_length(self, value: int | None) -> None:
        check_positive("max_seq_length", value, "the tokenizer's model_max_length")
        Transformer.max_seq_length.fset(self, value)

    # -- loading: ST's hooks ------------------------------------------------------------------------

    @classmethod
    def load_config(cls, model_name_or_path: str, subfolder: str = "", config_filename: str | None = None, **kwargs: Any):
        """ST's loader, plus errors naming ``sentence_bert_config.json`` and the key for invalid JSON,
        unknown keys and bad values, and a warning when it keeps the model causal."""
        where = os.path.join(model_name_or_path, subfolder, config_filename or cls.config_file_name)
        if os.path.isdir(os.path.join(model_name_or_path, subfolder)) and not os.path.isfile(where):
            raise MissingFileError(
                f"{where} is missing: it holds this model's encode settings (doc_max_length, chat_template, "
                "text_suffix, bidirectional), which would otherwise silently fall back to defaults. Restore it or re-save the model."
            )
        try:
            config = super().load_config(model_name_or_path, subfolder=subfolder, config_filename=config_filename, **kwargs)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{where} is not valid JSON ({exc}); fix it or re-save the model.") from exc
        allowed = set(inspect.signature(cls.__init__).parameters) | set(inspect.signature(Transformer.__init__).parameters)
        check_saved_config(config, where, allowed, cls.config_keys)
        return config

    def _load_config(self, model_name_or_path: str, backend: str, config_kwargs: dict[str, Any]):
        """Refuse non-decoders before any weights load, and build the model bidirectional from the start."""
        config, is_peft_model = super()._load_config(model_name_or_path, backend, config_kwargs)
        check_decoder_only(config)
        config.is_causal = not self.bidirectional
        return config, is_peft_model

    def _load_model(self, *args: Any, **kwargs: Any):
        """Load quietly: a causal-LM checkpoint's unused ``lm_head`` is expected, not worth a report."""
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            return super()._load_model(*args, **kwargs)
        finally:
            hf_logging.set_verbosity(verbosity)

    def _apply(self, fn, *args: Any, **kwargs: Any):
        """Refuse the meta device before anything moves: weights moved there are gone, and every later
        call would fail (``encode(device="meta")`` would otherwise leave the model unusable)."""
        try:
            target = fn(torch.empty(0))
        except Exception:  # e.g. a device this machine lacks: the real move reports it
            target = None
        if isinstance(target, torch.Tensor) and target.is_meta:
            raise InputError(
                "st_llm2vec models cannot be moved to the 'meta' device: the weights would be dropped and every "
                "later call would fail. Use device='cpu' or 'cuda'; to free memory, delete the model instead."
            )
        return super()._apply(fn, *args, **kwargs)

    # -- texts to features to token states ----------------------------------------------------------

    def preprocess(
        self, inputs: Sequence[str], prompt: str | None = None, **kwargs: Any
    ) -> dict[str, torch.Tensor | Any]:
        """Tokenize texts (with an optional instruction ``prompt``) exactly as llm2vec's ``encode`` does, in the
        batch layout :func:`.layout.choose` decides for this call.

        Padded: ``input_ids`` / ``attention_mask`` left-padded with pad = eos, plus ``embed_mask`` (the last N
        tokens of each row). Packed (``unpad_inputs``, see the class doc): one row of all texts with
        ``position_ids`` restarting per text, ``cu_seq_lens_*`` / ``max_length_*`` and the flattened
        ``embed_mask``; no ``attention_mask``.
        """
        if not inputs:
            return {}
        tokenize.check_texts(inputs)
        max_length = tokenize.call_max_length(self, kwargs)
        if prompt:
            tokenize.check_prompt(self, prompt, max_length)
        ids, pooled, weights_sum = tokenize.tokenize(self, inputs, prompt, max_length)
        lengths = torch.tensor([len(row) for row in ids], dtype=torch.long)
        n = torch.minimum(torch.tensor(pooled, dtype=torch.long), lengths)
        chosen = layout.choose(self, lengths)
        if chosen.packed:
            features = packing.pack(ids, lengths, n)
        else:
            features = layout.padded(ids, lengths, n, self.tokenizer.pad_token_id)
        if weights_sum is not None:
            features[TOKEN_WEIGHTS_SUM] = torch.tensor(weights_sum, dtype=torch.float32)
        features[layout.LAYOUT] = chosen
        return features

    def _count_tokens(self, text: str) -> int:
        """How many tokens ``text`` has alone (no special tokens, cut at ``max_seq_length``), as llm2vec counts them."""
        ids = self.tokenizer(text, add_special_tokens=False, truncation=True, max_length=self.max_seq_length)
        return len(ids["input_ids"])

    def _can_flatten_inputs(self) -> bool:
        """ST's packing decision (it sorts ``encode``'s batches for it): see :func:`.layout.can_flatten`."""
        return layout.can_flatten(self)

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Run the backbone; ``embed_mask`` (and the batch layout) are for pooling only, so they bypass the HF forward.

        A packed batch runs as one row: flash attention gets ``cu_seq_lens_*`` (varlen kernel), any
        other attention a document mask in place of the (absent) padding mask; its outputs come back
        as padded rows (:func:`.packing.unpack`), in the layout the call hands on. Over the
        ``max_batch_tokens`` budget, the batch runs in pieces (:func:`.layout.in_pieces`).
        """
        chosen = layout.of(features)
        pooling_only = {key: features.pop(key) for key in POOLING_FEATURES if key in features}
        budget = self.max_batch_tokens
        if budget is not None and features["input_ids"].numel() > budget:  # rows x width, or the packed length
            name = self.module_output_name
            features = layout.in_pieces(features, budget, lambda sub: self._forward_batch(sub, **kwargs)[name], name)
        else:
            features = self._forward_batch(features, **kwargs)
        features.update(pooling_only)
        if chosen.packed:
            features = packing.unpack(features, right=chosen.right_padded)
        features[layout.LAYOUT] = chosen
        return features

    def _forward_batch(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if packing.CU_SEQ_LENS in features and not self._is_flash_attention_requested():
            # the document mask replaces the varlen metadata, which the model would otherwise receive
            mask = packing.document_mask(self.model, features)
            meta = {key: features.pop(key) for key in packing.PACKED_KEYS if key in features}
            features["attention_mask"] = mask
            features = super().forward(features, **kwargs)
            features.pop("attention_mask")
            features.update(meta)
            return features
        return super().forward(features, **kwargs)

    def __repr__(self) -> str:
        return f"LLM2VecTransformer({dict(self.get_config_dict(), architecture=type(self.model).__name__)})"
