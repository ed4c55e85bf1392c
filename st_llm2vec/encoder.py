"""The Sentence-Transformers input module: a decoder LLM with proven bidirectional attention.

A thin subclass of ST's ``Transformer``: loading, saving, adapters, dtype/attention passthrough and the
trainer integration stay ST's. What changes is what ST cannot be told:
- the backbone is switched to bidirectional attention and probed at every load (``bidirectional.py``);
- text is tokenized with llm2vec's semantics: left padding with pad = eos, llm2vec's instruction
  joining, no implicit chat template, and an ``embed_mask`` that marks the tokens to pool;
- optionally the texts of a batch are packed into one row for the backbone call (ST's ``unpad_inputs``,
  see ``packing.py``): automatically with flash-attn 2 (varlen kernels), on request with sdpa / eager /
  flex_attention (a document mask keeps each text's attention inside that text); the output is padded
  rows again.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from transformers.utils import logging as hf_logging
from sentence_transformers.base.modules.transformer import TRANSFORMER_TASK_DEFAULTS, Transformer

from . import packing
from .bidirectional import check_decoder_only, check_finite, ensure_bidirectional
from .instructions import (
    EMBED_MASK,
    POOLING_FEATURES,
    TOKEN_WEIGHTS_SUM,
    format_text,
    stock_prompt_length,
    truncate_words,
)
from .lowbit import keep_autograd
from .packing import CU_SEQ_LENS, PACKED_KEYS
from .upstream import attn_implementation
from .errors import InputError, MissingFileError

logger = logging.getLogger(__name__)


def _check_loadable(model_name_or_path: str) -> None:
    """A local directory must hold a transformers config (or a PEFT adapter naming its base) and
    readable safetensors; a path that cannot be a Hub id must exist."""
    from .checkpoints import check_safetensors, looks_like_hub_id

    path = os.path.expanduser(model_name_or_path)
    if os.path.isfile(path):
        raise InputError(
            f"{model_name_or_path!r} is a file; pass the directory that holds the checkpoint (config.json, "
            "weights and tokenizer files), or a Hub id."
        )
    if not os.path.isdir(path):
        if not looks_like_hub_id(str(model_name_or_path)):
            raise MissingFileError(
                f"{model_name_or_path!r} does not exist (looked relative to {os.getcwd()!r}): pass an existing "
                "checkpoint directory or a Hugging Face Hub id such as 'owner/name' — offline, SmolLM2-135M-Instruct: "
                '"$(st-llm2vec fetch-smollm2 --quiet)"'
            )
        return
    if os.path.isdir(model_name_or_path):
        names = ("config.json", "adapter_config.json")
        if not any(os.path.isfile(os.path.join(model_name_or_path, n)) for n in names):
            raise MissingFileError(
                f"{model_name_or_path!r} has no config.json: expected a Hugging Face causal-LM checkpoint "
                "directory (config.json + safetensors weights + tokenizer), a PEFT adapter directory, "
                "or a model saved by st_llm2vec."
            )
        for name in sorted(os.listdir(path)):
            if name.endswith(".safetensors"):
                check_safetensors(os.path.join(path, name))  # header and size: truncated / garbage files


def _broken_json_file(directory: str) -> str | None:
    """After a failed load: the message for the first JSON file of ``directory`` that does not parse."""
    if not os.path.isdir(directory):
        return None
    for name in sorted(os.listdir(directory)):
        file = os.path.join(directory, name)
        if name.endswith(".json") and os.path.isfile(file):
            try:
                with open(file, encoding="utf-8") as f:
                    json.load(f)
            except (ValueError, UnicodeDecodeError) as exc:
                return f"{file} is not valid JSON ({exc}); restore it from the original checkpoint or re-save the model."
    return None


def _check_positive(name: str, value: Any, none_means: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InputError(f"{name} must be a positive int or None ({none_means}), got {value!r}")


# (prompt, text) pairs already warned about pooling nothing in the portable format (once each).
_WARNED_EMPTY: set[tuple[str, str]] = set()

# Keys of sentence_bert_config.json that __init__ does not name but ST's loader maps (old names).
_LEGACY_CONFIG_KEYS = {"model_args", "tokenizer_args", "config_args", "cache_dir"}


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
        format: str = "exact",
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
        kwargs.setdefault("unpad_inputs", None)
        _check_positive("max_seq_length", max_seq_length, "the tokenizer's model_max_length")
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
            if isinstance(exc, OSError) and not os.path.isdir(os.path.expanduser(model_name_or_path)):
                raise MissingFileError(
                    f"{model_name_or_path!r} is not a local directory (looked relative to {os.getcwd()!r}), and "
                    f"loading it as a Hugging Face Hub id failed: {exc}"
                ) from exc
            broken = _broken_json_file(os.path.expanduser(model_name_or_path))
            if broken is None:
                raise
            raise InputError(broken) from exc
        self.doc_max_length = doc_max_length
        self.chat_template = chat_template
        self.text_suffix = text_suffix
        self.max_batch_tokens = max_batch_tokens
        if format not in ("exact", "portable"):
            raise InputError(f"format must be 'exact' or 'portable', got {format!r}")
        self.format = format
        tokenizer = self.tokenizer
        if tokenizer is None:
            raise InputError(f"{model_name_or_path!r} has no tokenizer; st_llm2vec needs a text tokenizer.")
        self._check_tokenizer(model_name_or_path)
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

    def _check_tokenizer(self, model_name_or_path: str) -> None:
        """An EOS token (llm2vec pads with it and encodes empty texts as it) and a positive length limit."""
        files = os.path.join(model_name_or_path, "tokenizer_config.json")
        if self.tokenizer.eos_token is None:
            raise InputError(
                f"The tokenizer of {model_name_or_path!r} has no EOS token: st_llm2vec pads with EOS (as llm2vec) "
                f"and encodes empty texts as EOS. Set \"eos_token\" in {files} (the model's end-of-text token)."
            )
        limit = self.max_seq_length
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise InputError(
                f"max_seq_length is {limit!r} (the tokenizer's model_max_length): set \"model_max_length\" in {files} "
                "to a positive int, or pass max_seq_length=<positive int>."
            )

    def _check_chat_template(self, template: str) -> None:
        """A chat template must render, with the message content in it exactly once."""
        try:
            rendered = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": "\ue000"}], chat_template=template, tokenize=False
            )
        except Exception as exc:
            raise InputError(f"chat_template does not render ({type(exc).__name__}: {exc}); fix it or pass None.") from exc
        if rendered.count("\ue000") != 1:
            raise InputError(
                "chat_template must contain the message content exactly once (e.g. \"[INST] {{ messages[0]['content'] "
                f"| trim }} [/INST]\"); this one renders it {rendered.count(chr(0xE000))} times. Fix it or pass None."
            )

    @property
    def doc_max_length(self) -> int | None:
        return self._doc_max_length

    @doc_max_length.setter
    def doc_max_length(self, value: int | None) -> None:
        _check_positive("doc_max_length", value, "no truncation")
        self._doc_max_length = value

    @property
    def max_seq_length(self) -> int | None:
        return Transformer.max_seq_length.fget(self)

    @max_seq_length.setter
    def max_seq_length(self, value: int | None) -> None:
        _check_positive("max_seq_length", value, "the tokenizer's model_max_length")
        Transformer.max_seq_length.fset(self, value)

    @property
    def chat_template(self) -> str | None:
        return self._chat_template

    @chat_template.setter
    def chat_template(self, value: str | None) -> None:
        if value is not None and not isinstance(value, str):
            raise InputError(f"chat_template must be a Jinja template string or None, got {value!r}")
        if value is not None and getattr(self, "processor", None) is not None and self.tokenizer is not None:
            self._check_chat_template(value)
        self._chat_template = value

    @property
    def max_batch_tokens(self) -> int | None:
        return self._max_batch_tokens

    @max_batch_tokens.setter
    def max_batch_tokens(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"max_batch_tokens must be a positive int or None (no budget), got {value!r}")
        self._max_batch_tokens = value

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
        allowed = (allowed | _LEGACY_CONFIG_KEYS) - {"self", "model_name_or_path", "args", "kwargs"}
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise InputError(
                f"{where}: unknown key(s) {unknown} (a typo, or a file written by a newer st_llm2vec?). "
                f"Valid keys: {sorted(cls.config_keys)}. Remove or rename them."
            )
        try:
            _check_positive("doc_max_length", config.get("doc_max_length"), "no truncation")
            _check_positive("max_batch_tokens", config.get("max_batch_tokens"), "no budget")
            _check_positive("max_seq_length", config.get("max_seq_length"), "the tokenizer's model_max_length")
            for key in ("chat_template", "text_suffix"):
                if config.get(key) is not None and not isinstance(config[key], str):
                    raise InputError(f"{key} must be a string or null, got {config[key]!r}")
            if not isinstance(config.get("bidirectional", True), bool):
                raise InputError(f"bidirectional must be true or false, got {config['bidirectional']!r}")
        except ValueError as exc:
            raise InputError(f"{where}: {exc}") from None
        if config.get("bidirectional") is False:
            logger.warning(
                f'{where} has "bidirectional": false, so this model loads causal (every token sees only the tokens '
                "before it), as from_llm(..., bidirectional=False) saves it. If that is not intended, set it to true."
            )
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

    # -- tokenization ---------------------------------------------------------------------------

    def _count_tokens(self, text: str) -> int:
        ids = self.tokenizer(text, add_special_tokens=False, truncation=True, max_length=self.max_seq_length)
        return len(ids["input_ids"])

    def _render(self, text: str) -> str:
        conversation = [{"role": "user", "content": text}]
        return self.tokenizer.apply_chat_template(conversation, chat_template=self.chat_template, tokenize=False)

    def _special_tokens_added(self) -> int | None:
        """How many tokens the tokenizer adds around one text, if that is the same for every text.

        Then, for a text tokenized without truncation, len(with specials) - this = len(without), so
        llm2vec's second tokenization (of the text part alone) is redundant when the text part is
        the whole string. Measured once per tokenizer on a few probe strings (None: not constant).
        """
        tokenizer = self.tokenizer
        cached = getattr(self, "_special_count_cache", None)
        if cached is not None and cached[0] is tokenizer:
            return cached[1]
        probes = ["", " ", "a", "Two dogs run.", "  leading spaces and UPPER case 12345 émoji 🙂", tokenizer.eos_token or ""]
        with_special = tokenizer(probes, add_special_tokens=True)["input_ids"]
        without = tokenizer(probes, add_special_tokens=False)["input_ids"]
        added = {len(a) - len(b) for a, b in zip(with_special, without)}
        count = added.pop() if len(added) == 1 else None
        if count is not None:
            # the content tokens must sit unchanged at one fixed offset (specials before / after them)
            offsets = set()
            for a, b in zip(with_special, without):
                if b:
                    found = [k for k in range(count + 1) if a[k : k + len(b)] == b]
                    offsets.add(found[0] if found else -1)
            if len(offsets) > 1 or -1 in offsets:
                count = None
        self._special_count_cache = (tokenizer, count)
        return count

    def _tokenize(self, inputs: Sequence[str], prompt: str | None, max_length: int | None):
        """llm2vec's tokenization, unpadded: (token id lists of the full strings, text-part lengths, None —
        or, in the portable format, each row's mean divisor where it is not the pooled count).

        The text-part length N is llm2vec's ``len(tokenize(text_part, add_special_tokens=False))``,
        exactly: without an instruction, wrapper or suffix the text part is the whole string and N is
        read off the full tokenization (rows cut by ``max_length`` are re-tokenized); otherwise the
        text parts are tokenized in one batched call.
        """
        tokenizer = self.tokenizer
        texts = list(inputs)
        if self.format == "portable":
            return self._tokenize_stock(texts, prompt, max_length)
        if self.doc_max_length is not None:
            texts = [truncate_words(text, self._count_tokens, self.doc_max_length) for text in texts]
        plain = not prompt and not self.chat_template and self.text_suffix is None
        if plain:
            full, text_parts = texts, texts
        else:
            render = self._render if self.chat_template else None
            formatted = [format_text(text, prompt, render, self.text_suffix) for text in texts]
            full = [f.full for f in formatted]
            text_parts = [f.text_part for f in formatted]
        ids = tokenizer(full, truncation=True, max_length=max_length)["input_ids"]
        empty = [i for i, row in enumerate(ids) if not row]
        if empty:
            # A text that tokenizes to nothing (e.g. "" without BOS) is encoded as the EOS token alone.
            eos = tokenizer([tokenizer.eos_token] * len(empty), truncation=True, max_length=max_length)["input_ids"]
            for i, row in zip(empty, eos):
                ids[i] = row
        added = self._special_tokens_added() if plain else None
        if added is not None:
            empty_set = set(empty)
            lengths = [0 if i in empty_set else len(row) - added for i, row in enumerate(ids)]
            limit = max_length if max_length is not None else tokenizer.model_max_length
            cut = [i for i, row in enumerate(ids) if len(row) >= limit and i not in empty_set]
            if cut:  # truncated rows: the text alone is truncated differently (no room kept for specials)
                again = tokenizer(
                    [text_parts[i] for i in cut], add_special_tokens=False, truncation=True, max_length=max_length
                )["input_ids"]
                for i, row in zip(cut, again):
                    lengths[i] = len(row)
        else:
            parts = tokenizer(text_parts, add_special_tokens=False, truncation=True, max_length=max_length)
            lengths = [len(row) for row in parts["input_ids"]]
        return ids, lengths, None

    def _tokenize_stock(self, texts: list[str], prompt: str | None, max_length: int | None):
        """Stock ST's tokenization and pooling (the portable format, see ``portable.py``): ``prompt + text`` as
        given; pooled: every token after the prompt (``Pooling(include_prompt=False)``, which skips the first
        ``prompt_length`` tokens, counted as ST counts them), and of a text without a prompt every token but a
        leading BOS (``WordWeights`` with BOS weight 0). With a prompt, each row also gets the divisor of its
        mean, as stock computes it: with that BOS weighting the weights of the whole row, the prompt's tokens
        included (``WordWeights`` + ``Pooling``); and a text the prompt leaves no token of pools to zeros."""
        tokenizer = self.tokenizer
        full = [prompt + text for text in texts] if prompt else texts
        ids = tokenizer(full, truncation=True, max_length=max_length)["input_ids"]
        for i, row in enumerate(ids):
            if not row:  # only possible without BOS: encoded as the EOS token alone, as in the exact format
                ids[i] = tokenizer([tokenizer.eos_token], truncation=True, max_length=max_length)["input_ids"][0]
        bos = tokenizer.bos_token_id
        weighted = [len(row) - (1 if bos is not None and row[0] == bos else 0) for row in ids]
        if not prompt:
            return ids, weighted, None
        skip = stock_prompt_length(tokenizer, prompt, max_length)
        pooled = [max(len(row) - skip, 0) for row in ids]
        empty = [text for text, n in zip(texts, pooled) if n == 0 and text]
        if empty and (prompt, empty[0]) not in _WARNED_EMPTY:
            _WARNED_EMPTY.add((prompt, empty[0]))
            logger.warning(
                "%d text(s) such as %r keep no token after the prompt %r: in context the text's first token holds the "
                "prompt's trailing space, and stock sentence-transformers (include_prompt=False) pools nothing for it, "
                "a zero vector. Rephrase the prompt so it ends with a character that does not merge (e.g. a newline).",
                len(empty), empty[0], prompt,
            )
        uses_word_weights = bos is not None and any(row[0] == bos for row in ids)
        return ids, pooled, (weighted if uses_word_weights else pooled)

    def preprocess(
        self, inputs: Sequence[str], prompt: str | None = None, **kwargs: Any
    ) -> dict[str, torch.Tensor | Any]:
        """Tokenize texts (with an optional instruction ``prompt``) exactly as llm2vec's ``encode`` does.

        Padded (default): ``input_ids`` / ``attention_mask`` left-padded with pad = eos, plus
        ``embed_mask`` (the last N tokens of each row). Packed (``unpad_inputs``, see the class doc):
        one row of all texts with ``position_ids`` restarting per text, ``cu_seq_lens_*`` /
        ``max_length_*`` and the flattened ``embed_mask``; no ``attention_mask``.
        """
        if not inputs:
            return {}
        for index, text in enumerate(inputs):
            if not isinstance(text, str):
                raise TypeError(
                    f"Input {index} is {type(text).__name__}, not str: st_llm2vec encodes text. "
                    "Pass instructions with encode(..., prompt=instruction) or prompt_name=..."
                )
        max_length = self._max_length(kwargs)
        if prompt:
            self._check_prompt(prompt, max_length)
        ids, text_lengths, weights_sum = self._tokenize(inputs, prompt, max_length)
        lengths = torch.tensor([len(row) for row in ids], dtype=torch.long)
        n = torch.minimum(torch.tensor(text_lengths, dtype=torch.long), lengths)
        extra = {} if weights_sum is None else {TOKEN_WEIGHTS_SUM: torch.tensor(weights_sum, dtype=torch.float32)}
        if self.can_flatten_inputs or self._pack_this_batch(lengths):
            return {**packing.pack(ids, lengths, n), **extra}
        width = int(lengths.max())
        pad_id = self.tokenizer.pad_token_id
        input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
        flat = torch.tensor([token for row in ids for token in row], dtype=torch.long)
        columns = torch.arange(width)
        attention_mask = (columns >= (width - lengths).unsqueeze(1)).long()
        input_ids[attention_mask.bool()] = flat  # row-major order: each row's tokens, left-padded
        # llm2vec pools the last N positions, N = length of the text part tokenized alone.
        embed_mask = (columns >= (width - n).unsqueeze(1)).long()
        return {"input_ids": input_ids, "attention_mask": attention_mask, EMBED_MASK: embed_mask, "modality": "text",
                **extra}

    def _max_length(self, kwargs: dict[str, Any]) -> int | None:
        """This call's token limit, by ST's precedence: ``processing_kwargs`` (per call over the module's)
        ``text`` / ``common`` ``max_length``, then ``max_length=`` (ST's trainer), then ``max_seq_length``.
        Other processing overrides are refused: llm2vec's tokenization (left padding with EOS,
        truncation) is fixed, and silently ignoring them would give a different result than asked."""
        merged = self._merge_processing_kwargs(kwargs.get("processing_kwargs"))
        unsupported = [
            f"{group}.{key}" for group, values in merged.items() for key in (values or {})
            if group not in ("text", "common") or key != "max_length"
        ]
        if unsupported:
            raise InputError(
                f"processing_kwargs {unsupported} are not supported by st_llm2vec, which tokenizes as llm2vec "
                "does (left padding with EOS, truncation to max_length); only 'max_length' can be overridden."
            )
        limit = merged.get("text", {}).get("max_length", merged.get("common", {}).get("max_length"))
        if limit is None:
            limit = kwargs.get("max_length")
        if limit is None:
            return self.max_seq_length
        _check_positive("max_length", limit, "max_seq_length")
        return limit

    def _check_prompt(self, prompt: Any, max_length: int | None) -> None:
        """A prompt must be a string and leave room for text: one that fills ``max_length`` tokens would
        leave no text token, so every text would get the same embedding."""
        if not isinstance(prompt, str):  # a ValueError: ST retries a TypeError as prompt + text, garbling it
            raise InputError(f"prompt must be a str (an instruction), got {type(prompt).__name__}: {prompt!r}")
        if max_length is None:
            return
        portable = getattr(self, "format", "exact") == "portable"
        key = (prompt, max_length, self.chat_template, self.text_suffix, portable, id(self.tokenizer))
        checked = getattr(self, "_checked_prompts", None)
        if checked is None or len(checked) > 256:
            checked = self._checked_prompts = set()
        if key in checked:
            return
        if portable:
            head = prompt  # stock ST: prompt + text
        else:
            formatted = format_text("x", prompt, self._render if self.chat_template else None, self.text_suffix)
            head = formatted.full[: len(formatted.full) - len(formatted.text_part)]
        length = len(self.tokenizer(head.rstrip())["input_ids"])
        if length >= max_length:
            name = "max_seq_length" if max_length == self.max_seq_length else "max_length"
            wrapper = ", chat template" if self.chat_template and not portable else ""
            raise InputError(
                f"The prompt is {length} tokens long (with special tokens{wrapper}) and {name} is {max_length}: "
                "no token of the text would be encoded, so every text would get the same embedding. Shorten the "
                f"prompt, or raise max_seq_length (model.max_seq_length = {length + 64}, within the model's context)."
            )
        checked.add(key)

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

    # -- packing --------------------------------------------------------------------------------

    def _uses_flash_varlen(self) -> bool:
        """flash-attn 2 (or another flash kernel with a varlen function) is loaded and requested."""
        try:
            from transformers.modeling_flash_attention_utils import lazy_import_flash_attention
        except ImportError:
            return False
        if not self._is_flash_attention_requested():
            return False
        try:
            (_, flash_varlen_fn, *_), _ = lazy_import_flash_attention(attn_implementation(self.config))
        except (ImportError, ValueError, RuntimeError):
            return False
        return flash_varlen_fn is not None

    def _can_flatten_inputs(self) -> bool:
        """Pack batches: always with flash-attn varlen (unless unpad_inputs=False), with a document mask if asked."""
        if self.backend != "torch" or self.unpad_inputs is False:
            return False
        if self._uses_flash_varlen():
            if self.model_forward_params is not None:  # as ST does: let the varlen metadata reach the model
                self.model_forward_params |= {"position_ids", *PACKED_KEYS}
            return True
        return self.unpad_inputs is True and packing.document_mask_supported(self.model.config, self.max_seq_length)

    def _pack_this_batch(self, lengths: torch.Tensor) -> bool:
        """``unpad_inputs=None`` without flash attention: pack an ``encode`` batch when that costs fewer FLOPs
        (:func:`packing.packs_cheaper`). Only inside ``torch.inference_mode`` (``encode``): training and direct
        ``preprocess`` calls stay padded."""
        if self.unpad_inputs is not None or len(lengths) < 2 or not torch.is_inference_mode_enabled():
            return False
        if not packing.document_mask_supported(self.model.config, self.max_seq_length):
            return False
        cached = getattr(self, "_flop_cache", None)
        if cached is None or cached[0] is not self.model:
            cached = self._flop_cache = (self.model, packing.flop_coefficients(self.model))
        return packing.packs_cheaper(lengths, *cached[1])

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Run the backbone; ``embed_mask`` is for pooling only, so it bypasses the HF forward.

        A packed batch runs as one row: flash attention gets ``cu_seq_lens_*`` (varlen kernel), any
        other attention a document mask in place of the (absent) padding mask; its outputs come back
        as padded rows (:func:`packing.unpack`). Over the ``max_batch_tokens`` budget, the batch runs
        in pieces (:meth:`_forward_in_pieces`).
        """
        pooling_only = {key: features.pop(key) for key in POOLING_FEATURES if key in features}
        budget = self.max_batch_tokens
        if budget is not None and features["input_ids"].numel() > budget:  # rows x width, or the packed length
            features = self._forward_in_pieces(features, budget, **kwargs)
        else:
            features = self._forward_batch(features, **kwargs)
        features.update(pooling_only)
        if CU_SEQ_LENS in features:
            # in encode, straight into the right-padded rows that pooling returns (see pooling.py): one copy
            features = packing.unpack(features, right=torch.is_inference_mode_enabled())
        return features

    def _forward_batch(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if CU_SEQ_LENS in features and not self._is_flash_attention_requested():
            # the document mask replaces the varlen metadata, which the model would otherwise receive
            mask = packing.document_mask(self.model, features)
            meta = {key: features.pop(key) for key in PACKED_KEYS if key in features}
            features["attention_mask"] = mask
            features = super().forward(features, **kwargs)
            features.pop("attention_mask")
            features.update(meta)
            return features
        return super().forward(features, **kwargs)

    def _forward_in_pieces(self, features: dict[str, Any], budget: int, **kwargs: Any) -> dict[str, Any]:
        """Token-budget batching inside one ST batch (ST batches by count; nothing in ST or
        transformers splits by tokens): rows (or packed texts) grouped so each call stays within the
        budget, outputs put back where the whole batch would have put them. Rows are independent, so
        the result equals one call's."""
        name = self.module_output_name
        input_ids = features["input_ids"]
        if CU_SEQ_LENS in features:  # one packed row: cut it at text boundaries
            outputs = [self._forward_batch(sub, **kwargs)[name] for sub in packing.split(features, budget)]
            features[name] = torch.cat(outputs, dim=1)
            return features
        # left-padded rows: group by length, each group trimmed to its own longest row
        rows, width = input_ids.shape
        lengths = features["attention_mask"].sum(dim=1)
        output = None
        for group in packing.budget_groups(lengths, budget):
            index = torch.tensor(group, device=input_ids.device)
            w = max(int(lengths[group].max()), 1)
            sub = {
                k: v[index, width - w :] if torch.is_tensor(v) and v.dim() >= 2 and v.shape[:2] == (rows, width) else v
                for k, v in features.items()
            }
            part = self._forward_batch(sub, **kwargs)[name]
            if output is None:
                output = part.new_zeros((rows, width, *part.shape[2:]))
            output[index, width - w :] = part
        features[name] = output
        return features

    def __repr__(self) -> str:
        return f"LLM2VecTransformer({dict(self.get_config_dict(), architecture=type(self.model).__name__)})"
