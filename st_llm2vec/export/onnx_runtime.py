"""An exported ONNX graph run inside the stock sentence-transformers pipeline: the graph stands in for the HF
backbone of the dir's stock ``Transformer`` module (tokenizer, WordWeights, Pooling and prompts stay the dir's
own), in ONNX Runtime. The export's proof and int8 choice measure through it; :func:`load_onnx` serves with it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import MissingExtraError, MissingFileError
from ..proof import row_cosines

ONNX_DIR, ONNX_FILE, ONNX_DATA = "onnx", "model.onnx", "model.onnx_data"
_INSTALL_HINT = 'pip install -e ".[onnx]"  (from the st-llm2vec clone: onnx, onnxruntime, onnxscript; changes no other package)'


def require_onnx() -> tuple[Any, Any]:
    """``(onnx, onnxruntime)``, or an :class:`ImportError` that says how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise MissingExtraError(f"ONNX export needs the onnx extra ({exc.name or exc} is missing): {_INSTALL_HINT}") from exc
    return onnx, onnxruntime


class OnnxBackbone(torch.nn.Module):
    """Stands in for the HF backbone of a stock ``Transformer`` module: runs the ONNX graph in ONNX Runtime."""

    def __init__(self, path: str | os.PathLike, config: Any = None, *, threads: int | None = None,
                 providers: list[str] | None = None):
        super().__init__()
        _, ort = require_onnx()
        self.config = config  # the stock module reads its backbone's config (model_type, hidden size)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.path = str(path)
        self.session = ort.InferenceSession(self.path, options, providers=providers or ["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        from transformers.modeling_outputs import BaseModelOutput

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        feeds = {"input_ids": input_ids.cpu().numpy().astype(np.int64),
                 "attention_mask": attention_mask.cpu().numpy().astype(np.int64)}
        hidden = self.session.run(None, {k: v for k, v in feeds.items() if k in self.input_names})[0]
        return BaseModelOutput(last_hidden_state=torch.from_numpy(hidden))


def _swap_in(model: Any, backbone: OnnxBackbone) -> None:
    module = model[0]
    module.model = backbone
    module.backend = "onnx"  # never flatten/unpad: the graph takes padded batches
    module.unpad_inputs = False


def load_onnx(path: str | os.PathLike, *, threads: int | None = None, providers: list[str] | None = None,
              file_name: str = ONNX_FILE) -> Any:
    """A dir written by ``st-llm2vec export`` as a ``SentenceTransformer`` whose backbone runs in ONNX Runtime.

    The modules are the dir's stock ones (tokenizer, WordWeights, Pooling, prompts); only the backbone
    is the exported graph. For use until stock ``backend="onnx"`` works on transformers 5
    (:data:`st_llm2vec.export.onnx.OPTIMUM_NOTE`). The torch weights are read once (stock loading) and then dropped.
    """
    from sentence_transformers import SentenceTransformer

    path = Path(path)
    graph = path / ONNX_DIR / file_name
    if not graph.is_file():
        raise MissingFileError(f"{graph} not found: export the model first (st-llm2vec export {path} OUT)")
    model = SentenceTransformer(str(path), device="cpu", model_kwargs={"dtype": torch.float32})
    _swap_in(model, OnnxBackbone(graph, model[0].model.config, threads=threads, providers=providers))
    return model


def prompt_names(model: Any) -> list[str]:
    """The names of the prompts ``model`` carries (empty ones left out), in order."""
    return sorted(name for name, text in (model.prompts or {}).items() if text)


def pipeline_cosines(model: Any, backbone: OnnxBackbone, texts: list[str]) -> tuple[dict[str, np.ndarray], bool]:
    """Per input kind (documents, each stored prompt): the cosines between the stock pipeline's embeddings
    with ``backbone`` and with the model's own torch backbone; and whether all of the former are finite."""
    runs = [("documents", {})] + [(f"prompt {n!r}", {"prompt_name": n}) for n in prompt_names(model)]
    reference = {key: model.encode(texts, batch_size=8, convert_to_numpy=True, **kw) for key, kw in runs}
    original = model[0].model, model[0].backend, model[0].unpad_inputs
    _swap_in(model, backbone)
    try:
        ours = {key: model.encode(texts, batch_size=8, convert_to_numpy=True, **kw) for key, kw in runs}
    finally:
        model[0].model, model[0].backend = original[:2]
        model[0].unpad_inputs = original[2]
    cosines, finite = {}, True
    for key in reference:
        finite = finite and bool(np.isfinite(ours[key]).all())
        cosines[key] = row_cosines(reference[key], ours[key])
    return cosines, finite
