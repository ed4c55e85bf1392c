"""st-llm2vec: decoder-only LLMs as Sentence-Transformers embedding models, the LLM2Vec way."""

from .bidirectional import BidirectionalityError, enable_bidirectional, ensure_bidirectional, probe_bidirectional
from .build import from_llm
from .encoder import LLM2VecTransformer
from .mntp import MNTPDataCollator, MNTPEvaluator, MNTPLoss
from .pooling import LLM2VecPooling

__all__ = [
    "BidirectionalityError",
    "LLM2VecPooling",
    "LLM2VecTransformer",
    "MNTPDataCollator",
    "MNTPEvaluator",
    "MNTPLoss",
    "enable_bidirectional",
    "ensure_bidirectional",
    "from_llm",
    "probe_bidirectional",
]
__version__ = "0.1.0"


def _trust_own_modules() -> None:
    """Let ``SentenceTransformer(path)`` load our two module classes without ``trust_remote_code``.

    ST 6 imports only its own ``sentence_transformers.*`` classes unasked; any other class in
    modules.json needs ``trust_remote_code=True``. Once this package is imported, its own installed
    classes (which read only config values, never code from the model dir) resolve like ST's; every
    other class ref keeps ST's gate. Uses ST's class-level ``_module_classes`` lookup, which it
    consults before that gate.
    """
    from sentence_transformers.base.model import BaseModel

    own = {f"{cls.__module__}.{cls.__qualname__}": cls for cls in (LLM2VecTransformer, LLM2VecPooling)}
    BaseModel._module_classes = {**BaseModel._module_classes, **own}


_trust_own_modules()
