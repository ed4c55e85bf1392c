"""``st-llm2vec mntp``: step 2 of the recipe from an llm2vec ``train_configs/mntp`` config — the shared recipe
(:mod:`.arguments`, :mod:`.lifecycle`, :mod:`.stage_model`) plus what is MNTP's own: its keys, the text corpus
(:mod:`.text_data`) and the MNTP pieces (:mod:`.mntp_masking`, :mod:`.mntp_loss`: collator, loss, evaluator).

Writes to ``output_dir``: checkpoints (``checkpoint-N/``), the LoRA adapter (``adapter/``) and, at the top,
the merged model (``SentenceTransformer(output_dir)``, or the next stage's ``model_name_or_path``), with
``mntp_config.json`` and ``mntp_metrics.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import InputError
from .keys import key, nonempty, pooling_check
from .mntp_masking import COLLATOR_TYPES
from .arguments import RecipeArguments

logger = logging.getLogger(__name__)




@dataclass
class MNTPArguments(RecipeArguments):
    """llm2vec's ``train_configs/mntp`` keys (its ModelArguments / DataTrainingArguments / CustomArguments)."""

    STAGE: ClassVar[str] = "mntp"
    TITLE: ClassVar[str] = "MNTP"
    IGNORED_KEYS: ClassVar[frozenset[str]] = frozenset({
        "model_type", "config_overrides", "config_name", "tokenizer_name", "cache_dir", "use_fast_tokenizer",
        "model_revision", "token", "use_auth_token", "trust_remote_code", "low_cpu_mem_usage", "pad_to_max_length",
    })
    PATH_KEYS: ClassVar[tuple[str, ...]] = ("model_name_or_path", "train_file", "validation_file", "lm_head")
    RESULT_FILE: ClassVar[str] = "mntp_metrics.json"

    # model (MNTP's own defaults)
    attn_implementation: str | None = "sdpa"
    pooling_mode: str | None = key("mean", nullable=False, check=pooling_check,
                                   help="pooling of the saved model: mean, weighted_mean, eos_token, bos_token")
    lm_head: str | None = key(None, help="where the LM head is, if not in the checkpoint")
    freeze_lm_head: bool = key(True, help="keep the LM head's weights fixed")
    use_lora: bool = key(True, help="train a LoRA (else every weight)")
    merge_lora: bool = key(True, help="fold the LoRA into the saved model")
    stop_after_n_steps: int | None = 10000
    # data
    dataset_name: str | None = key(None, help="a Hub text dataset")
    dataset_config_name: str | None = key(None, help="its config")
    train_file: list[str] | None = key(None, kind="strs", help="local txt/jsonl/csv/parquet file(s)")
    validation_file: list[str] | None = key(None, kind="strs", help="local validation file(s)")
    text_column: str | None = key(None, help="the text column (default: 'text' or the only one)")
    validation_split_percentage: float = key(5, low=0, high=100, high_open=True,
                                             help="percent of train held out when there is no validation_file")
    max_seq_length: int | None = key(None, low=2, help="block length (default min(model_max_length, 1024))")
    line_by_line: bool = key(False, help="one row per line instead of packed blocks")
    streaming: bool = key(False, help="stream the dataset")
    preprocessing_num_workers: int | None = key(None, low=1, help="tokenization processes")
    overwrite_cache: bool = key(False, help="re-tokenize instead of reusing datasets' cache")
    max_eval_samples: int | None = key(None, low=1, help="use at most this many validation rows")
    # masking
    mask_token_type: str = key("blank", check=nonempty, help="blank (_), eos, mask, or a token")
    data_collator_type: str = key("default", choices=COLLATOR_TYPES, help="default (80/10/10) or all_mask")
    mlm_probability: float = key(0.2, low=0, high=1, low_open=True, high_open=True,
                                 help="share of tokens to predict")
    # run
    do_train: bool = key(True, help="train")
    do_eval: bool = key(False, help="evaluate on the validation rows")

    def unmerged_output(self) -> bool:
        return self.use_lora and not self.merge_lora


@dataclass
class MNTPResult:
    output_dir: str
    adapter_dir: str | None
    metrics: dict[str, Any]
    text_stats: Any
    already_complete: bool = False  # the output_dir held this finished run: nothing was trained or saved

    def summary(self) -> dict[str, Any]:
        return {"output_dir": self.output_dir, "adapter_dir": self.adapter_dir, "metrics": self.metrics}


def train_mntp(config: Mapping[str, Any] | str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> MNTPResult:
    """Run MNTP from an llm2vec-style config (a dict or a JSON / YAML path; ``overrides`` on top).

    The whole config is checked before anything loads. ``output_dir`` is locked for the run, and only
    this config's complete checkpoints are resumed; a finished run of the same config is not trained
    again (see :mod:`st_llm2vec.recipe.training_run`).
    """
    from .config import check_files_exist
    from .arguments import read_arguments
    from .lifecycle import run_lifecycle

    arguments, training = read_arguments(MNTPArguments, config, overrides)
    check_files_exist(dataclasses.asdict(arguments), ("train_file", "validation_file"))  # before the model loads
    return run_lifecycle(arguments, training, lambda run: _train(arguments, training, run),
                         lambda record: _finished_result(record["output_dir"]), do_train=arguments.do_train)


def _finished_result(output_dir: str) -> MNTPResult:
    """The result of a finished run, from the files it saved."""
    from .lifecycle import read_result
    from .text_data import TextStats

    saved = read_result(output_dir, MNTPArguments.RESULT_FILE)
    adapter_dir = os.path.join(output_dir, "adapter")
    stats = TextStats(**{k: v for k, v in (saved.get("data") or {}).items() if k in ("texts", "skipped_short", "rows")})
    return MNTPResult(output_dir=output_dir, adapter_dir=adapter_dir if os.path.isdir(adapter_dir) else None,
                      metrics=saved.get("metrics") or {}, text_stats=stats, already_complete=True)


def _max_seq_length(arguments: MNTPArguments, tokenizer: Any) -> int:
    """llm2vec's default min(model_max_length, 1024); never more than the tokenizer's model_max_length."""
    model_max = int(min(getattr(tokenizer, "model_max_length", None) or 10**9, 10**9))
    if arguments.max_seq_length is None:
        return min(model_max, 1024)
    if arguments.max_seq_length > model_max:
        logger.warning("max_seq_length %d exceeds the tokenizer's model_max_length %d: using %d.",
                       arguments.max_seq_length, model_max, model_max)
        return model_max
    return arguments.max_seq_length


def _corpus(arguments: MNTPArguments, args: Any, tokenizer: Any, max_seq_length: int):
    """(train rows, eval rows or None, stats): the text corpus tokenized into MNTP rows."""
    from .text_data import TextStats, check_not_empty, load_texts, split_validation, tokenize_corpus

    stats = TextStats()
    with args.main_process_first(desc="MNTP data"):
        raw = load_texts(
            dataset_name=arguments.dataset_name,
            dataset_config_name=arguments.dataset_config_name,
            train_file=arguments.train_file,
            validation_file=arguments.validation_file,
            streaming=arguments.streaming,
        )
        train_raw, eval_raw = split_validation(raw, arguments.validation_split_percentage if arguments.do_eval else 0)
        common = dict(line_by_line=arguments.line_by_line, text_column=arguments.text_column,
                      num_proc=arguments.preprocessing_num_workers, load_from_cache_file=not arguments.overwrite_cache)
        train_ds = tokenize_corpus(train_raw, tokenizer, max_seq_length, stats=stats, desc="train", **common)
        eval_ds = None
        if arguments.do_eval and eval_raw is not None:
            eval_ds = tokenize_corpus(eval_raw, tokenizer, max_seq_length, stats=TextStats(), desc="validation", **common)
    train_ds = _first(train_ds, arguments.max_train_samples, arguments.streaming)
    if eval_ds is not None:
        eval_ds = _first(eval_ds, arguments.max_eval_samples, arguments.streaming)
    check_not_empty(train_ds, "train")
    if not arguments.streaming:
        logger.info("MNTP data: %s", stats.summary())
    return train_ds, eval_ds, stats


def _first(dataset: Any, n: int | None, streaming: bool) -> Any:
    if n is None:
        return dataset
    return dataset.take(n) if streaming else dataset.select(range(min(len(dataset), n)))


def _train(arguments: MNTPArguments, training: dict[str, Any], run: Any) -> tuple[MNTPResult, Any]:
    """:func:`train_mntp` once the config is checked and ``run`` holds output_dir's lock."""
    from transformers import set_seed

    from .mntp_loss import MNTPEvaluator, MNTPLoss
    from .mntp_masking import MNTPDataCollator, setup_mask_token
    from .arguments import jsonable, training_arguments
    from .lifecycle import stop_callbacks, write_result
    from .stage_model import add_lora, describe_in_card, merge_trained_lora, start_model
    from .text_data import EmptyDatasetError
    from .trainer import LLM2VecTrainer

    training = dict(training)
    if not arguments.do_eval:
        training["eval_strategy"] = "no"
    if arguments.streaming and training.get("max_steps", -1) <= 0:
        if not arguments.stop_after_n_steps:
            raise InputError("A streaming corpus has no length: set max_steps or stop_after_n_steps.")
        training["max_steps"] = arguments.stop_after_n_steps
    args = training_arguments(training)
    output_dir = args.output_dir
    resume = run.resolve_resume()  # only complete checkpoints of this run (see st_llm2vec.recipe.training_run)

    set_seed(args.seed)  # before LoRA init, as llm2vec does: the same config gives the same run
    model, start = start_model(arguments)
    tokenizer = model[0].tokenizer
    mask_id = setup_mask_token(model, arguments.mask_token_type)
    max_seq_length = _max_seq_length(arguments, tokenizer)
    train_ds, eval_ds, stats = _corpus(arguments, args, tokenizer, max_seq_length)

    if arguments.use_lora:
        add_lora(model, arguments)
    loss = MNTPLoss(
        model,
        lm_head=arguments.lm_head,
        freeze_lm_head=arguments.freeze_lm_head,
        mlm_probability=arguments.mlm_probability,
        strategy=arguments.data_collator_type,
        mask_token_id=mask_id,
    )
    collator = MNTPDataCollator(tokenizer, max_length=max_seq_length)
    evaluator = None
    if eval_ds is not None:
        eval_rows = list(eval_ds.take(arguments.max_eval_samples or 256)) if arguments.streaming else eval_ds
        evaluator = MNTPEvaluator(loss, eval_rows, collator, batch_size=args.per_device_eval_batch_size, seed=args.seed)
        if evaluator.num_tokens == 0:
            raise EmptyDatasetError(
                f"No eval tokens: none of the {len(evaluator.batches)} validation batches has a token to predict "
                "(texts too short: with line_by_line each row needs tokens besides the first and special ones). "
                "Use longer validation texts, leave line_by_line off, or set do_eval: false."
            )

    trainer = LLM2VecTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, loss=loss,
                             evaluator=evaluator, data_collator=collator, callbacks=stop_callbacks(arguments))
    trainer.st_llm2vec_stage = MNTPArguments.TITLE
    metrics: dict[str, Any] = {}
    adapter_dir = None
    run.start(trainer)
    if arguments.do_train:
        metrics.update(trainer.train(resume_from_checkpoint=resume).metrics)
    if arguments.do_eval:
        metrics.update(trainer.evaluate())

    if trainer.is_world_process_zero() and arguments.do_train:
        os.makedirs(output_dir, exist_ok=True)
        trainer.save_state()
        from peft import PeftModel

        if isinstance(model[0].model, PeftModel):
            adapter_dir = os.path.join(output_dir, "adapter")
            model[0].model.save_pretrained(adapter_dir)
            tokenizer.save_pretrained(adapter_dir)
            if arguments.merge_lora:
                merge_trained_lora(model, arguments)
        describe_in_card(model, arguments, start, {"mlm_probability": arguments.mlm_probability,
                                                   "mask_token_type": arguments.mask_token_type},
                         {"steps": trainer.state.global_step, "batch_size": args.per_device_train_batch_size,
                          "learning_rate": args.learning_rate})
        model.save(output_dir)
        write_result(output_dir, "mntp_config.json", {**dataclasses.asdict(arguments), **jsonable(training)})
        write_result(output_dir, MNTPArguments.RESULT_FILE, {"metrics": metrics, "data": dataclasses.asdict(stats)})
    trainer.accelerator.wait_for_everyone()
    return MNTPResult(output_dir=output_dir, adapter_dir=adapter_dir, metrics=metrics, text_stats=stats), trainer


# --------------------------------------------------------------------------- st-llm2vec mntp CONFIG


def parents_mntp() -> list[argparse.ArgumentParser]:
    from .command import parent_parser

    return [parent_parser(MNTPArguments)]


def run_mntp(args: argparse.Namespace) -> int:
    from .command import run_cli

    return run_cli(MNTPArguments, args, train_mntp)
