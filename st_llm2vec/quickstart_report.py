"""What the quick start prints when it is done: the table of its steps' scores, how far chance alone moves them,
the example query, and how to load the saved model."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .eval.scores import markdown_table, score_columns, spearman_noise

EXAMPLE_QUERY = "A man is playing a guitar on stage."
EXAMPLE_DOCS = (
    "A musician performs a song in front of an audience.",
    "A man is slicing a tomato in the kitchen.",
    "The central bank raised interest rates again.",
)


@dataclass
class StageRow:
    stage: str
    scores: dict[str, float]
    seconds: float
    note: str = ""

    def as_row(self) -> dict[str, Any]:
        return {"stage": self.stage, **self.scores, "time": f"{self.seconds:.0f} s", "note": self.note}


@dataclass
class QuickstartResult:
    rows: list[StageRow]
    output: str
    model_path: str
    seconds: float
    threads: int
    bf16: bool
    eval_sets: dict[str, int]
    corpus: str
    reload_max_diff: float
    example: list[tuple[str, float]]
    setup_seconds: float = 0.0
    eval_desc: str = ""
    saved_format: str = ""
    proof: str = ""

    def table(self) -> str:
        keys = [k for r in self.rows for k in r.scores]
        columns = [("stage", "step"), *score_columns(keys), ("time", "time"), ("note", "notes")]
        return markdown_table([r.as_row() for r in self.rows], columns)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def noise_note(result: QuickstartResult) -> str:
    """How far each dev score can move by chance, said plainly (a 40-pair set cannot show an improvement)."""
    final = result.rows[-1].scores if result.rows else {}
    parts = [f"{name} ±{spearman_noise(n, final.get(name, 0.0)):.0f}" for name, n in result.eval_sets.items()]
    note = ("Chance alone moves a score by up to (95% interval, at the final row's scores): " + ", ".join(parts)
            + " points; differences smaller than that show nothing.")
    if min(result.eval_sets.values(), default=0) < 100:
        note += (" Sets this small cannot show an improvement; score on more pairs (the shared data, or "
                 "--dev-pairs FILE with a few hundred of your own).")
    return note


def render_report(result: QuickstartResult, options: Any) -> str:
    """The results table, the example query and how to use the saved model (``options``: the run's
    :class:`~st_llm2vec.quickstart.QuickstartOptions`)."""
    lines = [
        "",
        "Cosine Spearman ×100 on dev STS pairs ("
        + ", ".join(f"{n}: {k} pairs" for n, k in result.eval_sets.items())
        + f"); seed {options.seed}, {result.threads} torch thread(s), "
        + ("bf16 autocast training" if result.bf16 else "float32 training"),
        f"Trained on: {result.corpus}. Scored on: {result.eval_desc}.",
        "",
        result.table(),
        "",
        noise_note(result),
        "",
        f"Example similarity (reloaded model), query: {EXAMPLE_QUERY!r}",
    ]
    for doc, sim in sorted(result.example, key=lambda x: -x[1]):
        lines.append(f"  {sim:+.3f}  {doc}")
    lines += [
        "",
        f"Saved model: {result.output}  (reload check: max |Δ| {result.reload_max_diff:.1e})",
    ]
    if result.saved_format == "portable":
        lines += [
            f"  portable format (stock sentence-transformers modules): {result.proof}",
            "  from sentence_transformers import SentenceTransformer  # no st_llm2vec needed",
            f"  model = SentenceTransformer({result.output!r})",
        ]
    else:
        lines += [
            f"  exact format ({result.proof}): loading needs st-llm2vec installed",
            "  import st_llm2vec  # registers its module classes",
            "  from sentence_transformers import SentenceTransformer",
            f"  model = SentenceTransformer({result.output!r})",
        ]
    lines += [
        "",
        f"Total wall time: {result.seconds:.0f} s ({result.seconds / 60:.1f} min). These are tiny demo runs;",
        "see benchmarks/quality_smollm2.py for the measured recipe.",
    ]
    return "\n".join(lines)
