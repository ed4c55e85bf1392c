"""``st-llm2vec embed MODEL INPUT OUT`` and ``st-llm2vec search OUT QUERY``: the command line of the embed wing.

Options are declared here without importing torch, sentence-transformers, pyarrow or ray, so ``--help``
answers at once; the job (:mod:`st_llm2vec.embed.job`) is imported when the command runs.
"""

from __future__ import annotations

import argparse

INTERRUPTED = "finished shards are kept in OUT; run the same command again to resume"
PRECISIONS = ("float32", "bf16-mixed", "auto", "saved")  # precision.PRECISIONS, repeated: no import for --help


EPILOG_EMBED = (
    "examples:\n"
    "  st-llm2vec embed out/model corpus.jsonl corpus-vectors\n"
    "  st-llm2vec embed sentence-transformers/all-MiniLM-L6-v2 'docs/**/*.parquet' vectors --text-field body\n"
    "  st-llm2vec embed out/model corpus/ vectors --engine ray --workers 4 --gpus-per-worker 1\n"
    "  st-llm2vec search corpus-vectors \"how do I reset my password\" -k 5\n\n"
    "OUT gets part-NNNNN.parquet shards (id, text_hash, embedding) and manifest.json. Kill the job at any point\n"
    "and run the same command again: finished shards are kept. --update refreshes OUT after the input changed.")


def add_arguments_embed(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="a Sentence Transformers model dir (st-llm2vec's, either "
                        "format, or any stock one) or a Hugging Face Hub id")
    parser.add_argument("input", metavar="INPUT", help="a .jsonl/.json/.csv/.parquet/.txt file, a folder of them or "
                        "a glob (quoted); .txt: one text a line")
    parser.add_argument("output", metavar="OUT", help="the output folder (created; a rerun resumes it)")
    parser.add_argument("--text-field", default="text", help="the field (column) holding the text (default: text)")
    parser.add_argument("--id-field", default="id", help="the field holding the row id (default: id); rows without "
                        "one get FILE:LINE")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt-name", default=None, help="a prompt of the model by name (e.g. document); "
                        "default: the model's default prompt, if any")
    prompt.add_argument("--prompt", default=None, help="the prompt text itself")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True,
                        help="unit-length vectors, so inner product = cosine (default: on)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default: 32)")
    parser.add_argument("--dim", type=int, default=None, help="keep the first DIM dimensions (Matryoshka "
                        "models; ST's truncate_dim; default: all)")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                        help="float32 (default); bf16-mixed / auto / saved: st-llm2vec's measured bf16 plan (decoder "
                             "models; auto = bf16-mixed where bf16 is native)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: what torch picks)")
    parser.add_argument("--threads", default="auto",
                        help="torch CPU threads in all (the Ray engine splits them over its workers): a number, or "
                             "auto (the cores not busy; default)")
    parser.add_argument("--rows-per-shard", type=int, default=None,
                        help="rows per Parquet shard (default: ~100 MB a shard, at most 100000 rows; ray: and at "
                             "least 4 shards per worker)")
    parser.add_argument("--skip-bad", action="store_true", help="embed the good rows and list the bad ones with "
                        "their reasons in OUT/rejected.jsonl (default: stop at the first, naming it)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace an OUT made by another model, prompt or input")
    mode.add_argument("--update", action="store_true", help="after the input changed (same model and prompt): embed "
                      "only new and changed rows, drop rows gone, keep the rest as they are")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local (default): in this process; ray: Ray Data actors (pip install -e \".[ray]\")")
    parser.add_argument("--workers", type=int, default=1, help="ray: actors, each loading the model once (default: 1)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0, help="ray: GPUs per actor (default: 0)")
    parser.add_argument("--ray-address", default=None, help="ray: an existing cluster (ray://host:10001 or auto); "
                        "default: a local Ray started for the job")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_embed(args: argparse.Namespace) -> int:
    from .job import EmbedConfig, embed

    threads = args.threads if args.threads == "auto" else _int(args.threads, "--threads")
    config = EmbedConfig(
        model=args.model, input=args.input, output=args.output, text_field=args.text_field, id_field=args.id_field,
        prompt_name=args.prompt_name, prompt=args.prompt, normalize=args.normalize, batch_size=args.batch_size,
        dim=args.dim, precision=args.precision, device=args.device, threads=threads,
        rows_per_shard=args.rows_per_shard, skip_bad=args.skip_bad, overwrite=args.overwrite, update=args.update,
        engine=args.engine, workers=args.workers, gpus_per_worker=args.gpus_per_worker, ray_address=args.ray_address,
        progress=not args.no_progress)
    print(embed(config).summary())
    return 0


def add_arguments_search(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUT", help="a folder written by st-llm2vec embed")
    parser.add_argument("query", metavar="QUERY", help="the text to search for")
    parser.add_argument("-k", type=int, default=10, help="how many hits (default: 10)")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt-name", default=None, help="a prompt of the model by name (default: its 'query' "
                        "prompt, if it has one)")
    prompt.add_argument("--prompt", default=None, help="the prompt text itself ('' for none)")
    parser.add_argument("--device", default=None, help="cpu, cuda, … (default: what torch picks)")
    parser.add_argument("--threads", default="auto", help="torch CPU threads: a number or auto (default)")


def run_search(args: argparse.Namespace) -> int:
    from ..runtime import choose_threads
    from .search import describe, search

    threads = choose_threads(args.threads if args.threads == "auto" else _int(args.threads, "--threads"))
    result = search(args.output, args.query, args.k, prompt_name=args.prompt_name, prompt=args.prompt,
                    device=args.device, threads=threads)
    print(describe(result, args.output))
    return 0


def _int(value: str, name: str) -> int:
    from ..errors import InputError

    try:
        return int(value)
    except ValueError:
        raise InputError(f"{name} must be a number or auto, got {value!r}") from None
