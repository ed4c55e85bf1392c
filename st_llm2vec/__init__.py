"""st-llm2vec: decoder-only LLMs as Sentence-Transformers embedding models, the LLM2Vec way.

Importing the package is cheap: the public names below are imported on first use (PEP 562), so
``import st_llm2vec`` and the ``st-llm2vec`` console script load neither torch, sentence-transformers
nor the trainer stack until a name that needs them is touched.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterator, Mapping
from importlib.abc import MetaPathFinder

from .console import silence_import_notices

# Before any submodule imports peft (and with it bitsandbytes, which logs a notice about an optional kernel on import).
silence_import_notices()

# public name -> submodule that defines it
_LAZY: dict[str, str] = {
    "BidirectionalityError": "bidirectional",
    "enable_bidirectional": "bidirectional",
    "ensure_bidirectional": "bidirectional",
    "probe_bidirectional": "bidirectional",
    "from_llm": "build",
    "load_model": "build",
    "LLM2VecTransformer": "encoder",
    "MNTPDataCollator": "recipe.mntp_masking",
    "MNTPEvaluator": "recipe.mntp_loss",
    "MNTPLoss": "recipe.mntp_loss",
    "LLM2VecModel": "model",
    "LLM2VecPooling": "pooling",
    "PortableFormatError": "portable",
    "train_mntp": "recipe.stage_mntp",
    "train_simcse": "recipe.stage_contrastive",
    "train_supervised": "recipe.stage_contrastive",
}

__all__ = [
    "BidirectionalityError",
    "LLM2VecModel",
    "LLM2VecPooling",
    "LLM2VecTransformer",
    "MNTPDataCollator",
    "MNTPEvaluator",
    "MNTPLoss",
    "PortableFormatError",
    "enable_bidirectional",
    "ensure_bidirectional",
    "from_llm",
    "load_model",
    "probe_bidirectional",
    "train_mntp",
    "train_simcse",
    "train_supervised",
]
__version__ = "0.2.0"


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    else:
        try:  # a submodule (``st_llm2vec.bidirectional``) not imported yet
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


# -- registering our two module classes with sentence-transformers -------------------------------
#
# ``SentenceTransformer(path)`` imports only ST's own ``sentence_transformers.*`` classes unasked; any
# other class in modules.json needs ``trust_remote_code=True``. Once this package is imported, its own
# installed classes (which read only config values, never code from the model dir) resolve like ST's;
# every other class ref keeps ST's gate. This goes through ST's class-level
# ``BaseModel._module_classes`` lookup, which ST consults before that gate.
#
# Without importing sentence-transformers (seconds) just for that: if ST's ``base.model`` is already
# imported we register at once, otherwise a one-shot import hook registers right after that module
# has run. The hook is hand-written because nothing in ST (or Python) offers a "module imported"
# callback or a registration entry point. Our classes themselves are imported when ST first looks
# one up (``_OwnModuleClasses``): importing them from the hook would be circular whenever the import
# of ``st_llm2vec.encoder``/``pooling`` is what pulls sentence-transformers in.

_ST_MODEL = "sentence_transformers.base.model"
_OWN_CLASSES = ("st_llm2vec.encoder.LLM2VecTransformer", "st_llm2vec.pooling.LLM2VecPooling")


class _OwnModuleClasses(Mapping):
    """ST's ``_module_classes`` plus our two classes, each imported on first lookup."""

    def __init__(self, base: Mapping) -> None:
        self._base = dict(base)

    def __getitem__(self, class_ref: str):
        if class_ref in _OWN_CLASSES:
            module, _, name = class_ref.rpartition(".")
            return getattr(importlib.import_module(module), name)
        return self._base[class_ref]

    def __iter__(self) -> Iterator[str]:
        yield from self._base
        yield from (ref for ref in _OWN_CLASSES if ref not in self._base)

    def __len__(self) -> int:
        return len(set(self._base) | set(_OWN_CLASSES))


def _register(st_model_module) -> None:
    base_model = st_model_module.BaseModel
    if not isinstance(base_model._module_classes, _OwnModuleClasses):
        base_model._module_classes = _OwnModuleClasses(base_model._module_classes)


class _RegisteringLoader:
    """Wraps the loader of ``sentence_transformers.base.model``: runs it, then registers our classes."""

    def __init__(self, loader) -> None:
        self._loader = loader

    def __getattr__(self, name: str):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _register(module)


class _RegisterOnSTImport(MetaPathFinder):
    """One-shot ``sys.meta_path`` entry: hands ``sentence_transformers.base.model`` a registering loader."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _ST_MODEL:
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]  # one shot
        spec = importlib.util.find_spec(fullname)  # from the finders after us
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


def _trust_own_modules() -> None:
    """Let ``SentenceTransformer(path)`` load our two module classes without ``trust_remote_code``."""
    if _ST_MODEL in sys.modules and hasattr(sys.modules[_ST_MODEL], "BaseModel"):
        _register(sys.modules[_ST_MODEL])
    elif not any(isinstance(f, _RegisterOnSTImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnSTImport())


_trust_own_modules()
