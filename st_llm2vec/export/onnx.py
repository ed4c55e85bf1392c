"""``st-llm2vec export``: a portable model dir → the same dir plus a proven ONNX graph (``onnx/model.onnx``).

The graph is the backbone only (``input_ids``, ``attention_mask`` → ``last_hidden_state``); the pooling
stays the dir's stock modules. Two things make it right for an llm2vec model:

- ``position_ids`` are computed inside the graph from the attention mask (``cumsum(mask) - 1``): ST feeds
  only ``input_ids`` and ``attention_mask``, and a graph that takes ``position_ids`` as an input fails in
  ONNX Runtime or, in OpenVINO, silently runs on garbage;
- no causal mask is baked in: the backbone is traced from the dir's own ``config.json`` (``is_causal:
  false``) with a padded batch, so the graph keeps the padding-mask path and is bidirectional.

Every export is proven before it is put in place, through the exported graph itself (ONNX Runtime):
finite outputs; the bidirectionality probe (an early token's state moves when only the last word
changes, as in the torch model); and the minimum cosine between the embeddings of the dir's stock
pipeline running on the graph and on the fp32 torch backbone, over held texts (and every stored
prompt). Below ``min_cosine`` (default 0.99) the export is refused unless forced. The figures go into
the model card and ``onnx/export_report.json``.

Loading (latest releases checked: optimum 2.3.0, optimum-onnx 0.1.0, optimum-intel 2.2.0): stock
sentence-transformers' ``backend="onnx"`` needs Optimum's ``optimum.onnxruntime``; every release of it
(optimum <= 1.27, optimum-onnx <= 0.1.0) caps ``transformers < 4.58`` and fails to import on
transformers 5 (``cannot import name 'is_offline_mode' from 'transformers.utils'``). The dir is laid out the way that backend reads it (``onnx/model.onnx``,
inputs ``input_ids``/``attention_mask``), so it will load with ``SentenceTransformer(path,
backend="onnx")`` once Optimum supports transformers 5; until then :func:`load_onnx` runs it (stock
modules, the graph in ONNX Runtime), or use onnxruntime directly.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError, MissingExtraError, MissingFileError
from ..proof import BIDIRECTIONAL_PROBE, first_token_shift, row_cosines
from .command import (
    DEFAULT_MIN_COSINE,
    HELD_TEXTS,
    OPSET,
    check_proof,
    copy_model_dir,
    finish,
    portable_source,
)

logger = logging.getLogger(__name__)

QUANTIZE = ("int8",)
ONNX_DIR, ONNX_FILE, ONNX_DATA = "onnx", "model.onnx", "model.onnx_data"
# For choosing which MatMuls int8 keeps in fp32; disjoint from HELD_TEXTS, on which the export is proven.
CALIBRATION_TEXTS = [
    "Two dogs are running through a field of grass.",
    "The children are building a sand castle at the beach.",
    "A woman is slicing tomatoes in the kitchen.",
    "Nobody is riding the bicycle down the hill.",
    "The cat sleeps on a warm windowsill in the afternoon.",
    "Retrieve semantically similar text: query passage document instruction.",
    "The committee postponed its decision until the full report on water quality is published next spring.",
    "Why is the sky blue?",
    "import numpy as np; x = np.arange(10).reshape(2, 5)",
    "La vie est belle.",
]
_INSTALL_HINT = 'pip install -e ".[onnx]"  (from the st-llm2vec clone: onnx, onnxruntime, onnxscript; changes no other package)'
OPTIMUM_NOTE = (
    "stock sentence-transformers' backend='onnx' needs optimum.onnxruntime, and no released Optimum "
    "(optimum <= 1.27, optimum-onnx <= 0.1.0: transformers < 4.58) imports on transformers 5"
)


class OnnxExportError(InputError):
    """The export cannot be made or failed its proof; the message says why."""


def require_onnx() -> tuple[Any, Any]:
    """``(onnx, onnxruntime)``, or an :class:`ImportError` that says how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise MissingExtraError(f"ONNX export needs the onnx extra ({exc.name or exc} is missing): {_INSTALL_HINT}") from exc
    return onnx, onnxruntime


# -- the graph ------------------------------------------------------------------------------------


class _PositionsFromMask(torch.nn.Module):
    """The backbone with ``position_ids = cumsum(attention_mask) - 1`` computed in the graph."""

    def __init__(self, backbone: torch.nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=False, return_dict=True)
        return out.last_hidden_state


def _trace_inputs(model: Any) -> dict[str, torch.Tensor]:
    """A padded batch of two texts (so the traced graph keeps the padding-mask path), as ST tokenizes it."""
    features = model.preprocess(["The quick brown fox jumps over the lazy dog near the river bank.", "A cat."])
    ids, mask = features["input_ids"], features["attention_mask"]
    if bool(mask.all()):
        raise OnnxExportError("the tokenizer did not pad the trace batch; the graph would drop the attention mask")
    return {"input_ids": ids, "attention_mask": mask}


def export_graph(model: Any, path: Path, *, opset: int = OPSET) -> None:
    """Write the fp32 backbone of the stock-loaded portable ``model`` as an ONNX graph at ``path``.

    Uses torch's TorchScript-based exporter (fast) and, where it fails or is gone, torch.export's
    exporter (needs onnxscript; e.g. gemma3's sliding-window masks). A graph over 2 GB is stored with one external data
    file, ``model.onnx_data`` (the name Optimum reads).
    """
    onnx, _ = require_onnx()
    inputs = _trace_inputs(model)
    wrapper = _PositionsFromMask(model[0].model).eval()
    scratch = Path(tempfile.mkdtemp(prefix="onnx-export.", dir=path.parent))
    try:
        raw = scratch / ONNX_FILE
        common = dict(input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                      opset_version=opset)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings on shape checks the padded trace batch settles
            try:
                torch.onnx.export(wrapper, (inputs["input_ids"], inputs["attention_mask"]), str(raw), dynamo=False,
                                  dynamic_axes={name: {0: "batch", 1: "sequence"}
                                                for name in ("input_ids", "attention_mask", "last_hidden_state")},
                                  do_constant_folding=True, **common)
            except Exception as exc:  # e.g. sliding-window masks (gemma3): torch.export's exporter handles them
                if importlib.util.find_spec("onnxscript") is None:
                    raise OnnxExportError(f"torch's TorchScript ONNX exporter failed ({type(exc).__name__}: {exc}); its "
                                          "torch.export-based exporter needs onnxscript: pip install onnxscript") from exc
                logger.info("TorchScript exporter failed (%s); using torch.export's exporter", exc)
                from torch.export import Dim

                for leftover in scratch.iterdir():
                    leftover.unlink()
                batch, sequence = Dim("batch"), Dim("sequence", min=2)
                program = torch.onnx.export(wrapper, (inputs["input_ids"], inputs["attention_mask"]), dynamo=True,
                                            dynamic_shapes={"input_ids": {0: batch, 1: sequence},
                                                            "attention_mask": {0: batch, 1: sequence}}, **common)
                weights = sum(p.numel() * p.element_size() for p in wrapper.parameters())
                program.save(str(raw), external_data=weights > 1_800_000_000)
        extra = [p for p in scratch.iterdir() if p != raw]
        if extra or raw.stat().st_size > 1_900_000_000:
            graph = onnx.load(str(raw), load_external_data=True)
            onnx.save_model(graph, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=ONNX_DATA, size_threshold=1024)
        else:
            os.replace(raw, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def quantize_int8(source: Path, target: Path, *, exclude: list[str] | tuple[str, ...] = ()) -> None:
    """Dynamic int8 quantization (ONNX Runtime) of the MatMuls with a weight, except the nodes in ``exclude``.

    Int8 weights per output channel with ``reduce_range`` (7-bit weights: no int16 saturation on CPUs
    without VNNI, e.g. AVX2); activations are quantized per tensor at run time.
    """
    require_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    large = (source.parent / ONNX_DATA).exists()
    quiet = _RootWarningFilter("pre-processing before quantization")
    logging.getLogger().addFilter(quiet)
    try:
        quantize_dynamic(str(source), str(target), per_channel=True, reduce_range=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=list(exclude),
                         use_external_data_format=large)
    finally:
        logging.getLogger().removeFilter(quiet)


class _RootWarningFilter(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def activation_outliers(model: Any, texts: list[str]) -> dict[str, float]:
    """Per ``nn.Linear`` of the backbone: (max - min) / rms of its input over the real tokens of ``texts``.

    Dynamic int8 quantizes a MatMul's input per tensor, so its error relative to the typical value grows
    with this ratio: decoder LLMs have a few layers (mostly ``down_proj``) with massive activation
    outliers (ratios of 100-200 where most are 10-40), and those are the ones that break int8.
    """
    backbone = model[0].model
    features = model.preprocess(texts)
    real = features["attention_mask"].bool()
    stats: dict[str, list[float]] = {}

    def hook(name: str):
        def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].detach().float()[real]
            entry = stats.setdefault(name, [0.0, 0.0, 0.0])
            entry[0] = max(entry[0], float(x.max().clamp(min=0) - x.min().clamp(max=0)))
            entry[1] += float((x * x).sum())
            entry[2] += x.numel()
        return record

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in backbone.named_modules()
               if isinstance(module, torch.nn.Linear)]
    try:
        with torch.no_grad():
            backbone(input_ids=features["input_ids"], attention_mask=features["attention_mask"])
    finally:
        for handle in handles:
            handle.remove()
    return {name: spread / max((total / max(count, 1)) ** 0.5, 1e-12) for name, (spread, total, count) in stats.items()}


def matmul_nodes(graph: Path) -> dict[str, str]:
    """Backbone ``nn.Linear`` name -> its MatMul/Gemm node in ``graph`` (the TorchScript exporter's scope names)."""
    onnx, _ = require_onnx()
    found = {}
    for node in onnx.load(str(graph), load_external_data=False).graph.node:
        match = re.match(r"^/backbone/(.+)/(MatMul|Gemm)$", node.name)
        if node.op_type in ("MatMul", "Gemm") and match:
            found[match.group(1).replace("/", ".")] = node.name
    return found


def exclusion_schedule(count: int) -> list[int]:
    """How many of the worst-ranked MatMuls to keep in fp32 at each try: 0, 1, 2, 4, ... (at most a quarter)."""
    steps, k = [0], 1
    while k <= max(1, count // 4):
        steps.append(k)
        k *= 2
    return steps


def choose_int8(model: Any, fp32: Path, target_path: Path, *, target: float,
                texts: list[str] | None = None) -> dict[str, Any]:
    """Quantize ``fp32`` to ``target_path``, keeping in fp32 the fewest MatMuls (worst activation outliers
    first, see :func:`activation_outliers`) for which the calibration texts' min cosine vs the torch model
    reaches ``target``. Calibration texts are not the proof's held texts. Returns what was chosen."""
    texts = list(texts or CALIBRATION_TEXTS)
    nodes = matmul_nodes(fp32)
    ratios = activation_outliers(model, texts)
    ranked = [name for name in sorted(ratios, key=ratios.get, reverse=True) if name in nodes]
    tries = []
    for keep in exclusion_schedule(len(ranked)):
        quantize_int8(fp32, target_path, exclude=[nodes[name] for name in ranked[:keep]])
        backbone = OnnxBackbone(target_path, model[0].model.config, threads=torch.get_num_threads())
        cosines, finite = pipeline_cosines(model, backbone, texts)
        worst = float(np.nan_to_num(np.concatenate(list(cosines.values())), nan=-1.0).min()) if finite else -1.0
        tries.append({"fp32_matmuls": keep, "calibration_min_cosine": worst})
        logger.info("int8 with %d MatMuls kept in fp32: calibration min cosine %.5f", keep, worst)
        if worst >= target:
            break
    return {"matmuls": len(nodes), "fp32_matmuls": ranked[:keep], "target": target, "tries": tries,
            "outlier_ratio": {name: round(ratios[name], 1) for name in ranked[:max(keep, 8)]}}


# -- running the graph inside the stock pipeline --------------------------------------------------


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
    is the exported graph. For use until stock ``backend="onnx"`` works on transformers 5 (see the
    module doc). The torch weights are read once (stock loading) and then dropped.
    """
    from sentence_transformers import SentenceTransformer

    path = Path(path)
    graph = path / ONNX_DIR / file_name
    if not graph.is_file():
        raise MissingFileError(f"{graph} not found: export the model first (st-llm2vec export {path} OUT)")
    model = SentenceTransformer(str(path), device="cpu", model_kwargs={"dtype": torch.float32})
    _swap_in(model, OnnxBackbone(graph, model[0].model.config, threads=threads, providers=providers))
    return model


# -- proof ----------------------------------------------------------------------------------------


def prove_graph(model: Any, graph: Path, *, texts: list[str] | None = None, threads: int | None = None) -> dict[str, Any]:
    """Run the exported ``graph`` against the fp32 torch ``model`` (stock-loaded); returns the figures.

    ``finite``: every output of the graph on the held texts and the probe is finite;
    ``first_token_shift``: how much token 1's state moves when only the last word changes (graph and
    torch); ``min_cosine`` / ``mean_cosine``: the stock pipeline's embeddings with the graph vs with the
    torch backbone, over ``texts`` (documents) and every stored prompt.
    """
    texts = list(texts or HELD_TEXTS)
    backbone = OnnxBackbone(graph, model[0].model.config, threads=threads or torch.get_num_threads())
    probe = model.preprocess(list(BIDIRECTIONAL_PROBE))
    with torch.no_grad():
        torch_probe = model[0].model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).last_hidden_state
    graph_probe = backbone(probe["input_ids"], probe["attention_mask"]).last_hidden_state.numpy()
    held = model.preprocess(texts)
    graph_held = backbone(held["input_ids"], held["attention_mask"]).last_hidden_state.numpy()
    finite = bool(np.isfinite(graph_probe).all() and np.isfinite(graph_held).all())

    cosines, outputs_finite = pipeline_cosines(model, backbone, texts)
    finite = finite and outputs_finite
    every = np.concatenate(list(cosines.values()))
    return {
        "finite": finite,
        "first_token_shift": first_token_shift(graph_probe[0], graph_probe[1]),
        "torch_first_token_shift": first_token_shift(torch_probe[0].numpy(), torch_probe[1].numpy()),
        "min_cosine": float(np.nan_to_num(every, nan=-1.0).min()),
        "mean_cosine": float(np.nan_to_num(every, nan=-1.0).mean()),
        "per_input_min_cosine": {k: float(np.nan_to_num(v, nan=-1.0).min()) for k, v in cosines.items()},
        "texts": len(texts),
        "prompts": _prompt_names(model),
    }


def _prompt_names(model: Any) -> list[str]:
    return sorted(name for name, text in (model.prompts or {}).items() if text)


def pipeline_cosines(model: Any, backbone: OnnxBackbone, texts: list[str]) -> tuple[dict[str, np.ndarray], bool]:
    """Per input kind (documents, each stored prompt): the cosines between the stock pipeline's embeddings
    with ``backbone`` and with the model's own torch backbone; and whether all of the former are finite."""
    runs = [("documents", {})] + [(f"prompt {n!r}", {"prompt_name": n}) for n in _prompt_names(model)]
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


def _card_section(report: dict[str, Any]) -> str:
    proof = report["proof"]
    quant = "dynamic int8 (ONNX Runtime, int8 weights per channel)" if report["quantize"] == "int8" else "fp32"
    lines = [
        "", "## ONNX export", "",
        f"`onnx/model.onnx`: the backbone as an ONNX graph ({quant}, opset {report['opset']}), written by "
        "`st-llm2vec export`. Inputs `input_ids` and `attention_mask`; position ids are computed inside the "
        "graph from the attention mask; no causal mask is baked in.", "",
        f"Proven when exported, through the graph in ONNX Runtime {report['onnxruntime']}: outputs finite; the first "
        f"token's state moved by {proof['first_token_shift']:.2e} when only the last word changed (torch: "
        f"{proof['torch_first_token_shift']:.2e}); min cosine vs the fp32 torch model {proof['min_cosine']:.6f} "
        f"(mean {proof['mean_cosine']:.6f}) over {proof['texts']} held texts"
        + (f" and prompts {', '.join(proof['prompts'])}" if proof["prompts"] else "") + ".", "",
        "Loading: " + OPTIMUM_NOTE + ". Until Optimum supports transformers 5, run it with st-llm2vec:", "",
        "```python", "from st_llm2vec.export.onnx import load_onnx", "",
        "model = load_onnx('path/to/this/model')  # stock modules, backbone in ONNX Runtime",
        "embeddings = model.encode(texts)", "```", "",
        "The layout is the one `SentenceTransformer(path, backend=\"onnx\")` reads.", "",
    ]
    return "\n".join(lines)


def export(source: str | os.PathLike, output: str | os.PathLike, *, quantize: str | None = None,
           min_cosine: float = DEFAULT_MIN_COSINE, force: bool = False, overwrite: bool = False,
           opset: int = OPSET, texts: list[str] | None = None) -> dict[str, Any]:
    """Write ``source`` (a portable dir) plus its proven ONNX graph to ``output``; returns the report.

    Built in a temp dir beside ``output`` and moved into place only once proven (see :func:`prove_graph`
    and :func:`check_proof`); raises :class:`OnnxExportError` naming what failed.
    """
    from ..files import atomic_dir, check_output

    if quantize not in (None, *QUANTIZE):
        raise OnnxExportError(f"unknown quantization {quantize!r}; choose one of {', '.join(QUANTIZE)}")
    _, ort = require_onnx()
    from sentence_transformers import SentenceTransformer

    source, output, config = portable_source(source, output)
    check_output(output, overwrite)
    bidirectional = config.get("is_causal") is False or config.get("use_bidirectional_attention") is True

    started = time.perf_counter()
    model = SentenceTransformer(str(source), device="cpu", local_files_only=True, model_kwargs={"dtype": torch.float32})
    model.eval()
    with atomic_dir(output, overwrite) as tmp:
        copy_model_dir(source, tmp, ONNX_DIR)
        graph = tmp / ONNX_DIR / ONNX_FILE
        int8 = None
        if quantize == "int8":
            fp32_dir = Path(tempfile.mkdtemp(prefix="fp32.", dir=tmp))
            export_graph(model, fp32_dir / ONNX_FILE, opset=opset)
            int8 = choose_int8(model, fp32_dir / ONNX_FILE, graph, target=1.0 - (1.0 - min_cosine) / 2)
            shutil.rmtree(fp32_dir)
        else:
            export_graph(model, graph, opset=opset)
        proof = prove_graph(model, graph, texts=texts)
        problems = check_proof(proof, bidirectional=bidirectional, min_cosine=min_cosine, force=force)
        if problems:
            hint = ("; int8 kept the MatMuls with the worst activation outliers in fp32 and still fell short "
                    "(the fp32 export, without --quantize, is exact)") if quantize and int8 else ""
            raise OnnxExportError("the exported graph failed its proof: " + "; ".join(problems) + hint)
        report = {
            "backend": "onnx", "quantize": quantize, "opset": opset, "source": source.name,
            "onnxruntime": ort.__version__, "torch": torch.__version__, "bidirectional": bidirectional,
            "min_cosine_threshold": min_cosine, "forced": bool(force and proof["min_cosine"] < min_cosine),
            "proof": proof, "int8": int8, "seconds": round(time.perf_counter() - started, 1),
            "graph_bytes": sum(p.stat().st_size for p in (tmp / ONNX_DIR).iterdir()),
        }
        finish(tmp, ONNX_DIR, report, _card_section(report))
    return report
