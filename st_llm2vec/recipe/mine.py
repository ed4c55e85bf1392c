"""``st-llm2vec mine MODEL DATA OUT``: hard negatives mined for pair data with a retriever (:mod:`.mining`), written
as a training folder the supervised stage reads (``dataset_name: E5``, ``dataset_file_path: OUT``) plus
``mine_summary.json`` (per dataset: rows in and out, candidates dropped as likely positives, rows left without
enough negatives, ST's score statistics). OUT is written whole or not at all.

The options are :class:`~.mining.MiningSettings`, declared once for this command and the stage's
``hard_negatives`` mapping; importing this is cheap (``--help`` loads nothing).
"""

from __future__ import annotations

import argparse

from .keys import add_options
from .mining import MiningSettings

INTERRUPTED = "OUT was not written (it appears whole or not at all); run the command again"

EPILOG_MINE = (
    "examples:\n"
    "  st-llm2vec mine sentence-transformers/all-MiniLM-L6-v2 my_e5_folder/ mined/ --relative-margin 0.05\n"
    "  st-llm2vec mine out/supervised pairs.jsonl mined/ --num-negatives 4 --range-min 2 --instructions data "
    "--instruction pairs='Given a question, retrieve passages that answer it'\n\n"
    "Then: st-llm2vec supervised CONFIG --dataset_file_path mined/ (the same instructions as for DATA).")


def add_arguments_mine(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mine_with", metavar="MODEL",
                        help="the retriever: a Sentence Transformers model dir or Hub id (st-llm2vec's or stock)")
    parser.add_argument("data", metavar="DATA",
                        help="a folder of <dataset>.jsonl / .parquet files (llm2vec's E5 layout: query, positive, "
                             "optional negative per row) or one such file")
    parser.add_argument("out", metavar="OUT", help="the folder to write: <dataset>.jsonl (or .parquet) + mine_summary.json")
    add_options(parser, MiningSettings, skip=("mine_with",))
    parser.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl", help="the files written (default jsonl)")
    parser.add_argument("--datasets", nargs="+", metavar="NAME", help="mine only these datasets of DATA (file stems)")
    parser.add_argument("--instruction", action="append", default=[], metavar="DATASET=TEXT",
                        help="a dataset's instruction (repeatable); llm2vec's table gives the E5 ones, others none")
    parser.add_argument("--seed", type=int, default=0, help="seed of sampling_strategy random (default 0)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default cpu)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def _read_data(path: str, datasets: list[str] | None, instructions: dict[str, str]):
    """DATA as pair data: the instruction table of llm2vec's E5 datasets, ``--instruction`` over it, none for others."""
    from pathlib import Path

    from ..errors import MissingFileError
    from .pair_data import E5_INSTRUCTIONS, SPLITS
    from .pair_files import read_pair_folder

    source = Path(path)
    if not source.exists():
        raise MissingFileError(f"DATA {path!r} does not exist: give a folder of <dataset>.jsonl files or one such file.")
    folder, names = (source, datasets) if source.is_dir() else (source.parent, [source.stem])
    stems = names or sorted({p.stem for p in list(folder.glob("*.jsonl")) + list(folder.glob("*.parquet"))})
    table = {s: "" for s in stems if s not in E5_INSTRUCTIONS and s not in SPLITS}
    return read_pair_folder(folder, instructions={**table, **instructions}, datasets=names)


def _instructions(items: list[str]) -> dict[str, str]:
    from ..errors import InputError

    out = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--instruction expects DATASET=TEXT, got {item!r}")
        out[name.strip()] = text
    return out


def run_mine(args: argparse.Namespace) -> int:
    import json
    import logging
    import random
    from dataclasses import asdict, fields
    from pathlib import Path

    from ..files import atomic_dir, check_output, write_json_atomic
    from .keys import read_mapping
    from .mining import describe, mine_pair_data
    from .pair_files import write_pair_folder
    from .scorer import check_scorer, load_scorer

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    given = {f.name: getattr(args, f.name) for f in fields(MiningSettings) if hasattr(args, f.name)}
    settings = read_mapping(MiningSettings, given, "")
    check_scorer(settings.mine_with, "MODEL")
    out = Path(args.out)
    check_output(out, args.overwrite)
    data = _read_data(args.data, args.datasets, _instructions(args.instruction))

    import torch

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    model = load_scorer(settings.mine_with, args.device)
    mined, reports = mine_pair_data(data, model, settings)
    summary = {"model": settings.mine_with, "data": str(args.data), "settings": asdict(settings), "seed": args.seed,
               "datasets": {name: asdict(report) for name, report in reports.items()},
               "emptied": [name for name in reports if name not in mined.names]}
    with atomic_dir(out, args.overwrite) as tmp:
        written = write_pair_folder(mined, tmp, args.format)
        write_json_atomic(tmp / "mine_summary.json", summary)
    for name, report in reports.items():
        print(f"{name}: {describe(report)}")
    print(f"wrote {', '.join(str(out / p.name) for p in written)} and {out / 'mine_summary.json'}")
    if summary["emptied"]:
        print(f"no rows kept (not written): {json.dumps(summary['emptied'])}")
    return 0
