"""The one ``SentenceTransformerTrainer`` subclass both training stages (MNTP, contrastive) build on.

What the stock trainer (ST 6.2 + transformers 5.2x) gets wrong for us, and nothing else:

- resuming a LoRA run: ST rebuilds the model from ``checkpoint-N`` through transformers' PEFT
  integration, whose parameter names differ from a ``peft.get_peft_model`` backbone (and which needs
  peft >= 0.22 from transformers 5.24 on). We load the adapter weights into the live PeftModel instead;
- ``_save`` under DDP: transformers 5 calls ``_save`` on every process and lets it decide whether to
  write; ST's override does not check, so every rank would write the same files at once;
- resuming a checkpoint that is already at the last step: the HF loop trains one more step before it
  checks ``max_steps`` (and writes ``checkpoint-(N+1)``). ``train`` returns at once instead;
- checkpoints carry no sign of being complete: ``_save_checkpoint`` writes ``st_llm2vec_checkpoint.json``
  (with the run fingerprint of :mod:`.run_record`) after every other file, and gives the files the umask's
  modes (safetensors writes 0600);
- after mixed-precision training (``bf16`` / ``fp16``) the model's ``forward`` stays wrapped in accelerate's
  autocast, so the in-memory model computes in bf16 while its weights (and any stock loader) say float32:
  ``train`` takes the wrapper off when it returns, so the trained model is the model its weights describe
  (a portable save proves the in-memory model against a stock load of those weights).

Console (:mod:`st_llm2vec.console`): run from the command line without ``--verbose``, the per-step log dicts
that transformers' printer / progress callbacks print are left out, and the run says in one line what it trains
and in one line what it did (steps, time, first and last logged loss).

Also here: the ``stop_after_n_steps`` callback (:class:`StopAfterNSteps`). Importing this module
imports the trainer stack (seconds); ``import st_llm2vec`` does not import it.
"""

from __future__ import annotations

import logging
import os
import time

from accelerate.utils import extract_model_from_parallel
from peft import PeftModel, set_peft_model_state_dict
from peft.utils import load_peft_weights
from sentence_transformers import SentenceTransformerTrainer
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput

from .. import console
from ..errors import InputError
from ..files import normalize_permissions
from .run_record import remove_checkpoint_marker, write_checkpoint_marker

logger = logging.getLogger(__name__)


class _NothingToTrain(Exception):
    """Raised before the first step of a ``train()`` call whose resumed state is already at the end."""


class _EndGuard(TrainerCallback):
    """Stops a resumed run that is already at its last step before it trains one more (the HF loop
    runs a step before it checks ``max_steps``)."""

    def __init__(self, callbacks) -> None:
        self.callbacks = callbacks  # the trainer's: stop_after_n_steps callbacks end the run early
        self.first = True

    def on_step_begin(self, args, state, control, **kwargs):
        if not self.first:
            return
        self.first = False
        targets = [state.max_steps] if state.max_steps and state.max_steps > 0 else []
        targets += [cb.stop_after_n_steps for cb in self.callbacks if getattr(cb, "stop_after_n_steps", None)]
        if targets and state.global_step >= min(targets):
            raise _NothingToTrain(min(targets))


class StopAfterNSteps(TrainerCallback):
    """llm2vec's ``stop_after_n_steps``: end training at that global step, the LR schedule still spanning
    the full ``num_train_epochs`` / ``max_steps`` run; unless saving is off (``save_strategy: no``), a
    checkpoint is saved there, so that the stopped run can be resumed."""

    def __init__(self, n_steps: int) -> None:
        self.stop_after_n_steps = n_steps  # read by _EndGuard

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.stop_after_n_steps:
            control.should_training_stop = True
            control.should_save = str(getattr(args.save_strategy, "value", args.save_strategy)) != "no"


class _BarOnly(ProgressCallback):
    """transformers' progress bar without the log dict it writes under the bar at every logging step."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        return


class LLM2VecTrainer(SentenceTransformerTrainer):
    """``SentenceTransformerTrainer`` with adapter-aware resume, main-process-only saves, an end guard for
    resumed runs and checkpoint completion markers (see the module docstring)."""

    # The run fingerprint (st_llm2vec.recipe.run_record) written into every checkpoint's completion marker.
    st_llm2vec_run = None
    # What the console's lines call this run ("MNTP", "SimCSE", ...); set by the stage that builds the trainer.
    st_llm2vec_stage = "training"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not console.verbose():  # the command line without --verbose: one line per run instead of a dict per step
            self.remove_callback(PrinterCallback)
            if self.pop_callback(ProgressCallback) is not None:
                self.add_callback(_BarOnly())

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        if not self.args.should_save:
            return
        super()._save(output_dir, state_dict)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        guard = _EndGuard(self.callback_handler.callbacks)
        self.add_callback(guard)
        if self.is_world_process_zero():
            console.status(f"training {self.st_llm2vec_stage}: {self.args.max_steps if self.args.max_steps > 0 else 'all'}"
                           " steps")
        start = time.perf_counter()
        try:
            output = super().train(resume_from_checkpoint, *args, **kwargs)
            if self.is_world_process_zero():
                console.status(self._summary_line(time.perf_counter() - start))
            return output
        except _NothingToTrain as done:
            logger.warning(
                "The resumed checkpoint is at step %d, the end of this run (step %d): nothing left to train.",
                self.state.global_step, done.args[0],
            )
            metrics = {"train_steps": 0}
            self._memory_tracker.stop_and_update_metrics(metrics)
            self.control = self.callback_handler.on_train_end(self.args, self.state, self.control)
            self.is_in_train = False
            return TrainOutput(self.state.global_step, 0.0, metrics)
        finally:
            self.remove_callback(guard)
            # the autocast wrapper accelerate put on forward for mixed precision (see the module docstring)
            extract_model_from_parallel(self.model, keep_fp32_wrapper=False)

    def _summary_line(self, seconds: float) -> str:
        """What the run did, in one line: steps, time, and the first and last logged training loss."""
        losses = [entry["loss"] for entry in self.state.log_history if "loss" in entry]
        loss = f", loss {losses[0]:.3f} → {losses[-1]:.3f}" if losses else ""
        return f"{self.st_llm2vec_stage}: {self.state.global_step} steps in {seconds:.0f} s{loss}"

    def _save_checkpoint(self, model, trial) -> None:
        """HF's checkpoint, then (every process done) a completion marker written last, and umask modes."""
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save:
            remove_checkpoint_marker(folder)
        super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()
        if self.args.should_save and os.path.isdir(folder):
            normalize_permissions(folder)
            write_checkpoint_marker(folder, self.st_llm2vec_run, self.state.global_step)

    def _load_from_checkpoint(self, checkpoint_path: str, model=None) -> None:
        st_model = extract_model_from_parallel(self.model)
        backbone = st_model[0].model
        has_adapter = any(
            os.path.isfile(os.path.join(checkpoint_path, name))
            for name in ("adapter_model.safetensors", "adapter_model.bin")
        )
        if not (isinstance(backbone, PeftModel) and has_adapter):
            return super()._load_from_checkpoint(checkpoint_path)
        weights = load_peft_weights(checkpoint_path, device=str(st_model.device))
        result = set_peft_model_state_dict(backbone, weights)
        unexpected = list(getattr(result, "unexpected_keys", None) or [])
        if unexpected:
            raise InputError(f"{checkpoint_path}: adapter weights do not fit the model: {unexpected[:5]} …")
        logger.info("Loaded adapter weights from %s", checkpoint_path)
