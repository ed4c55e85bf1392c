"""What an evaluation run is: its settings, each model's score on each task, and the run as a whole, which the
runner (:mod:`.runner`) fills and the report (:mod:`.report`) reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from .instructions import LLM2VEC, MODES

DEFAULT_OUTPUT = "st-llm2vec-eval"


@dataclass(frozen=True)
class LoadSettings:
    """How every model of a run is loaded: device, dtype, token limits (None: the model's own), the leading
    dimensions its embeddings are cut to (``truncate_dim``, for Matryoshka models; None: all), and the precision
    plan (``precision``: float32, auto, bf16-mixed or saved, as :func:`st_llm2vec.load_model` takes it; it applies
    to st-llm2vec models and decoder LLMs, a stock model is evaluated in float32)."""

    device: str | None = None
    dtype: str | None = None
    max_seq_length: int | None = None
    max_batch_tokens: int | None = None
    truncate_dim: int | None = None
    precision: str = "float32"


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation run's settings: where it writes, which instructions, how models are loaded and batched."""

    output_dir: Path | None = Path(DEFAULT_OUTPUT)
    instructions: str = LLM2VEC
    overrides: Mapping[str, str] = field(default_factory=dict)
    batch_size: int = 32
    load: LoadSettings = LoadSettings()
    data_dir: str | None = None
    overwrite: bool = False
    progress: bool = True
    chart: bool = True

    def __post_init__(self) -> None:
        if self.instructions not in MODES:
            raise InputError(f"instructions must be one of {', '.join(MODES)}, got {self.instructions!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InputError(f"batch_size must be a positive int, got {self.batch_size!r}")
        from ..precision import PRECISIONS  # here, not at import: the command reads this module before torch

        if self.load.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.load.precision!r}")
        if self.load.precision != "float32" and self.load.dtype not in (None, "auto", "float32"):
            raise InputError(f"--precision {self.load.precision} plans bf16 over float32 weights; it cannot be "
                             f"combined with --dtype {self.load.dtype}: drop one of the two")
        for name in ("max_seq_length", "max_batch_tokens", "truncate_dim"):
            value = getattr(self.load, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InputError(f"{name} must be a positive int or None (the model's own), got {value!r}")

    def experiment(self, precision: str = "float32") -> dict[str, Any]:
        """What changes scores besides the model and the task (mteb's ``experiment_kwargs``: the results' subdir);
        ``precision``: the one this model runs in (:func:`.models.precision_of`; float32 is left out, so results of
        runs before the option stay valid)."""
        import hashlib
        import json

        settings: dict[str, Any] = {"instructions": self.instructions}
        if self.overrides:
            digest = hashlib.sha256(json.dumps(dict(self.overrides), sort_keys=True).encode("utf-8")).hexdigest()[:8]
            settings["instructions"] = f"{self.instructions}+custom-{digest}"
        for name in ("max_seq_length", "dtype", "device", "truncate_dim"):
            value = getattr(self.load, name)
            if value is not None:
                settings[name] = str(value)
        if precision != "float32":
            settings["precision"] = precision
        return settings


@dataclass
class TaskScore:
    """One model's result on one task: the main score (×100), every score mteb computed, and what it was given."""

    model: str
    task: str
    main_score: str
    value: float
    scores: dict[str, Any]
    instruction: dict[str, Any]
    cached: bool
    seconds: float

    def metric(self, name: str) -> float:
        """A score by mteb's name (×100), averaged over the task's subsets like the main score."""
        return 100.0 * float(self.scores[name])


@dataclass
class EvalRun:
    """What :func:`evaluate_models` did: the models and tasks (in order), every score, the files written."""

    models: list[str]
    tasks: list[str]
    scores: list[TaskScore]
    config: EvalConfig
    files: dict[str, Path] = field(default_factory=dict)
    encoded: dict[str, int] = field(default_factory=dict)
    reused: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the run left out and why (one line each)

    def score(self, model: str, task: str) -> TaskScore | None:
        return next((s for s in self.scores if s.model == model and s.task == task), None)
