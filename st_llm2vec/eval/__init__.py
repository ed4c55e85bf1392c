"""The evaluation wing: scoring any embedding model the standard way.

``scores`` (the quick start's and the benchmarks' scores), and ``st-llm2vec eval``: ``tasks`` (mteb tasks, local
ones from ``task_files``), ``instructions`` (llm2vec's per-task instructions), ``encoders`` (models as mteb
sees them, with an embedding cache), ``run`` (the runner), ``report`` (table, markdown, CSV, chart) and
``command`` (the CLI). The dev sets themselves are :mod:`st_llm2vec.devdata`, which the training stages read too.
A new evaluation goes here.
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
