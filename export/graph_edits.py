"""Edits of an exported ONNX file after tracing: the batch axis's name, float16 weights, input defaults.

torch.onnx writes each graph as it traced it; these functions rewrite the file (or its loaded model) the way an
export and its TensorRT engines need it:
  * `name_batch_axis`        the dynamic axis 0 of the inputs is called 'batch' everywhere (not e.g. 's97');
  * `convert_weights_fp16`   float32 weights stored as float16, each followed by a Cast back to float32;
  * `add_input_defaults`     keep-LoRA inputs get the base values as defaults (overridable initializers);
  * `without_input_defaults` a copy without them, for TensorRT's parser (which would bake them in as weights).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from export.options import ExportError


def name_batch_axis(model: onnx.ModelProto, name: str = "batch") -> None:
    """Call the dynamic axis 0 of the graph inputs `name` everywhere (the exporter may call it e.g. 's97')."""
    g = model.graph
    symbols = {i.type.tensor_type.shape.dim[0].dim_param for i in g.input
               if i.type.tensor_type.shape.dim and i.type.tensor_type.shape.dim[0].dim_param}
    for info in list(g.input) + list(g.output) + list(g.value_info):
        for d in info.type.tensor_type.shape.dim:
            if d.dim_param in symbols:
                d.dim_param = name


def convert_weights_fp16(path: Path, min_elements: int = 16) -> int:
    """Store float32 initializers as float16 followed by a Cast to float32; returns how many were converted.

    Initializers outside float16's finite range (or smaller than `min_elements`) stay float32.
    """
    model = onnx.load(str(path))
    graph = model.graph
    keep, casts, converted = [], [], 0
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements:
            keep.append(init)
            continue
        arr = numpy_helper.to_array(init)
        if not np.all(np.abs(arr) < 65000):
            keep.append(init)
            continue
        half = numpy_helper.from_array(arr.astype(np.float16), name=f"{init.name}__fp16")
        keep.append(half)
        casts.append(onnx.helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT,
                                           name=f"{init.name}__cast"))
        converted += 1
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return converted


def add_input_defaults(path: Path, values: dict[str, np.ndarray]) -> None:
    """Give graph inputs default values: an initializer named like a graph input is an overridable default (ONNX
    IR >= 4), so the graph runs without a feed for it and onnxruntime's LoRA adapters (RunOptions) can replace it."""
    if not values:
        return
    model = onnx.load(str(path))
    spec = {i.name: i.type.tensor_type for i in model.graph.input}
    for name, value in values.items():
        if name not in spec:
            raise ExportError(f"{path.name}: no graph input {name!r} to give a default value")
        t = spec[name]
        shape = [d.dim_value for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype).reshape(shape), name))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def without_input_defaults(src: Path, dst: Path) -> bool:
    """Write to `dst` a copy of graph `src` without the default values of its inputs (initializers named like a
    graph input), so TensorRT's ONNX parser keeps those inputs as engine inputs instead of weights; False (nothing
    written) when `src` has none."""
    model = onnx.load(str(src))
    inputs = {i.name for i in model.graph.input}
    kept = [t for t in model.graph.initializer if t.name not in inputs]
    if len(kept) == len(model.graph.initializer):
        return False
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    onnx.save(model, str(dst))
    return True
