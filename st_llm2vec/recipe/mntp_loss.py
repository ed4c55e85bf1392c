"""Masked next-token prediction (MNTP), step 2 of the LLM2Vec recipe, as a Sentence-Transformers loss.

MNTP masks a fraction of the tokens and predicts the token at position ``i`` from the bidirectional
hidden state at ``i - 1`` through the causal LM's own head (llm2vec's ``<Arch>BiForMNTP`` with its
``logits[:, :-1]`` / ``labels[:, 1:]`` shift): cross entropy, mean over the labelled positions.

Unlike llm2vec, which materialises full-vocabulary logits at every position (batch × seq × vocab
floats, of which ~80 % are thrown away), :class:`MNTPLoss` runs the LM head only on the hidden states
that carry a label. The loss value is the same (see ``tests/test_recipe_mntp.py`` for parity with llm2vec).

Pieces, usable on their own with ``SentenceTransformerTrainer``:

- :func:`~.mntp_masking.mask_tokens` / :class:`~.mntp_masking.MNTPDataCollator`: llm2vec's masking (``mlm_probability``, the
  ``default`` 80/10/10 and ``all_mask`` strategies), never on padding, special tokens or the first token;
- :class:`MNTPLoss`: the loss (``masked_loss(input_ids, attention_mask, labels)`` for masked batches);
- :class:`MNTPEvaluator`: masked-token loss and accuracy on fixed (seeded) masks;
- the whole recipe from an llm2vec-style config (``st-llm2vec mntp CONFIG``) is :mod:`st_llm2vec.recipe.stage_mntp`.

With the stock trainer::

    model = st_llm2vec.from_llm("meta-llama/Meta-Llama-3-8B-Instruct", dtype=torch.bfloat16)
    add_lora(model, lora_config(r=16))                      # st_llm2vec.recipe.lora
    loss = MNTPLoss(model, mlm_probability=0.2)             # the checkpoint's own LM head, frozen
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=blocks,        # text_data.tokenize_corpus(...) or a "text" column
        loss=loss, data_collator=MNTPDataCollator(model[0].tokenizer, max_length=512),
        evaluator=MNTPEvaluator(loss, eval_texts, MNTPDataCollator(model[0].tokenizer)),
    )

Resuming a LoRA run from a checkpoint needs :class:`~st_llm2vec.recipe.trainer.LLM2VecTrainer`, which
the recipe uses: ST's own resume path rebuilds the model through transformers' PEFT integration,
whose parameter names differ from a ``peft.get_peft_model`` backbone.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers.base.evaluation import BaseEvaluator
from torch import nn

from ..cards import LLM2VEC_CITATION
from ..errors import InputError
from .mntp_head import load_lm_head, logit_transform
from .mntp_masking import (
    FEATURE_PREFIX,
    IGNORE_INDEX,
    MNTPDataCollator,
    base_backbone,
    check_mlm_probability,
    check_strategy,
    content_generator,
    mask_tokens,
    rank_generator,
    resolve_mask_token_id,
    special_token_ids,
)

logger = logging.getLogger(__name__)


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

    def __init__(self, model: Any, lm_head: nn.Module | torch.Tensor | str | None = None, freeze_lm_head: bool = True, *,
                 mlm_probability: float = 0.2, mask_token_type: str = "blank", strategy: str = "default",
                 mask_token_id: int | None = None) -> None:
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
        backbone = base_backbone(encoder.model)
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

            weight = base_backbone(extract_model_from_parallel(model)[0].model).get_input_embeddings().weight
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
                input_ids, labels = self.mask(input_ids, attention_mask, generator=rank_generator(input_ids.device))
            else:
                input_ids, labels = self.mask(input_ids.cpu(), attention_mask.cpu(), generator=content_generator(input_ids))
                input_ids, labels = input_ids.to(attention_mask.device), labels.to(attention_mask.device)
        return self.masked_loss(input_ids, attention_mask, labels)

    def get_config_dict(self) -> dict[str, Any]:
        return {"lm_head": self.lm_head_source, "freeze_lm_head": self.freeze_lm_head}

    @property
    def citation(self) -> str:
        return LLM2VEC_CITATION


# -- evaluation: masked-token loss and accuracy ---------------------------------------------------------


class MNTPEvaluator(BaseEvaluator):
    """Masked-token cross entropy and accuracy on fixed masks (drawn once from ``seed`` with ``loss``'s settings).

    ``rows``: texts, or dicts with ``input_ids`` (+ ``labels`` if already masked), batched by ``collator``.

    Returns ``{"<name>_loss", "<name>_accuracy"}``, both over all labelled tokens of ``rows`` (a
    token-weighted mean; llm2vec's ``eval_loss`` averages per batch). Primary metric: accuracy.
    """

    def __init__(self, loss: MNTPLoss, rows: Any, collator: MNTPDataCollator, batch_size: int = 8, seed: int = 0,
                 name: str = "mntp", max_rows: int | None = None) -> None:
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
