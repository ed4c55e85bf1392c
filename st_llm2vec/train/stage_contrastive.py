"""``st-llm2vec simcse`` / ``supervised``: step 3 of the recipe from an llm2vec ``train_configs`` config —
the shared recipe (:mod:`.recipe`) plus what is contrastive's own: its keys, the pair data
(:mod:`.pair_data`) and the pieces of :mod:`.contrastive` (global batches, loss, SimCSE dropout).

What llm2vec's ``run_simcse.py`` / ``run_supervised.py`` do, mapped onto ST: the start model (an
st_llm2vec model dir such as the MNTP output, or a causal LM plus an optional llm2vec adapter, merged)
gets a fresh LoRA; SimCSE trains with attention dropout ``simcse_dropout`` (0.3), which acts in
``train()`` mode only; instructions are ST's per-dataset ``prompts``. The output is a standalone model
with the LoRA merged (``save_mode: merged``) or the ST dir with the adapter over the on-disk start model
(``save_mode: adapter``), with ST's model card. ``max_seq_length`` is the training-time token limit
(llm2vec's); the saved model keeps its own for inference.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from ..errors import InputError
from .config import key
from .recipe import RecipeArguments, StartModel

logger = logging.getLogger(__name__)

# llm2vec's loss names → the ST loss that computes the same.
LOSS_ALIASES = {
    "HardNegativeNLLLoss": "MultipleNegativesRankingLoss",
    "MultipleNegativesRankingLoss": "MultipleNegativesRankingLoss",
    "MNRL": "MultipleNegativesRankingLoss",
    "CachedMultipleNegativesRankingLoss": "CachedMultipleNegativesRankingLoss",
    "CachedMNRL": "CachedMultipleNegativesRankingLoss",
}


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
        """The stage's training data (:class:`~st_llm2vec.train.pair_data.PairData`)."""
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
        from .pair_data import PairData, PairSubset, read_sentences, simcse_dataset

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
        from .pair_data import read_pair_folder, shared_pair_data

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


ARGUMENTS: dict[str, type[ContrastiveArguments]] = {"simcse": SimCSEArguments, "supervised": SupervisedArguments}


def arguments_class(stage: str) -> type[ContrastiveArguments]:
    if stage not in ARGUMENTS:
        raise InputError(f"Unknown stage {stage!r}; choose from {tuple(ARGUMENTS)}.")
    return ARGUMENTS[stage]


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

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_dict().items() if k not in ("train_losses", "prompts")}


@dataclass
class Stage:
    """A contrastive stage, built and ready to train: inspect it, then :func:`run_stage` it."""

    arguments: ContrastiveArguments
    training: dict[str, Any]  # SentenceTransformerTrainingArguments kwargs, as configured
    data: Any  # pair_data.PairData
    model: Any  # SentenceTransformer with a fresh LoRA on the backbone
    start: StartModel
    trainer: Any  # contrastive.ContrastiveTrainer
    resume_from_checkpoint: str | None = None
    restore: dict[str, Any] = field(default_factory=dict)  # inference settings changed for training
    run: Any = field(default=None, repr=False)  # st_llm2vec.train.runs.TrainingRun: holds output_dir's lock until run_stage ends

    @property
    def name(self) -> str:
        return self.arguments.STAGE


def prepare_stage(
    stage: str,
    config: Mapping[str, Any] | str | os.PathLike,
    overrides: Mapping[str, Any] | None = None,
    callbacks: Sequence[Any] = (),
) -> Stage:
    """Read and check the config, lock output_dir, load data and start model, add the LoRA, build loss,
    collator and trainer. Raises :class:`~st_llm2vec.train.runs.RunAlreadyComplete` if output_dir holds this
    finished run (``train_simcse`` / ``train_supervised`` return its saved result instead)."""
    from .recipe import read_arguments, start_run

    arguments, training = read_arguments(arguments_class(stage), config, overrides)
    run = start_run(arguments, training)
    try:
        return _prepare(arguments, training, callbacks, run)
    except BaseException:
        run.release()
        raise


def _prepare(arguments: ContrastiveArguments, training: dict[str, Any], callbacks: Sequence[Any], run: Any) -> Stage:
    """:func:`prepare_stage` once the config is checked and ``run`` holds output_dir's lock."""
    from sentence_transformers.base.sampler import BatchSamplers, MultiDatasetBatchSamplers
    from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator
    from transformers import set_seed

    from .contrastive import ContrastiveTrainer, build_loss, dev_sts_evaluator, set_attention_dropout
    from .recipe import add_lora, start_model, stop_callbacks, training_arguments

    kwargs = dict(training)
    kwargs.setdefault("batch_sampler", BatchSamplers.NO_DUPLICATES)
    kwargs.setdefault("multi_dataset_batch_sampler", MultiDatasetBatchSamplers.PROPORTIONAL)
    if not arguments.evaluating:
        kwargs.setdefault("eval_strategy", "no")
    elif "eval_strategy" not in kwargs:
        kwargs["eval_strategy"] = "steps" if kwargs.get("eval_steps") else "no"
    args = training_arguments(kwargs)
    set_seed(args.seed)
    resume = run.resolve_resume()  # only complete checkpoints of this run (see st_llm2vec.train.runs)

    simcse = arguments.STAGE == "simcse"
    data = arguments.data()
    global_batch = args.per_device_train_batch_size * args.world_size
    data = data.check_batch_size(global_batch, bool(getattr(arguments, "skip_small_datasets", False)))
    data.check_in_batch_negatives(global_batch, simcse=simcse)
    if args.process_index == 0:
        logger.info("%s training data (%d rows, global batch %d):\n%s", arguments.STAGE, len(data), global_batch,
                    data.summary())

    model, start = start_model(arguments, arguments.peft_model_name_or_path, arguments.bidirectional)
    if arguments.save_mode == "adapter" and start.merged_in_memory:
        raise InputError(
            f"save_mode 'adapter' needs the start model on disk as it is trained on, but {start.model_name_or_path} "
            "holds an adapter that was merged in memory. Use save_mode 'merged'."
        )
    encoder = model[0]
    restore: dict[str, Any] = {"doc_max_length": encoder.doc_max_length}
    if arguments.simcse_dropout is not None:
        restore["attention_dropout"] = getattr(getattr(encoder.model, "config", None), "attention_dropout", None)
        if set_attention_dropout(encoder.model, arguments.simcse_dropout) == 0 and arguments.simcse_dropout > 0:
            raise InputError(
                f"simcse_dropout={arguments.simcse_dropout}: {type(encoder.model).__name__} has no attention "
                "module with an `attention_dropout` setting, so the SimCSE dropout would have no effect."
            )
    encoder.doc_max_length = None  # llm2vec's training tokenizer truncates by tokens only
    add_lora(model, arguments)

    args.prompts = data.prompts() or None
    collator = SentenceTransformerDataCollator(
        preprocess_fn=model.preprocess, prompts=args.prompts, max_length=arguments.max_seq_length
    )
    evaluator = None
    if arguments.evaluating:
        evaluator = dev_sts_evaluator(arguments.eval_data_dir, arguments.eval_max_pairs,
                                      args.per_device_eval_batch_size, arguments.eval_instruction)
    trainer = ContrastiveTrainer(
        model=model,
        args=args,
        train_dataset=data.to_dataset_dict(),
        loss=build_loss(model, arguments.loss_class, arguments.loss_scale, arguments.mini_batch_size,
                        arguments.gather_across_devices, args.world_size),
        evaluator=evaluator,
        data_collator=collator,
        callbacks=[*callbacks, *stop_callbacks(arguments)],
    )
    return Stage(arguments, training, data, model, start, trainer, resume, restore, run=run)


def run_stage(stage: Stage) -> StageResult:
    """Train a prepared stage, put the model back in its inference configuration and save it; then record
    the run as finished and release output_dir (:func:`~st_llm2vec.train.recipe.run_lifecycle`)."""
    from .recipe import run_lifecycle

    return run_lifecycle(stage.arguments, stage.training, lambda run: _train(stage),
                         lambda record: _finished_result(stage.name, record, True), run=stage.run)


def _train(stage: Stage) -> tuple[StageResult, Any]:
    stage.run.start(stage.trainer)
    return _run(stage), stage.trainer


def _run(stage: Stage) -> StageResult:
    """:func:`run_stage`'s training and saving."""
    from .contrastive import last_eval, probe_loss, set_attention_dropout, sts_scores
    from .recipe import describe_in_card, jsonable, merge_trained_lora, write_result

    trainer, model, arguments, data = stage.trainer, stage.model, stage.arguments, stage.data
    args = trainer.args
    evaluating = trainer.evaluator is not None
    loss_before = probe_loss(trainer, data, args.per_device_train_batch_size, args.seed)
    eval_before = sts_scores(trainer.evaluate()) if evaluating else {}
    trainer.train(resume_from_checkpoint=stage.resume_from_checkpoint or None)
    loss_after = probe_loss(trainer, data, args.per_device_train_batch_size, args.seed)
    eval_after = last_eval(trainer) if evaluating else {}

    # Back to the inference configuration before saving.
    encoder = model[0]
    encoder.doc_max_length = stage.restore["doc_max_length"]
    if stage.restore.get("attention_dropout") is not None:
        set_attention_dropout(encoder.model, stage.restore["attention_dropout"])
    if arguments.save_mode == "merged":
        merge_trained_lora(model, arguments)
    model.eval()
    describe_in_card(model, arguments, stage.start, {
        "simcse_dropout": arguments.simcse_dropout, "loss_scale": arguments.loss_scale,
        "save_mode": arguments.save_mode, "instructions": data.prompts() or None,
    })
    result = StageResult(
        stage=stage.name,
        output_dir=str(args.output_dir),
        save_mode=arguments.save_mode,
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
        write_result(args.output_dir, arguments.RESULT_FILE, {
            "result": result.to_dict(), "config": {**asdict(arguments), **jsonable(stage.training)},
            "start": vars(stage.start),
        })
        logger.info("%s done: %d steps, probe loss %.4f -> %.4f; model saved to %s (%s)", stage.name,
                    result.global_step, loss_before, loss_after, args.output_dir, arguments.save_mode)
    trainer.accelerator.wait_for_everyone()
    result.model = model  # LLM2VecTrainer.train took off the autocast wrapper of mixed-precision training
    return result


def train_simcse(
    config: Mapping[str, Any] | str | os.PathLike, overrides: Mapping[str, Any] | None = None, callbacks: Sequence = ()
) -> StageResult:
    """Unsupervised SimCSE from a config (a dict or a JSON / YAML path; ``overrides`` on top)."""
    return train_stage("simcse", config, overrides, callbacks)


def train_supervised(
    config: Mapping[str, Any] | str | os.PathLike, overrides: Mapping[str, Any] | None = None, callbacks: Sequence = ()
) -> StageResult:
    """Supervised contrastive training from a config (a dict or a JSON / YAML path; ``overrides`` on top)."""
    return train_stage("supervised", config, overrides, callbacks)


def train_stage(stage: str, config, overrides=None, callbacks: Sequence = (), load_model: bool = True) -> StageResult:
    """Prepare and run a stage; if output_dir holds this finished run, its saved result (nothing is trained)."""
    from .recipe import read_arguments, run_lifecycle

    arguments, training = read_arguments(arguments_class(stage), config, overrides)
    return run_lifecycle(arguments, training, lambda run: _train(_prepare(arguments, training, callbacks, run)),
                         lambda record: _finished_result(stage, record, load_model))


def _finished_result(stage: str, record: Mapping[str, Any], load_model: bool) -> StageResult:
    """The result a finished run saved (``st_llm2vec_stage.json``), with the saved model if ``load_model``."""
    from .recipe import read_result

    output_dir = record["output_dir"]
    saved = read_result(output_dir, ContrastiveArguments.RESULT_FILE).get("result") or {}
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


# --------------------------------------------------------------------------- st-llm2vec simcse / supervised CONFIG


def parents_simcse() -> list[argparse.ArgumentParser]:
    from .recipe import parent_parser

    return [parent_parser(SimCSEArguments)]


def run_simcse(args: argparse.Namespace) -> int:
    from .recipe import run_cli

    return run_cli(SimCSEArguments, args, lambda config, overrides: train_stage("simcse", config, overrides, load_model=False))


def parents_supervised() -> list[argparse.ArgumentParser]:
    from .recipe import parent_parser

    return [parent_parser(SupervisedArguments)]


def run_supervised(args: argparse.Namespace) -> int:
    from .recipe import run_cli

    return run_cli(SupervisedArguments, args,
                   lambda config, overrides: train_stage("supervised", config, overrides, load_model=False))
