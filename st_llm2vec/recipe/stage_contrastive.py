"""``st-llm2vec simcse`` / ``supervised``: step 3 of the recipe from an llm2vec ``train_configs`` config —
the shared recipe (:mod:`.arguments`, :mod:`.lifecycle`, :mod:`.stage_model`) plus what is contrastive's own: its
keys (:mod:`.contrastive_arguments`), the pair data (:mod:`.pair_data`), the loss (:mod:`.losses`) and the pieces
of :mod:`.contrastive` (global batches, SimCSE dropout, the loss probe).

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
from typing import Any

from ..errors import InputError
from .contrastive_arguments import ContrastiveArguments, SimCSEArguments, SupervisedArguments, arguments_class
from .stage_model import StartModel

logger = logging.getLogger(__name__)


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
    hard_negatives: dict[str, dict[str, Any]] | None = None  # per dataset: what mining kept and dropped
    teacher_scores: dict[str, str] | None = None  # per dataset: the cached teacher scores it learned
    matryoshka: dict[str, dict[str, float]] = field(default_factory=dict)  # dev scores at each cut dimension
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
    run: Any = field(default=None, repr=False)  # st_llm2vec.recipe.training_run.TrainingRun: holds output_dir's lock until run_stage ends
    options: Any = None  # pair_options.PairOptions: what mining and the teacher did to the data

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
    collator and trainer. Raises :class:`~st_llm2vec.recipe.training_run.RunAlreadyComplete` if output_dir holds this
    finished run (``train_simcse`` / ``train_supervised`` return its saved result instead)."""
    from .arguments import read_arguments
    from .lifecycle import start_run

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

    from .contrastive import ContrastiveTrainer, dev_sts_evaluator, set_attention_dropout
    from .losses import build_loss
    from .arguments import training_arguments
    from .lifecycle import stop_callbacks
    from .matryoshka import check_dims_fit
    from .pair_options import apply_pair_options
    from .stage_model import add_lora, start_model

    kwargs = dict(training)
    kwargs.setdefault("batch_sampler", BatchSamplers.NO_DUPLICATES)
    kwargs.setdefault("multi_dataset_batch_sampler", MultiDatasetBatchSamplers.PROPORTIONAL)
    if not arguments.evaluating:
        kwargs.setdefault("eval_strategy", "no")
    elif "eval_strategy" not in kwargs:
        kwargs["eval_strategy"] = "steps" if kwargs.get("eval_steps") else "no"
    args = training_arguments(kwargs)
    set_seed(args.seed)
    resume = run.resolve_resume()  # only complete checkpoints of this run (see st_llm2vec.recipe.training_run)

    simcse = arguments.STAGE == "simcse"
    global_batch = args.per_device_train_batch_size * args.world_size

    def checked(data):
        data = data.check_batch_size(global_batch, bool(getattr(arguments, "skip_small_datasets", False)))
        data.check_in_batch_negatives(global_batch, simcse=simcse)
        return data

    data, options = apply_pair_options(arguments, checked(arguments.data()), args)  # before the student loads
    model, start = start_model(arguments, arguments.peft_model_name_or_path, arguments.bidirectional)
    check_dims_fit(arguments.matryoshka_dims, model)
    data, options = apply_pair_options(arguments, data, args, options, model)  # mining with `self`
    data = checked(data)
    if args.process_index == 0:
        logger.info("%s training data (%d rows, global batch %d):\n%s", arguments.STAGE, len(data), global_batch,
                    data.summary())
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
                        arguments.gather_across_devices, args.world_size, arguments.matryoshka_dims,
                        arguments.matryoshka_weights),
        evaluator=evaluator,
        data_collator=collator,
        callbacks=[*callbacks, *stop_callbacks(arguments)],
    )
    trainer.st_llm2vec_stage = arguments.TITLE
    return Stage(arguments, training, data, model, start, trainer, resume, restore, run=run, options=options)


def run_stage(stage: Stage) -> StageResult:
    """Train a prepared stage, put the model back in its inference configuration and save it; then record
    the run as finished and release output_dir (:func:`~st_llm2vec.recipe.lifecycle.run_lifecycle`)."""
    from .lifecycle import run_lifecycle

    return run_lifecycle(stage.arguments, stage.training, lambda run: _train(stage),
                         lambda record: _finished_result(stage.name, record, True), run=stage.run)


def _train(stage: Stage) -> tuple[StageResult, Any]:
    stage.run.start(stage.trainer)
    return _run(stage), stage.trainer


def _run(stage: Stage) -> StageResult:
    """:func:`run_stage`'s training and saving."""
    from .contrastive import dev_sts_evaluator, last_eval, probe_loss, set_attention_dropout, sts_scores
    from .arguments import jsonable
    from .matryoshka import dims_quality
    from .lifecycle import write_result
    from .losses import inner_loss
    from .stage_model import describe_in_card, merge_trained_lora

    trainer, model, arguments, data = stage.trainer, stage.model, stage.arguments, stage.data
    args = trainer.args
    evaluating = trainer.evaluator is not None
    loss_before = probe_loss(trainer, data, args.per_device_train_batch_size, args.seed)
    eval_before = sts_scores(trainer.evaluate()) if evaluating else {}
    trainer.train(resume_from_checkpoint=stage.resume_from_checkpoint or None)
    if trainer.state.global_step == 0:  # ST's no-duplicates sampler found no full batch: nothing was learned
        raise InputError(
            f"{stage.name}: no training step ran. Every batch holds {args.per_device_train_batch_size * args.world_size} "
            "rows of one dataset with no text twice (queries, positives and negatives alike), and the data has too "
            "few distinct texts for that: lower per_device_train_batch_size, add rows, or mine fewer negatives.")
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
    dims = {}
    if arguments.matryoshka_dims and evaluating and trainer.is_world_process_zero():
        dims = dims_quality(model, lambda dim: dev_sts_evaluator(
            arguments.eval_data_dir, arguments.eval_max_pairs, args.per_device_eval_batch_size,
            arguments.eval_instruction, truncate_dim=dim), arguments.matryoshka_dims)
    options = stage.options
    describe_in_card(model, arguments, stage.start, {
        "simcse_dropout": arguments.simcse_dropout, "loss_scale": arguments.loss_scale,
        "save_mode": arguments.save_mode, "instructions": data.prompts() or None,
        "matryoshka_dims": arguments.matryoshka_dims, "hard_negatives": getattr(arguments, "hard_negatives", None),
        "teacher": getattr(arguments, "teacher", None),
    }, {"steps": trainer.state.global_step, "batch_size": args.per_device_train_batch_size * args.world_size,
        "learning_rate": args.learning_rate})
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
        hard_negatives=options.mined if options else None,
        teacher_scores=options.teacher_scores if options else None,
        matryoshka=dims,
        world_size=args.world_size,
        gather_across_devices=bool(getattr(inner_loss(trainer.loss), "gather_across_devices", False)),
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
    from .arguments import read_arguments
    from .lifecycle import run_lifecycle

    arguments, training = read_arguments(arguments_class(stage), config, overrides)
    return run_lifecycle(arguments, training, lambda run: _train(_prepare(arguments, training, callbacks, run)),
                         lambda record: _finished_result(stage, record, load_model))


def _finished_result(stage: str, record: Mapping[str, Any], load_model: bool) -> StageResult:
    """The result a finished run saved (``st_llm2vec_stage.json``), with the saved model if ``load_model``."""
    from .lifecycle import read_result

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
    from .command import parent_parser

    return [parent_parser(SimCSEArguments)]


def run_simcse(args: argparse.Namespace) -> int:
    from .command import run_cli

    return run_cli(SimCSEArguments, args, lambda config, overrides: train_stage("simcse", config, overrides, load_model=False))


def parents_supervised() -> list[argparse.ArgumentParser]:
    from .command import parent_parser

    return [parent_parser(SupervisedArguments)]


def run_supervised(args: argparse.Namespace) -> int:
    from .command import run_cli

    return run_cli(SupervisedArguments, args,
                   lambda config, overrides: train_stage("supervised", config, overrides, load_model=False))
