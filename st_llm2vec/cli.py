"""``st-llm2vec``: one command per recipe step; each lives in its own module, imported on use."""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from .console import add_console_options, console_session
from .errors import UserError
from .recipe.stages import STAGES

# name -> (module, help). The module defines run_<name>(args) -> int, and its options with
# add_arguments_<name>(parser) and/or parents_<name>() -> [argparse parsers to inherit from]; an optional
# EPILOG_<NAME> string (examples) ends its --help as written.
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("st_llm2vec.quickstart", "offline demo on SmolLM2-135M: baseline → bi → MNTP → SimCSE"),
    "fetch-smollm2": ("st_llm2vec.smollm2", "convert the SmolLM2-135M-Instruct GGUF to a HF checkpoint (cached)"),
    "convert": ("st_llm2vec.export.convert", "HF causal LM or llm2vec checkpoint stack → standalone ST model dir"),
    "push": ("st_llm2vec.export.push", "push an exported ST model dir to the Hugging Face Hub"),
    "export": ("st_llm2vec.export.command", "portable model dir → + its graph for another runtime (--backend), proven in it"),
    "fetch-gguf-converter": ("st_llm2vec.export.gguf", "put llama.cpp's GGUF converter (from the llama-cpp-python sdist) in the cache"),
    **{stage.name: (stage.module, stage.help) for stage in STAGES.values()},  # the recipe's stage table
    "mine": ("st_llm2vec.recipe.mine", "mine hard negatives for pair data with a retriever → a training folder + summary"),
    "eval": ("st_llm2vec.eval.command", "models × tasks through mteb (mteb tasks, your files, llm2vec's instructions) → one table"),
    "embed": ("st_llm2vec.embed.command", "embed a corpus into Parquet shards + manifest (resumable; --engine ray)"),
    "search": ("st_llm2vec.embed.command", "the nearest rows of an embed output to a query"),
}


def _usage() -> str:
    lines = ["usage: st-llm2vec COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<14} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `st-llm2vec COMMAND --help` for a command's options."]
    return "\n".join(lines)


# Write failures that mean a full disk, whoever raised them (OSError, or safetensors' / torch's own errors).
_DISK_FULL = re.compile(r"no space left on device|os error (28|122)|disk quota exceeded|file too large|os error 27",
                        re.IGNORECASE)
_WRITE_FAILED = re.compile(r"PytorchStreamWriter failed writing|file write failed|unexpected pos \d+ vs \d+")


def _causes(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def user_error_message(exc: BaseException) -> str | None:
    """One line for an error the user can fix — a :class:`~st_llm2vec.errors.UserError`, or a full disk
    whoever raised it — else None (a bug: its traceback is kept)."""
    for err in _causes(exc):
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return f"cannot write: {err.strerror or err} (free some disk space or choose another output location)"
        text = str(err)
        if _DISK_FULL.search(text) or _WRITE_FAILED.search(text):
            return f"cannot write: {_one_line(text)} (is the disk full? free some space or choose another output location)"
    if isinstance(exc, UserError):
        return _one_line(str(exc) or type(exc).__name__)
    return None


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a job scheduler, ``kill``) raises like Ctrl-C, so every command's cleanup runs (temp dirs, locks)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def build_parser(name: str) -> argparse.ArgumentParser:
    """The option parser of ``st-llm2vec NAME`` (a key of :data:`COMMANDS`), built from its module's hooks."""
    module = importlib.import_module(COMMANDS[name][0])
    attr = name.replace("-", "_")
    parents = getattr(module, f"parents_{attr}", list)()
    parser = argparse.ArgumentParser(prog=f"st-llm2vec {name}", description=COMMANDS[name][1], parents=parents,
                                     epilog=getattr(module, f"EPILOG_{attr.upper()}", None),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    if hasattr(module, f"add_arguments_{attr}"):
        getattr(module, f"add_arguments_{attr}")(parser)
    add_console_options(parser)  # --no-progress, --verbose: every command, read by the console session
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser


def main(argv: list[str] | None = None, *, report_errors: bool | None = None) -> int:
    """Run ``st-llm2vec COMMAND [options]``.

    Every command runs in one console session (:mod:`st_llm2vec.console`: quiet unless ``--verbose``, bars only
    on a terminal). The one error path of every command: a user error (:class:`~st_llm2vec.errors.UserError`, a full disk)
    is printed as one line, exit status 2; ``--debug`` (or ST_LLM2VEC_DEBUG=1) shows its traceback instead;
    anything else is a bug and keeps its traceback. Ctrl-C or SIGTERM: exit status 130, with what the command
    guarantees about its output (its module's ``INTERRUPTED``). ``report_errors`` defaults to True for the
    console script (``argv`` None) and to False for calls with an explicit ``argv``, which get the exception
    itself (as a library call would).
    """
    if report_errors is None:
        report_errors = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("ST_LLM2VEC_DEBUG", "") not in ("", "0")
    if argv and argv[0] == "--debug":
        debug, argv = True, argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"st-llm2vec: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    parser = build_parser(name)
    module = importlib.import_module(COMMANDS[name][0])
    attr = name.replace("-", "_")
    args = parser.parse_args(argv[1:])
    debug = debug or args.debug
    try:
        with console_session(args), _sigterm_interrupts():
            return int(getattr(module, f"run_{attr}")(args) or 0)
    except KeyboardInterrupt:
        if debug or not report_errors:
            raise
        note = getattr(module, "INTERRUPTED", "")
        print(f"st-llm2vec {name}: interrupted" + (f"; {note}" if note else ""), file=sys.stderr)
        return 130
    except Exception as exc:
        message = user_error_message(exc)
        if debug or not report_errors or message is None:
            raise
        print(f"st-llm2vec {name}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
