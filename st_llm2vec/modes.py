"""The pooling modes: one table of what each llm2vec mode is, what stock sentence-transformers calls it in
the portable format, and what it asks of the tokenizer.

A new pooling mode is a row here plus its computation in ``pooling.LLM2VecPooling.forward``; everything
else (names and aliases, config checks, the CLI's choices, the portable format, reading a saved dir back)
reads this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import InputError


@dataclass(frozen=True)
class PoolingMode:
    """One pooling mode.

    ``stock``: ST ``Pooling``'s name for it in the portable format, or None when stock modules cannot
    express it (``why_not_stock`` says why). ``excludes_prompt``: the stock Pooling leaves a prompt's
    tokens out (``include_prompt=False``; llm2vec pools only the text). ``eos_suffix``: llm2vec appends
    an EOS suffix to the text (its last token is pooled). ``needs_bos``: the tokenizer must start every
    input with a BOS token (the pooled token).
    """

    name: str
    stock: str | None
    excludes_prompt: bool = False
    eos_suffix: bool = False
    needs_bos: bool = False
    why_not_stock: str = ""


MODES: dict[str, PoolingMode] = {
    mode.name: mode
    for mode in (
        PoolingMode("mean", "mean", excludes_prompt=True),
        PoolingMode("weighted_mean", None, why_not_stock=(
            "ST's weightedmean numbers the BOS token as position 1; llm2vec weights the text tokens 1..N")),
        PoolingMode("eos_token", "lasttoken", eos_suffix=True),
        PoolingMode("bos_token", "cls", needs_bos=True),
    )
}
POOLING_MODES: tuple[str, ...] = tuple(MODES)
ALIASES = {"last_token": "eos_token", "weightedmean": "weighted_mean", "lasttoken": "eos_token"}


def normalize_pooling_mode(mode: str) -> str:
    """Canonical pooling name, or a ValueError listing the valid ones."""
    mode = ALIASES.get(mode, mode)
    if mode not in MODES:
        raise InputError(
            f"Unknown pooling_mode {mode!r}; choose one of {', '.join(POOLING_MODES)} (or the alias 'last_token')."
        )
    return mode


def from_stock(stock_name: Any) -> PoolingMode | None:
    """The mode a stock ``Pooling`` config (``pooling_mode``) of a portable dir stands for, if any."""
    return next((mode for mode in MODES.values() if mode.stock is not None and mode.stock == stock_name), None)


def adds_bos(tokenizer: Any) -> bool:
    """The tokenizer starts every input with its BOS token."""
    ids = tokenizer("a")["input_ids"]
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


def check_tokenizer(mode: str, tokenizer: Any, where: str) -> None:
    """A ValueError when ``mode`` needs what ``tokenizer`` lacks (``where`` names the model or file)."""
    if MODES[normalize_pooling_mode(mode)].needs_bos and not adds_bos(tokenizer):
        others = ", ".join(repr(m) for m, spec in MODES.items() if not spec.needs_bos)
        raise InputError(
            f"{where}: pooling_mode {mode!r} needs a tokenizer that starts every input with a BOS token, and this one "
            f"adds none (the first text token would be pooled). Use {others}."
        )
