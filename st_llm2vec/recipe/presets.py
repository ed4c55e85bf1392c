"""Short seeded CPU LoRA runs of the stages, as configs: what the quick start trains, and the benchmarks with more
steps. Each is a plain config dict that the stage checks like any other."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError


def _run_settings(
    model: str | Path, output_dir: str | Path, steps: int, seed: int, batch_size: int, max_seq_length: int,
    learning_rate: float, lora_r: int, progress: bool,
) -> dict[str, Any]:
    """The settings every quick-start training stage shares: a short seeded CPU LoRA run, linear warm-up."""
    return {
        "model_name_or_path": str(model),
        "output_dir": str(output_dir),
        "max_steps": steps,
        "seed": seed,
        "data_seed": seed,
        "per_device_train_batch_size": batch_size,
        "max_seq_length": max_seq_length,
        "learning_rate": learning_rate,
        "warmup_steps": max(1, steps // 10),
        "lr_scheduler_type": "linear",
        "logging_steps": max(1, steps // 5),
        "lora_r": lora_r,
        "use_cpu": True,
        "report_to": "none",
        "disable_tqdm": not progress,
        "dataloader_num_workers": 0,
    }


def mntp_config(model: str | Path, train_file: str | Path, output_dir: str | Path, *, steps: int, seed: int,
                batch_size: int = 8, max_seq_length: int = 32, learning_rate: float = 3e-4, lora_r: int = 16,
                progress: bool = True, save_steps: int | None = None, **extra: Any) -> dict[str, Any]:
    """An llm2vec-style MNTP config for :func:`st_llm2vec.train_mntp` (CPU, LoRA, merged output).

    ``save_steps`` set: checkpoints every that many steps and resume from them (``overwrite_output_dir``
    False); unset: no checkpoints, any old output is overwritten.
    """
    config = _run_settings(model, output_dir, steps, seed, batch_size, max_seq_length, learning_rate, lora_r, progress)
    config.update({
        "train_file": str(train_file),
        "validation_split_percentage": 0,
        "mask_token_type": "blank",
        "data_collator_type": "default",
        "mlm_probability": 0.2,
        "stop_after_n_steps": steps,
        "do_train": True,
        "do_eval": False,
        "torch_dtype": "float32",
        "attn_implementation": "sdpa",
    })
    return {**config, **_save_settings(save_steps), **extra}


def contrastive_config(stage: str, model: str | Path, output_dir: str | Path, *, steps: int, seed: int,
                       batch_size: int = 16, max_seq_length: int = 32, learning_rate: float = 3e-4, lora_r: int = 16,
                       dataset_file_path: str | Path | None = None, progress: bool = True, save_steps: int | None = None,
                       **extra: Any) -> dict[str, Any]:
    """A config for :func:`st_llm2vec.train_simcse` (``stage="simcse"``: sentences from a text
    file) or ``train_supervised`` (``"supervised"``: SICK triplets + MSR pairs from the shared data)."""
    config = _run_settings(model, output_dir, steps, seed, batch_size, max_seq_length, learning_rate, lora_r, progress)
    config.update({"loss_scale": 20.0, "evaluator": "none"})
    if stage == "simcse":
        config.update({"dataset_name": "Wiki1M", "dataset_file_path": str(dataset_file_path), "simcse_dropout": 0.3})
    elif stage == "supervised":
        config.update({"dataset_name": "shared", "shared_sets": ["sick", "msr"]})
        if dataset_file_path is not None:
            config["dataset_file_path"] = str(dataset_file_path)
    else:
        raise InputError(f"stage must be 'simcse' or 'supervised', not {stage!r}")
    return {**config, **_save_settings(save_steps), **extra}


def _save_settings(save_steps: int | None) -> dict[str, Any]:
    if save_steps:
        return {"save_strategy": "steps", "save_steps": save_steps, "save_total_limit": 1, "overwrite_output_dir": False}
    return {"save_strategy": "no", "overwrite_output_dir": True}
