"""Model card text: how to load the model in each save format (ST, LlamaIndex, LangChain), how the model was made
(from the recipe the training stages record in the saved dir, ``st_llm2vec_recipe.json``), and the citation.

Only clients that work with this project's stack are recommended: LangChain's ``HuggingFaceEmbeddings`` from
``langchain-community`` (every ``langchain-huggingface`` release pins ``huggingface_hub<2``; see the ``clients``
extra in pyproject.toml, tested by tests/test_clients.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# The LLM2Vec paper, as every card and the MNTP loss cite it.
LLM2VEC_CITATION = """@article{behnamghader2024llm2vec,
    title={{LLM2Vec}: Large Language Models Are Secretly Powerful Text Encoders},
    author={BehnamGhader, Parishad and Adlakha, Vaibhav and Mosbach, Marius and Bahdanau, Dzmitry and Chapados, Nicolas and Reddy, Siva},
    journal={arXiv preprint arXiv:2404.05961},
    year={2024},
    url={https://arxiv.org/abs/2404.05961}
}"""

PORTABLE_NOTE = (
    "This directory holds only stock sentence-transformers modules (saved by st-llm2vec in its *portable* "
    "format): it loads with `SentenceTransformer(path)`, LlamaIndex, LangChain and mteb, with no "
    "`trust_remote_code` and without st-llm2vec installed. Bidirectional attention is switched on by "
    "`is_causal: false` in config.json (transformers >= 5.2)."
)


def usage_section(save_format: str, model_id: str | None, prompts: dict[str, str] | None, report: dict[str, Any] | None = None) -> str:
    """A "How to load" section for a model saved in ``save_format`` ("portable" or "exact")."""
    ref = model_id or "path/to/this/model"
    query = next((name for name, text in (prompts or {}).items() if text), None)
    prompt_arg = f', prompt_name="{query}"' if query else ""
    if save_format == "portable":
        from .portable_save import describe_proof

        proof = f"\n\nProven when saved: {describe_proof(report)}." if report else ""
        return "\n".join([
            "## How to load this model",
            "",
            PORTABLE_NOTE + proof,
            "",
            "```python",
            "from sentence_transformers import SentenceTransformer",
            "",
            f"model = SentenceTransformer({ref!r})",
            f"query_embeddings = model.encode(queries{prompt_arg})",
            "document_embeddings = model.encode(documents)",
            "```",
            "",
            "LlamaIndex (`pip install llama-index-embeddings-huggingface`):",
            "",
            "```python",
            "from llama_index.embeddings.huggingface import HuggingFaceEmbedding",
            "",
            f"embed_model = HuggingFaceEmbedding(model_name={ref!r}, device=\"cpu\")",
            "```",
            "",
            "LangChain (`pip install langchain-community sentence-transformers`):",
            "",
            "```python",
            "from langchain_community.embeddings import HuggingFaceEmbeddings",
            "",
            f"embeddings = HuggingFaceEmbeddings(model_name={ref!r})",
            "```",
            "",
            "Instructions are sentence-transformers prompts: `prompt + text` is encoded (the stored prompts end "
            "with a space, so the input reads as llm2vec's `instruction + \" \" + text`); with mean pooling "
            "the prompt's tokens are left out of the mean (`include_prompt: false`), as llm2vec and mteb's "
            "llm2vec wrapper pool only the text. Serving engines that read only `1_Pooling/config.json` "
            "(text-embeddings-inference) pool the prompt's tokens and, for tokenizers with a BOS token, the BOS too.",
            "",
        ])
    return "\n".join([
        "## How to load this model",
        "",
        "Saved by st-llm2vec in its *exact* format (llm2vec's instruction semantics: only the text's own tokens are "
        "pooled), which uses st-llm2vec's two module classes. Install the package (from a clone of its repository: "
        "`pip install -e .`), then "
        "either import it (that registers the two classes) or pass `trust_remote_code=True` (the classes are "
        "imported from the installed package; no code is read from this directory):",
        "",
        "```python",
        "import st_llm2vec  # noqa: F401",
        "from sentence_transformers import SentenceTransformer",
        "",
        f"model = SentenceTransformer({ref!r})  # or SentenceTransformer(..., trust_remote_code=True)",
        f"query_embeddings = model.encode(queries{prompt_arg})  # llm2vec's [instruction, text]",
        "document_embeddings = model.encode(documents)",
        "```",
        "",
        "LlamaIndex / LangChain: pass `trust_remote_code=True` (LlamaIndex: `HuggingFaceEmbedding(model_name=..., "
        "trust_remote_code=True)`; LangChain, from `langchain-community`: `HuggingFaceEmbeddings(model_name=..., "
        "model_kwargs={\"trust_remote_code\": True})`) with st-llm2vec installed.",
        "",
    ])


_ARCHITECTURE = re.compile(r"(### Full Model Architecture\s*\n\s*```\n)(.*?)(\n```)", re.S)
# ST's generated card says how to install and load; ours replaces that block for the exact format.
_ST_USAGE = re.compile(r"### Direct Usage \(Sentence Transformers\).*?(?=\n### |\n## )", re.S)


def precision_section(plan: Any) -> str:
    """What a saved precision plan is, and who applies it."""
    return "\n".join([
        "## Precision plan", "",
        f"Measured by st-llm2vec when saved: {plan.describe()}. Stock sentence-transformers cannot express per-layer "
        "precision and loads this model in float32 (exact); `st_llm2vec.load_model(path, precision=\"saved\")` "
        f"applies the plan again (`{'st_llm2vec_precision.json'}`) and re-measures it on the machine it runs on.", "",
    ])


# --------------------------------------------------------------------------- the recipe

RECIPE_FILE = "st_llm2vec_recipe.json"


def read_recipe(directory: str | Path) -> dict[str, Any] | None:
    """The recipe a saved st_llm2vec dir records (None: none, or not readable as one)."""
    path = Path(directory) / RECIPE_FILE
    try:
        recipe = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(recipe, dict) or not isinstance(recipe.get("stages"), list):
        return None
    return recipe


def extend_recipe(start: str, stage: Mapping[str, Any], label: str | None = None) -> dict[str, Any]:
    """The recipe of a model trained by ``stage`` from ``start`` (a model id or dir as the user gave it): a dir
    that records its own recipe passes on its start model and stages (so a SimCSE model trained from an MNTP
    output names the LLM the MNTP run started from, never the MNTP dir); ``label`` names the start model instead."""
    previous = read_recipe(start) if Path(start).is_dir() else None
    if previous is not None:
        return {"start_model": previous.get("start_model"), "stages": [*previous["stages"], dict(stage)]}
    return {"start_model": label or _display_path(start), "stages": [dict(stage)]}


def _display_path(ref: str) -> str:
    """A path under the home directory as ``~/...`` (no user names on a card); anything else as given."""
    try:
        return "~/" + str(Path(ref).expanduser().resolve().relative_to(Path.home().resolve()))
    except ValueError:
        return ref


def write_recipe(directory: str | Path, recipe: Mapping[str, Any], save_report: Mapping[str, Any] | None) -> None:
    """``st_llm2vec_recipe.json``: the recipe, and how the dir was saved (its format and proof figures)."""
    record = {**recipe, "saved": _saved(save_report)}
    (Path(directory) / RECIPE_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")


def _saved(save_report: Mapping[str, Any] | None) -> dict[str, Any]:
    if not save_report:
        return {}
    if save_report.get("proof"):
        from .portable_save import describe_proof

        return {"format": save_report.get("format"), "proof": describe_proof(save_report["proof"])}
    return {"format": save_report.get("format"), "reason": save_report.get("reason")}


# the figures of a stage the card names, in this order (the rest stays in the recipe file)
_STAGE_FIGURES = (("steps", "steps"), ("batch_size", "batch size"), ("learning_rate", "learning rate"),
                  ("lora_r", "LoRA r"), ("max_seq_length", "max tokens"), ("simcse_dropout", "dropout"),
                  ("mlm_probability", "masked share"))


def recipe_section(recipe: Mapping[str, Any]) -> str:
    """"How this model was made": the start model and each stage with its data and key figures, as recorded."""
    lines = ["## How this model was made", "",
             f"Made by st-llm2vec with the [LLM2Vec](https://arxiv.org/abs/2404.05961) recipe from "
             f"`{recipe.get('start_model')}`:", ""]
    for number, stage in enumerate(recipe.get("stages", []), 1):
        figures = ", ".join(f"{label} {stage[key]}" for key, label in _STAGE_FIGURES if stage.get(key) is not None)
        data = f" on {stage['data']}" if stage.get("data") else ""
        lines.append(f"{number}. {stage.get('title') or stage.get('stage')}{data}" + (f" ({figures})" if figures else ""))
    lines += ["", f"The same record, with how the dir was saved (format, proof figures), as JSON: `{RECIPE_FILE}` in this directory.", ""]
    return "\n".join(lines)


# ST's first sentence names the trainer's dataset keys ("trained on the simcse dataset"): not a dataset a reader
# can find. With a recipe, it says where the card tells what the data was instead.
_ST_DATASETS = re.compile(r"(This is a \[sentence-transformers\]\(https://www\.SBERT\.net\) model[^.]*?)"
                          r" on (?:the )?[^.]*? datasets?\.")


def patch_card(text: str, save_format: str, model_id: str | None, prompts: dict[str, str] | None,
               report: dict[str, Any] | None = None, plan: Any = None, recipe: Mapping[str, Any] | None = None) -> str:
    """ST's generated card with the loading section for ``save_format``, how the model was made (``recipe``) and,
    when proven, the stock architecture."""
    if report and report.get("repr"):
        text = _ARCHITECTURE.sub(lambda m: m.group(1) + report["repr"] + m.group(3), text, count=1)
    if save_format == "exact":
        text = _ST_USAGE.sub("", text, count=1)
    section = usage_section(save_format, model_id, prompts, report)
    if recipe:
        text = _ST_DATASETS.sub(lambda m: m.group(1) + " (see *How this model was made* for its training data).",
                                text, count=1)
        section = recipe_section(recipe) + "\n" + section
    if plan is not None:
        section += "\n" + precision_section(plan)
    marker = "\n## Model Details"
    if marker in text:
        return text.replace(marker, f"\n{section}{marker}", 1)
    return f"{text.rstrip()}\n\n{section}"
