"""What the quick start prints when it is done: the tables of its steps' scores, whether the final model beats the
causal baseline on each (with a bootstrap interval), the example query, and how to load the saved model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .eval.scores import markdown_table

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
    headers: dict[str, str] = field(default_factory=dict)  # set name -> column header
    public: list[str] = field(default_factory=list)  # the sets of the second table (public STS, or --dev-pairs)
    verdicts: list[str] = field(default_factory=list)  # the final model against the causal baseline, set by set

    def table(self) -> str:
        """The project's own sets: held-out generated and hand-written pairs, with each step's time."""
        own = [(name, header) for name, header in self.headers.items() if name not in self.public]
        columns = [("stage", "step"), *own, ("time", "time"), ("note", "notes")]
        return markdown_table([r.as_row() for r in self.rows], columns)

    def public_table(self) -> str:
        """The public STS sets (or the user's pairs), with their mean when there are several; "" without them."""
        if not self.public:
            return ""
        columns = [("stage", "step"), *[(name, self.headers[name]) for name in self.public]]
        if len(self.public) > 1:
            columns.append(("sts_mean", "STS mean"))
        return markdown_table([r.as_row() for r in self.rows], columns)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def render_report(result: QuickstartResult, options: Any) -> str:
    """The results table, the example query and how to use the saved model (``options``: the run's
    :class:`~st_llm2vec.quickstart.QuickstartOptions`)."""
    public = result.public_table()
    lines = [
        "",
        f"Cosine Spearman ×100; seed {options.seed}, {result.threads} torch thread(s), "
        + ("bf16 autocast training" if result.bf16 else "float32 training") + ".",
        f"Trained on: {result.corpus}.",
        f"Scored on: {result.eval_desc}.",
        "",
        result.table(),
        "",
    ]
    if public:
        lines += [public, ""]
    lines += ["Does the final model beat the causal baseline? (interval: 95% bootstrap over the pairs, how much the "
              "gain moves with another sample of pairs; seed-to-seed variation of training is not included)"]
    lines += [f"- {verdict}" for verdict in result.verdicts]
    lines += [
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
