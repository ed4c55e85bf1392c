"""Step 3 of the recipe: contrastive training (unsupervised SimCSE, supervised with hard negatives) on
Sentence Transformers' trainer.

What llm2vec's ``run_simcse.py`` / ``run_supervised.py`` do, mapped onto ST:

- loss: llm2vec's ``HardNegativeNLLLoss`` (cosine × ``loss_scale``, cross-entropy over in-batch
  positives and hard negatives, gathered across processes) is ``MultipleNegativesRankingLoss`` with
  ``scale=loss_scale`` and ``gather_across_devices`` under DDP; ``CachedMultipleNegativesRankingLoss``
  (GradCache) reaches large batches on small GPUs;
- batches: every global batch (per-device batch × processes) comes from one dataset, without
  duplicate texts, and incomplete batches are dropped, as llm2vec's E5 batching does; each process
  gets one contiguous slice of it, so the gathered negatives share the dataset;
- instructions: ST's per-dataset ``prompts`` (see :mod:`st_llm2vec.pair_data`);
- model: the start model (an st_llm2vec model dir, e.g. the MNTP output, or a causal LM plus an
  optional llm2vec PEFT adapter, merged) gets a fresh LoRA (``lora_r``, alpha 2r, dropout 0.05); for
  SimCSE the backbone's attention dropout is ``simcse_dropout`` (0.3) while training. Dropout acts
  in ``train()`` mode only, so ``encode`` (eval mode) is deterministic;
- output: a standalone model with the LoRA merged (``save_mode: merged``, default) or the ST model dir
  with the adapter over the on-disk start model (``save_mode: adapter``), with ST's model card;
  checkpoints hold the adapter plus optimizer state, and ``resume_from_checkpoint`` continues a run.

Configs use llm2vec's ``train_configs`` keys; every other key must be a
``SentenceTransformerTrainingArguments`` field. ``max_seq_length`` is the training-time token limit
(llm2vec's); the saved model keeps its own ``max_seq_length`` for inference.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from sentence_transformers.base.evaluation import SequentialEvaluator

from .portable import prompt_for
from .trainer import LLM2VecTrainer, StopAfterNSteps, training_dtype

logger = logging.getLogger(__name__)

STAGES = ("simcse", "supervised")

# Keys the stage reads itself (llm2vec's ModelArguments / DataTrainingArguments / CustomArguments, plus ours).
# Everything else goes to SentenceTransformerTrainingArguments.
COMMON_DEFAULTS: dict[str, Any] = {
    # model
    "model_name_or_path": None,
    "peft_model_name_or_path": None,
    "bidirectional": True,
    "pooling_mode": None,  # None: keep the start model's (from_llm default "mean")
    "max_seq_length": None,  # training token limit; None: the model's own max_seq_length
    "torch_dtype": None,
    "attn_implementation": None,
    "format": "auto",  # portable (stock ST semantics, saved as stock modules) / exact (llm2vec's) / auto
    # LoRA
    "lora_r": 16,
    "lora_alpha": None,  # None: 2 * lora_r (llm2vec)
    "lora_dropout": 0.05,
    "lora_target_modules": None,
    # loss
    "loss_class": "MultipleNegativesRankingLoss",
    "loss_scale": 20.0,
    "mini_batch_size": 32,  # CachedMultipleNegativesRankingLoss only
    "gather_across_devices": "auto",  # auto: when more than one process
    "simcse_dropout": None,
    # data
    "dataset_name": None,
    "dataset_file_path": None,
    "max_train_samples": None,
    # run
    "stop_after_n_steps": None,
    "save_mode": "merged",
    "overwrite_output_dir": False,  # False: resume from the last checkpoint in output_dir if there is one
    "eval_data_dir": None,  # None: find the shared data folder (built-in STS pairs if absent)
    "eval_max_pairs": 1000,  # per dev set; None: all
    "evaluator": "sts",  # "sts" | "none"
    "eval_instruction": None,  # prompt for both sides of the dev STS pairs
}
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "simcse": {"simcse_dropout": 0.3, "dataset_name": "Wiki1M", "learning_rate": 3e-5},
    "supervised": {
        "dataset_name": "E5",
        "learning_rate": 2e-4,
        "instructions": None,
        "symmetric_datasets": None,
        "symmetric_instructions": True,
        "datasets": None,
        "shared_sets": ["sick", "msr"],
        "skip_small_datasets": False,
        "eval_instruction": "Retrieve semantically similar text:",  # llm2vec's MTEB STS instruction
    },
}
# llm2vec config keys that have no effect here (kept so its configs load unchanged).
IGNORED_KEYS = {"experiment_id", "do_train", "remove_unused_columns"}
LOSS_ALIASES = {
    "HardNegativeNLLLoss": "MultipleNegativesRankingLoss",
    "MultipleNegativesRankingLoss": "MultipleNegativesRankingLoss",
    "MNRL": "MultipleNegativesRankingLoss",
    "CachedMultipleNegativesRankingLoss": "CachedMultipleNegativesRankingLoss",
    "CachedMNRL": "CachedMultipleNegativesRankingLoss",
}
STAGE_FILE = "st_llm2vec_stage.json"


# --------------------------------------------------------------------------- config


PATH_KEYS = ("model_name_or_path", "peft_model_name_or_path", "dataset_file_path", "eval_data_dir")
RENAMED_KEYS = {"evaluation_strategy": "eval_strategy"}  # transformers 5 names


def _resolve_path(value: Any, base_dir: Path) -> Any:
    """A relative path that does not exist from the CWD but does next to the config file (as ``mntp`` does)."""
    if isinstance(value, str) and value and not os.path.isabs(value) and not os.path.exists(value):
        candidate = base_dir / value
        if candidate.exists():
            return str(candidate)
    return value


def load_config(config: Mapping[str, Any] | str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> dict:
    """A config dict from a dict or a JSON / YAML file, with ``overrides`` applied on top.

    Paths in a file that do not exist from the working directory are looked up next to the file.
    """
    if isinstance(config, Mapping):
        data = dict(config)
    else:
        from .config_check import read_config_file

        path = Path(config)
        if not path.is_file() and not path.exists():
            raise FileNotFoundError(f"Config file {path} not found.")
        data = read_config_file(path)
        for key in PATH_KEYS:
            if key in data:
                data[key] = _resolve_path(data[key], path.resolve().parent)
    data.update(overrides or {})
    return {RENAMED_KEYS.get(k, k): v for k, v in data.items()}


def _training_arg_names() -> set[str]:
    from sentence_transformers import SentenceTransformerTrainingArguments

    return {f.name for f in fields(SentenceTransformerTrainingArguments) if f.init}


def _stage_keys(stage: str) -> dict[str, Any]:
    """Type and range of every stage key (checked before anything loads)."""
    from .config_check import Key, pooling_check, resume_value, torch_dtype_check

    keys = {
        "model_name_or_path": Key("str", nullable=False), "peft_model_name_or_path": Key("str"),
        "bidirectional": Key("bool", nullable=False), "pooling_mode": Key("str", check=pooling_check),
        "max_seq_length": Key("int", low=1), "torch_dtype": Key("any", check=torch_dtype_check),
        "attn_implementation": Key("str"), "format": Key("str", nullable=False, choices=("auto", "portable", "exact")),
        "lora_r": Key("int", nullable=False, low=1), "lora_alpha": Key("float", low=0, low_open=True),
        "lora_dropout": Key("float", nullable=False, low=0, high=1, high_open=True),
        "lora_target_modules": Key("list_str"),
        "loss_class": Key("str", nullable=False, choices=tuple(LOSS_ALIASES)),
        "loss_scale": Key("float", nullable=False, low=0, low_open=True),
        "mini_batch_size": Key("int", nullable=False, low=1),
        "gather_across_devices": Key("any", check=_gather_value),
        "simcse_dropout": Key("float", low=0, high=1, high_open=True),
        "dataset_name": Key("str"), "dataset_file_path": Key("str"), "max_train_samples": Key("int", low=1),
        "stop_after_n_steps": Key("int", low=0), "save_mode": Key("str", nullable=False, choices=("merged", "adapter")),
        "overwrite_output_dir": Key("bool", nullable=False), "eval_data_dir": Key("str"),
        "eval_max_pairs": Key("int", low=1), "evaluator": Key("any", check=_evaluator_value),
        "eval_instruction": Key("str"), "resume_from_checkpoint": Key("any", check=resume_value),
    }
    if stage == "supervised":
        keys.update({
            "instructions": Key("dict", check=_instructions_value), "symmetric_datasets": Key("list_str"),
            "symmetric_instructions": Key("bool", nullable=False), "datasets": Key("list_str"),
            "shared_sets": Key("list_str", nullable=False), "skip_small_datasets": Key("bool", nullable=False),
        })
    return keys


def _gather_value(value: Any) -> None:
    if value is not None and not isinstance(value, bool) and value != "auto":
        raise ValueError(f"expected true, false or 'auto', got {value!r}")


def _evaluator_value(value: Any) -> None:
    if value not in (None, False) and str(value).lower() not in ("sts", "none", "false", ""):
        raise ValueError(f"expected 'sts' or 'none', got {value!r}")


def _instructions_value(value: Mapping[str, Any]) -> None:
    for name, text in value.items():
        if not (isinstance(text, str) or (isinstance(text, list) and all(isinstance(t, str) for t in text))):
            raise ValueError(f"{name!r}: expected an instruction string or a list of them, got {text!r}")


def check_stage_config(
    settings: Mapping[str, Any], train_args: Mapping[str, Any], stage: str, source: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every key's type and range and output_dir checked (numbers given as strings converted) before anything
    loads; a :class:`~st_llm2vec.config_check.ConfigError` names ``source`` (the config file) and each bad key."""
    from .config_check import check_keys, check_output_dir, check_training_args, raise_errors

    settings, errors = check_keys(settings, _stage_keys(stage))
    resume, more = check_keys({k: v for k, v in train_args.items() if k == "resume_from_checkpoint"},
                              {"resume_from_checkpoint": _stage_keys(stage)["resume_from_checkpoint"]})
    errors += more
    train_args, more = check_training_args({k: v for k, v in train_args.items() if k != "resume_from_checkpoint"})
    errors += more
    raise_errors(errors, source)
    check_output_dir(train_args["output_dir"], source)
    return settings, {**train_args, **resume}


def split_config(
    config: Mapping[str, Any], stage: str, source: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(stage settings with defaults, SentenceTransformerTrainingArguments kwargs); unknown keys raise, every
    value is checked (``source``, the config file, names where a bad value comes from)."""
    if stage not in STAGES:
        raise ValueError(f"Unknown stage {stage!r}; choose from {STAGES}.")
    ours = {**COMMON_DEFAULTS, **STAGE_DEFAULTS[stage]}
    arg_names = _training_arg_names()
    settings: dict[str, Any] = {k: v for k, v in ours.items() if k not in arg_names}
    train_args: dict[str, Any] = {k: v for k, v in ours.items() if k in arg_names}
    unknown = []
    for key, value in config.items():
        if key in IGNORED_KEYS:
            logger.info("config key %r has no effect here; ignored", key)
        elif key in settings:
            settings[key] = value
        elif key in arg_names:
            train_args[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"Unknown config key(s) for the {stage} stage: {sorted(unknown)}. Stage keys: {sorted(settings)}; "
            "anything else must be a SentenceTransformerTrainingArguments field."
        )
    if not settings["model_name_or_path"]:
        raise ValueError("The config needs model_name_or_path (an st_llm2vec model dir or a causal-LM checkpoint).")
    if not train_args.get("output_dir"):
        raise ValueError("The config needs output_dir.")
    if settings["save_mode"] not in ("merged", "adapter"):
        raise ValueError(f"save_mode must be 'merged' or 'adapter', not {settings['save_mode']!r}.")
    if train_args.get("prompts") is not None:
        raise ValueError(
            "Training prompts come from the datasets' instruction table; set `instructions` (supervised) instead of "
            "`prompts`."
        )
    if settings["loss_class"] not in LOSS_ALIASES:
        raise ValueError(f"loss_class {settings['loss_class']!r} is not one of {sorted(LOSS_ALIASES)}.")
    if stage == "supervised" and settings.get("max_train_samples") is not None:
        logger.info("max_train_samples caps the rows of each dataset in the supervised stage")
    return check_stage_config(settings, train_args, stage, source)


# --------------------------------------------------------------------------- model


@dataclass
class StartModel:
    """Where the stage started from, and whether that state exists on disk as is."""

    model_name_or_path: str
    peft_model_name_or_path: str | None
    merged_in_memory: bool


def _merge_injected_adapters(hf_model) -> bool:
    """Fold LoRA layers that transformers' PEFT integration injected at load time (an ST dir saved as base +
    adapter) into the weights. Returns True if there were any."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    parents = {}
    for name, module in hf_model.named_modules():
        for child_name, child in module.named_children():
            if isinstance(child, BaseTunerLayer):
                parents[f"{name}.{child_name}" if name else child_name] = (module, child_name, child)
    for module, child_name, child in parents.values():
        child.merge()
        setattr(module, child_name, child.get_base_layer())
    if parents and hasattr(hf_model, "peft_config"):
        del hf_model.peft_config
        hf_model._hf_peft_config_loaded = False
    return bool(parents)


def load_start_model(
    model_name_or_path: str,
    peft_model_name_or_path: str | None = None,
    *,
    pooling_mode: str | None = None,
    bidirectional: bool = True,
    torch_dtype: str | None = None,
    attn_implementation: str | None = None,
    format: str = "auto",
):
    """The model a contrastive stage starts from, any earlier LoRA merged into its weights.

    ``model_name_or_path`` is an st_llm2vec model dir (has ``modules.json``; e.g. the MNTP output) or a
    causal-LM checkpoint (made an embedding model with :func:`st_llm2vec.from_llm`).
    ``peft_model_name_or_path`` is an adapter trained on that backbone (llm2vec's MNTP adapters), merged.
    Returns ``(SentenceTransformer, StartModel)``.
    """
    from peft import PeftModel

    from .build import from_llm, load_model
    from .instructions import normalize_pooling_mode
    from .lora import merge_lora

    model_kwargs: dict[str, Any] = {}
    if torch_dtype is not None:
        model_kwargs["dtype"] = training_dtype(torch_dtype)
    if attn_implementation is not None:
        model_kwargs["attn_implementation"] = attn_implementation
    merged = False
    if os.path.isfile(os.path.join(model_name_or_path, "modules.json")):
        model = load_model(model_name_or_path, format=format, device="cpu", **model_kwargs)  # either save format
        if pooling_mode is not None:
            mode = normalize_pooling_mode(pooling_mode)
            pooling = model[1]
            if getattr(pooling, "pooling_mode", mode) != mode:
                if "eos_token" in (mode, pooling.pooling_mode):
                    raise ValueError(
                        f"{model_name_or_path} pools with {pooling.pooling_mode!r}; switching to {mode!r} changes "
                        "the text suffix too. Build the model with st_llm2vec.from_llm(..., pooling_mode=...) instead."
                    )
                logger.warning("pooling_mode %r replaces the model's %r", mode, pooling.pooling_mode)
                pooling.pooling_mode = mode
        merged = _merge_injected_adapters(model[0].model)
    else:
        model = from_llm(
            model_name_or_path, pooling_mode or "mean", bidirectional=bidirectional, format=format, device="cpu",
            **model_kwargs,
        )
    if merged and getattr(model[0], "bidirectional", True):
        from .bidirectional import ensure_bidirectional

        model[0].probe = ensure_bidirectional(model[0].model)
    if peft_model_name_or_path:
        model[0].model = PeftModel.from_pretrained(model[0].model, peft_model_name_or_path)
        merge_lora(model)
        merged = True
    return model, StartModel(model_name_or_path, peft_model_name_or_path, merged)


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


def _attention_dropout_of(hf_model) -> float | None:
    config = getattr(hf_model, "config", None)
    return getattr(config, "attention_dropout", None)


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
            raise ValueError(f"global batch size {self.global_batch_size} is not divisible by {num_chunks} processes")
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


# --------------------------------------------------------------------------- data


def _simcse_data(settings: Mapping[str, Any]):
    from .pair_data import read_sentences, simcse_dataset

    name = str(settings["dataset_name"] or "")
    path = settings["dataset_file_path"]
    if name.lower() in ("wiki1m", "text", "txt"):
        if not path:
            raise ValueError(f"dataset_name {name!r} needs dataset_file_path: a text file, one sentence per line.")
        sentences = read_sentences(path)
    elif name.lower() == "shared":
        from . import devsets

        sentences = devsets.simcse_sentences(path)
    else:
        raise ValueError(
            f"SimCSE dataset_name {name!r} is unknown: use 'Wiki1M' (a text file, one sentence per line, "
            "in dataset_file_path) or 'shared' (SICK + MSR train sentences from the shared data folder)."
        )
    if settings["max_train_samples"] is not None:
        sentences = sentences[: int(settings["max_train_samples"])]
    from .pair_data import PairData, PairSubset

    return PairData([PairSubset("simcse", simcse_dataset(sentences), None, False, str(path or name))])


def _supervised_data(settings: Mapping[str, Any]):
    from .pair_data import read_pair_folder, shared_pair_data

    name = str(settings["dataset_name"] or "")
    path = settings["dataset_file_path"]
    if name.lower() in ("e5", "echo", "jsonl"):
        if not path:
            raise ValueError(f"dataset_name {name!r} needs dataset_file_path: a folder of <dataset>.jsonl files.")
        data = read_pair_folder(
            path,
            instructions=settings["instructions"],
            symmetric=settings["symmetric_datasets"],
            symmetric_instructions=settings["symmetric_instructions"],
            datasets=settings["datasets"],
        )
    elif name.lower() == "shared":
        data = shared_pair_data(
            path,
            settings["shared_sets"],
            instructions=settings["instructions"],
            symmetric_instructions=settings["symmetric_instructions"],
        )
    else:
        raise ValueError(
            f"Supervised dataset_name {name!r} is unknown: use 'E5' (a folder of <dataset>.jsonl files in "
            "dataset_file_path, llm2vec's echo-data layout) or 'shared' (SICK triplets + MSR pairs)."
        )
    return data.limit(settings["max_train_samples"])


# --------------------------------------------------------------------------- loss


def build_loss(model, settings: Mapping[str, Any], world_size: int = 1):
    """MNRL (llm2vec's HardNegativeNLLLoss) or its cached variant, scale ``loss_scale``, cosine."""
    from sentence_transformers.sentence_transformer import losses

    gather = settings["gather_across_devices"]
    gather = world_size > 1 if gather in (None, "auto") else bool(gather)
    name = LOSS_ALIASES[settings["loss_class"]]
    if name == "CachedMultipleNegativesRankingLoss":
        return losses.CachedMultipleNegativesRankingLoss(
            model, scale=float(settings["loss_scale"]), mini_batch_size=int(settings["mini_batch_size"]),
            gather_across_devices=gather,
        )
    return losses.MultipleNegativesRankingLoss(model, scale=float(settings["loss_scale"]), gather_across_devices=gather)


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


# --------------------------------------------------------------------------- the stage


@dataclass
class StageResult:
    """What a contrastive run did: where the model is, and the evidence that it learned."""

    stage: str
    output_dir: str
    save_mode: str
    global_step: int
    loss_before: float
    loss_after: float
    train_losses: list[float] = field(default_factory=list)
    eval_before: dict[str, float] = field(default_factory=dict)
    eval_after: dict[str, float] = field(default_factory=dict)
    datasets: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)
    prompts: dict[str, dict[str, str]] = field(default_factory=dict)
    world_size: int = 1
    gather_across_devices: bool = False
    global_batch_size: int = 0
    already_complete: bool = False  # output_dir held this finished run: nothing was trained or saved
    model: Any = field(default=None, repr=False, compare=False)  # the trained SentenceTransformer (not saved in JSON)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}


def _evaluators(settings: Mapping[str, Any], batch_size: int):
    """Cosine-Spearman on the dev STS sets (STS12/13 test, SICK trial; built-in pairs without the shared data)."""
    from . import devsets

    evaluators = devsets.sts_evaluators(settings["eval_data_dir"], settings["eval_max_pairs"], batch_size=batch_size)
    return InstructedSequentialEvaluator(evaluators, settings["eval_instruction"])


class InstructedSequentialEvaluator(SequentialEvaluator):
    """Runs its evaluators with ``instruction`` as the prompt of every text (llm2vec evaluates STS so);
    the main score is the mean of theirs."""

    def __init__(self, evaluators, instruction: str | None = None) -> None:
        super().__init__(evaluators, main_score_function=_mean)
        self.instruction = instruction or None

    def __call__(self, model, output_path=None, epoch: int = -1, steps: int = -1):
        if self.instruction is None:
            return super().__call__(model, output_path, epoch, steps)
        saved = (dict(model.prompts or {}), model.default_prompt_name)
        model.prompts = {**saved[0], "st_llm2vec_eval": prompt_for(model, self.instruction)}
        model.default_prompt_name = "st_llm2vec_eval"
        try:
            return super().__call__(model, output_path, epoch, steps)
        finally:
            model.prompts, model.default_prompt_name = saved


def _mean(scores: Sequence[float]) -> float:
    return sum(scores) / len(scores)


def _eval_scores(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if "spearman" in k or k.endswith("sequential_score")}


def _last_eval(trainer) -> dict[str, float]:
    """The evaluation at the final step: from the log if the trainer just ran it, else run it now."""
    for entry in reversed(trainer.state.log_history):
        if any(k.startswith("eval_") for k in entry):
            if entry.get("step") == trainer.state.global_step:
                return _eval_scores(entry)
            break
    return _eval_scores(trainer.evaluate())


@dataclass
class Stage:
    """A contrastive stage, built and ready to train: inspect it, then :func:`run_stage` it."""

    name: str
    settings: dict[str, Any]
    train_kwargs: dict[str, Any]
    data: Any  # pair_data.PairData
    model: Any  # SentenceTransformer with a fresh LoRA on the backbone
    start: StartModel
    trainer: Any  # ContrastiveTrainer
    resume_from_checkpoint: str | bool | None = None
    restore: dict[str, Any] = field(default_factory=dict)  # inference settings changed for training
    run: Any = field(default=None, repr=False)  # st_llm2vec.runs.TrainingRun: holds output_dir's lock until run_stage ends


def stage_fingerprint(stage: str, settings: Mapping[str, Any], train_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The run fingerprint of a stage config: its training-relevant keys, start model and data files' identity."""
    from .runs import run_fingerprint

    return run_fingerprint(
        {"stage": stage, **settings, **_jsonable(train_kwargs)},
        path_keys=("model_name_or_path", "peft_model_name_or_path", "dataset_file_path"),
    )


def prepare_stage(
    stage: str,
    config: Mapping[str, Any] | str | os.PathLike,
    overrides: Mapping[str, Any] | None = None,
    callbacks: Sequence[Any] = (),
) -> Stage:
    """Read and check the config, lock output_dir, load data and start model, add the LoRA, build loss,
    collator and trainer. Raises :class:`~st_llm2vec.runs.RunAlreadyComplete` if output_dir holds this
    finished run (``train_simcse`` / ``train_supervised`` return its saved result instead)."""
    from .runs import TrainingRun

    source = None if isinstance(config, Mapping) else os.fspath(config)
    settings, train_kwargs = split_config(load_config(config, overrides), stage, source)
    run = TrainingRun(
        train_kwargs["output_dir"],
        stage_fingerprint(stage, settings, train_kwargs),
        overwrite=settings["overwrite_output_dir"],
        resume=train_kwargs.get("resume_from_checkpoint"),
        max_steps=train_kwargs.get("max_steps"),
        stop_after_n_steps=settings["stop_after_n_steps"],
        what=f"{stage} training",
    )
    run.acquire()
    try:
        run.check_finished()
        return _prepare_stage(stage, settings, train_kwargs, callbacks, run)
    except BaseException:
        run.release()
        raise


def _prepare_stage(
    stage: str, settings: dict[str, Any], train_kwargs: dict[str, Any], callbacks: Sequence[Any], run: Any
) -> Stage:
    """:func:`prepare_stage` once the config is checked and ``run`` holds output_dir's lock."""
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers, MultiDatasetBatchSamplers
    from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator
    from transformers import set_seed

    from .lora import add_lora, lora_config

    train_kwargs.pop("resume_from_checkpoint", None)
    train_kwargs.setdefault("batch_sampler", BatchSamplers.NO_DUPLICATES)
    train_kwargs.setdefault("multi_dataset_batch_sampler", MultiDatasetBatchSamplers.PROPORTIONAL)
    train_kwargs.setdefault("report_to", "none")
    if train_kwargs.get("gradient_checkpointing"):
        train_kwargs.setdefault("gradient_checkpointing_kwargs", {"use_reentrant": False})
    evaluator_on = str(settings["evaluator"]).lower() not in ("none", "false", "")
    if not evaluator_on:
        train_kwargs.setdefault("eval_strategy", "no")
    elif "eval_strategy" not in train_kwargs:
        train_kwargs["eval_strategy"] = "steps" if train_kwargs.get("eval_steps") else "no"
    if settings["save_mode"] == "adapter" and settings["peft_model_name_or_path"]:
        raise ValueError(
            "save_mode 'adapter' saves a LoRA over the start model as it is on disk, but peft_model_name_or_path "
            "is merged in memory first. Save the merged start model (e.g. `st-llm2vec convert`) and start from it, "
            "or use save_mode 'merged'."
        )
    args = SentenceTransformerTrainingArguments(**train_kwargs)
    world_size = args.world_size
    set_seed(args.seed)
    # An explicit checkpoint, the latest (true), or (unless overwrite_output_dir) the latest automatically:
    # only complete checkpoints of this run (see st_llm2vec.runs).
    resume = run.resolve_resume()

    data = _simcse_data(settings) if stage == "simcse" else _supervised_data(settings)
    global_batch = args.per_device_train_batch_size * world_size
    data = data.check_batch_size(global_batch, bool(settings.get("skip_small_datasets", False)))
    data.check_in_batch_negatives(global_batch, simcse=stage == "simcse")
    if args.process_index == 0:
        logger.info("%s training data (%d rows, global batch %d):\n%s", stage, len(data), global_batch, data.summary())

    model, start = load_start_model(
        settings["model_name_or_path"],
        settings["peft_model_name_or_path"],
        pooling_mode=settings["pooling_mode"],
        bidirectional=settings["bidirectional"],
        torch_dtype=settings["torch_dtype"],
        attn_implementation=settings["attn_implementation"],
        format=settings["format"],
    )
    if settings["save_mode"] == "adapter" and start.merged_in_memory:
        raise ValueError(
            f"save_mode 'adapter' needs the start model on disk as it is trained on, but {start.model_name_or_path} "
            "holds an adapter that was merged in memory. Use save_mode 'merged'."
        )
    encoder = model[0]
    restore: dict[str, Any] = {"doc_max_length": encoder.doc_max_length}
    if settings["simcse_dropout"] is not None:
        restore["attention_dropout"] = _attention_dropout_of(encoder.model)
        n = set_attention_dropout(encoder.model, float(settings["simcse_dropout"]))
        if n == 0 and float(settings["simcse_dropout"]) > 0:
            raise ValueError(
                f"simcse_dropout={settings['simcse_dropout']}: {type(encoder.model).__name__} has no attention "
                "module with an `attention_dropout` setting, so the SimCSE dropout would have no effect."
            )
    encoder.doc_max_length = None  # llm2vec's training tokenizer truncates by tokens only
    add_lora(model, lora_config(settings["lora_r"], settings["lora_alpha"], settings["lora_dropout"],
                                settings["lora_target_modules"]))
    model.model_card_data.tags = sorted(set((model.model_card_data.tags or []) + ["llm2vec", "st-llm2vec", stage]))

    args.prompts = data.prompts() or None
    collator = SentenceTransformerDataCollator(
        preprocess_fn=model.preprocess, prompts=args.prompts, max_length=settings["max_seq_length"]
    )
    all_callbacks = list(callbacks)
    if settings["stop_after_n_steps"]:
        all_callbacks.append(StopAfterNSteps(int(settings["stop_after_n_steps"]), save=True))
    trainer = ContrastiveTrainer(
        model=model,
        args=args,
        train_dataset=data.to_dataset_dict(),
        loss=build_loss(model, settings, world_size),
        evaluator=_evaluators(settings, args.per_device_eval_batch_size) if evaluator_on else None,
        data_collator=collator,
        callbacks=all_callbacks,
    )
    return Stage(stage, settings, train_kwargs, data, model, start, trainer, resume, restore, run=run)


def run_stage(stage: Stage) -> StageResult:
    """Train a prepared stage, put the model back in its inference configuration and save it; then record
    the run as finished and release output_dir."""
    run = stage.run
    try:
        if run is not None:
            run.start(stage.trainer)
        result = _run_stage(stage)
        if run is not None:
            run.finish(result.global_step, stage.trainer.state.max_steps)
        return result
    finally:
        if run is not None:
            run.release()


def _run_stage(stage: Stage) -> StageResult:
    """:func:`run_stage`'s training and saving."""
    from accelerate.utils import extract_model_from_parallel

    from .lora import merge_lora

    trainer, model, settings, data = stage.trainer, stage.model, stage.settings, stage.data
    args = trainer.args
    evaluating = trainer.evaluator is not None
    loss_before = probe_loss(trainer, data, args.per_device_train_batch_size, args.seed)
    eval_before = _eval_scores(trainer.evaluate()) if evaluating else {}
    resume = stage.resume_from_checkpoint
    trainer.train(resume_from_checkpoint=resume if resume not in (None, False, "") else None)
    loss_after = probe_loss(trainer, data, args.per_device_train_batch_size, args.seed)
    eval_after = _last_eval(trainer) if evaluating else {}

    # Back to the inference configuration before saving.
    encoder = model[0]
    encoder.doc_max_length = stage.restore["doc_max_length"]
    if stage.restore.get("attention_dropout") is not None:
        set_attention_dropout(encoder.model, stage.restore["attention_dropout"])
    if settings["save_mode"] == "merged":
        merge_lora(model)
    model.eval()
    _describe_in_card(model, stage.name, settings, stage.start, data)
    result = StageResult(
        stage=stage.name,
        output_dir=str(args.output_dir),
        save_mode=settings["save_mode"],
        global_step=trainer.state.global_step,
        loss_before=loss_before,
        loss_after=loss_after,
        train_losses=[h["loss"] for h in trainer.state.log_history if "loss" in h],
        eval_before=eval_before,
        eval_after=eval_after,
        datasets={s.name: len(s.dataset) for s in data.subsets},
        dropped={k: v for k, v in data.dropped.items() if any(v.values())},
        prompts=args.prompts or {},
        world_size=args.world_size,
        gather_across_devices=bool(getattr(trainer.loss, "gather_across_devices", False)),
        global_batch_size=args.per_device_train_batch_size * args.world_size,
    )
    if trainer.is_world_process_zero():
        model.save_pretrained(args.output_dir)
        stage_info = {"result": result.to_dict(), "config": {**settings, **_jsonable(stage.train_kwargs)},
                      "start": asdict(stage.start)}
        with open(os.path.join(args.output_dir, STAGE_FILE), "w", encoding="utf-8") as f:
            json.dump(stage_info, f, indent=2, default=str)
        logger.info(
            "%s done: %d steps, probe loss %.4f -> %.4f; model saved to %s (%s)",
            stage.name, result.global_step, loss_before, loss_after, args.output_dir, settings["save_mode"],
        )
    trainer.accelerator.wait_for_everyone()
    # With bf16/fp16 the accelerator wrapped model.forward in autocast: hand back the plain model.
    result.model = extract_model_from_parallel(model, keep_fp32_wrapper=False)
    return result


LLM2VEC_CITATION = """
@article{llm2vec,
    title={{LLM2Vec}: Large Language Models Are Secretly Powerful Text Encoders},
    author={Parishad BehnamGhader and Vaibhav Adlakha and Marius Mosbach and Dzmitry Bahdanau and Nicolas Chapados and Siva Reddy},
    year={2024},
    journal={arXiv preprint},
    url={https://arxiv.org/abs/2404.05961}
}
"""


def _describe_in_card(model, stage: str, settings: Mapping[str, Any], start: StartModel, data) -> None:
    """Add the LLM2Vec recipe settings to ST's model card (which already has data, loss, trainer arguments)."""
    card = model.model_card_data
    start_name = start.model_name_or_path
    if not card.model_name or card.model_name == card.get_default_model_name():
        card.model_name = f"LLM2Vec {stage} model from {Path(start_name).name or start_name}"
    if not os.path.exists(start_name) and "/" in start_name:
        card.base_model = start_name  # a Hub id
    recipe = {
        "llm2vec_stage": stage,
        "start_model": start_name,
        "start_adapter_merged": start.peft_model_name_or_path,
        "lora_r": settings["lora_r"],
        "lora_alpha": settings["lora_alpha"] if settings["lora_alpha"] is not None else 2 * settings["lora_r"],
        "lora_dropout": settings["lora_dropout"],
        "simcse_dropout": settings["simcse_dropout"],
        "loss_scale": settings["loss_scale"],
        "train_max_seq_length": settings["max_seq_length"],
        "save_mode": settings["save_mode"],
        "instructions": json.dumps(data.prompts()) if data.prompts() else None,
    }
    recipe = {k: v for k, v in recipe.items() if v is not None}
    card.non_default_hyperparameters = {**recipe, **(card.non_default_hyperparameters or {})}
    card.all_hyperparameters = {**recipe, **(card.all_hyperparameters or {})}
    card.citations = {**(card.citations or {}), "LLM2Vec": LLM2VEC_CITATION}


def _jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v)) for k, v in d.items()}


def train_simcse(
    config: Mapping[str, Any] | str | os.PathLike, overrides: Mapping[str, Any] | None = None, callbacks: Sequence = ()
) -> StageResult:
    """Unsupervised SimCSE from a config (dict or JSON/YAML path): (x, x) pairs, in-batch negatives,
    attention dropout ``simcse_dropout`` as the only difference between the two views."""
    return _train_stage("simcse", config, overrides, callbacks)


def train_supervised(
    config: Mapping[str, Any] | str | os.PathLike, overrides: Mapping[str, Any] | None = None, callbacks: Sequence = ()
) -> StageResult:
    """Supervised contrastive training from a config: (query, positive[, hard negative]) per dataset,
    per-dataset instructions, one dataset per global batch."""
    return _train_stage("supervised", config, overrides, callbacks)


def _train_stage(stage: str, config, overrides, callbacks: Sequence = (), load_model: bool = True) -> StageResult:
    """Prepare and run a stage; if output_dir holds this finished run, its saved result (nothing is trained)."""
    from .runs import RunAlreadyComplete

    try:
        prepared = prepare_stage(stage, config, overrides, callbacks)
    except RunAlreadyComplete as done:
        logger.warning("%s", done)
        return _finished_result(stage, done.record, load_model)
    return run_stage(prepared)


def _finished_result(stage: str, record: Mapping[str, Any], load_model: bool) -> StageResult:
    """The result a finished run saved (``st_llm2vec_stage.json``), with the saved model if ``load_model``."""
    from .runs import read_json

    output_dir = record["output_dir"]
    saved = (read_json(os.path.join(output_dir, STAGE_FILE)) or {}).get("result") or {}
    names = {f.name for f in fields(StageResult)} - {"model", "already_complete"}
    values = {k: v for k, v in saved.items() if k in names}
    values.setdefault("stage", stage)
    values.setdefault("output_dir", output_dir)
    values.setdefault("save_mode", "merged")
    values.setdefault("global_step", record.get("global_step", 0))
    values.setdefault("loss_before", float("nan"))
    values.setdefault("loss_after", float("nan"))
    result = StageResult(**values, already_complete=True)
    if load_model:
        from sentence_transformers import SentenceTransformer

        result.model = SentenceTransformer(output_dir, device="cpu")
    return result


# --------------------------------------------------------------------------- CLI


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"override {item!r} is not KEY=VALUE")
        overrides[key.lstrip("-")] = _parse_value(value)
    return overrides


def _add_arguments(parser: argparse.ArgumentParser, stage: str) -> None:
    """The same options as ``st-llm2vec mntp``: a config plus overrides."""
    parser.add_argument("config", help=f"JSON or YAML config with llm2vec's train_configs/{stage} keys")
    parser.add_argument("--model-name-or-path", help="override model_name_or_path")
    parser.add_argument("--dataset-file-path", help="override dataset_file_path")
    parser.add_argument("--output-dir", help="override output_dir")
    parser.add_argument("--stop-after-n-steps", type=int, help="override stop_after_n_steps")
    parser.add_argument(
        "--resume-from-checkpoint", nargs="?", const=True, default=None, metavar="CHECKPOINT",
        help="resume from this checkpoint dir, or (no value) from the last one in output_dir",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override any config key (VALUE parsed as JSON when possible), repeatable",
    )


def _run(stage: str, args: argparse.Namespace) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    overrides = _parse_overrides(args.set)
    for key in ("model_name_or_path", "dataset_file_path", "output_dir", "stop_after_n_steps", "resume_from_checkpoint"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    result = _train_stage(stage, args.config, overrides, load_model=False)
    if int(os.environ.get("RANK", "0")) == 0:
        summary = {k: v for k, v in result.to_dict().items() if k not in ("train_losses", "prompts")}
        print(json.dumps(summary, indent=2))
    return 0


def add_arguments_simcse(parser: argparse.ArgumentParser) -> None:
    _add_arguments(parser, "simcse")


def run_simcse(args: argparse.Namespace) -> int:
    return _run("simcse", args)


def add_arguments_supervised(parser: argparse.ArgumentParser) -> None:
    _add_arguments(parser, "supervised")


def run_supervised(args: argparse.Namespace) -> int:
    return _run("supervised", args)


def main(stage: str, argv: Sequence[str] | None = None) -> int:
    """Entry point for the torchrun launchers: ``main("simcse", sys.argv[1:])`` (errors reported as by the CLI)."""
    from .cli import main as cli_main

    return cli_main([stage, *(sys.argv[1:] if argv is None else argv)], report_errors=True)
