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

Loading: stock sentence-transformers' ``backend="onnx"`` needs Optimum's ``optimum.onnxruntime``, which does not
import on transformers 5 (:data:`OPTIMUM_NOTE`). The dir is laid out the way that backend reads it
(``onnx/model.onnx``, inputs ``input_ids``/``attention_mask``), so it will load with ``SentenceTransformer(path,
backend="onnx")`` once Optimum supports transformers 5; until then :func:`~.onnx_runtime.load_onnx` runs it (stock
modules, the graph in ONNX Runtime), or use onnxruntime directly. Choosing what int8 quantizes: :mod:`.onnx_int8`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..proof import BIDIRECTIONAL_PROBE, first_token_shift
from .backends import BACKENDS, OPSET
from .onnx_int8 import choose_int8
from .onnx_runtime import ONNX_DATA, ONNX_DIR, ONNX_FILE, OnnxBackbone, pipeline_cosines, prompt_names, require_onnx
from .onnx_runtime import load_onnx  # noqa: F401  (the import path the model card and the command name)
from .pipeline import DEFAULT_MIN_COSINE, HELD_TEXTS, check_proof, copy_model_dir, finish, portable_source

logger = logging.getLogger(__name__)

QUANTIZE = BACKENDS["onnx"].quantize
OPTIMUM_NOTE = (
    "stock sentence-transformers' backend='onnx' needs optimum.onnxruntime, and no released Optimum "
    "(optimum <= 1.27, optimum-onnx <= 0.1.0: transformers < 4.58) imports on transformers 5"
)


class OnnxExportError(InputError):
    """The export cannot be made or failed its proof; the message says why."""


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
        "prompts": prompt_names(model),
    }


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


def run(args: Any) -> int:
    """``st-llm2vec export --backend onnx``, its options checked: export and say what was proven."""
    report = export(args.model, args.output, quantize=args.quantize, min_cosine=args.min_cosine,
                    force=args.force, overwrite=args.overwrite, opset=args.opset)
    proof = report["proof"]
    print(f"Exported {args.model} to {args.output}/{ONNX_DIR}/{ONNX_FILE} "
          f"({report['quantize'] or 'fp32'}, {report['graph_bytes'] / 1e6:.1f} MB, {report['seconds']} s)")
    print(f"Proof: finite; first-token shift {proof['first_token_shift']:.2e} (torch {proof['torch_first_token_shift']:.2e}); "
          f"min cosine vs fp32 torch {proof['min_cosine']:.6f} over {proof['texts']} texts")
    print(f"Load with: from st_llm2vec.export.onnx import load_onnx; load_onnx({args.output!r}). Note: {OPTIMUM_NOTE}.")
    return 0
