"""A stage's command line, ``st-llm2vec STAGE CONFIG [--KEY VALUE ...] [--set KEY=VALUE ...]`` (and the torchrun
launchers in ``training/``): every recipe key an option, from its declaration; only the keys given override
the config file."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from .keys import add_options
from .training_run import is_main_process

if TYPE_CHECKING:
    from .arguments import RecipeArguments


def parent_parser(cls: type[RecipeArguments]) -> argparse.ArgumentParser:
    """The options of ``st-llm2vec STAGE``: the config file, every recipe key of the stage as ``--KEY VALUE``
    (from its declaration; only keys given override the file), ``--output-dir``, and ``--set KEY=VALUE``
    for anything else (trainer arguments)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("config", help=f"JSON or YAML config with llm2vec's train_configs/{cls.STAGE} keys")
    add_options(parser, cls)
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", default=argparse.SUPPRESS,
                        help="override output_dir")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key (VALUE parsed as JSON when possible), repeatable")
    return parser


def overrides_from_cli(cls: type[RecipeArguments], args: argparse.Namespace) -> dict[str, Any]:
    """The keys given on the command line (``--set`` ones first, named options over them)."""
    overrides: dict[str, Any] = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key.strip().lstrip("-")] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip().lstrip("-")] = value
    for name in [f.name for f in fields(cls)] + ["output_dir"]:
        if hasattr(args, name):
            overrides[name] = getattr(args, name)
    return overrides


def run_cli(cls: type[RecipeArguments], args: argparse.Namespace, train: Callable[..., Any]) -> int:
    """``st-llm2vec STAGE``: train from the config and options; print the result on the main process."""
    from .. import console

    # the run's own INFO lines (data, probe losses, saves) with --verbose; its warnings always
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if console.verbose() else logging.WARNING)
    result = train(args.config, overrides_from_cli(cls, args))
    if is_main_process():
        if result.already_complete:
            print(f"The {cls.TITLE} run in {result.output_dir} is already complete: nothing trained, nothing re-saved")
        elif console.verbose():
            print(json.dumps(result.summary(), indent=2, default=str))
        else:  # the run's figures were its console line; the whole summary is in the dir
            print(f"{cls.TITLE} model saved to {result.output_dir} (summary: "
                  f"{Path(result.output_dir) / cls.RESULT_FILE})")
    return 0
