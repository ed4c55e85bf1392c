"""Model card text: how to load the model in each save format (ST, LlamaIndex, LangChain), and the citation."""

from __future__ import annotations

import re
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
            "LangChain (`pip install langchain-huggingface sentence-transformers`):",
            "",
            "```python",
            "from langchain_huggingface import HuggingFaceEmbeddings",
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
        "trust_remote_code=True)`; LangChain: `HuggingFaceEmbeddings(model_name=..., model_kwargs={\"trust_remote_code\": "
        "True})`) with st-llm2vec installed.",
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


def patch_card(text: str, save_format: str, model_id: str | None, prompts: dict[str, str] | None,
               report: dict[str, Any] | None = None, plan: Any = None) -> str:
    """ST's generated card with the loading section for ``save_format`` and, when proven, the stock architecture."""
    if report and report.get("repr"):
        text = _ARCHITECTURE.sub(lambda m: m.group(1) + report["repr"] + m.group(3), text, count=1)
    if save_format == "exact":
        text = _ST_USAGE.sub("", text, count=1)
    section = usage_section(save_format, model_id, prompts, report)
    if plan is not None:
        section += "\n" + precision_section(plan)
    marker = "\n## Model Details"
    if marker in text:
        return text.replace(marker, f"\n{section}{marker}", 1)
    return f"{text.rstrip()}\n\n{section}"
