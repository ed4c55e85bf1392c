"""The pooling modes: one table of what each llm2vec mode is, how it pools, what stock sentence-transformers calls
it in the portable format, and what it asks of the tokenizer.

A new pooling mode is a row here with its computation; everything else (names and aliases, config checks, the
CLI's choices, the ``LLM2VecPooling`` module, the portable format, reading a saved dir back) reads this table.
A mode given by name is made a :class:`PoolingMode` once, where it enters (:func:`pooling_mode`), and passed on.

Importing this module is cheap (no torch): the command line reads the choices from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import InputError


def _last_attended(tokens: Any, attention_mask: Any, text_mask: Any = None, divisor: Any = None) -> Any:
    """The state of each row's last attended position (with left padding: the last column)."""
    import torch

    last = attention_mask.shape[1] - 1 - attention_mask.flip(1).argmax(dim=1)
    return tokens[torch.arange(tokens.shape[0], device=tokens.device), last]


def _first_attended(tokens: Any, attention_mask: Any, text_mask: Any = None, divisor: Any = None) -> Any:
    """The state of each row's first attended position."""
    import torch

    first = attention_mask.argmax(dim=1)
    return tokens[torch.arange(tokens.shape[0], device=tokens.device), first]


def _mean(tokens: Any, attention_mask: Any, text_mask: Any = None, divisor: Any = None, *, weighted: bool = False) -> Any:
    """The mean over the text's tokens (``text_mask``; every attended token without it), ``weighted`` by position
    1..N within the pooled tokens; ``divisor``: each row's own divisor where it is not the pooled weight (the
    portable format's stock ``WordWeights``)."""
    import torch

    mask = text_mask
    if mask is None:
        mask = attention_mask
    elif divisor is None:  # llm2vec: a row without text tokens pools all its tokens
        empty = mask.sum(dim=1, keepdim=True) == 0
        mask = torch.where(empty, attention_mask, mask)
    # As ST's Pooling: weights and sums in float32 under half precision (1/N, and weights 1..N past 256, are not
    # exact in bf16), the embedding in the model's dtype. llm2vec's fixtures are float32, where nothing changes.
    accumulate = torch.float32 if tokens.dtype in (torch.float16, torch.bfloat16) else tokens.dtype
    mask = mask.to(accumulate)
    if weighted:
        # weights 1..N over the pooled tokens, counted within the row (either padding side)
        mask = mask.cumsum(dim=1) * mask
    divisor = mask.sum(dim=1, keepdim=True) if divisor is None else divisor.to(accumulate).unsqueeze(1)
    weights = mask / divisor.clamp_min(1e-9)
    return torch.einsum("bs,bsd->bd", weights, tokens.to(accumulate)).to(tokens.dtype)


def _weighted_mean(tokens: Any, attention_mask: Any, text_mask: Any = None, divisor: Any = None) -> Any:
    return _mean(tokens, attention_mask, text_mask, divisor, weighted=True)


@dataclass(frozen=True)
class PoolingMode:
    """One pooling mode.

    ``pool(tokens, attention_mask, text_mask, divisor)``: the sentence embeddings of a batch (rows padded on
    either side: positions are read through the masks only). ``stock``: ST ``Pooling``'s name for it in the
    portable format, or None when stock modules cannot express it (``why_not_stock`` says why).
    ``excludes_prompt``: the stock Pooling leaves a prompt's tokens out (``include_prompt=False``; llm2vec pools
    only the text). ``eos_suffix``: llm2vec appends an EOS suffix to the text (its last token is pooled).
    ``needs_bos``: the tokenizer must start every input with a BOS token (the pooled token).
    """

    name: str
    pool: Callable[..., Any] = field(repr=False, compare=False)
    stock: str | None = None
    excludes_prompt: bool = False
    eos_suffix: bool = False
    needs_bos: bool = False
    why_not_stock: str = ""


MODES: dict[str, PoolingMode] = {
    mode.name: mode
    for mode in (
        PoolingMode("mean", _mean, "mean", excludes_prompt=True),
        PoolingMode("weighted_mean", _weighted_mean, None, why_not_stock=(
            "ST's weightedmean numbers the BOS token as position 1; llm2vec weights the text tokens 1..N")),
        PoolingMode("eos_token", _last_attended, "lasttoken", eos_suffix=True),
        PoolingMode("bos_token", _first_attended, "cls", needs_bos=True),
    )
}
POOLING_MODES: tuple[str, ...] = tuple(MODES)
ALIASES = {"last_token": "eos_token", "weightedmean": "weighted_mean", "lasttoken": "eos_token"}


def pooling_mode(mode: str | PoolingMode) -> PoolingMode:
    """The mode a name (or alias) stands for, or an :class:`InputError` listing the valid ones."""
    if isinstance(mode, PoolingMode):
        return mode
    name = ALIASES.get(mode, mode)
    if name not in MODES:
        raise InputError(
            f"Unknown pooling_mode {name!r}; choose one of {', '.join(POOLING_MODES)} (or the alias 'last_token')."
        )
    return MODES[name]


def normalize_pooling_mode(mode: str | PoolingMode) -> str:
    """The canonical name of a pooling mode (see :func:`pooling_mode`)."""
    return pooling_mode(mode).name


def from_stock(stock_name: Any) -> PoolingMode | None:
    """The mode a stock ``Pooling`` config (``pooling_mode``) of a portable dir stands for, if any."""
    return next((mode for mode in MODES.values() if mode.stock is not None and mode.stock == stock_name), None)


def adds_bos(tokenizer: Any) -> bool:
    """The tokenizer starts every input with its BOS token."""
    ids = tokenizer("a")["input_ids"]
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


def check_tokenizer(mode: PoolingMode, tokenizer: Any, where: str) -> None:
    """An :class:`InputError` when ``mode`` needs what ``tokenizer`` lacks (``where`` names the model or file)."""
    if mode.needs_bos and not adds_bos(tokenizer):
        others = ", ".join(repr(m) for m, spec in MODES.items() if not spec.needs_bos)
        raise InputError(
            f"{where}: pooling_mode {mode.name!r} needs a tokenizer that starts every input with a BOS token, and this "
            f"one adds none (the first text token would be pooled). Use {others}."
        )
