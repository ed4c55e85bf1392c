"""The evaluation wing: scoring any embedding model the standard way.

``st-llm2vec eval``: ``command`` (the CLI) → ``runner`` (models × tasks through ``mteb.evaluate``, resumable) with
``tasks`` (mteb tasks, local ones from ``task_files``), ``instructions`` (llm2vec's per-task instructions),
``models`` (which model a name means, how it loads, its prompts) and ``cached_encoder`` (the model as mteb calls
it, with an embedding cache); ``results`` (what a run is) → ``report`` (table, markdown, CSV, chart). ``scores``:
the quick start's and the benchmarks' scores and tables. The dev sets themselves are :mod:`st_llm2vec.devdata`,
which the training stages read too. A new evaluation goes here: a task in ``tasks`` (and its file in
``task_files``).
"""

from __future__ import annotations

from ..errors import MissingExtraError

INSTALL_HINT = 'pip install -e ".[eval]"  (from the st-llm2vec clone: mteb and matplotlib)'


def require_mteb() -> None:
    """Raise :class:`~st_llm2vec.errors.MissingExtraError` naming the install command when mteb is missing."""
    import importlib

    try:
        importlib.import_module("mteb")
    except ImportError as exc:
        raise MissingExtraError(f"Evaluating through mteb needs the eval extra ({exc.name or exc} is missing): "
                                f"{INSTALL_HINT}") from exc
