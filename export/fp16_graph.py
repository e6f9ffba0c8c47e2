"""Mixed-precision (fp16 compute) ONNX graphs from the fp32 exported graphs, with onnxconverter-common.

`export --fp16` used to store fp16 weights and compute in fp32. This module makes graphs that really compute in
fp16 where that is safe, so TensorRT (11.x builds strongly typed networks: precision comes from the graph) and
onnxruntime-gpu run fp16 kernels:

  * fp16: the nodes the dynamo exporter attributes (metadata `pkg.torch.onnx.name_scopes`) to the StyleGAN2
    tri-plane backbone (`G.backbone.synthesis`), the super-resolution (`G.superresolution`) and the OSG decoder
    MLP (`G.decoder`): convolutions, modulation, the 1x1 toRGB, FIR filters, fully connected layers;
  * fp32: everything else, i.e. the mapping network's truncation, camera rays, ray marching, transmittance
    (CumSum/Exp), importance sampling (CDF, searchsorted-as-count), the density Softplus, grid sampling of the
    planes, and in every scope the ops in `FP32_OPS` (reductions, powers, roots, reciprocals, exp/log, divisions)
    together with the element-wise ops that only combine their results (e.g. the `+ 1e-8` of the demodulation
    coefficient `rsqrt(sum((w * s)^2) + 1e-8)`, whose sum can exceed fp16's 65504 for large styles).

The graph's inputs and outputs keep their element types, so a mixed graph is a drop-in replacement for the
graph it came from. The converter is onnxconverter-common's `float16.convert_float_to_float16` with a node block
list computed here (no hand-edited nodes); `MixedPrecisionReport` says what ran in which precision.
"""
from __future__ import annotations

import ast
import collections
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from formats.atomic import atomic_file

FP16_SCOPES = ("G.backbone.synthesis", "G.superresolution", "G.decoder")
"""Module scopes (name_scopes prefixes) whose nodes compute in fp16."""

FP16_COMPUTE_GRAPHS = ("synthesis", "render")
"""Graphs of an export that compute in fp16 under `export --fp16`; the mapping network (a few small matmuls)
stays fp32."""

FP32_OPS = ("Softplus", "CumSum", "Exp", "Log", "ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL2", "Pow",
            "Sqrt", "Reciprocal", "Div", "GridSample", "Range", "Resize", "Upsample", "Min", "Max", "TopK", "Erf",
            "Einsum")
"""Op types that stay fp32 in every scope: overflow-prone reductions/powers, exp/log, and ops whose fp16 kernels
are missing or imprecise on some execution providers."""

PASS_THROUGH_OPS = ("Add", "Sub", "Mul", "Neg", "Abs", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Expand",
                    "Slice", "Gather", "Concat", "Identity", "Clip", "Where")
"""Ops that stay fp32 when every float input they read comes from an fp32 node (or a constant): the arithmetic
around an FP32_OPS result stays in fp32 until it meets an fp16 tensor."""

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}


class Fp16GraphError(ValueError):
    """A graph that cannot be converted as asked; the message names the graph and what is wrong."""


@dataclass(frozen=True)
class MixedPrecisionPolicy:
    """Which nodes compute in fp16 (see the module docstring)."""

    fp16_scopes: tuple[str, ...] = FP16_SCOPES
    fp32_ops: tuple[str, ...] = FP32_OPS
    min_positive_val: float = 5.96e-8
    """Smallest fp16 subnormal: nonzero weights below it are raised to it by the converter (not to 1e-7)."""
    max_finite_val: float = 65504.0
    """fp16's largest finite value: larger weights of fp16 nodes are clamped to it (there are none in EG3D)."""


@dataclass
class MixedPrecisionReport:
    """What the conversion did to one graph."""

    nodes: int
    fp16_nodes: int
    fp16_ops: dict[str, int] = field(default_factory=dict)
    casts_added: int = 0
    clamped_constants: int = 0
    """Constants of fp16 nodes outside fp16's range, clamped to +-65504 (e.g. the +-3.4e38 bounds of a clamp)."""

    def to_dict(self) -> dict:
        return {"nodes": self.nodes, "fp16_nodes": self.fp16_nodes, "fp16_ops": dict(self.fp16_ops),
                "casts_added": self.casts_added, "clamped_constants": self.clamped_constants}


def _scopes(node: onnx.NodeProto) -> list[str]:
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                value = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                return []
            return [s for s in value if isinstance(s, str)]
    return []


def fp32_nodes(model: onnx.ModelProto, policy: MixedPrecisionPolicy | None = None) -> list[str]:
    """Names of the nodes of `model` that must stay fp32 under `policy` (the converter's node block list).

    A node is fp16 when one of its name scopes starts with a policy scope and its op is not in `fp32_ops`;
    pass-through arithmetic whose every computed input is fp32 stays fp32 too (nodes are in topological order,
    as ONNX requires). Nodes without scope metadata stay fp32. The converter's block list works by node name, so
    unnamed or duplicate-named nodes of `model` are given unique names in place."""
    policy = policy or MixedPrecisionPolicy()
    fp32_ops = set(policy.fp32_ops)
    produced_fp32: set[str] = set()
    produced_fp16: set[str] = set()
    blocked: list[str] = []
    names = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in names:
            node.name = f"{node.op_type}_fp16graph_{i}"
        names.add(node.name)
        in_scope = any(s.startswith(policy.fp16_scopes) for s in _scopes(node))
        computed = [x for x in node.input if x in produced_fp32 or x in produced_fp16]
        keep32 = (not in_scope or node.op_type in fp32_ops
                  or (node.op_type in PASS_THROUGH_OPS and computed and all(x in produced_fp32 for x in computed)))
        (produced_fp32 if keep32 else produced_fp16).update(o for o in node.output if o)
        if keep32:
            blocked.append(node.name)
    return blocked


def _io_types(model: onnx.ModelProto) -> dict[str, int]:
    return {v.name: v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}


def _produced_type(model: onnx.ModelProto, name: str, blocked: set[str]) -> int | None:
    """The element type the node producing `name` really computes (the converter may declare another)."""
    for node in model.graph.node:
        if name in node.output:
            if node.op_type == "Cast":
                return next(a.i for a in node.attribute if a.name == "to")
            return onnx.TensorProto.FLOAT if node.name in blocked else onnx.TensorProto.FLOAT16
    return None


def _restore_output_types(model: onnx.ModelProto, wanted: dict[str, int], blocked: set[str]) -> int:
    """Make each graph output carry its original element type: declare it, and Cast to it where the producing
    node computes another type; returns how many Casts were added."""
    fixed = 0
    for out in model.graph.output:
        want = wanted.get(out.name)
        if want not in FLOAT_TYPES:
            continue
        actual = _produced_type(model, out.name, blocked)
        out.type.tensor_type.elem_type = want
        if actual is None or actual == want:
            continue
        inner = f"{out.name}__fp16graph"
        for node in model.graph.node:
            node.output[:] = [inner if o == out.name else o for o in node.output]
            node.input[:] = [inner if x == out.name else x for x in node.input]
        model.graph.node.append(onnx.helper.make_node("Cast", [inner], [out.name], to=want,
                                                      name=f"{out.name}__fp16graph_cast"))
        fixed += 1
    return fixed


def _isolate_outputs(model: onnx.ModelProto) -> list[str]:
    """Give each float graph output its own Identity node (kept fp32), so that no node inside the graph reads a
    graph output: onnxconverter-common mistypes a graph output that a blocked node also reads. Outputs made by a
    Cast that nothing else reads are left as they are. Returns the names of the Identity nodes."""
    added = []
    floats = [o.name for o in model.graph.output if o.type.tensor_type.elem_type in FLOAT_TYPES]
    producer = {o: n for n in model.graph.node for o in n.output}
    read = {x for n in model.graph.node for x in n.input}
    for name in floats:
        if name in producer and producer[name].op_type == "Cast" and name not in read:
            continue  # already a dedicated Cast (e.g. planes to fp16); wrapping it trips the converter's cast pass
        inner = f"{name}__fp16graph_pre"
        for node in model.graph.node:
            node.output[:] = [inner if o == name else o for o in node.output]
            node.input[:] = [inner if x == name else x for x in node.input]
        added.append(f"{name}__fp16graph_identity")
        model.graph.node.append(onnx.helper.make_node("Identity", [inner], [name], name=added[-1]))
    return added


def _cast_to(node: onnx.NodeProto) -> int | None:
    if node.op_type != "Cast":
        return None
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _drop_round_trips(model: onnx.ModelProto) -> int:
    """Remove fp32 -> fp16 -> fp32 Cast pairs (returns how many Casts went).

    onnxconverter-common wraps every blocked node in Casts as if its neighbours were fp16, so a chain of fp32
    nodes would round its values to fp16 between each pair; a consumer Cast back to fp32 reads the fp32 tensor
    that went into the fp16 Cast instead, and Casts nobody reads any more are removed."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    producer = {o: n for n in graph.node for o in n.output}
    types = {v.name: v.type.tensor_type.elem_type for v in list(graph.input) + list(graph.value_info)}
    types.update({t.name: t.data_type for t in graph.initializer})
    rename: dict[str, str] = {}
    dropped: set[int] = set()
    for node in graph.node:
        if _cast_to(node) != onnx.TensorProto.FLOAT:
            continue
        up = producer.get(node.input[0])
        if up is None or _cast_to(up) != onnx.TensorProto.FLOAT16:
            continue
        src = up.input[0]
        if types.get(src) != onnx.TensorProto.FLOAT:
            continue
        if node.output[0] in outputs:  # a graph output: read the fp32 tensor through an Identity
            node.op_type = "Identity"
            del node.attribute[:]
            node.input[:] = [src]
            continue
        rename[node.output[0]] = src
        dropped.add(id(node))
    for node in graph.node:
        node.input[:] = [rename.get(x, x) for x in node.input]
    kept = [n for n in graph.node if id(n) not in dropped]
    while True:
        read = {x for n in kept for x in n.input} | outputs
        dead = [n for n in kept if n.op_type == "Cast" and not any(o in read for o in n.output)]
        if not dead:
            break
        dropped.update(id(n) for n in dead)
        kept = [n for n in kept if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    return len(dropped)


def to_mixed_precision(model: onnx.ModelProto, policy: MixedPrecisionPolicy | None = None,
                       name: str = "graph") -> tuple[onnx.ModelProto, MixedPrecisionReport]:
    """An fp32 exported graph -> (the mixed-precision graph, a report). `model` is not modified.

    Raises Fp16GraphError for a graph whose weights are already stored as fp16 (convert before
    `export.graph_edits.convert_weights_fp16`, not after) or that has no fp16-eligible node."""
    try:
        from onnxconverter_common import float16
    except ImportError as e:
        raise Fp16GraphError("fp16 graphs need onnxconverter-common: pip install onnxconverter-common") from e
    policy = policy or MixedPrecisionPolicy()
    src = onnx.ModelProto()
    src.CopyFrom(model)
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in src.graph.initializer):
        raise Fp16GraphError(f"{name}: has float16 initializers (weights stored as fp16); convert the fp32 graph "
                             f"before convert_weights_fp16")
    blocked = fp32_nodes(src, policy) + _isolate_outputs(src)
    blocked_set = set(blocked)
    fp16 = [n for n in src.graph.node if n.name not in blocked_set]
    if not fp16:
        raise Fp16GraphError(f"{name}: no node lies in the fp16 scopes {policy.fp16_scopes}; was it exported by "
                             f"torch.onnx's dynamo exporter (which records pkg.torch.onnx.name_scopes)?")
    io = _io_types(src)
    with warnings.catch_warnings(record=True) as caught:  # one warning per clamped constant: counted instead
        warnings.simplefilter("always")
        mixed = float16.convert_float_to_float16(src, min_positive_val=policy.min_positive_val,
                                                 max_finite_val=policy.max_finite_val, keep_io_types=True,
                                                 op_block_list=[], node_block_list=blocked, check_fp16_ready=False)
    _restore_output_types(mixed, io, blocked_set)
    _drop_round_trips(mixed)
    changed = {k: (v, _io_types(mixed).get(k)) for k, v in io.items() if _io_types(mixed).get(k) != v}
    if changed:
        raise Fp16GraphError(f"{name}: the conversion changed input/output element types {changed}")
    onnx.checker.check_model(mixed)
    casts = sum(n.op_type == "Cast" for n in mixed.graph.node) - sum(n.op_type == "Cast" for n in model.graph.node)
    report = MixedPrecisionReport(nodes=len(model.graph.node), fp16_nodes=len(fp16),
                                  fp16_ops=dict(collections.Counter(n.op_type for n in fp16).most_common()),
                                  casts_added=casts,
                                  clamped_constants=sum("truncated" in str(w.message) for w in caught))
    return mixed, report


def write_fp16_graph(src: str | os.PathLike, dst: str | os.PathLike,
                     policy: MixedPrecisionPolicy | None = None) -> MixedPrecisionReport:
    """Read the fp32 graph at `src`, write its mixed-precision version to `dst` atomically (src == dst is fine)."""
    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src))
    mixed, report = to_mixed_precision(model, policy, name=src.name)
    with atomic_file(dst) as tmp:
        onnx.save(mixed, str(tmp))
    return report


def convert_export_graphs(paths: Mapping[str, str | os.PathLike],
                          policy: MixedPrecisionPolicy | None = None) -> dict[str, dict]:
    """Convert, in place, the graphs of an export named in FP16_COMPUTE_GRAPHS (graph name -> path, as
    formats.export_manifest.GRAPH_FILES names them); returns graph name -> report dict for the manifest."""
    return {name: write_fp16_graph(p, p, policy).to_dict() for name, p in paths.items()
            if name in FP16_COMPUTE_GRAPHS}
