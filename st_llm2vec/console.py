"""The console of one ``st-llm2vec`` command: quiet by default, loud on request.

Every command run from :mod:`st_llm2vec.cli` runs inside :func:`console_session`, and every command has
``--no-progress`` and ``--verbose`` (:func:`add_console_options`; a command that declares either keeps its own).

- Progress bars: shown only when stderr is a terminal and ``--no-progress`` is not given (a log file or a pipe
  gets no bars); the command reads the decision as ``args.no_progress``.
- Third-party logging (transformers, datasets, sentence-transformers, mteb, peft, accelerate, huggingface_hub):
  errors only; ``--verbose`` leaves each library at its own default.
- The trainer's per-step loss dicts: only with ``--verbose`` (:func:`verbose`, read by the recipe's trainer);
  a stage prints one line with its key figures instead.
- bitsandbytes' "Failed to load CPU gemm_4bit_forward ... No module named 'kernels'" warning (logged on every
  import on AVX512-BF16 CPUs, about an optional kernel for 4-bit layers): dropped by a filter on that one
  logger for that one message (:func:`silence_import_notices`, installed by ``import st_llm2vec``).
- A step that takes more than a few seconds says what it does in one line (:func:`status`), on stderr, so that
  stdout keeps only the command's result.

Importing this module is cheap (the standard library only): ``st-llm2vec COMMAND --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

# Libraries whose INFO / WARNING lines are noise on a healthy install: at ERROR unless --verbose.
QUIET_LOGGERS = ("transformers", "datasets", "sentence_transformers", "mteb", "peft", "accelerate", "huggingface_hub",
                 "torch.distributed", "httpx")
# The environment variables the same libraries read when first imported (a command imports them after the session
# starts): verbosity, and for bars, huggingface_hub's switch (which transformers' weight-loading bars follow too).
_VERBOSITY_ENV = {"TRANSFORMERS_VERBOSITY": "error", "DATASETS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
_NO_BARS_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}


@dataclass(frozen=True)
class Console:
    """What one command's console shows."""

    progress: bool = True  # progress bars
    verbose: bool = True  # third-party logging and the trainer's per-step logs


_current: Console | None = None


def current() -> Console | None:
    """The console of the command running in this process (None: not run from the command line — a library call
    keeps every library's own output)."""
    return _current


def verbose() -> bool:
    """True unless a command runs without ``--verbose`` (library calls keep the stock, verbose behaviour)."""
    return _current is None or _current.verbose


def status(message: str) -> None:
    """One line on stderr saying what a long step is doing (loading, training, scoring, saving and proving), when a
    command runs from the command line; a library call stays silent."""
    if _current is not None:
        print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- options


def add_console_options(parser: argparse.ArgumentParser) -> None:
    """``--no-progress`` and ``--verbose``, unless the command declares them itself (argparse refuses a second
    declaration of an option string: that refusal is how we see it, without reading the parser's private list)."""
    options = {"--no-progress": "no progress bars (they are shown only on a terminal anyway)",
               "--verbose": "also show the libraries' logs and the trainer's per-step losses"}
    for option, help_text in options.items():
        try:
            parser.add_argument(option, action="store_true", help=help_text)
        except argparse.ArgumentError:  # the command's own option of that name stays
            pass


def wants_progress(no_progress: bool, stream=None) -> bool:
    """Bars only on a terminal, and not with ``--no-progress``."""
    stream = sys.stderr if stream is None else stream
    try:
        return not no_progress and stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


# --------------------------------------------------------------------------- the bitsandbytes notice


class _DropMessage(logging.Filter):
    """Drops the records of one logger whose message starts with ``prefix`` and mentions ``also``."""

    def __init__(self, prefix: str, also: str) -> None:
        super().__init__()
        self.prefix, self.also = prefix, also

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not (text.startswith(self.prefix) and self.also in record.getMessage())


# bitsandbytes (imported by peft, which st_llm2vec and sentence-transformers import) logs this on every import on a
# CPU with AVX512-BF16 when the optional `kernels` package is absent; its 4-bit CPU path runs without it.
_BNB_LOGGER = "bitsandbytes.backends.cpu.ops"
_BNB_FILTER = _DropMessage("Failed to load CPU gemm_4bit_forward", "No module named 'kernels'")


def silence_import_notices() -> None:
    """Install the filter for bitsandbytes' missing-``kernels`` notice (idempotent; before bitsandbytes is imported)."""
    logger = logging.getLogger(_BNB_LOGGER)
    if _BNB_FILTER not in logger.filters:
        logger.addFilter(_BNB_FILTER)


# --------------------------------------------------------------------------- the session


@contextlib.contextmanager
def console_session(args: argparse.Namespace) -> Iterator[Console]:
    """Run one command with its console settings (read from ``args.no_progress`` / ``args.verbose``, and written back
    to ``args.no_progress`` as decided); everything is put back when it ends (tests run many commands in-process)."""
    global _current
    console = Console(progress=wants_progress(bool(getattr(args, "no_progress", False))),
                      verbose=bool(getattr(args, "verbose", False)))
    if hasattr(args, "no_progress"):
        args.no_progress = not console.progress
    silence_import_notices()
    undo: list[Callable[[], None]] = []
    if not console.verbose:
        undo.append(_set_env(_VERBOSITY_ENV))
        undo.append(quiet_libraries())
    if not console.progress:
        undo.append(_set_env(_NO_BARS_ENV))
        undo.append(no_progress_bars())
    previous, _current = _current, console
    try:
        yield console
    finally:
        _current = previous
        for step in reversed(undo):
            step()


def _set_env(values: dict[str, str]) -> Callable[[], None]:
    """Set environment variables the user has not set; returns what removes them again."""
    added = [name for name in values if name not in os.environ]
    for name in added:
        os.environ[name] = values[name]
    return lambda: [os.environ.pop(name, None) for name in added] and None


def quiet_libraries() -> Callable[[], None]:
    """Third-party loggers at ERROR, and the Python warnings they raise on a healthy install (deprecations inside
    the libraries) ignored; returns what puts everything back."""
    import warnings

    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    restore_verbosity = _already_imported_verbosity()
    saved_filters = warnings.filters[:]
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)

    def restore() -> None:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        restore_verbosity()
        warnings.filters[:] = saved_filters

    return restore


def _already_imported_verbosity() -> Callable[[], None]:
    """transformers and datasets set their own logger level when first used; if they already are, set it through
    their API (the environment variables cover a later import)."""
    undo: list[Callable[[], None]] = []
    for module_name in ("transformers.utils.logging", "datasets.utils.logging"):
        module = sys.modules.get(module_name)
        if module is None:
            continue
        before = module.get_verbosity()
        module.set_verbosity_error()
        undo.append(lambda module=module, before=before: module.set_verbosity(before))
    return lambda: [step() for step in undo] and None


def no_progress_bars() -> Callable[[], None]:
    """No progress bar from any library: tqdm bars start disabled unless their caller asks for one (some bars, such
    as ST's "Computing widget examples", have no switch, and tqdm reads ``TQDM_DISABLE`` only when first imported),
    and the libraries' own switches are off; returns what puts them back."""
    from functools import partialmethod

    import tqdm

    original = tqdm.tqdm.__init__
    tqdm.tqdm.__init__ = partialmethod(original, disable=True)
    undo: list[Callable[[], None]] = []
    for module_name, off, on, enabled in (
        ("transformers.utils.logging", "disable_progress_bar", "enable_progress_bar", "is_progress_bar_enabled"),
        ("datasets", "disable_progress_bars", "enable_progress_bars", "is_progress_bar_enabled"),
        ("huggingface_hub.utils", "disable_progress_bars", "enable_progress_bars", "are_progress_bars_disabled"),
    ):
        module = sys.modules.get(module_name)
        if module is None or not hasattr(module, off) or not hasattr(module, enabled):
            continue
        was_on = getattr(module, enabled)() != (enabled == "are_progress_bars_disabled")
        getattr(module, off)()
        if was_on:
            undo.append(getattr(module, on))

    def restore() -> None:
        tqdm.tqdm.__init__ = original
        for step in undo:
            step()

    return restore
