"""Masked next-token prediction (MNTP), step 2 of the LLM2Vec recipe, as a Sentence-Transformers loss.

MNTP masks a fraction of the tokens and predicts the token at position ``i`` from the bidirectional
hidden state at ``i - 1`` through the causal LM's own head (llm2vec's ``<Arch>BiForMNTP`` with its
``logits[:, :-1]`` / ``labels[:, 1:]`` shift): cross entropy, mean over the labelled positions.

Unlike llm2vec, which materialises full-vocabulary logits at every position (batch × seq × vocab
floats, of which ~80 % are thrown away), :class:`MNTPLoss` runs the LM head only on the hidden states
that carry a label. The loss value is the same (see ``tests/test_train_mntp.py`` for parity with llm2vec).

Pieces, usable on their own with ``SentenceTransformerTrainer``:

- :func:`mask_tokens` / :class:`MNTPDataCollator`: llm2vec's masking (``mlm_probability``, the
  ``default`` 80/10/10 and ``all_mask`` strategies), never on padding, special tokens or the first token;
- :class:`MNTPLoss`: the loss (``masked_loss(input_ids, attention_mask, labels)`` for masked batches);
- :class:`MNTPEvaluator`: masked-token loss and accuracy on fixed (seeded) masks;
- the whole recipe from an llm2vec-style config (``st-llm2vec mntp CONFIG``) is :mod:`st_llm2vec.train.stage_mntp`.

With the stock trainer::

    model = st_llm2vec.from_llm("meta-llama/Meta-Llama-3-8B-Instruct", dtype=torch.bfloat16)
    add_lora(model, lora_config(r=16))                      # st_llm2vec.train.lora
    loss = MNTPLoss(model, mlm_probability=0.2)             # the checkpoint's own LM head, frozen
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=blocks,        # text_data.tokenize_corpus(...) or a "text" column
        loss=loss, data_collator=MNTPDataCollator(model[0].tokenizer, max_length=512),
        evaluator=MNTPEvaluator(loss, eval_texts, MNTPDataCollator(model[0].tokenizer)),
    )

Resuming a LoRA run from a checkpoint needs :class:`~st_llm2vec.train.trainer.LLM2VecTrainer`, which
the recipe uses: ST's own resume path rebuilds the model through transformers' PEFT integration,
whose parameter names differ from a ``peft.get_peft_model`` backbone.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers.base.evaluation import BaseEvaluator
from torch import nn

from ..cards import LLM2VEC_CITATION
from ..errors import InputError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
MASK_TOKEN_TYPES = ("blank", "eos", "mask")
BLANK_TOKEN = "_"
ADDED_MASK_TOKEN = "<mask>"
FEATURE_PREFIX = "mntp"


# ---------------------------------------------------------------------------------------------
# Mask token and masking
# ---------------------------------------------------------------------------------------------


class LMHeadError(InputError):
    """No LM head could be found for the model (untied head without ``lm_head.weight``)."""


def check_mlm_probability(mlm_probability: float) -> float:
    p = float(mlm_probability)
    if not 0.0 < p < 1.0:
        raise InputError(f"mlm_probability must be in the open interval (0, 1), got {mlm_probability!r}")
    return p


def check_strategy(strategy: str) -> str:
    from .stage_mntp import COLLATOR_TYPES  # declared with the data_collator_type key

    if strategy not in COLLATOR_TYPES:
        raise InputError(f"data_collator_type must be one of {COLLATOR_TYPES}, got {strategy!r}")
    return strategy


def mask_token_string(tokenizer: Any, mask_token_type: str) -> str:
    """The token string ``mask_token_type`` names: ``blank`` → ``_``, ``eos``, ``mask``, or a literal token."""
    if not mask_token_type:
        raise InputError(f"mask_token_type must be 'blank', 'eos', 'mask' or a token, got {mask_token_type!r}")
    if mask_token_type == "blank":
        return BLANK_TOKEN
    if mask_token_type == "eos":
        if tokenizer.eos_token is None:
            raise InputError("mask_token_type='eos' but the tokenizer has no eos_token.")
        return tokenizer.eos_token
    if mask_token_type == "mask":
        return tokenizer.mask_token if tokenizer.mask_token is not None else ADDED_MASK_TOKEN
    return mask_token_type


def token_id_of(tokenizer: Any, token: str) -> int | None:
    """The id of ``token`` as one vocabulary entry, or None (also when it would map to ``unk``)."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (isinstance(token_id, list)):
        return None
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and token_id == unk and token != tokenizer.unk_token:
        return None
    return int(token_id)


def resolve_mask_token_id(tokenizer: Any, mask_token_type: str = "blank") -> int:
    """The mask token's id for ``mask_token_type``; a clear error if the tokenizer lacks it.

    Unlike llm2vec (which keeps a tokenizer's own mask token whatever the type), the type decides:
    ``blank`` is ``_``, ``eos`` the EOS token, ``mask`` the tokenizer's mask token (or ``<mask>``,
    which :func:`setup_mask_token` adds), anything else a token of the vocabulary.
    """
    token = mask_token_string(tokenizer, mask_token_type)
    token_id = token_id_of(tokenizer, token)
    if token_id is None:
        hint = (
            "Use setup_mask_token(model, 'mask') (run_mntp does) to add it and resize the embeddings."
            if mask_token_type == "mask"
            else "Choose mask_token_type='eos', or 'mask' to add a <mask> token (the embeddings are resized)."
        )
        raise InputError(
            f"The tokenizer has no single token {token!r} for mask_token_type={mask_token_type!r}. {hint}"
        )
    return token_id


def setup_mask_token(model: Any, mask_token_type: str = "blank") -> int:
    """Make sure the ST model's tokenizer has the mask token; return its id.

    ``mask`` on a tokenizer without a mask token adds ``<mask>`` (as llm2vec does), sets it as the
    tokenizer's mask token and resizes the backbone's input embeddings (the new row is the mean of the
    others; an untied LM head gets the same treatment in :class:`MNTPLoss`). Call it before
    :func:`st_llm2vec.train.lora.add_lora`. Other types never change the tokenizer: a missing token is an error.
    """
    encoder = model[0]
    tokenizer = encoder.tokenizer
    if mask_token_type == "mask" and tokenizer.mask_token is None:
        tokenizer.add_special_tokens({"mask_token": ADDED_MASK_TOKEN})
        backbone = _base_backbone(encoder.model)
        if len(tokenizer) > backbone.get_input_embeddings().num_embeddings:
            backbone.resize_token_embeddings(len(tokenizer), mean_resizing=True)
            logger.info("Added %s to the tokenizer and resized the embeddings to %d rows.", ADDED_MASK_TOKEN, len(tokenizer))
    return resolve_mask_token_id(tokenizer, mask_token_type)


def content_generator(input_ids: torch.Tensor, seed: int = 0) -> torch.Generator:
    """A CPU generator seeded by a batch's token ids: the same batch always gets the same masks."""
    ids = input_ids.detach().to("cpu", torch.long).flatten()
    weights = torch.arange(1, ids.numel() + 1, dtype=torch.long) % 1_000_003
    digest = int((ids * weights).sum().item()) * 31 + ids.numel() + seed
    return torch.Generator().manual_seed(digest % (2**63 - 1))


def _rank_generator(device: torch.device) -> torch.Generator | None:
    """Under DDP, a per-rank generator seeded from torch's global RNG; None (the global RNG) otherwise.

    The HF trainer seeds every rank alike, so same-shaped batches would get the same mask positions
    on every rank. Drawing the seed from the global RNG keeps runs reproducible and resumable.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    seed = int(torch.randint(0, 2**62, (1,)).item()) + dist.get_rank()
    return torch.Generator(device=device).manual_seed(seed)


def special_token_ids(tokenizer: Any) -> list[int]:
    return sorted({int(i) for i in getattr(tokenizer, "all_special_ids", []) if i is not None})


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    mask_token_id: int,
    mlm_probability: float = 0.2,
    strategy: str = "default",
    special_ids: Sequence[int] = (),
    vocab_size: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """llm2vec's MNTP masking: returns ``(masked input_ids, labels)``; labels are -100 where not masked.

    Each maskable token is chosen with probability ``mlm_probability``. ``default``: a chosen token
    becomes the mask token 80 % of the time, a random token 10 %, stays 10 % (HF's MLM collator);
    ``all_mask``: always the mask token. Never chosen: padding (``attention_mask`` 0), ``special_ids``,
    and each row's first real token (nothing precedes it to predict it from).
    """
    check_mlm_probability(mlm_probability)
    check_strategy(strategy)
    if strategy == "default" and vocab_size is None:
        raise InputError("strategy='default' replaces 10 % of the chosen tokens by random ones: pass vocab_size")
    if input_ids.dim() != 2:
        raise InputError(f"input_ids must be 2-D (batch, seq), got shape {tuple(input_ids.shape)}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    real = attention_mask.bool()
    maskable = real.clone()
    if len(special_ids):
        maskable &= ~torch.isin(input_ids, torch.as_tensor(list(special_ids), device=input_ids.device))
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    maskable[rows, real.to(torch.int8).argmax(dim=1)] = False  # the first attended token of each row
    probability = torch.full(input_ids.shape, float(mlm_probability), device=input_ids.device)
    probability.masked_fill_(~maskable, 0.0)
    masked = torch.bernoulli(probability, generator=generator).bool()
    labels = input_ids.clone()
    labels[~masked] = IGNORE_INDEX
    inputs = input_ids.clone()
    if strategy == "all_mask":
        inputs[masked] = mask_token_id
        return inputs, labels
    half = torch.full(input_ids.shape, 0.5, device=input_ids.device)
    replaced = torch.bernoulli(torch.full(input_ids.shape, 0.8, device=input_ids.device), generator=generator).bool() & masked
    inputs[replaced] = mask_token_id
    randomized = torch.bernoulli(half, generator=generator).bool() & masked & ~replaced
    random_ids = torch.randint(vocab_size, input_ids.shape, dtype=input_ids.dtype, generator=generator, device=input_ids.device)
    inputs[randomized] = random_ids[randomized]
    return inputs, labels


@dataclass
class MNTPDataCollator:
    """Batches rows for :class:`MNTPLoss`: tokenizes text rows, pads, and names the tensors for the ST trainer.

    Rows hold ``input_ids`` (pre-tokenized, e.g. from :func:`st_llm2vec.train.text_data.tokenize_corpus`) or a
    text column (tokenized here with special tokens, truncated to ``max_length``). Rows that carry
    ``labels`` are already masked and pass through as they are. Output keys: ``mntp_input_ids``,
    ``mntp_attention_mask`` (+ ``mntp_labels``), right-padded with the pad token (EOS when there is
    none); ``SentenceTransformerTrainer`` hands them to the loss as ``features[0]``.

    The collator does not mask: :class:`MNTPLoss` draws the masks inside the training step, from the
    RNG the HF trainer seeds and checkpoints. Masking here would draw them while the dataloader (which
    accelerate reads one batch ahead) prefetches, so a resumed run would see different masks.
    """

    tokenizer: Any
    max_length: int | None = None
    text_column: str = "text"
    pad_to_multiple_of: int | None = None
    valid_label_columns: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.tokenizer.pad_token_id is None:
            if self.tokenizer.eos_token is None:
                raise InputError("The tokenizer has neither a pad nor an eos token to pad MNTP batches with.")
            import copy

            # tokenizer.pad needs a pad token: EOS (llm2vec's choice) on a copy, the caller's tokenizer stays as it is
            self.tokenizer = copy.deepcopy(self.tokenizer)
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def _ids(self, row: Mapping[str, Any]) -> list[int]:
        if "input_ids" in row:
            return [int(t) for t in row["input_ids"]]
        if self.text_column not in row:
            raise KeyError(f"MNTPDataCollator needs rows with 'input_ids' or {self.text_column!r}; got {list(row)}")
        kwargs = {"truncation": True, "max_length": self.max_length} if self.max_length else {}
        return list(self.tokenizer(row[self.text_column], **kwargs)["input_ids"])

    def __call__(self, features: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            return {}
        # right padding whatever the tokenizer's side: the encoder sets it to left for inference
        padded = self.tokenizer.pad(
            [{"input_ids": self._ids(row)} for row in features],
            pad_to_multiple_of=self.pad_to_multiple_of,
            padding_side="right",
            return_attention_mask=True,
            return_tensors="pt",
        )
        input_ids, attention_mask = padded["input_ids"], padded["attention_mask"]
        batch = {f"{FEATURE_PREFIX}_input_ids": input_ids, f"{FEATURE_PREFIX}_attention_mask": attention_mask}
        with_labels = ["labels" in row for row in features]
        if any(with_labels):
            if not all(with_labels):
                raise InputError("Either every row of a batch carries 'labels' (pre-masked) or none does.")
            # tokenizer.pad leaves labels alone (they pad with IGNORE_INDEX, not the pad token)
            labels = torch.full_like(input_ids, IGNORE_INDEX)
            for i, row in enumerate(features):
                labels[i, : len(row["labels"])] = torch.as_tensor(row["labels"], dtype=torch.long)
            batch[f"{FEATURE_PREFIX}_labels"] = labels
        return batch


# ---------------------------------------------------------------------------------------------
# The LM head
# ---------------------------------------------------------------------------------------------


def _base_backbone(module: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (or the module itself)."""
    get_base = getattr(module, "get_base_model", None)
    return get_base() if callable(get_base) else module


def ties_word_embeddings(config: Any) -> bool:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text_config, "tie_word_embeddings", None)
    if value is None:
        value = getattr(config, "tie_word_embeddings", False)
    return bool(value)


def _locate(path: str, filename: str) -> str | None:
    if os.path.isdir(path):
        candidate = os.path.join(path, filename)
        return candidate if os.path.isfile(candidate) else None
    from transformers.utils import cached_file

    return cached_file(
        path,
        filename,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )


def read_checkpoint_tensors(path: str, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Read only the named tensors of a (possibly sharded) safetensors or ``.bin`` checkpoint."""
    found: dict[str, torch.Tensor] = {}
    for index_name, single_name in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        files: dict[str, list[str]] = {}
        index_file = _locate(path, index_name)
        if index_file:
            with open(index_file, encoding="utf-8") as f:
                weight_map = json.load(f).get("weight_map", {})
            for name in names:
                if name in weight_map:
                    files.setdefault(weight_map[name], []).append(name)
        else:
            files = {single_name: list(names)}
        for filename, wanted in files.items():
            local = _locate(path, filename)
            if not local:
                continue
            if local.endswith(".safetensors"):
                from safetensors import safe_open

                with safe_open(local, framework="pt") as f:
                    keys = set(f.keys())
                    found.update({n: f.get_tensor(n) for n in wanted if n in keys})
            else:
                state = torch.load(local, map_location="cpu", weights_only=True)
                found.update({n: state[n] for n in wanted if n in state})
        if found or index_file:
            return found
    return found


def logit_transform(config: Any):
    """The post-projection step of the model's causal-LM head, from its config (identity for most).

    transformers' heads: Gemma 2/3 ``final_logit_softcapping`` (tanh capping), Cohere ``logit_scale``
    (multiply), Granite ``logits_scaling`` (divide). Llama, Mistral, Qwen2 and Gemma (1) — llm2vec's
    architectures — use a bare linear layer.
    """
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    model_type = getattr(text_config, "model_type", "") or ""
    cap = getattr(text_config, "final_logit_softcapping", None)
    if cap:
        return lambda logits: torch.tanh(logits / cap) * cap
    if model_type.startswith("cohere") and getattr(text_config, "logit_scale", None):
        scale = text_config.logit_scale
        return lambda logits: logits * scale
    if model_type.startswith("granite") and getattr(text_config, "logits_scaling", None):
        scaling = text_config.logits_scaling
        return lambda logits: logits / scaling
    return None


def load_lm_head(source: str, config: Any, dtype: torch.dtype | None = None) -> nn.Linear | None:
    """The untied LM head of the causal-LM checkpoint ``source``; None when the head is tied.

    Raises :class:`LMHeadError` for an untied checkpoint without ``lm_head.weight`` (e.g. a bare
    ``AutoModel`` save, or an st_llm2vec model dir: pass ``lm_head=`` the causal-LM checkpoint it came from).
    """
    if ties_word_embeddings(config):
        return None
    tensors = read_checkpoint_tensors(source, ["lm_head.weight", "lm_head.bias"])
    if "lm_head.weight" not in tensors:
        raise LMHeadError(
            f"{source!r} has no 'lm_head.weight' and its config does not tie the LM head to the input "
            "embeddings (tie_word_embeddings=False), so MNTP has no head to predict tokens with. Load the "
            "model from a causal-LM checkpoint (…ForCausalLM weights), or pass MNTPLoss(model, lm_head=...) "
            "a checkpoint path or an nn.Linear."
        )
    weight = tensors["lm_head.weight"]
    bias = tensors.get("lm_head.bias")
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    head.weight = nn.Parameter(weight.to(dtype) if dtype else weight)
    if bias is not None:
        head.bias = nn.Parameter(bias.to(dtype) if dtype else bias)
    return head


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------


class MNTPLoss(nn.Module):
    """MNTP for ``SentenceTransformerTrainer``: the token at ``i`` from the hidden state at ``i - 1``.

    Args:
        model: an st_llm2vec ``SentenceTransformer`` (``st_llm2vec.from_llm``), bidirectional.
        lm_head: None (default) loads the head of the causal-LM checkpoint the model was loaded from
            (``model[0].model_name_or_path``): its ``lm_head.weight`` (+ bias), or the input embeddings
            when the config ties them. Or: a checkpoint path, an ``nn.Linear``, or a weight tensor.
        freeze_lm_head: True (default) keeps the head fixed (a tied head is used detached, so MNTP sends
            no gradient into the embeddings through it). False trains an untied head as a parameter of
            this loss (the trainer optimizes it, but it is not saved with the ST model nor synced by DDP).
        mlm_probability: fraction of the maskable tokens to predict, in (0, 1) (llm2vec: 0.2).
        mask_token_type: ``blank`` (``_``, llm2vec's default), ``eos``, ``mask`` or a literal token.
        strategy: llm2vec's ``data_collator_type``: ``default`` (80 % mask / 10 % random / 10 % kept)
            or ``all_mask``.
        mask_token_id: overrides ``mask_token_type`` (e.g. the id :func:`setup_mask_token` returned).

    Train with :class:`MNTPDataCollator` as the trainer's ``data_collator``. The loss reads
    ``features[0]["input_ids" | "attention_mask"]`` and masks them itself (training: torch's RNG, which
    the trainer seeds and restores on resume, with a different stream per DDP rank; eval: masks seeded
    by the batch content, so every evaluation of a batch uses the same masks). A batch that already has ``labels`` is used as given.
    A batch without any label gives 0 (llm2vec's HF loss gives NaN there).
    """

    def __init__(
        self,
        model: Any,
        lm_head: nn.Module | torch.Tensor | str | None = None,
        freeze_lm_head: bool = True,
        *,
        mlm_probability: float = 0.2,
        mask_token_type: str = "blank",
        strategy: str = "default",
        mask_token_id: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.freeze_lm_head = freeze_lm_head
        self.mlm_probability = check_mlm_probability(mlm_probability)
        self.strategy = check_strategy(strategy)
        self.mask_token_type = mask_token_type
        encoder = model[0]
        tokenizer = encoder.tokenizer
        self.mask_token_id = int(mask_token_id) if mask_token_id is not None else resolve_mask_token_id(tokenizer, mask_token_type)
        self.register_buffer("special_ids", torch.tensor(special_token_ids(tokenizer), dtype=torch.long), persistent=False)
        backbone = _base_backbone(encoder.model)
        self.vocab_size = min(len(tokenizer), backbone.get_input_embeddings().num_embeddings)
        config = backbone.config
        dtype = backbone.get_input_embeddings().weight.dtype
        if lm_head is None or isinstance(lm_head, str):
            source = lm_head or getattr(encoder, "model_name_or_path", None) or config.name_or_path
            head = load_lm_head(source, config, dtype=dtype)
            self.lm_head_source = source
        elif isinstance(lm_head, torch.Tensor):
            head = nn.Linear(lm_head.shape[1], lm_head.shape[0], bias=False, device="meta")
            head.weight = nn.Parameter(lm_head.detach().clone())
            self.lm_head_source = "tensor"
        else:
            head = lm_head
            self.lm_head_source = type(lm_head).__name__
        self.lm_head = head
        self.transform = logit_transform(config)
        if head is not None:
            hidden_size = backbone.get_input_embeddings().weight.shape[1]
            if head.weight.shape[1] != hidden_size:
                raise InputError(f"The LM head takes {head.weight.shape[1]} features; the model's hidden size is {hidden_size}.")
            self._match_vocab(backbone.get_input_embeddings().num_embeddings)
            for p in head.parameters():
                p.requires_grad_(not freeze_lm_head)

    def _match_vocab(self, rows: int) -> None:
        """Give an untied head the rows that resized input embeddings (an added mask token) got."""
        head = self.lm_head
        extra = rows - head.weight.shape[0]
        if extra <= 0:
            return
        with torch.no_grad():
            weight = torch.cat([head.weight, head.weight.mean(0, keepdim=True).expand(extra, -1)], dim=0)
            head.weight = nn.Parameter(weight)
            if head.bias is not None:
                head.bias = nn.Parameter(torch.cat([head.bias, head.bias.mean().expand(extra)]))
            head.out_features = rows

    def _head_params(self, model: nn.Module, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.lm_head is None:  # tied: the model's (possibly resized) input embeddings
            from accelerate.utils import extract_model_from_parallel

            weight = _base_backbone(extract_model_from_parallel(model)[0].model).get_input_embeddings().weight
            return (weight.detach() if self.freeze_lm_head else weight), None
        if self.lm_head.weight.device != device:
            self.lm_head.to(device)
        return self.lm_head.weight, self.lm_head.bias

    def labelled_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        model: nn.Module | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits, targets, hidden)``: LM-head logits at the labelled positions only (float32).

        ``logits[k]`` predicts ``targets[k]`` from the hidden state one position earlier. ``hidden`` is
        the full last hidden state (kept so that an all-unlabelled batch can still give a zero loss
        connected to every parameter).
        """
        model = self.model if model is None else model
        if labels.shape != input_ids.shape:
            raise InputError(f"labels shape {tuple(labels.shape)} != input_ids shape {tuple(input_ids.shape)}")
        features = model({"input_ids": input_ids, "attention_mask": attention_mask})
        hidden = features["token_embeddings"]
        targets = labels[:, 1:]
        selected = targets != IGNORE_INDEX
        states = hidden[:, :-1][selected]
        weight, bias = self._head_params(model, hidden.device)
        bias = bias.to(states.dtype) if bias is not None else None
        logits = F.linear(states, weight.to(states.dtype), bias)
        if self.transform is not None:
            logits = self.transform(logits)
        return logits.float(), targets[selected], hidden

    def mask(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(masked input_ids, labels)`` with this loss's masking settings (see :func:`mask_tokens`)."""
        return mask_tokens(
            input_ids,
            attention_mask,
            mask_token_id=self.mask_token_id,
            mlm_probability=self.mlm_probability,
            strategy=self.strategy,
            special_ids=self.special_ids.to(input_ids.device),
            vocab_size=self.vocab_size,
            generator=generator,
        )

    def masked_loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """MNTP cross entropy for an already-masked batch (labels -100 where not masked), as llm2vec's loss."""
        logits, targets, hidden = self.labelled_logits(input_ids, attention_mask, labels)
        if targets.numel() == 0:
            return hidden.sum() * 0.0
        return F.cross_entropy(logits, targets)

    def forward(self, features: list[dict[str, torch.Tensor]], labels: torch.Tensor | None = None) -> torch.Tensor:
        batch = features[0]
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        labels = batch.get("labels")
        if labels is None:
            if self.model.training:
                input_ids, labels = self.mask(input_ids, attention_mask, generator=_rank_generator(input_ids.device))
            else:
                input_ids, labels = self.mask(input_ids.cpu(), attention_mask.cpu(), generator=content_generator(input_ids))
                input_ids, labels = input_ids.to(attention_mask.device), labels.to(attention_mask.device)
        return self.masked_loss(input_ids, attention_mask, labels)

    def get_config_dict(self) -> dict[str, Any]:
        return {"lm_head": self.lm_head_source, "freeze_lm_head": self.freeze_lm_head}

    @property
    def citation(self) -> str:
        return LLM2VEC_CITATION


# ---------------------------------------------------------------------------------------------
# Evaluation: masked-token loss and accuracy
# ---------------------------------------------------------------------------------------------


class MNTPEvaluator(BaseEvaluator):
    """Masked-token cross entropy and accuracy on fixed masks (drawn once from ``seed`` with ``loss``'s settings).

    ``rows``: texts, or dicts with ``input_ids`` (+ ``labels`` if already masked), batched by ``collator``.

    Returns ``{"<name>_loss", "<name>_accuracy"}``, both over all labelled tokens of ``rows`` (a
    token-weighted mean; llm2vec's ``eval_loss`` averages per batch). Primary metric: accuracy.
    """

    def __init__(
        self,
        loss: MNTPLoss,
        rows: Any,
        collator: MNTPDataCollator,
        batch_size: int = 8,
        seed: int = 0,
        name: str = "mntp",
        max_rows: int | None = None,
    ) -> None:
        super().__init__()
        self.loss = loss
        self.name = name
        self.batch_size = batch_size
        self.primary_metric = "accuracy"
        self.greater_is_better = True
        rows = list(rows) if not isinstance(rows, list) else rows
        if max_rows is not None:
            rows = rows[:max_rows]
        rows = [{"text": r} if isinstance(r, str) else r for r in rows]
        if not rows:
            raise InputError("MNTPEvaluator needs at least one row")
        generator = torch.Generator().manual_seed(seed)
        self.batches = []
        for i in range(0, len(rows), batch_size):
            batch = collator(rows[i : i + batch_size])
            ids, mask = batch[f"{FEATURE_PREFIX}_input_ids"], batch[f"{FEATURE_PREFIX}_attention_mask"]
            if f"{FEATURE_PREFIX}_labels" not in batch:
                ids, labels = loss.mask(ids, mask, generator=generator)
                batch = {f"{FEATURE_PREFIX}_input_ids": ids, f"{FEATURE_PREFIX}_attention_mask": mask, f"{FEATURE_PREFIX}_labels": labels}
            self.batches.append(batch)
        self.num_tokens = int(sum((b[f"{FEATURE_PREFIX}_labels"] != IGNORE_INDEX).sum().item() for b in self.batches))
        if self.num_tokens == 0:
            logger.warning(
                "MNTPEvaluator: no eval tokens: none of the %d rows has a masked token (too short, or only special "
                "tokens); its loss and accuracy are NaN.", len(rows),
            )

    @torch.no_grad()
    def __call__(self, model: Any, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        total_loss, correct, count = 0.0, 0, 0
        was_training = model.training
        model.eval()
        try:
            device = model.device
            for batch in self.batches:
                ids, mask, labels = (batch[f"{FEATURE_PREFIX}_{k}"].to(device) for k in ("input_ids", "attention_mask", "labels"))
                logits, targets, _ = self.loss.labelled_logits(ids, mask, labels, model=model)
                if targets.numel():
                    total_loss += F.cross_entropy(logits, targets, reduction="sum").item()
                    correct += (logits.argmax(-1) == targets).sum().item()
                    count += targets.numel()
        finally:
            model.train(was_training)
        if count == 0:  # nothing evaluated: NaN, not a perfect-looking 0.0 loss
            logger.warning("MNTPEvaluator: no eval tokens (no masked token in the eval rows): loss and accuracy are NaN.")
            metrics = {"loss": float("nan"), "accuracy": float("nan")}
        else:
            metrics = {"loss": total_loss / count, "accuracy": correct / count}
        metrics = self.prefix_name_to_metrics(metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics
