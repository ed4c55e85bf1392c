"""Step 3 of the recipe, contrastive training (unsupervised SimCSE, supervised with hard negatives): the
pieces Sentence Transformers' trainer needs beyond its own, usable without our CLI.

- batches: every global batch (per-device batch × processes) comes from one dataset, without
  duplicate texts, and incomplete batches are dropped, as llm2vec's E5 batching does; each process
  gets one contiguous slice of it, so the gathered negatives share the dataset
  (:class:`GlobalBatchSampler`, :class:`ContrastiveTrainer`);
- SimCSE dropout: :func:`set_attention_dropout` (llm2vec passes it to ``from_pretrained``);
- evaluation: the dev STS evaluators with llm2vec's instruction (:class:`~st_llm2vec.instructed_evaluator.InstructedSequentialEvaluator`),
  and a fixed-batch loss probe comparable before and after training (:func:`probe_loss`).

The losses are :mod:`.losses`; the recipe runner (config, start model, saving) is :mod:`.stage_contrastive`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

from .trainer import LLM2VecTrainer
from ..errors import InputError



# --------------------------------------------------------------------------- batching


class GlobalBatchSampler(torch.utils.data.BatchSampler):
    """Cuts each global batch of ``sampler`` (one dataset, ``per_device × processes`` rows) into
    ``num_chunks`` consecutive per-process batches; accelerate deals batch ``k`` to process ``k % num_chunks``,
    so at every step all processes hold slices of the same global batch. Incomplete global batches are
    skipped, so every process gets the same number of equal-size batches (needed to gather negatives)."""

    def __init__(self, sampler, num_chunks: int) -> None:
        self.sampler = sampler  # the name accelerate looks for to forward set_epoch
        self.num_chunks = num_chunks
        self.global_batch_size = sampler.batch_size
        if self.global_batch_size % num_chunks:
            raise InputError(f"global batch size {self.global_batch_size} is not divisible by {num_chunks} processes")
        self.batch_size = self.global_batch_size // num_chunks
        self.drop_last = True

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.sampler:
            if len(batch) != self.global_batch_size:
                continue
            for k in range(self.num_chunks):
                yield batch[k * self.batch_size : (k + 1) * self.batch_size]

    def __len__(self) -> int:
        return len(self.sampler) * self.num_chunks

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


class ContrastiveTrainer(LLM2VecTrainer):
    """The trainer with llm2vec's global one-dataset batches."""

    def get_batch_sampler(self, dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
        # One batch sampler per dataset, over global batches (always complete ones).
        return super().get_batch_sampler(
            dataset, batch_size * self.args.world_size, True, valid_label_columns, generator, seed
        )

    def get_multi_dataset_batch_sampler(self, dataset, batch_samplers, generator=None, seed=0):
        sampler = super().get_multi_dataset_batch_sampler(dataset, batch_samplers, generator, seed)
        return GlobalBatchSampler(sampler, self.args.world_size)


# --------------------------------------------------------------------------- the loss probe


def probe_loss(trainer, data, batch_size: int, seed: int = 0) -> float:
    """The contrastive loss on a fixed batch (first rows of the largest dataset), in train mode with a fixed
    RNG seed, so dropout masks repeat: comparable before and after training. Local to each process."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    subset = max(data.subsets, key=lambda s: len(s.dataset))
    rows = subset.dataset.select(range(min(batch_size, len(subset.dataset))))
    features = [dict(row, dataset_name=subset.name) for row in rows]
    batch = trainer.data_collator(features)
    batch.pop("dataset_name", None)
    inputs, labels = trainer.collect_features(batch)
    device = trainer.args.device
    inputs = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in f.items()} for f in inputs]
    model = trainer.model
    loss_fn = MultipleNegativesRankingLoss(model, scale=trainer.loss.scale)
    was_training = model.training
    model.train()
    devices = [device] if device.type == "cuda" else []  # dropout draws from the device's generator
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed)
            value = loss_fn(inputs, labels).item()
    finally:
        model.train(was_training)
    return value


# --------------------------------------------------------------------------- SimCSE dropout


def set_attention_dropout(hf_model, p: float) -> int:
    """Set the attention-probability dropout of every attention module (and the config) to ``p``.

    llm2vec passes ``attention_dropout=simcse_dropout`` to ``from_pretrained``; transformers' attention
    modules copy it at construction, so it is set on them here. Returns how many modules were set.
    """
    count = 0
    config = getattr(hf_model, "config", None)
    if config is not None and hasattr(config, "attention_dropout"):
        config.attention_dropout = p
    for module in hf_model.modules():
        value = getattr(module, "attention_dropout", None)
        if isinstance(value, torch.nn.Dropout):
            value.p = p
            count += 1
        elif isinstance(value, float) and not isinstance(value, bool):
            module.attention_dropout = p
            count += 1
    return count


# --------------------------------------------------------------------------- evaluation


def dev_sts_evaluator(
    data_dir: str | None, max_pairs: int | None, batch_size: int, instruction: str | None = None
) -> Any:
    """Cosine-Spearman on the dev STS sets (STS12/13 test, SICK trial; built-in pairs without the shared data)."""
    from .. import devdata
    from ..instructed_evaluator import InstructedSequentialEvaluator

    return InstructedSequentialEvaluator(devdata.sts_evaluators(data_dir, max_pairs, batch_size=batch_size), instruction)





def sts_scores(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if "spearman" in k or k.endswith("sequential_score")}


def last_eval(trainer) -> dict[str, float]:
    """The evaluation at the final step: from the log if the trainer just ran it, else run it now."""
    for entry in reversed(trainer.state.log_history):
        if any(k.startswith("eval_") for k in entry):
            if entry.get("step") == trainer.state.global_step:
                return sts_scores(entry)
            break
    return sts_scores(trainer.evaluate())
