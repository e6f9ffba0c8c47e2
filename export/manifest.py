"""The export directory's `manifest.json`: what each graph takes and returns, and how it was made.

Layout of an export directory (written atomically by export.exporter):

    manifest.json              this file
    mapping.onnx               (z [batch, z_dim], c [batch, 25], truncation_psi [1]) -> ws [batch, num_ws, w_dim]
    synthesis.onnx             (ws, *adapter inputs) -> planes [batch, 3, C, H, W]
    render.onnx                (planes, ws, c, *adapter inputs) -> image, image_raw, depth
    base_adapter.safetensors   keep-LoRA only: the base model's values of every adapter input (B = 0)
    anchors.safetensors        merged only: the merged person's anchors (W latents, cameras, names)
    <graph>.engine             TensorRT engines, where built

Top-level fields (all written by `build_manifest`):

    format, format_version     'my3dgen-export', 1
    graphs                     {name: {file, sha256, inputs: [{name, dtype, shape}], outputs: [...],
                                adapter_inputs: [input names]}}; shapes use 'batch' for the dynamic axis
    generator                  GeneratorConfig.to_dict() of the base model
    model                      num_ws, w_dim, z_dim, c_dim, img_resolution, neural_rendering_resolution,
                               triplane_shape [3, C, H, W]
    camera                     radius, pivot, focal of the look-at cameras the runtime builds
    rendering_mode             noise_mode 'const', sampling 'deterministic', fused_modconv false,
                               truncation: 'psi is the mapping graph input truncation_psi; cutoff None (all ws)'
    base_fingerprint           weights fingerprint of the base model (adapter files name the one they need)
    adapter                    mode 'none' | 'merged' | 'keep-lora' and, per mode: merged person name, adapter
                               file sha256 and its base fingerprint; or the kept-LoRA policy, scale, target list,
                               and `inputs`: [{input, tensor, target, role, shape, graph, dtype}]
    precision                  'fp32' or 'fp16' (fp16 weights stored as float16 initializers cast to float32 in
                               the graph, tri-planes passed between the graphs as float16)
    opset, versions            ONNX opset; python, torch, onnx, onnxruntime, onnxscript versions
    verification               eager PyTorch vs onnxruntime on the export's example batch: max abs diffs, tolerance
    tensorrt                   {check: {graph: {ok, cumprod_nodes, gridsample_nodes, gridsample_4d, unsupported,
                               warnings, op_counts}}, engines: {graph: {...}} or null}
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import onnx

from generator.atomic import atomic_file

FORMAT = "my3dgen-export"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
GRAPH_FILES = {"mapping": "mapping.onnx", "synthesis": "synthesis.onnx", "render": "render.onnx"}
BASE_ADAPTER_FILE = "base_adapter.safetensors"
ANCHORS_FILE = "anchors.safetensors"

_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.INT64: "int64",
           onnx.TensorProto.INT32: "int32", onnx.TensorProto.BOOL: "bool", onnx.TensorProto.DOUBLE: "float64"}


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _value_spec(info: onnx.ValueInfoProto) -> dict[str, Any]:
    t = info.type.tensor_type
    dims = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?") for d in t.shape.dim]
    return {"name": info.name, "dtype": _DTYPES.get(t.elem_type, str(t.elem_type)), "shape": dims}


def io_spec(path: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of an ONNX file as [{name, dtype, shape}] (weights are not loaded)."""
    model = onnx.load(str(path), load_external_data=False)
    init = {i.name for i in model.graph.initializer}
    inputs = [_value_spec(i) for i in model.graph.input if i.name not in init]
    return inputs, [_value_spec(o) for o in model.graph.output]


def write_manifest(directory: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    path = Path(directory) / MANIFEST_FILE
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an export directory, checked for format and version (errors name the file and field)."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise ValueError(f"{path}: missing (is {directory} an export directory made by `cli.py export`?)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: field 'format'/'format_version' is {manifest.get('format')!r}/"
                         f"{manifest.get('format_version')!r}, expected {FORMAT!r}/{FORMAT_VERSION}")
    return manifest


def trt_check_summary(path: str | os.PathLike) -> dict[str, Any]:
    """export.trt_support's verdict on one graph, plus the two facts this project cares about most."""
    from export.trt_support import check_onnx_for_tensorrt
    report = check_onnx_for_tensorrt(path)
    model = onnx.load(str(path), load_external_data=False)
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in list(inferred.graph.value_info) +
             list(inferred.graph.input) + list(inferred.graph.output)}
    grid_ranks = [ranks.get(n.input[0]) for n in inferred.graph.node if n.op_type == "GridSample"]
    return {
        "ok": report.ok,
        "cumprod_nodes": report.op_counts.get("CumProd", 0),
        "gridsample_nodes": report.op_counts.get("GridSample", 0),
        "gridsample_4d": all(r == 4 for r in grid_ranks),
        "unsupported": [f"[{u.op_type}] {u.node_name}: {u.reason}" for u in report.unsupported],
        "model_problems": list(report.model_problems),
        "warnings": list(report.warnings),
        "op_counts": report.op_counts,
        "table": report.matrix,
    }
