"""MNTP's masking, step 2 of the LLM2Vec recipe: which token masks (``mask_token_type``), which tokens are chosen
(``mlm_probability``, never padding, special tokens or a row's first token) and how (``data_collator_type``:
llm2vec's 80/10/10 ``default`` or ``all_mask``), and the collator that batches rows for :class:`~.mntp_loss.MNTPLoss`,
which draws the masks inside the training step.

Importing this module is cheap (torch is imported where it is used): the stage's options read its choices.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import InputError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
MASK_TOKEN_TYPES = ("blank", "eos", "mask")
BLANK_TOKEN = "_"
ADDED_MASK_TOKEN = "<mask>"
FEATURE_PREFIX = "mntp"
# llm2vec's data_collator_type values: 80/10/10 mask/random/keep, or every selected token masked
COLLATOR_TYPES = ("default", "all_mask")


def check_mlm_probability(mlm_probability: float) -> float:
    p = float(mlm_probability)
    if not 0.0 < p < 1.0:
        raise InputError(f"mlm_probability must be in the open interval (0, 1), got {mlm_probability!r}")
    return p


def check_strategy(strategy: str) -> str:
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
    :func:`st_llm2vec.recipe.lora.add_lora`. Other types never change the tokenizer: a missing token is an error.
    """
    encoder = model[0]
    tokenizer = encoder.tokenizer
    if mask_token_type == "mask" and tokenizer.mask_token is None:
        tokenizer.add_special_tokens({"mask_token": ADDED_MASK_TOKEN})
        backbone = base_backbone(encoder.model)
        if len(tokenizer) > backbone.get_input_embeddings().num_embeddings:
            backbone.resize_token_embeddings(len(tokenizer), mean_resizing=True)
            logger.info("Added %s to the tokenizer and resized the embeddings to %d rows.", ADDED_MASK_TOKEN, len(tokenizer))
    return resolve_mask_token_id(tokenizer, mask_token_type)


def content_generator(input_ids: torch.Tensor, seed: int = 0) -> torch.Generator:
    """A CPU generator seeded by a batch's token ids: the same batch always gets the same masks."""
    import torch

    ids = input_ids.detach().to("cpu", torch.long).flatten()
    weights = torch.arange(1, ids.numel() + 1, dtype=torch.long) % 1_000_003
    digest = int((ids * weights).sum().item()) * 31 + ids.numel() + seed
    return torch.Generator().manual_seed(digest % (2**63 - 1))


def rank_generator(device: torch.device) -> torch.Generator | None:
    """Under DDP, a per-rank generator seeded from torch's global RNG; None (the global RNG) otherwise.

    The HF trainer seeds every rank alike, so same-shaped batches would get the same mask positions
    on every rank. Drawing the seed from the global RNG keeps runs reproducible and resumable.
    """
    import torch
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
    import torch

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

    Rows hold ``input_ids`` (pre-tokenized, e.g. from :func:`st_llm2vec.recipe.text_data.tokenize_corpus`) or a
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
        import torch

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


def base_backbone(module: Any) -> Any:
    """The transformers model under a PEFT wrapper (or the module itself)."""
    get_base = getattr(module, "get_base_model", None)
    return get_base() if callable(get_base) else module
