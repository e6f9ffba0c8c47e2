"""The ONNX side of an export's manifest: graph input/output specs and the TensorRT check summary.

The manifest's schema, its writer and its reader are torch-free and live in formats.export_manifest (the runtime
reads them too); this module re-exports `read_manifest` / `write_manifest` for the export commands.
"""
from __future__ import annotations

import os
from typing import Any

import onnx

from formats.export_manifest import ExportManifest, write_manifest

__all__ = ["io_spec", "read_manifest", "write_manifest", "trt_check_summary"]

_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.INT64: "int64",
           onnx.TensorProto.INT32: "int32", onnx.TensorProto.BOOL: "bool", onnx.TensorProto.DOUBLE: "float64"}


def _value_spec(info: onnx.ValueInfoProto) -> dict[str, Any]:
    t = info.type.tensor_type
    dims = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?") for d in t.shape.dim]
    return {"name": info.name, "dtype": _DTYPES.get(t.elem_type, str(t.elem_type)), "shape": dims}


def io_spec(path: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of an ONNX file as [{name, dtype, shape}] (weights are not loaded); an input that is also
    an initializer has a default value in the graph and is marked `default: True` (feeds may leave it out)."""
    model = onnx.load(str(path), load_external_data=False)
    init = {i.name for i in model.graph.initializer}
    inputs = [{**_value_spec(i), **({"default": True} if i.name in init else {})} for i in model.graph.input]
    return inputs, [_value_spec(o) for o in model.graph.output]


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The checked manifest of an export directory as a dict (formats.export_manifest.ExportManifest.read)."""
    return ExportManifest.read(directory).raw


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
