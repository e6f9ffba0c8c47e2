"""Check an exported ONNX graph against TensorRT's ONNX parser (10.x and 11.x) without TensorRT installed.

TensorRT cannot be installed on the project's CPU machines (docs/ENVIRONMENT.md), so the exporter checks its three
graphs (mapping, tri-plane synthesis, render + super-resolution) here before they reach a GPU box or a Jetson.
The check knows only the operators these graphs contain (`OPERATORS`, about fifty). Any other operator fails the
check with its name: adding one to the exporter means reading its row in onnx-tensorrt's `docs/operators.md` and
adding it here. `CumProd`, which TensorRT's parser lacks, fails with the rewrite the renderer uses instead.

Facts encoded (onnx-tensorrt `docs/operators.md`, TensorRT 10.0 and 10.15 revisions; NVIDIA's TensorRT 10.x ->
11.x migration guide and ONNX opset guide; read through the project's search tool):

* TensorRT 10.0's parser imports opsets 9-20 (10.15: 9-24; JetPack ships older 10.x, so 20 is the 10.x limit used
  here); TensorRT 11.x imports 9-24 (25 from 11.5).
* TensorRT 10.x builds weakly typed networks (FP16 kernels enabled by `BuilderFlag.FP16`) or strongly typed ones.
  TensorRT 11.x removed weak typing (`BuilderFlag.FP16`, `platform_has_fast_fp16`, ...): a network computes in the
  types its ONNX graph declares, so an FP16 engine needs a graph whose operators run on FLOAT16 tensors.
* GridSample: 4-D input only (11.2 added 5-D; the tri-plane renderer only needs 4-D). CumSum's axis, the axes of
  Reduce*/Squeeze/Unsqueeze and TopK's K must be build-time constants; TopK needs sorted=1 and K < 3840.

A clean report means "nothing known to fail", not "guaranteed to build": only TensorRT itself can say that.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

TABLE_SOURCE = "onnx-tensorrt docs/operators.md (TensorRT 10.0/10.15 rows of this project's operators) + 11.x rules"


@dataclass(frozen=True)
class TrtTarget:
    """The rules of one TensorRT major version that decide whether our graphs import and build as intended."""

    name: str
    min_opset: int
    max_opset: int
    weak_typing: bool
    """True when builder flags can enable FP16 kernels on an FP32 graph (10.x); False: strongly typed only (11.x)."""


TARGETS: Mapping[str, TrtTarget] = {
    "10": TrtTarget("TensorRT 10.x", min_opset=9, max_opset=20, weak_typing=True),
    "11": TrtTarget("TensorRT 11.x", min_opset=9, max_opset=24, weak_typing=False),
}

_FLOATS = "FP32 FP16 BF16"
_NUMBERS = "FP32 FP16 BF16 INT32 INT64"
_ANY = "FP32 FP16 BF16 INT32 INT64 BOOL"
# Operator | data types of its first input TensorRT documents | restriction (checked by _RESTRICTIONS).
_TABLE = f"""
Abs | {_NUMBERS} |
Add | {_NUMBERS} |
And | BOOL |
Cast | {_NUMBERS} UINT8 BOOL |
Clip | {_FLOATS} |
Concat | {_ANY} |
Constant | {_ANY} |
Conv | {_FLOATS} |
ConvTranspose | {_FLOATS} |
CumSum | {_FLOATS} | axis must be a build-time constant
Div | {_NUMBERS} |
Exp | {_FLOATS} |
Expand | {_ANY} |
Gather | {_ANY} |
GatherElements | {_ANY} |
Gemm | {_FLOATS} |
Greater | {_NUMBERS} |
GridSample | FP32 FP16 | input must be 4-D
Identity | {_ANY} |
IsInf | {_FLOATS} |
IsNaN | {_NUMBERS} |
LeakyRelu | {_FLOATS} |
Less | {_NUMBERS} |
LessOrEqual | {_NUMBERS} |
Log | {_FLOATS} |
MatMul | {_FLOATS} |
Max | {_NUMBERS} |
Min | {_NUMBERS} |
Mul | {_NUMBERS} |
Neg | {_NUMBERS} |
Pad | {_NUMBERS} |
Pow | {_NUMBERS} |
Reciprocal | {_FLOATS} |
ReduceL2 | {_NUMBERS} | axes must be a build-time constant
ReduceMax | {_NUMBERS} | axes must be a build-time constant
ReduceMean | {_NUMBERS} | axes must be a build-time constant
ReduceMin | {_NUMBERS} | axes must be a build-time constant
ReduceSum | {_NUMBERS} | axes must be a build-time constant
Relu | {_NUMBERS} |
Reshape | {_ANY} |
Resize | FP32 FP16 BF16 | mode nearest/linear/cubic; antialias must be 0
Shape | {_ANY} |
Sigmoid | {_FLOATS} |
Slice | {_ANY} |
Softplus | {_FLOATS} |
Sqrt | {_FLOATS} |
Squeeze | {_ANY} | axes must be a build-time constant
Sub | {_NUMBERS} |
Tile | {_ANY} |
TopK | {_NUMBERS} | sorted must be 1; K must be a build-time constant below 3840
Transpose | {_ANY} |
Unsqueeze | {_ANY} | axes must be a build-time constant
Where | {_ANY} |
"""


@dataclass(frozen=True)
class OpRule:
    """One operator our graphs use: the input types TensorRT documents for it and its restriction, if any."""

    op_type: str
    types: tuple[str, ...]
    restriction: str


def _parse_table(text: str) -> dict[str, OpRule]:
    rules = {}
    for line in text.strip().splitlines():
        op, types, restriction = (part.strip() for part in line.split("|"))
        rules[op] = OpRule(op, tuple(types.split()), restriction)
    return rules


OPERATORS: Mapping[str, OpRule] = _parse_table(_TABLE)

UNSUPPORTED_HINTS: Mapping[str, str] = {
    "CumProd": "TensorRT's ONNX parser has no CumProd; write transmittance as exp(-(cumsum(sigma*delta) - "
               "sigma*delta)) (CumSum is supported)",
}

_TYPE_NAMES: Mapping[int, str] = {
    TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16", TensorProto.INT8: "INT8",
    TensorProto.UINT8: "UINT8", TensorProto.INT32: "INT32", TensorProto.INT64: "INT64", TensorProto.BOOL: "BOOL",
}
"""ONNX element types TensorRT supports at graph inputs, outputs and initializers (INT8 only quantized)."""
_DEFAULT_DOMAINS = ("", "ai.onnx")
_TOPK_MAX_K = 3840


@dataclass(frozen=True)
class UnsupportedOp:
    """A node TensorRT is expected to reject, with the reason."""

    op_type: str
    node_name: str
    reason: str


@dataclass
class TrtReport:
    """Result of `check_onnx_for_tensorrt`: `ok` is False when anything is known to fail on a target.

    `unsupported` lists node-level problems (the same on every target), `model_problems` graph-level ones, each
    prefixed with the target it fails on where that matters (opset range, FP16 on a strongly typed build).
    """

    source: str
    opset: int
    targets: tuple[str, ...]
    op_counts: dict[str, int]
    unsupported: list[UnsupportedOp] = field(default_factory=list)
    model_problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    matrix: str = TABLE_SOURCE

    @property
    def ok(self) -> bool:
        return not self.unsupported and not self.model_problems

    @property
    def unsupported_op_types(self) -> set[str]:
        return {item.op_type for item in self.unsupported}


class _Graph:
    """An inferred main graph: element types and ranks of its tensors, its constants and its inputs."""

    def __init__(self, model: onnx.ModelProto):
        self.graph = model.graph
        self.types: dict[str, onnx.TypeProto.Tensor] = {}
        for info in list(self.graph.input) + list(self.graph.output) + list(self.graph.value_info):
            if info.type.HasField("tensor_type"):
                self.types[info.name] = info.type.tensor_type
        self.constants: dict[str, object] = {init.name: init for init in self.graph.initializer}
        self.constants.update({n.output[0]: n for n in self.graph.node if n.op_type == "Constant" and n.output})
        self.inputs = {i.name for i in self.graph.input} - set(self.constants)

    def elem_type(self, name: str) -> int | None:
        if name in self.constants and isinstance(self.constants[name], TensorProto):
            return self.constants[name].data_type
        tensor_type = self.types.get(name)
        return tensor_type.elem_type if tensor_type is not None and tensor_type.elem_type else None

    def rank(self, name: str) -> int | None:
        tensor_type = self.types.get(name)
        if tensor_type is None or not tensor_type.HasField("shape"):
            return None
        return len(tensor_type.shape.dim)

    def constant_value(self, name: str):
        source = self.constants.get(name)
        if isinstance(source, TensorProto):
            return numpy_helper.to_array(source)
        for attr in getattr(source, "attribute", ()):
            if attr.name == "value":
                return numpy_helper.to_array(attr.t)
        return None


class _Checker:
    def __init__(self, graph: _Graph):
        self.g = graph
        self.unsupported: list[UnsupportedOp] = []
        self.warnings: list[str] = []

    def flag(self, node: onnx.NodeProto, path: str, reason: str) -> None:
        self.unsupported.append(UnsupportedOp(node.op_type, path, reason))

    def require_constant(self, node: onnx.NodeProto, path: str, index: int, what: str) -> None:
        """A graph input where TensorRT needs a build-time constant fails; a computed value may fold: warn."""
        name = node.input[index] if len(node.input) > index else ""
        if not name or name in self.g.constants:
            return
        if name in self.g.inputs:
            self.flag(node, path, f"{what} '{name}' is a graph input; TensorRT needs a build-time constant")
        else:
            self.warnings.append(f"{path}: {node.op_type} {what} '{name}' is computed; TensorRT must fold it to a "
                                 f"constant")


def _attr(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _check_gridsample(c: _Checker, node: onnx.NodeProto, path: str) -> None:
    rank = c.g.rank(node.input[0])
    if rank is None:
        c.warnings.append(f"{path}: GridSample input rank unknown after shape inference; TensorRT needs 4-D")
    elif rank != 4:
        c.flag(node, path, f"GridSample input '{node.input[0]}' is {rank}-D; TensorRT 10.x (and 11.x before 11.2) "
                           f"takes 4-D input only: sample tri-planes as 2-D planes")


def _check_topk(c: _Checker, node: onnx.NodeProto, path: str) -> None:
    if _attr(node, "sorted", 1) != 1:
        c.flag(node, path, "TopK needs sorted=1")
    k = c.g.constant_value(node.input[1])
    if k is None:
        c.require_constant(node, path, 1, "K")
    elif int(np.max(k)) >= _TOPK_MAX_K:
        c.flag(node, path, f"TopK K={int(np.max(k))} must be below {_TOPK_MAX_K}")


def _check_resize(c: _Checker, node: onnx.NodeProto, path: str) -> None:
    mode = _attr(node, "mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in ("nearest", "linear", "cubic"):
        c.flag(node, path, f"Resize mode '{mode}'; TensorRT supports nearest, linear and cubic")
    if _attr(node, "antialias", 0):
        c.flag(node, path, "Resize with antialias=1 (opset 18) is not in TensorRT's ONNX support; resize without "
                           "antialiasing (the super-resolution input only upsamples)")


def _axes_input(what: str) -> Callable[[_Checker, onnx.NodeProto, str], None]:
    def check(c: _Checker, node: onnx.NodeProto, path: str) -> None:
        c.require_constant(node, path, 1, what)
    return check


_RESTRICTIONS: Mapping[str, Callable[[_Checker, onnx.NodeProto, str], None]] = {
    "GridSample": _check_gridsample, "TopK": _check_topk, "Resize": _check_resize, "CumSum": _axes_input("axis"),
    **{op: _axes_input("axes") for op in OPERATORS if op.startswith("Reduce") or op in ("Squeeze", "Unsqueeze")},
}


def _check_node(c: _Checker, node: onnx.NodeProto, path: str) -> None:
    if node.domain not in _DEFAULT_DOMAINS:
        c.flag(node, path, f"'{node.domain}::{node.op_type}' is a custom-domain op: TensorRT imports it only "
                           f"through a plugin of that name")
        return
    rule = OPERATORS.get(node.op_type)
    if rule is None:
        c.flag(node, path, UNSUPPORTED_HINTS.get(node.op_type, (
            f"{node.op_type} is not among the operators this project's graphs use and were checked against "
            f"TensorRT's ONNX support; read its row in onnx-tensorrt docs/operators.md and add it to "
            f"export/trt_support.py, or export without it")))
        return
    elem = c.g.elem_type(node.input[0]) if node.input and node.input[0] else None
    type_name = _TYPE_NAMES.get(elem) if elem else None
    if type_name and type_name not in rule.types:
        c.flag(node, path, f"{node.op_type} on {type_name} input; TensorRT documents {', '.join(rule.types)}")
    check = _RESTRICTIONS.get(node.op_type)
    if check is not None:
        check(c, node, path)


def _computes_in_fp16(graph: _Graph) -> bool:
    """True when some operator other than a Cast or Constant reads a FLOAT16 tensor (not only stored weights)."""
    return any(graph.elem_type(n.input[0]) == TensorProto.FLOAT16 for n in graph.graph.node
               if n.input and n.input[0] and n.op_type not in ("Cast", "Constant"))


def graph_computes_in_fp16(path_or_model: str | Path | onnx.ModelProto) -> bool:
    """True when the graph itself computes in FP16: what a strongly typed TensorRT build (11.x) runs in FP16."""
    model, _ = _load(path_or_model)
    return _computes_in_fp16(_Graph(_infer(model, [])))


def _model_problems(model: onnx.ModelProto, graph: _Graph, targets: Iterable[TrtTarget], fp16: bool) -> list[str]:
    problems = []
    opset = _default_opset(model)
    for target in targets:
        if not target.min_opset <= opset <= target.max_opset:
            problems.append(f"{target.name}: opset {opset} is outside the {target.min_opset}-{target.max_opset} its "
                            f"ONNX parser imports; export with opset 17 or 18")
        if fp16 and not target.weak_typing and not _computes_in_fp16(graph):
            problems.append(f"{target.name}: builds strongly typed networks only, and this graph computes in FP32 "
                            f"(FLOAT16 appears at most in stored weights), so the engine would not be FP16; build "
                            f"it from a mixed-precision graph, or as FP32")
    io = [("input", i) for i in model.graph.input if i.name not in graph.constants]
    io += [("output", o) for o in model.graph.output]
    for kind, info in io:
        elem = info.type.tensor_type.elem_type
        if elem not in _TYPE_NAMES:
            problems.append(f"graph {kind} '{info.name}' is {_type_name(elem)}, a type TensorRT does not support")
    for init in model.graph.initializer:
        if init.data_type not in _TYPE_NAMES:
            problems.append(f"initializer '{init.name}' is {_type_name(init.data_type)}, a type TensorRT does not "
                            f"support")
    return problems


def _type_name(elem: int) -> str:
    try:
        return TensorProto.DataType.Name(elem)
    except ValueError:
        return f"type#{elem}"


def _default_opset(model: onnx.ModelProto) -> int:
    imports = {imp.domain: imp.version for imp in model.opset_import}
    return imports.get("", imports.get("ai.onnx", 0))


def _load(path_or_model: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model, path_or_model.graph.name or "<in-memory model>"
    path = Path(path_or_model)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    return onnx.load(str(path), load_external_data=False), str(path)


def _infer(model: onnx.ModelProto, warnings: list[str]) -> onnx.ModelProto:
    """`model` with inferred types and shapes; on failure (>2 GB protos, unknown ops) itself, with a warning."""
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # best effort: rank checks then warn instead of deciding
        warnings.append(f"shape inference failed ({type(exc).__name__}: {exc}); rank checks are incomplete")
        return model


def check_onnx_for_tensorrt(path_or_model: str | Path | onnx.ModelProto, *, targets: Iterable[str] = ("10", "11"),
                            fp16: bool = False) -> TrtReport:
    """Report what TensorRT's ONNX parser or builder would reject in a graph, on each of `targets` ("10", "11").

    `fp16`: an FP16 engine is wanted; on a strongly-typed-only target (11.x) that needs FLOAT16 compute in the
    graph itself. External weights are not loaded: names, types and shapes suffice.
    """
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise ValueError(f"TensorRT target(s) {unknown}: expected some of {sorted(TARGETS)}")
    chosen = [TARGETS[t] for t in targets]
    model, source = _load(path_or_model)
    warnings: list[str] = []
    inferred = _infer(model, warnings)
    graph = _Graph(inferred)
    checker = _Checker(graph)
    for index, node in enumerate(inferred.graph.node):
        _check_node(checker, node, node.name or f"<{node.op_type}#{index}>")
    return TrtReport(source=source, opset=_default_opset(model), targets=tuple(t.name for t in chosen),
                     op_counts=dict(sorted(Counter(n.op_type for n in model.graph.node).items())),
                     unsupported=checker.unsupported, model_problems=_model_problems(model, graph, chosen, fp16),
                     warnings=warnings + checker.warnings)


def format_report(report: TrtReport) -> str:
    """Human-readable summary for the command line."""
    status = "OK: nothing known to fail" if report.ok else "NOT SUPPORTED as is"
    lines = [f"TensorRT ONNX check: {report.source}",
             f"  targets: {', '.join(report.targets)}; opset {report.opset}; table: {report.matrix}",
             f"  result: {status}",
             f"  ops ({sum(report.op_counts.values())} nodes, {len(report.op_counts)} types): "
             + ", ".join(f"{op} {n}" for op, n in report.op_counts.items())]
    for title, items in (("model problems", report.model_problems),
                         ("unsupported nodes", [f"[{u.op_type}] {u.node_name}: {u.reason}" for u in report.unsupported]),
                         ("warnings", report.warnings)):
        if items:
            lines.append(f"  {title} ({len(items)}):")
            lines += [f"    - {item}" for item in items]
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> int:
    """`python -m export.trt_support model.onnx ... [--target 11] [--fp16]`: exit 1 when a model fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--target", action="append", choices=sorted(TARGETS),
                        help="TensorRT major version (repeatable; default: all)")
    parser.add_argument("--fp16", action="store_true", help="an FP16 engine is wanted")
    args = parser.parse_args(list(argv) if argv is not None else None)
    failed = False
    for path in args.models:
        report = check_onnx_for_tensorrt(path, targets=args.target or tuple(TARGETS), fp16=args.fp16)
        print(format_report(report))
        failed |= not report.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
