"""The keys of the contrastive stages (llm2vec's ``run_simcse`` / ``run_supervised`` arguments), checked before
anything loads, and where each stage's training data comes from (:meth:`ContrastiveArguments.data`).

Importing this is cheap: ``st-llm2vec simcse --help`` / ``supervised --help`` are built from it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import InputError
from .arguments import RecipeArguments
from .keys import key
from .losses import LOSS_ALIASES

logger = logging.getLogger(__name__)


def _evaluator_value(value: Any) -> None:
    if value not in (None, False) and str(value).lower() not in ("sts", "none", "false", ""):
        raise InputError(f"expected 'sts' or 'none', got {value!r}")


def _instructions_value(value: Mapping[str, Any]) -> None:
    for name, text in value.items():
        if not (isinstance(text, str) or (isinstance(text, list) and all(isinstance(t, str) for t in text))):
            raise InputError(f"{name!r}: expected an instruction string or a list of them, got {text!r}")


@dataclass
class ContrastiveArguments(RecipeArguments):
    """The keys both contrastive stages read (llm2vec's ``run_simcse`` / ``run_supervised`` arguments)."""

    IGNORED_KEYS: ClassVar[frozenset[str]] = frozenset({"experiment_id", "do_train", "remove_unused_columns"})
    PATH_KEYS: ClassVar[tuple[str, ...]] = ("model_name_or_path", "peft_model_name_or_path", "dataset_file_path",
                                            "eval_data_dir")
    RESULT_FILE: ClassVar[str] = "st_llm2vec_stage.json"

    peft_model_name_or_path: str | None = key(None, help="an llm2vec adapter, merged first")
    bidirectional: bool = key(True, help="false keeps the model causal (a baseline)")
    # loss: llm2vec's HardNegativeNLLLoss is MultipleNegativesRankingLoss (scale = loss_scale, cosine)
    loss_class: str = key("MultipleNegativesRankingLoss", choices=tuple(LOSS_ALIASES),
                          help="the contrastive loss (Cached... for large batches on small GPUs)")
    loss_scale: float = key(20.0, low=0, low_open=True, help="the loss's scale (1 / temperature)")
    mini_batch_size: int = key(32, low=1, help="CachedMultipleNegativesRankingLoss only")
    gather_across_devices: bool | str | None = key(
        "auto", kind="bool_or_auto", help="negatives from every process: true, false, or auto (more than one process)")
    simcse_dropout: float | None = key(None, low=0, high=1, high_open=True, help="attention dropout while training")
    # data
    dataset_name: str | None = key(None, help="which data layout dataset_file_path holds")
    dataset_file_path: str | None = key(None, help="the training data")
    # run
    save_mode: str = key("merged", choices=("merged", "adapter"), help="merged, or adapter (over the start model on disk)")
    eval_data_dir: str | None = key(None, help="default: the shared data folder if found")
    eval_max_pairs: int | None = key(1000, low=1, help="pairs per dev set; null: all")
    evaluator: str | None = key("sts", kind="any", check=_evaluator_value, help="sts or none")
    eval_instruction: str | None = key(None, help="prompt for both sides of the dev STS pairs")

    def check(self, training: Mapping[str, Any]) -> None:
        if training.get("prompts") is not None:
            raise InputError(
                "Training prompts come from the datasets' instruction table; set `instructions` (supervised) "
                "instead of `prompts`."
            )
        if self.save_mode == "adapter" and self.peft_model_name_or_path:
            raise InputError(
                "save_mode 'adapter' saves a LoRA over the start model as it is on disk, but peft_model_name_or_path "
                "is merged in memory first. Save the merged start model (e.g. `st-llm2vec convert`) and start from "
                "it, or use save_mode 'merged'."
            )

    def unmerged_output(self) -> bool:
        return self.save_mode == "adapter"

    @property
    def evaluating(self) -> bool:
        return str(self.evaluator).lower() not in ("none", "false", "")

    def data(self):
        """The stage's training data (:class:`~st_llm2vec.recipe.pair_data.PairData`)."""
        raise NotImplementedError


@dataclass
class SimCSEArguments(ContrastiveArguments):
    """Unsupervised SimCSE: (x, x) pairs, in-batch negatives, attention dropout as the only difference."""

    STAGE: ClassVar[str] = "simcse"
    TITLE: ClassVar[str] = "simcse"
    TRAINING_DEFAULTS: ClassVar[dict[str, Any]] = {"learning_rate": 3e-5}

    simcse_dropout: float | None = 0.3
    dataset_name: str | None = "Wiki1M"

    def data(self):
        from .pair_data import PairData, PairSubset
        from .pair_files import read_sentences, simcse_dataset

        name, path = str(self.dataset_name or ""), self.dataset_file_path
        if name.lower() in ("wiki1m", "text", "txt"):
            if not path:
                raise InputError(f"dataset_name {name!r} needs dataset_file_path: a text file, one sentence per line.")
            sentences = read_sentences(path)
        elif name.lower() == "shared":
            from .. import devdata

            sentences = devdata.simcse_sentences(path)
        else:
            raise InputError(
                f"SimCSE dataset_name {name!r} is unknown: use 'Wiki1M' (a text file, one sentence per line, "
                "in dataset_file_path) or 'shared' (SICK + MSR train sentences from the shared data folder)."
            )
        if self.max_train_samples is not None:
            sentences = sentences[: self.max_train_samples]
        return PairData([PairSubset("simcse", simcse_dataset(sentences), None, False, str(path or name))])


@dataclass
class SupervisedArguments(ContrastiveArguments):
    """Supervised: (query, positive[, hard negative]) per dataset, per-dataset instructions, one dataset per
    global batch."""

    STAGE: ClassVar[str] = "supervised"
    TITLE: ClassVar[str] = "supervised"
    TRAINING_DEFAULTS: ClassVar[dict[str, Any]] = {"learning_rate": 2e-4}

    dataset_name: str | None = "E5"
    eval_instruction: str | None = "Retrieve semantically similar text:"  # llm2vec's MTEB STS instruction
    instructions: dict[str, Any] | None = key(None, check=_instructions_value,
                                              help="instruction per dataset, over llm2vec's table")
    symmetric_datasets: list[str] | None = key(None, help="datasets whose documents get the instruction too")
    symmetric_instructions: bool = key(True, help="llm2vec's instructions on both sides of symmetric sets")
    datasets: list[str] | None = key(None, help="read only these datasets of the folder")
    shared_sets: list[str] = key(default_factory=lambda: ["sick", "msr"], nullable=False,
                                 help="sets of the shared data for dataset_name 'shared'")
    skip_small_datasets: bool = key(False, help="drop datasets smaller than one global batch instead of refusing")

    def data(self):
        from .pair_files import read_pair_folder, shared_pair_data

        name, path = str(self.dataset_name or ""), self.dataset_file_path
        if self.max_train_samples is not None:
            logger.info("max_train_samples caps the rows of each dataset in the supervised stage")
        if name.lower() in ("e5", "echo", "jsonl"):
            if not path:
                raise InputError(f"dataset_name {name!r} needs dataset_file_path: a folder of <dataset>.jsonl files.")
            data = read_pair_folder(path, instructions=self.instructions, symmetric=self.symmetric_datasets,
                                    symmetric_instructions=self.symmetric_instructions, datasets=self.datasets)
        elif name.lower() == "shared":
            data = shared_pair_data(path, self.shared_sets, instructions=self.instructions,
                                    symmetric_instructions=self.symmetric_instructions)
        else:
            raise InputError(
                f"Supervised dataset_name {name!r} is unknown: use 'E5' (a folder of <dataset>.jsonl files in "
                "dataset_file_path, llm2vec's echo-data layout) or 'shared' (SICK triplets + MSR pairs)."
            )
        return data.limit(self.max_train_samples)


ARGUMENTS: dict[str, type[ContrastiveArguments]] = {cls.STAGE: cls for cls in (SimCSEArguments, SupervisedArguments)}


def arguments_class(stage: str) -> type[ContrastiveArguments]:
    if stage not in ARGUMENTS:
        raise InputError(f"Unknown stage {stage!r}; choose from {tuple(ARGUMENTS)}.")
    return ARGUMENTS[stage]
