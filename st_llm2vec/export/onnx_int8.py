"""Dynamic int8 for an exported ONNX graph, with the fewest MatMuls kept in fp32 that the calibration texts need:
decoder LLMs have a few layers with massive activation outliers, and those are the ones that break int8.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .onnx_runtime import ONNX_DATA, OnnxBackbone, pipeline_cosines, require_onnx

logger = logging.getLogger(__name__)

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
