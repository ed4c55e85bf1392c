"""An evaluation run as people read it: one table (models as rows, tasks as columns, each task's main score ×100),
as text, markdown, CSV and JSON, and the same table as a bar chart (matplotlib) for those who would rather look.

Every file is written atomically; the markdown also lists each task's main metric, its instruction and where
the instruction comes from, so the numbers say what they measure.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import MissingExtraError
from ..files import current_umask, write_json_atomic
from . import INSTALL_HINT

if TYPE_CHECKING:
    from .results import EvalRun

logger = logging.getLogger(__name__)

SUMMARY = "summary"


def _value(run: EvalRun, model: str, task: str) -> float | None:
    score = run.score(model, task)
    return None if score is None else score.value


def _mean(run: EvalRun, model: str) -> float | None:
    values = [_value(run, model, t) for t in run.tasks]
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values and len(run.tasks) > 1 else None


def _columns(run: EvalRun) -> list[str]:
    return run.tasks + (["mean"] if len(run.tasks) > 1 else [])


def _row(run: EvalRun, model: str) -> list[float | None]:
    return [_value(run, model, t) for t in run.tasks] + ([_mean(run, model)] if len(run.tasks) > 1 else [])


def _fmt(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.2f}"


def format_table(run: EvalRun) -> str:
    """The table as aligned text (what the command prints)."""
    header = ["model", *_columns(run)]
    rows = [[model, *(_fmt(v) for v in _row(run, model))] for model in run.models]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _main_metrics(run: EvalRun) -> dict[str, str]:
    metrics: dict[str, str] = {}
    for score in run.scores:
        metrics.setdefault(score.task, score.main_score)
    return metrics


def _instructions(run: EvalRun) -> dict[str, dict]:
    seen: dict[str, dict] = {}
    for score in run.scores:
        seen.setdefault(score.task, score.instruction)
    return seen


def markdown(run: EvalRun) -> str:
    """The table, the metric of each column, and each task's instruction (what the ×100 numbers measure)."""
    columns = _columns(run)
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    lines += [f"| {model} | " + " | ".join(_fmt(v) for v in _row(run, model)) + " |" for model in run.models]
    metrics = _main_metrics(run)
    lines += ["", "Main score ×100 of each task: " + ", ".join(f"{t}: {metrics.get(t, '?')}" for t in run.tasks)
              + (" (mean: of these)" if len(run.tasks) > 1 else "") + f". Instructions: {run.config.instructions}."
              + (f" Embeddings cut to their first {run.config.load.truncate_dim} dimensions."
                 if run.config.load.truncate_dim else "")
              + (f" Precision: {run.config.load.precision} (each task's plan is in summary.json)."
                 if run.config.load.precision != "float32" else ""),
              "", "| task | instruction | from | applied to |", "|---|---|---|---|"]
    for task, item in _instructions(run).items():
        text = item.get("instruction")
        applied = "every text" if item.get("symmetric") else "queries"
        if run.config.instructions == "none" or not text:
            text, applied = text or "", "–" if run.config.instructions == "none" or not text else applied
        lines.append(f"| {task} | {text or '–'} | {item.get('source', '')} | {applied} |")
    lines += ["", "The prompts each model got are in results/<model>/<revision>/experiments/<settings>/"
              "st_llm2vec_eval.json; mteb's result files (every metric) beside them. Rerunning the command "
              "rebuilds this summary from them without encoding."]
    return "\n".join(lines) + "\n"


def csv_text(run: EvalRun) -> str:
    """One row per model and task: every field a spreadsheet needs, the score at full precision."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["model", "task", "metric", "score", "instruction", "instruction_source", "cached", "seconds"])
    for s in run.scores:
        writer.writerow([s.model, s.task, s.main_score, f"{s.value:.6f}", s.instruction.get("instruction") or "",
                         s.instruction.get("source", ""), s.cached, f"{s.seconds:.1f}"])
    return out.getvalue()


def _write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def draw_chart(run: EvalRun, path: Path) -> None:
    """A grouped bar chart of the table (tasks along x, one bar per model), written atomically as PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingExtraError(f"The chart needs matplotlib (pass --no-chart to skip it): {INSTALL_HINT}") from exc
    columns = _columns(run)
    width = 0.8 / max(1, len(run.models))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(columns) * max(1, len(run.models)) ** 0.5 + 2), 4.5))
    for i, model in enumerate(run.models):
        values = [v if v is not None and not math.isnan(v) else 0.0 for v in _row(run, model)]
        xs = [c + (i - (len(run.models) - 1) / 2) * width for c in range(len(columns))]
        bars = ax.bar(xs, values, width, label=model)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    metrics = _main_metrics(run)
    ax.set_xticks(range(len(columns)),
                  [f"{c}\n({metrics[c]})" if c in metrics else c for c in columns], fontsize=8)
    ax.set_ylabel("main score ×100")
    ax.set_ylim(0, 100)
    ax.set_title(f"st-llm2vec eval (instructions: {run.config.instructions})", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)


def write_summary(run: EvalRun, output: Path, *, chart: bool = True) -> dict[str, Path]:
    """``summary.md``, ``summary.csv``, ``summary.json`` (and ``summary.png``) in ``output``; returns their paths."""
    from dataclasses import asdict

    files = {"markdown": output / f"{SUMMARY}.md", "csv": output / f"{SUMMARY}.csv", "json": output / f"{SUMMARY}.json"}
    _write_text(files["markdown"], markdown(run))
    _write_text(files["csv"], csv_text(run))
    config = asdict(run.config)
    write_json_atomic(files["json"], {"models": run.models, "tasks": run.tasks, "config": config,
                                      "scores": [asdict(s) for s in run.scores]})
    if chart:
        try:
            draw_chart(run, output / f"{SUMMARY}.png")
        except MissingExtraError as exc:  # the table is the result; a missing plotting library costs only the picture
            run.notes.append(f"{SUMMARY}.png not drawn: matplotlib is missing ({INSTALL_HINT}; --no-chart skips it)")
            logger.debug("chart skipped: %s", exc)
        else:
            files["chart"] = output / f"{SUMMARY}.png"
    return files
