"""``st-llm2vec``: one command per recipe step; each lives in its own module, imported on use."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import re
import sys

# name -> (module, help). The module defines run_<name>(args) -> int, and its options with
# add_arguments_<name>(parser) and/or parents_<name>() -> [argparse parsers to inherit from].
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("st_llm2vec.quickstart", "offline demo on SmolLM2-135M: baseline → bi → MNTP → SimCSE"),
    "fetch-smollm2": ("st_llm2vec.quickstart", "convert the SmolLM2-135M-Instruct GGUF to a HF checkpoint (cached)"),
    "convert": ("st_llm2vec.export.convert", "HF causal LM or llm2vec checkpoint stack → standalone ST model dir"),
    "push": ("st_llm2vec.export.convert", "push an exported ST model dir to the Hugging Face Hub"),
    "export": ("st_llm2vec.export.onnx", "portable model dir → + proven ONNX graph (onnx/model.onnx, --quantize int8)"),
    "mntp": ("st_llm2vec.train.stage_mntp", "masked next-token prediction training from a JSON/YAML config"),
    "simcse": ("st_llm2vec.train.stage_contrastive", "unsupervised SimCSE training from a JSON/YAML config"),
    "supervised": ("st_llm2vec.train.stage_contrastive", "supervised contrastive training with hard negatives"),
}


def _usage() -> str:
    lines = ["usage: st-llm2vec COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<14} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `st-llm2vec COMMAND --help` for a command's options."]
    return "\n".join(lines)


# Errors that mean "fix your input" (config, paths, data, disk), reported in one line with exit status 2.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)
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
    """A one-line description of ``exc`` if it is a user-side error (bad input, missing file, full disk), else None."""
    for err in _causes(exc):
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return f"cannot write: {err.strerror or err} (free some disk space or choose another output location)"
        text = str(err)
        if _DISK_FULL.search(text) or _WRITE_FAILED.search(text):
            return f"cannot write: {_one_line(text)} (is the disk full? free some space or choose another output location)"
    if isinstance(exc, USER_ERRORS):
        return _one_line(str(exc) or type(exc).__name__)
    return None


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def main(argv: list[str] | None = None, *, report_errors: bool | None = None) -> int:
    """Run ``st-llm2vec COMMAND [options]``.

    Errors in the user's input (a bad config value, a missing file, a full disk, another run holding the
    output dir, ...) are printed as one line, exit status 2; ``--debug`` (or ST_LLM2VEC_DEBUG=1) shows the
    traceback instead. ``report_errors`` defaults to True for the console script (``argv`` None) and to
    False for calls with an explicit ``argv``, which get the exception itself (as a library call would).
    """
    global _debug
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
    module = importlib.import_module(COMMANDS[name][0])
    attr = name.replace("-", "_")
    parents = getattr(module, f"parents_{attr}", list)()
    parser = argparse.ArgumentParser(prog=f"st-llm2vec {name}", description=COMMANDS[name][1], parents=parents)
    if hasattr(module, f"add_arguments_{attr}"):
        getattr(module, f"add_arguments_{attr}")(parser)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = parser.parse_args(argv[1:])
    debug = debug or args.debug
    previous, _debug = _debug, debug
    try:
        return int(getattr(module, f"run_{attr}")(args) or 0)
    except KeyboardInterrupt:
        if debug or not report_errors:
            raise
        print(f"st-llm2vec {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = user_error_message(exc)
        if debug or not report_errors or message is None:
            raise
        print(f"st-llm2vec {name}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2
    finally:
        _debug = previous


_debug = False  # --debug of the command now running (see debug_requested)


def debug_requested() -> bool:
    """Whether the running command was given ``--debug`` (commands that report their own errors re-raise then)."""
    return _debug


if __name__ == "__main__":
    sys.exit(main())
