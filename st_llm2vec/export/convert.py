"""``st-llm2vec convert``: an HF causal LM or an llm2vec checkpoint stack to a standalone ST model dir.

The output is an ordinary Sentence-Transformers directory: merged safetensors weights with
``is_causal: false`` in config.json, our two module configs, prompts in
config_sentence_transformers.json and a model card saying how it was made. It is built in a temp
dir next to OUTPUT and renamed into place, so a failed or interrupted convert leaves nothing behind
and ``--overwrite`` replaces an old OUTPUT only once the new one is complete.

Qwen2: llm2vec 0.2.3 (with the transformers it pins) leaves Qwen2 causal, so its Qwen2 embeddings
are those of a causal model. Ours are bidirectional; ``causal=True`` (``--causal``) keeps the model
causal and reproduces a causal llm2vec Qwen2 checkpoint's embeddings.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

from ..cards import usage_section
from ..errors import InputError, OutputExistsError
from ..files import atomic_dir, check_output, normalize_permissions
from ..pooling_modes import ALIASES, POOLING_MODES
from ..instructions import EXACT, FORMATS, PORTABLE
from ..portable import PortableFormatError
from .push import check_push_target, push_dir

if TYPE_CHECKING:  # the command's options load without torch / sentence-transformers; its work imports them
    from sentence_transformers import SentenceTransformer

    from ..llm2vec_checkpoints import CheckpointStack

logger = logging.getLogger(__name__)

# The retrieval instruction McGill-NLP's llm2vec model cards use for queries; documents get none.
DEFAULT_PROMPTS: dict[str, str] = {
    "query": "Given a web search query, retrieve relevant passages that answer the query:",
    "document": "",
}
DTYPES = ("auto", "float32", "float16", "bfloat16")
CARD_TAGS = ["llm2vec", "st-llm2vec"]


# -- convert --------------------------------------------------------------------------------------


def convert(
    source: str | os.PathLike,
    output: str | os.PathLike,
    adapters: Sequence[str | os.PathLike] = (),
    pooling_mode: str | None = None,
    overwrite: bool = False,
    keep_adapters: bool = False,
    dtype: str | None = None,
    attn_implementation: str | None = None,
    allow_pickle: bool = False,
    push_to_hub: str | None = None,
    prompts: Mapping[str, str] | None = None,
    causal: bool = False,
    private: bool | None = None,
    format: str = "auto",
) -> Path:
    """Convert SOURCE (+ LoRA ``adapters``, merged in order) into a standalone ST model dir at OUTPUT.

    SOURCE is a causal-LM dir / Hub id, or an llm2vec adapter whose base is followed. Settings come from
    the last ``llm2vec_config.json`` found (llm2vec's defaults otherwise); ``pooling_mode`` overrides
    its pooling. ``prompts`` (name -> instruction) default to a retrieval ``query`` instruction; pass
    ``{}`` for none. ``keep_adapters`` also copies the source adapters into ``OUTPUT/adapters/``
    (the model itself is always merged, so it loads without them). ``causal=True`` keeps attention
    causal (llm2vec's Qwen2 behaviour). ``push_to_hub`` uploads the result to that repo. Returns OUTPUT.

    ``format``: ``"portable"`` writes stock sentence-transformers modules (loads anywhere without
    st_llm2vec; documents must match llm2vec's embeddings within 1e-4, queries pool the instruction the
    stock way — the difference is measured and written into the model card) or refuses;
    ``"exact"`` keeps llm2vec's exact semantics with our module classes; ``"auto"`` (default): portable
    when possible, else exact, saying why. What was written is in ``convert.last_report``.
    """
    from ..build import from_llm, model_kwargs
    from ..adapter_merge import merge_adapters
    from ..llm2vec_checkpoints import resolve_stack
    from ..portable import switch_if_faithful

    if format not in FORMATS:
        raise InputError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    output = Path(output).expanduser().absolute()
    check_output(output, overwrite)
    if push_to_hub:
        check_push_target(push_to_hub)
    stack = resolve_stack(source, tuple(adapters), pooling_mode, allow_pickle=allow_pickle)
    _check_not_an_input(output, stack)
    settings = stack.settings
    prompts = dict(DEFAULT_PROMPTS if prompts is None else prompts)
    loader_kwargs = model_kwargs(dtype, attn_implementation)
    if not allow_pickle:
        loader_kwargs["use_safetensors"] = True
    logger.info("Loading base %s", stack.base)
    model = from_llm(
        stack.base,
        settings.pooling_mode,
        skip_instruction=settings.skip_instruction,
        max_seq_length=settings.max_length,
        doc_max_length=settings.doc_max_length,
        prompts=prompts,
        bidirectional=not causal,
        format=EXACT,
        **loader_kwargs,
    )
    merge_adapters(model, stack.adapters)
    comparison, reason = (None, "--format exact") if format == EXACT else switch_if_faithful(model)
    if reason and format == PORTABLE:
        raise PortableFormatError(f"Cannot convert to the portable format: {reason}. Use --format exact (or auto).")
    model.portable_required = format == PORTABLE
    _fill_card_data(model, stack, push_to_hub)
    with atomic_dir(output, overwrite) as tmp:
        model.save(str(tmp), create_model_card=False)
        saved = dict(model.save_report or {}, comparison=comparison)
        saved["reason"] = saved.get("reason") or reason
        if keep_adapters:
            _copy_adapters(stack, tmp / "adapters")
        card = _model_card(model, stack, str(source), dtype, causal, keep_adapters, tmp, saved)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        normalize_permissions(tmp)
    convert.last_report = saved
    logger.info("Saved %s (%s format)", output, saved["format"])
    if push_to_hub:
        push_dir(output, push_to_hub, private=private, model=model)
    return output


def _check_not_an_input(output: Path, stack: CheckpointStack) -> None:
    """Never let --overwrite delete the checkpoint being converted (or a folder holding it)."""
    resolved = output.resolve()
    for path in stack.local_paths:
        if resolved == path or resolved in path.parents:
            raise OutputExistsError(f"OUTPUT {output} is (or contains) the input {path}; choose another OUTPUT.")


def _copy_adapters(stack: CheckpointStack, target: Path) -> None:
    """Copy each source adapter (config, weights, llm2vec_config.json) to ``target/NN_name``."""
    for index, adapter in enumerate(stack.adapters, start=1):
        folder = target / f"{index:02d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', adapter.path.name)}"
        folder.mkdir(parents=True)
        for name in ("adapter_config.json", adapter.weights.name, "llm2vec_config.json"):
            if (adapter.path / name).is_file():
                shutil.copy2(adapter.path / name, folder / name)


# -- model card -------------------------------------------------------------------------------------


def _display(ref: str) -> str:
    """A local path relative to the cwd when below it (no home paths on a public card); Hub ids as-is."""
    path = Path(ref)
    if not path.is_absolute():
        return ref
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(Path(*path.parts[-2:]))


def _fill_card_data(model: SentenceTransformer, stack: CheckpointStack, repo_id: str | None) -> None:
    """ST's card data: our tags, the Hub base model (no Hub lookups), model id and name."""
    card = model.model_card_data
    card.local_files_only = True  # never query the Hub while writing a card
    card.add_tags(CARD_TAGS)
    if not Path(stack.base).exists():
        card.base_model = stack.base
    if repo_id:
        card.set_model_id(repo_id)
    card.model_name = f"LLM2Vec {_base_title(stack)} ({stack.settings.pooling_mode} pooling)"


def _base_title(stack: CheckpointStack) -> str:
    """The base's original name (config.json ``_name_or_path``, e.g. a Hub id) or else its folder name."""
    from ..build import original_name_or_path

    name = original_name_or_path(stack.base) or stack.base
    return name if not Path(name).is_absolute() else Path(name).name


def _model_card(
    model: SentenceTransformer,
    stack: CheckpointStack,
    source: str,
    dtype: str | None,
    causal: bool,
    keep_adapters: bool,
    directory: Path,
    saved: dict[str, Any],
) -> str:
    """ST's generated model card with a "How this model was made" section inserted before its details."""
    from sentence_transformers.base.model_card import generate_model_card

    model.model_card_data.save_dir = str(directory)
    card = generate_model_card(model)
    section = _provenance_section(model, stack, source, dtype, causal, keep_adapters, saved)
    marker = "\n## Model Details"
    if marker in card:
        return card.replace(marker, f"\n{section}{marker}", 1)
    return f"{card.rstrip()}\n\n{section}"


def _provenance_section(
    model: SentenceTransformer, stack: CheckpointStack, source: str, dtype: str | None, causal: bool, keep_adapters: bool,
    saved: dict[str, Any],
) -> str:
    from .. import __version__

    settings = stack.settings
    encoder = model[0]
    adapters = "".join(f"\n   {i}. `{_display(a.name)}`" for i, a in enumerate(stack.adapters, start=1)) or " none"
    pooling_from = (
        "`--pooling-mode`" if settings.pooling_overridden
        else f"`{_display(settings.config_file)}`" if settings.config_file else "llm2vec's default"
    )
    settings_from = f"`{_display(settings.config_file)}`" if settings.config_file else "llm2vec's defaults (no llm2vec_config.json)"
    attention = (
        "causal (`--causal`, as llm2vec 0.2.3 leaves Qwen2)" if causal else "bidirectional (`is_causal: false`)"
    )
    prompts = "".join(f"\n   - `{name}`: {text!r}" for name, text in model.prompts.items()) or " none"
    lines = [
        "## How this model was made",
        "",
        f"Converted from an llm2vec checkpoint with st-llm2vec {__version__} "
        f"(`st-llm2vec convert`); it reproduces llm2vec 0.2.3 `encode()` embeddings.",
        "",
        f"- **Source:** `{_display(source)}`",
        f"- **Base model:** `{_display(stack.base_name)}` ({_base_title(stack)})",
        f"- **LoRA adapters merged, in order:**{adapters}",
        f"- **Pooling:** `{settings.pooling_mode}` (from {pooling_from}), skip_instruction={settings.skip_instruction}",
        f"- **llm2vec settings** (from {settings_from}): max_length={settings.max_length}, "
        f"doc_max_length={settings.doc_max_length}",
        f"- **Attention:** {attention}",
        f"- **Instruction wrapper:** {'`' + repr(encoder.chat_template) + '`' if encoder.chat_template else 'none'}; "
        f"**text suffix:** {repr(encoder.text_suffix) if encoder.text_suffix else 'none'}",
        f"- **dtype:** {dtype or 'as stored'}; weights merged into one safetensors checkpoint"
        + ("; source adapters kept in `adapters/`" if keep_adapters else ""),
        f"- **Format:** {format_line(saved)}",
        f"- **Prompts:**{prompts}",
        "",
        usage_section(saved["format"], model.model_card_data.model_id, model.prompts, saved.get("proof")),
    ]
    return "\n".join(lines)


def format_line(saved: dict[str, Any]) -> str:
    """One line on the format written and how it compares with llm2vec (for the card and the CLI)."""
    if saved["format"] != PORTABLE:
        return f"exact (llm2vec's semantics, needs st-llm2vec to load): {saved.get('reason') or 'requested'}"
    comparison = saved.get("comparison") or {}
    parts = [f"portable (stock sentence-transformers modules); documents vs llm2vec max relative difference "
             f"{comparison.get('documents_max_difference', float('nan')):.1e}"]
    for key, value in comparison.items():
        if key.startswith("query_min_cosine"):
            name = key[len("query_min_cosine"):]
            parts.append(f"queries{name} vs llm2vec: min cosine {value:.4f}, "
                         f"mean {comparison['query_mean_cosine' + name]:.4f}")
    return "; ".join(parts)


# -- CLI ------------------------------------------------------------------------------------------


def _prompt(value: str) -> tuple[str, str]:
    name, sep, text = value.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=TEXT (e.g. query='Retrieve relevant passages:'), got {value!r}")
    return name, text


def add_arguments_convert(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE", help="base model dir / Hub id, or an llm2vec LoRA adapter dir")
    parser.add_argument("output", metavar="OUTPUT", help="directory to write the Sentence-Transformers model to")
    parser.add_argument("--adapter", dest="adapters", action="append", default=[], metavar="DIR",
                        help="LoRA adapter to merge; repeat, merged in the order given")
    parser.add_argument("--pooling-mode", choices=POOLING_MODES + tuple(ALIASES), help="override llm2vec_config.json's pooling_mode")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT (only once the new one is complete)")
    parser.add_argument("--keep-adapters", action="store_true", help="also copy the source adapters into OUTPUT/adapters/")
    parser.add_argument("--dtype", choices=DTYPES, help="load and save the weights in this dtype")
    parser.add_argument("--attn-implementation", help="e.g. eager, sdpa, flash_attention_2")
    parser.add_argument("--allow-pickle", action="store_true", help="allow .bin/.pt weights (can run code; trusted sources only)")
    parser.add_argument("--format", choices=FORMATS, default="auto",
                        help="portable: stock ST modules, loads anywhere (refused if impossible); exact: llm2vec's "
                             "exact semantics, needs st-llm2vec; auto (default): portable when possible")
    parser.add_argument("--causal", action="store_true", help="keep causal attention (reproduces llm2vec's Qwen2 models)")
    parser.add_argument("--prompt", dest="prompts", action="append", type=_prompt, default=None, metavar="NAME=TEXT",
                        help="named instruction (repeat); replaces the default 'query' retrieval instruction")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the result to this Hub repo")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")


# what an interrupted convert leaves (the CLI says it): built in a temp dir, moved into place only when complete
INTERRUPTED = "nothing was written"


def run_convert(args: argparse.Namespace) -> int:
    # the options' dests are convert()'s parameter names
    kwargs = {name: getattr(args, name) for name in inspect.signature(convert).parameters if hasattr(args, name)}
    kwargs.update(prompts=dict(args.prompts) if args.prompts is not None else None, private=args.private or None)
    output = convert(**kwargs)
    print(f"Saved Sentence-Transformers model to {output}")
    print(f"Format: {format_line(convert.last_report)}")
    if convert.last_report.get("proof"):
        from ..portable_save import describe_proof

        print(f"Proof: {describe_proof(convert.last_report['proof'])}")
    if args.push_to_hub:
        print(f"Pushed to https://huggingface.co/{args.push_to_hub}")
    return 0
