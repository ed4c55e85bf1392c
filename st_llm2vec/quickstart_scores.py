"""The quick start's scores: cosine Spearman (×100) of each step on scored pair sets, and whether the final step
beats the causal baseline, with a paired bootstrap interval over the pairs.

The figure is what ``st-llm2vec eval`` (mteb's ``cosine_spearman``) computes for the same model and pairs
(``tests/test_quickstart.py`` holds the two together); it is computed here from the cosines themselves because
the verdict needs the per-pair cosines of two models, which mteb's results do not keep.

The sets (:func:`pair_sets`):

- ``heldout``: :func:`~st_llm2vec.builtin_text.builtin_heldout_pairs`, 200 pairs generated like the training text
  (half of their phrases in words it never uses), none of whose sentences the quick start trains on;
- ``handwritten``: the 40 pairs written by hand for this project (:func:`~st_llm2vec.builtin_text.builtin_sts_pairs`);
- the public STS sets of the shared data folder (STS12, STS13, SICK trial; a fixed sample each) when it is found,
  or the user's own scored pairs (``--dev-pairs``) instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import devdata
from .builtin_text import builtin_heldout_pairs, builtin_sts_pairs

HELDOUT, HANDWRITTEN, PUBLIC_MEAN = "heldout", "handwritten", "sts_mean"
BOOTSTRAP_SAMPLES = 1000


@dataclass(frozen=True)
class PairSet:
    """Scored sentence pairs under a table's column name; ``public``: a public STS set (the second table)."""

    name: str
    header: str
    pairs: tuple[tuple[str, str, float], ...]
    public: bool = False


def pair_sets(data_dir: str | Path | None = None, eval_pairs: int | None = 60,
              dev_pairs: str | None = None) -> tuple[list[PairSet], str]:
    """The sets every step is scored on, and a line saying what they are. Reads and checks every file (a bad
    ``dev_pairs`` file or ``data_dir`` is an error here, before any model loads)."""
    sets = [PairSet(HELDOUT, "held-out generated", tuple(builtin_heldout_pairs())),
            PairSet(HANDWRITTEN, "hand-written", tuple(builtin_sts_pairs()))]
    desc = (f"{len(sets[0].pairs)} generated pairs held out of the training text (scenes like it, half of their "
            f"phrases in other words; none of their sentences trained on) and the {len(sets[1].pairs)} pairs "
            "hand-written for this project")
    if dev_pairs:
        from .eval.task_files import read_scored_pairs

        pairs = tuple(tuple(p) for p in read_scored_pairs(dev_pairs))
        name = Path(dev_pairs).stem
        sets.append(PairSet(name, name, pairs, public=True))
        return sets, f"{desc}; your scored pairs {dev_pairs} ({len(pairs)} pairs)"
    root = devdata.find_shared_data(data_dir)
    if root is None:
        return sets, (f"{desc}; no public STS sets (no shared data folder found: put it at "
                      f"{devdata.default_data_location()}, set {devdata.DATA_ENV}, or pass --data-dir or --dev-pairs)")
    public = [
        PairSet("sts12", "STS12", _sample(devdata.read_sts(root / devdata.STS_DIR / "2012", split="test"), eval_pairs),
                public=True),
        PairSet("sts13", "STS13", _sample(devdata.read_sts(root / devdata.STS_DIR / "2013", split="test"), eval_pairs),
                public=True),
        PairSet("sick-trial", "SICK trial", _sample([devdata.StsPair(p.sentence_a, p.sentence_b, p.relatedness)
                                                     for p in devdata.read_sick(root / devdata.SICK_DIR / "SICK_trial.txt")],
                                                    eval_pairs), public=True),
    ]
    sizes = ", ".join(f"{s.header} ({len(s.pairs)} pairs)" for s in public)
    return sets + public, f"{desc}; public STS test sets from {root}: {sizes}"


def _sample(pairs: Sequence[devdata.StsPair], limit: int | None) -> tuple[tuple[str, str, float], ...]:
    """The fixed sample the quick start and the benchmarks score (:func:`st_llm2vec.devdata.subsample`)."""
    return tuple(tuple(p) for p in devdata.subsample(list(pairs), limit))


# --------------------------------------------------------------------------- scoring


def pair_cosines(model: Any, sets: Sequence[PairSet], *, batch_size: int = 32, progress: bool = False) -> dict[str, Any]:
    """The cosine of every pair of every set (numpy arrays by set name); each distinct text is encoded once."""
    import numpy as np

    texts = list(dict.fromkeys(t for s in sets for a, b, _ in s.pairs for t in (a, b)))
    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=progress)
    row = {text: i for i, text in enumerate(texts)}
    out = {}
    for s in sets:
        a = vectors[[row[p[0]] for p in s.pairs]]
        b = vectors[[row[p[1]] for p in s.pairs]]
        out[s.name] = np.asarray((a * b).sum(axis=1), dtype=np.float64)
    return out


def spearman(gold: Any, predicted: Any) -> float:
    """Spearman correlation ×100 (ties get their average rank, as scipy and mteb compute it)."""
    from scipy.stats import spearmanr

    return 100.0 * float(spearmanr(gold, predicted).statistic)


def scores(sets: Sequence[PairSet], cosines: dict[str, Any]) -> dict[str, float]:
    """Each set's cosine Spearman, and the mean of the public sets' (``sts_mean``) when there are several."""
    out = {s.name: spearman([p[2] for p in s.pairs], cosines[s.name]) for s in sets}
    public = [s.name for s in sets if s.public]
    if len(public) > 1:
        out[PUBLIC_MEAN] = sum(out[name] for name in public) / len(public)
    return out


@dataclass(frozen=True)
class Comparison:
    """The final step against the causal baseline on one set (or the public mean): the gain and its 95% bootstrap
    interval over the pairs."""

    name: str
    header: str
    pairs: int
    baseline: float
    final: float
    low: float
    high: float

    @property
    def gain(self) -> float:
        return self.final - self.baseline

    def verdict(self, final_step: str) -> str:
        """One plain line: a win only when the whole interval is above zero."""
        figures = (f"{self.header} ({self.pairs} pairs): {final_step} {self.final:.1f} vs causal baseline "
                   f"{self.baseline:.1f}, {self.gain:+.1f} (95% bootstrap interval {self.low:+.1f} to {self.high:+.1f})")
        if self.low > 0:
            return f"{figures}: the final model beats the causal baseline."
        if self.high < 0:
            return f"{figures}: the final model is worse than the causal baseline."
        return f"{figures}: no clear difference; this run does not show that the final model beats the causal baseline."


def compare(sets: Sequence[PairSet], baseline: dict[str, Any], final: dict[str, Any], *,
            samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> list[Comparison]:
    """The final step's cosines against the baseline's on each set, and on the mean of the public sets when there
    are several: a paired bootstrap (the same resampled pairs for both models, ``samples`` times, seeded)."""
    import numpy as np
    from scipy.stats import rankdata

    def rho(gold_ranks, predicted) -> float:
        ranked = rankdata(predicted)
        if gold_ranks.std() == 0 or ranked.std() == 0:
            return 0.0
        return 100.0 * float(np.corrcoef(gold_ranks, ranked)[0, 1])

    rng = np.random.default_rng(seed)
    gains: dict[str, list[float]] = {}
    for s in sets:
        gold = np.asarray([p[2] for p in s.pairs])
        diffs = []
        for _ in range(samples):
            pick = rng.integers(0, len(gold), len(gold))
            ranks = rankdata(gold[pick])
            diffs.append(rho(ranks, final[s.name][pick]) - rho(ranks, baseline[s.name][pick]))
        gains[s.name] = diffs
    base_scores, final_scores = scores(sets, baseline), scores(sets, final)
    out = []
    for s in sets:
        low, high = np.percentile(gains[s.name], [2.5, 97.5])
        out.append(Comparison(s.name, s.header, len(s.pairs), base_scores[s.name], final_scores[s.name],
                              float(low), float(high)))
    public = [s for s in sets if s.public]
    if len(public) > 1:  # each resample of the mean resamples every public set
        mean_gains = np.mean([gains[s.name] for s in public], axis=0)
        low, high = np.percentile(mean_gains, [2.5, 97.5])
        out.append(Comparison(PUBLIC_MEAN, "public STS mean", sum(len(s.pairs) for s in public),
                              base_scores[PUBLIC_MEAN], final_scores[PUBLIC_MEAN], float(low), float(high)))
    return out

