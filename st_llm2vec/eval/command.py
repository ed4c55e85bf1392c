"""``st-llm2vec eval MODEL [MODEL ...] --tasks TASK [TASK ...]``: models side by side on mteb tasks and on your own
data, with llm2vec's instructions, one table out (see :mod:`st_llm2vec.eval.runner`).

Options are declared here without importing torch, transformers, sentence-transformers or mteb, so ``--help``
answers at once; the runner is imported when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..precision import PRECISIONS
from .instructions import MODES
from .results import DEFAULT_OUTPUT

INTERRUPTED = "finished tasks are kept in the output dir; rerun the same command to resume"
SHARED = "sts12, sts13, sick-trial, wang-dev, wang-dev-retrieval"


EPILOG_EVAL = (
    "examples:\n"
    "  st-llm2vec eval HuggingFaceTB/SmolLM2-135M-Instruct out/model sentence-transformers/all-MiniLM-L6-v2 --tasks dev\n"
    "  st-llm2vec eval out/model --tasks STS12 SciFact my-pairs.tsv my-beir-dir/ reranking.jsonl\n\n"
    "Results, embeddings and the summary (summary.md/.csv/.json/.png) go to --output; a rerun skips every task\n"
    "already evaluated (an interrupted run resumes) and encodes no text twice.")


def add_arguments_eval(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL",
                        help="a Sentence Transformers model dir (st-llm2vec's portable or exact format, or any stock "
                             "one), a Hugging Face Hub id, or a decoder LLM checkpoint (evaluated as it is: causal "
                             "attention, mean pooling; labelled '(causal LM)')")
    parser.add_argument("--tasks", nargs="+", required=True, metavar="TASK",
                        help="mteb task or benchmark names (STS12, SciFact, 'MTEB(eng, v2)'); the shared dev tasks "
                             f"({SHARED}; 'dev' for all of them: read from ../shared/data or $ST_LLM2VEC_DATA); or "
                             "local files: scored pairs (.tsv/.csv/.jsonl: sentence1, sentence2, score), a BEIR "
                             "retrieval dir (corpus.jsonl, queries.jsonl, qrels/test.tsv), reranking samples "
                             "(.jsonl: query, positive, negative); KIND:PATH (sts:, retrieval:, reranking:) forces a kind")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, metavar="DIR",
                        help=f"where results, embeddings and the summary go (default: {DEFAULT_OUTPUT})")
    parser.add_argument("--instructions", choices=tuple(MODES), default="llm2vec",
                        help="llm2vec (default): llm2vec's per-task instruction on the queries (every text of "
                             "symmetric tasks such as STS), the model's own prompts where it has none; model: only "
                             "the prompts the model carries; none: no instruction at all")
    parser.add_argument("--instruction", action="append", default=[], metavar="TASK=TEXT",
                        help="the instruction of one task (repeatable; TEXT empty: none for that task)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per encode batch (default: 32)")
    parser.add_argument("--max-seq-length", type=int, default=None,
                        help="token limit of every input (default: each model's own)")
    parser.add_argument("--max-batch-tokens", type=int, default=None,
                        help="st-llm2vec models: token budget of one forward pass (long texts run in smaller "
                             "batches; default: none)")
    parser.add_argument("--dim", type=int, default=None, metavar="D",
                        help="cut every embedding to its first D dimensions (a Matryoshka model's truncate_dim; "
                             "results and cached embeddings are kept apart per D; default: all)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: what torch picks)")
    parser.add_argument("--dtype", default=None, choices=("auto", "float32", "bfloat16", "float16"),
                        help="weights dtype (default: each model's loader default)")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                        help="st-llm2vec models and decoder LLMs: float32 (default); bf16-mixed: the measured "
                             "precision plan (bf16 where it keeps every calibration vector at cosine >= 0.99 to "
                             "float32, refused otherwise; measured at each load, which encodes the calibration "
                             "texts several times); auto: bf16-mixed where the CPU or GPU computes bf16 "
                             "natively, else float32; saved: the plan the model dir carries. Stock models stay float32 "
                             "(auto) or are refused. Recorded with the results; embeddings of another precision are "
                             "never reused")
    parser.add_argument("--threads", default="auto",
                        help="torch CPU threads: a number, or auto (the cores not busy; default)")
    parser.add_argument("--data-dir", default=None,
                        help="the shared dev data folder (default: $ST_LLM2VEC_DATA or ../shared/data)")
    parser.add_argument("--overwrite", action="store_true",
                        help="evaluate every task again, replacing cached results (embeddings stay cached)")
    parser.add_argument("--no-chart", action="store_true", help="do not draw summary.png")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def check_options(args: argparse.Namespace) -> None:
    """Every option and model argument that can be checked without torch or mteb, checked before they are imported
    (seconds): a typo is named at once, and a model path that does not exist before any task data is looked for."""
    from ..errors import InputError
    from ..runtime import parse_threads
    from .models import check_spec

    parse_threads(args.threads)
    for name in ("batch_size", "max_seq_length", "max_batch_tokens", "dim"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
    if args.precision != "float32" and args.dtype not in (None, "auto", "float32"):
        raise InputError(f"--precision {args.precision} plans bf16 over float32 weights; it cannot be combined with "
                         f"--dtype {args.dtype}: drop one of the two")
    for spec in args.models:
        check_spec(spec)


def run_eval(args: argparse.Namespace) -> int:
    import logging
    import warnings

    from ..runtime import choose_threads
    from . import require_mteb

    check_options(args)
    require_mteb()
    import torch
    from datasets.utils import logging as datasets_logging

    from .instructions import parse_overrides
    from .report import format_table
    from .results import EvalConfig, LoadSettings
    from .runner import evaluate_models

    torch.set_num_threads(choose_threads(args.threads))
    warnings.filterwarnings("ignore", category=FutureWarning)  # mteb calls ST methods ST has renamed
    logging.getLogger("mteb").setLevel(logging.ERROR)  # per-task info and superseded-task notes
    # peft imports bitsandbytes, which warns about its optional 4-bit CPU kernels: eval loads no 4-bit model
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    datasets_logging.disable_progress_bar()  # mteb's dataset.map calls: not our progress
    if args.no_progress:  # the weight-loading bars of transformers (and huggingface_hub) too
        from huggingface_hub.utils import disable_progress_bars
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        disable_progress_bars()
    config = EvalConfig(
        output_dir=Path(args.output),
        instructions=args.instructions,
        overrides=parse_overrides(args.instruction),
        batch_size=args.batch_size,
        load=LoadSettings(device=args.device, dtype=args.dtype, max_seq_length=args.max_seq_length,
                          max_batch_tokens=args.max_batch_tokens, truncate_dim=args.dim,
                          precision=args.precision),
        data_dir=args.data_dir,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        chart=not args.no_chart,
    )
    run = evaluate_models(args.models, args.tasks, config)
    print(format_table(run))
    for note in run.notes:
        print(f"note: {note}")
    cached = sum(s.cached for s in run.scores)
    print(f"\n{len(run.scores)} results ({cached} from earlier runs); texts encoded: "
          + ", ".join(f"{m} {run.encoded.get(m, 0)}" for m in run.models)
          + f"\nwrote {', '.join(str(p) for p in run.files.values())}; mteb's result files under {args.output}/results")
    return 0
