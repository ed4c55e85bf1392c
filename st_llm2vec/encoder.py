"""The Sentence-Transformers input module: a decoder LLM with proven bidirectional attention.

A thin subclass of ST's ``Transformer``: loading, saving, adapters, dtype/attention passthrough and the
trainer integration stay ST's. What changes is what ST cannot be told:
- the backbone is switched to bidirectional attention and probed at every load (``bidirectional.py``);
- text is tokenized with llm2vec's semantics: left padding with pad = eos, llm2vec's instruction
  joining, no implicit chat template, and an ``embed_mask`` that marks the tokens to pool.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from transformers.utils import logging as hf_logging
from sentence_transformers.base.modules.transformer import TRANSFORMER_TASK_DEFAULTS, Transformer

from .bidirectional import check_decoder_only, ensure_bidirectional
from .instructions import format_text, truncate_words

EMBED_MASK = "embed_mask"


def _check_loadable(model_name_or_path: str) -> None:
    """A local directory must hold a transformers config (or a PEFT adapter naming its base)."""
    if os.path.isdir(model_name_or_path):
        names = ("config.json", "adapter_config.json")
        if not any(os.path.isfile(os.path.join(model_name_or_path, n)) for n in names):
            raise FileNotFoundError(
                f"{model_name_or_path!r} has no config.json: expected a Hugging Face causal-LM checkpoint "
                "directory (config.json + safetensors weights + tokenizer), a PEFT adapter directory, "
                "or a model saved by st_llm2vec."
            )


class LLM2VecTransformer(Transformer):
    """A bidirectional decoder LLM as an ST input module, tokenizing the way llm2vec does.

    Args:
        model_name_or_path: HF causal-LM checkpoint (id or dir), or a saved st_llm2vec model dir.
        doc_max_length: llm2vec's word-level truncation of each text to this many tokens (None: off).
        chat_template: Jinja template wrapping ``instruction + text`` (off by default; llm2vec's
            instruct wrappers are such templates, see ``instructions.LLM2VEC_CHAT_TEMPLATES``).
        text_suffix: appended after stripping, as llm2vec does for ``eos_token`` pooling.
        bidirectional: False keeps the model causal, explicitly: for a causal baseline, or to
            reproduce llm2vec's Qwen2 models (llm2vec 0.2.3 leaves Qwen2 causal).
        max_seq_length: token limit of the whole input (llm2vec's ``max_length``).
        model_kwargs: passed to the HF loader (``dtype``, ``attn_implementation``, …).
    """

    config_keys: list[str] = Transformer.config_keys + ["doc_max_length", "chat_template", "text_suffix", "bidirectional"]

    def __init__(
        self,
        model_name_or_path: str,
        *,
        doc_max_length: int | None = None,
        chat_template: str | None = None,
        text_suffix: str | None = None,
        bidirectional: bool = True,
        max_seq_length: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        config_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        _check_loadable(model_name_or_path)
        self.model_name_or_path = model_name_or_path  # where the weights came from (e.g. for an LM head)
        self.bidirectional = bidirectional  # read by _load_config during super().__init__
        modality_config, output_name = TRANSFORMER_TASK_DEFAULTS["feature-extraction"]
        # Plain text only: ST would otherwise route text through the tokenizer's chat template.
        kwargs["modality_config"] = {"text": dict(modality_config["text"])}
        kwargs["module_output_name"] = output_name
        kwargs["transformer_task"] = "feature-extraction"
        kwargs.setdefault("unpad_inputs", False)
        super().__init__(
            model_name_or_path,
            model_kwargs=model_kwargs,
            processor_kwargs=processor_kwargs,
            config_kwargs=config_kwargs,
            max_seq_length=max_seq_length,
            **kwargs,
        )
        self.doc_max_length = doc_max_length
        self.chat_template = chat_template
        self.text_suffix = text_suffix
        tokenizer = self.tokenizer
        if tokenizer is None:
            raise ValueError(f"{model_name_or_path!r} has no tokenizer; st_llm2vec needs a text tokenizer.")
        vocab_rows = self.model.get_input_embeddings().num_embeddings
        if tokenizer.pad_token_id is None or tokenizer.pad_token_id >= vocab_rows:
            # transformers' Qwen2 tokenizer invents an <|endoftext|> pad past the embedding matrix
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        if bidirectional:
            self.probe = ensure_bidirectional(self.model)
        else:
            self.model.config.is_causal = True


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

    # -- tokenization ---------------------------------------------------------------------------

    def _count_tokens(self, text: str) -> int:
        ids = self.tokenizer(text, add_special_tokens=False, truncation=True, max_length=self.max_seq_length)
        return len(ids["input_ids"])

    def _render(self, text: str) -> str:
        conversation = [{"role": "user", "content": text}]
        return self.tokenizer.apply_chat_template(conversation, chat_template=self.chat_template, tokenize=False)

    def preprocess(
        self, inputs: Sequence[str], prompt: str | None = None, **kwargs: Any
    ) -> dict[str, torch.Tensor | Any]:
        """Tokenize texts (with an optional instruction ``prompt``) exactly as llm2vec's ``encode`` does."""
        if not inputs:
            return {}
        for index, text in enumerate(inputs):
            if not isinstance(text, str):
                raise TypeError(
                    f"Input {index} is {type(text).__name__}, not str: st_llm2vec encodes text. "
                    "Pass instructions with encode(..., prompt=instruction) or prompt_name=..."
                )
        max_length = kwargs.get("max_length") or self.max_seq_length
        render = self._render if self.chat_template else None
        formatted = [
            format_text(truncate_words(text, self._count_tokens, self.doc_max_length), prompt, render, self.text_suffix)
            for text in inputs
        ]
        full = [f.full for f in formatted]
        features = self.tokenizer(full, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        if (features["attention_mask"].sum(dim=1) == 0).any():
            # A text that tokenizes to nothing (e.g. "" without BOS) is encoded as the EOS token alone.
            full = [f or self.tokenizer.eos_token for f in full]
            features = self.tokenizer(full, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        text_parts = self.tokenizer(
            [f.text_part for f in formatted], add_special_tokens=False, truncation=True, max_length=max_length
        )["input_ids"]
        attention_mask = features["attention_mask"]
        width = attention_mask.shape[1]
        lengths = torch.tensor([len(ids) for ids in text_parts], dtype=torch.long)
        # llm2vec pools the last N positions, N = length of the text part tokenized alone.
        embed_mask = torch.arange(width).unsqueeze(0) >= (width - lengths).unsqueeze(1)
        features[EMBED_MASK] = embed_mask.to(attention_mask.dtype) * attention_mask
        features["modality"] = "text"
        return dict(features)

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Run the backbone; ``embed_mask`` is for pooling only, so it bypasses the HF forward."""
        embed_mask = features.pop(EMBED_MASK, None)
        features = super().forward(features, **kwargs)
        if embed_mask is not None:
            features[EMBED_MASK] = embed_mask
        return features

    def __repr__(self) -> str:
        return f"LLM2VecTransformer({dict(self.get_config_dict(), architecture=type(self.model).__name__)})"
