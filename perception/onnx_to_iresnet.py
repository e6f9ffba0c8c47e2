"""Convert an insightface IResNet ONNX file (e.g. `buffalo_l/w600k_r50.onnx`) into an IResNet state dict.

Why: users often only have insightface's ONNX model packs, while the symmetry loss needs a differentiable
PyTorch network. The weights are recovered structurally, not by name (insightface's exported initializers
are mostly numbered, e.g. "685"):

* the graph is walked in its (topological) node order; Conv, BatchNormalization, PRelu and Gemm/MatMul(+Add)
  nodes are read with their constant inputs;
* a BatchNormalization whose input is a Conv output (and that conv has no other consumer) belongs to that
  conv; every other BatchNormalization is a pre-activation block `bn1`, the head `bn2` or `features`, in that
  order;
* 1x1 convs are the four `downsample` convs; 3x3 convs are the stem followed by (conv1, conv2) per block; a
  stride-2 `conv2` starts a new stage, which gives the stage depths (iresnet50 = [3, 4, 14, 3]);
* PReLU slopes are the stem's then one per block.

Data dependencies fix the relative order of every list above, so the mapping does not rely on node names or
on the exporter placing the downsample branch before or after the main branch.

BatchNorm folding: insightface's files were exported with Conv+BN folding (convs carry biases and the
post-conv BNs are gone; a public conversion script for w600k_r50.onnx maps numbered initializers to
`conv1.bias`, `layerX.Y.conv1.bias`, ... and keeps `layerX.Y.bn1.*`, `bn2.*`, `fc.*`, `features.*` by name).
If any conv lacks its BN the result uses the folded IResNet form (`IResNet(fused_bn=True)`), folding any BN
still present into its conv; otherwise the standard arcface_torch layout is produced. The dynamo exporter
also folds the final `features` BatchNorm1d into the fc (Gemm); then `features` becomes an identity BN.
A BatchNormalization epsilon other than 1e-5 is absorbed into the running variance, so the converted network
computes the same function with PyTorch's default epsilon.

Only what the ONNX graph holds is checked here; the layout of the real `w600k_r50.onnx` could not be
inspected offline (see tests/test_identity.py, which round-trips networks exported by torch.onnx).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from perception.iresnet import EMBEDDING_DIM, LAYERS, IResNet

TORCH_BN_EPS = 1e-05
_IGNORED_OPS = {"Add", "Flatten", "Reshape", "Identity", "Dropout", "Shape", "Gather", "Unsqueeze", "Squeeze",
                "Concat", "Cast", "Constant", "Transpose", "Expand", "Slice", "ConstantOfShape"}
"""Ops that carry no weights in an IResNet graph (shape plumbing, residual adds, exporter no-ops)."""


@dataclass
class _BN:
    node: str
    scale: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    eps: float


@dataclass
class _Conv:
    node: str
    weight: np.ndarray
    bias: np.ndarray | None
    stride: int
    output: str
    bn: _BN | None = None


@dataclass
class _Graph:
    convs: list[_Conv] = field(default_factory=list)
    bns: list[_BN] = field(default_factory=list)
    bns_after_fc: list[_BN] = field(default_factory=list)
    prelus: list[np.ndarray] = field(default_factory=list)
    fc_weight: np.ndarray | None = None
    fc_bias: np.ndarray | None = None


class OnnxConversionError(ValueError):
    """The ONNX graph does not have the IResNet structure this converter understands."""


def _read_graph(path: Path) -> _Graph:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(attr.t)
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def const(node, index: int) -> np.ndarray:
        name = node.input[index]
        source = name
        while source not in consts and source in producers and producers[source].op_type in (
                "Identity", "Unsqueeze", "Reshape", "Squeeze", "Cast"):
            source = producers[source].input[0]
        if source not in consts:
            raise OnnxConversionError(
                f"{path}: input {index} ({name!r}) of {node.op_type} node {node.name!r} is not a constant")
        value = consts[source]
        if source != name and producers[name].op_type in ("Unsqueeze", "Reshape", "Squeeze"):
            value = value.reshape(-1)
        return np.asarray(value, dtype=np.float32)

    def attrs(node) -> dict:
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    parsed = _Graph()
    conv_by_output: dict[str, _Conv] = {}
    pending_matmul: str | None = None
    for node in graph.node:
        op = node.op_type
        if op == "Conv":
            a = attrs(node)
            strides = list(a.get("strides", [1, 1]))
            if a.get("group", 1) != 1 or len(set(strides)) != 1:
                raise OnnxConversionError(f"{path}: Conv {node.name!r} has groups/strides {a} unlike IResNet")
            bias = const(node, 2) if len(node.input) > 2 and node.input[2] else None
            conv = _Conv(node.name, const(node, 1), bias, int(strides[0]), node.output[0])
            parsed.convs.append(conv)
            conv_by_output[conv.output] = conv
        elif op == "BatchNormalization":
            bn = _BN(node.name, const(node, 1), const(node, 2), const(node, 3), const(node, 4),
                     float(attrs(node).get("epsilon", 1e-05)))
            conv = conv_by_output.get(node.input[0])
            if conv is not None and len(consumers.get(conv.output, [])) == 1 and conv.bn is None:
                conv.bn = bn
            elif parsed.fc_weight is None:
                parsed.bns.append(bn)
            else:
                parsed.bns_after_fc.append(bn)
        elif op == "PRelu":
            parsed.prelus.append(const(node, 1).reshape(-1))
        elif op == "Gemm":
            a = attrs(node)
            if a.get("transA", 0):
                raise OnnxConversionError(f"{path}: Gemm {node.name!r} with transA is not an IResNet fc")
            weight = const(node, 1)
            weight = weight if a.get("transB", 0) else weight.T
            parsed.fc_weight = weight * float(a.get("alpha", 1.0))
            if len(node.input) > 2 and node.input[2]:
                parsed.fc_bias = const(node, 2) * float(a.get("beta", 1.0))
        elif op == "MatMul":
            parsed.fc_weight = const(node, 1).T
            pending_matmul = node.output[0]
        elif op == "Add" and pending_matmul is not None and pending_matmul in node.input:
            other = 1 if node.input[0] == pending_matmul else 0
            parsed.fc_bias = const(node, other)
            pending_matmul = None
        elif op not in _IGNORED_OPS:
            raise OnnxConversionError(f"{path}: unsupported op {op} (node {node.name!r}) in an IResNet graph")
        elif op == "Add" and any(consts.get(name) is not None and consts[name].dtype.kind == "f"
                                 for name in node.input):
            raise OnnxConversionError(f"{path}: Add node {node.name!r} adds a constant; IResNet graphs only add "
                                      "residual branches (or an fc bias after MatMul)")
    return parsed


def _fold(conv: _Conv) -> tuple[np.ndarray, np.ndarray]:
    """Conv weight and bias with the conv's BatchNorm (if any) folded in."""
    bias = conv.bias if conv.bias is not None else np.zeros(conv.weight.shape[0], np.float32)
    if conv.bn is None:
        return conv.weight, bias
    bn = conv.bn
    scale = bn.scale / np.sqrt(bn.var + bn.eps)
    return conv.weight * scale[:, None, None, None], (bias - bn.mean) * scale + bn.bias


def _identity_bn(channels: int) -> _BN:
    """BatchNorm parameters computing y = x (used when the exporter folded `features` into the fc)."""
    one, zero = np.ones(channels, np.float32), np.zeros(channels, np.float32)
    return _BN("identity", one, zero, zero, one - np.float32(TORCH_BN_EPS), TORCH_BN_EPS)


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array, dtype=np.float32, copy=True))


def _bn_tensors(prefix: str, bn: _BN) -> dict[str, torch.Tensor]:
    var = bn.var + (bn.eps - TORCH_BN_EPS)
    return {
        f"{prefix}.weight": _tensor(bn.scale),
        f"{prefix}.bias": _tensor(bn.bias),
        f"{prefix}.running_mean": _tensor(bn.mean),
        f"{prefix}.running_var": _tensor(var),
        f"{prefix}.num_batches_tracked": torch.tensor(0),
    }


def _conv_tensors(prefix: str, bn_prefix: str, conv: _Conv, fused: bool) -> dict[str, torch.Tensor]:
    if fused:
        weight, bias = _fold(conv)
        return {f"{prefix}.weight": _tensor(weight),
                f"{prefix}.bias": _tensor(bias)}
    out = {f"{prefix}.weight": _tensor(conv.weight)}
    out.update(_bn_tensors(bn_prefix, conv.bn))
    return out


def convert_onnx(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read an IResNet ONNX file; return (state dict, info) with info keys `layers`, `fused_bn`, `arch`.

    The state dict loads strictly into `IResNet(info["layers"], fused_bn=info["fused_bn"])`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    g = _read_graph(path)
    main = [c for c in g.convs if c.weight.shape[-2:] == (3, 3)]
    down = [c for c in g.convs if c.weight.shape[-2:] == (1, 1)]
    other = [c.node for c in g.convs if c.weight.shape[-2:] not in ((3, 3), (1, 1))]
    if other or not main or main[0].weight.shape[1] != 3 or (len(main) - 1) % 2:
        raise OnnxConversionError(
            f"{path}: conv layout unlike IResNet ({len(main)} 3x3 convs, {len(down)} 1x1 convs, other {other})")
    pairs = [(main[i], main[i + 1]) for i in range(1, len(main), 2)]
    layers: list[int] = []
    for _, conv2 in pairs:
        if conv2.stride == 2 or not layers:
            layers.append(0)
        layers[-1] += 1
    n_blocks = len(pairs)
    problems = []
    if len(layers) != 4 or len(down) != 4:
        problems.append(f"{len(layers)} stages and {len(down)} downsample convs (expected 4 and 4)")
    if len(g.bns) != n_blocks + 1 or len(g.bns_after_fc) > 1:
        problems.append(f"{len(g.bns)} stand-alone BatchNorms before the fc and {len(g.bns_after_fc)} after it "
                        f"(expected {n_blocks + 1} and at most 1)")
    if len(g.prelus) != n_blocks + 1:
        problems.append(f"{len(g.prelus)} PRelu nodes (expected {n_blocks + 1})")
    if g.fc_weight is None or g.fc_weight.shape[0] != EMBEDDING_DIM:
        problems.append("no fc layer with 512 outputs")
    if problems:
        raise OnnxConversionError(f"{path}: not an IResNet graph: " + "; ".join(problems))

    fused = any(c.bn is None for c in g.convs)
    sd: dict[str, torch.Tensor] = {}
    sd.update(_conv_tensors("conv1", "bn1", main[0], fused))
    sd["prelu.weight"] = _tensor(g.prelus[0])
    block = 0
    for stage, count in enumerate(layers, start=1):
        for index in range(count):
            p = f"layer{stage}.{index}"
            conv1, conv2 = pairs[block]
            sd.update(_bn_tensors(f"{p}.bn1", g.bns[block]))
            sd.update(_conv_tensors(f"{p}.conv1", f"{p}.bn2", conv1, fused))
            sd[f"{p}.prelu.weight"] = _tensor(g.prelus[block + 1])
            sd.update(_conv_tensors(f"{p}.conv2", f"{p}.bn3", conv2, fused))
            if index == 0:
                sd.update(_conv_tensors(f"{p}.downsample.0", f"{p}.downsample.1", down[stage - 1], fused))
            block += 1
    sd.update(_bn_tensors("bn2", g.bns[n_blocks]))
    sd["fc.weight"] = _tensor(g.fc_weight)
    bias = g.fc_bias if g.fc_bias is not None else np.zeros(EMBEDDING_DIM, np.float32)
    sd["fc.bias"] = _tensor(bias)
    if g.bns_after_fc:
        sd.update(_bn_tensors("features", g.bns_after_fc[0]))
    else:
        sd.update(_bn_tensors("features", _identity_bn(EMBEDDING_DIM)))

    layers_t = tuple(layers)
    arch = next((name for name, value in LAYERS.items() if value == layers_t), "iresnet" + "-".join(map(str, layers)))
    return sd, {"layers": layers_t, "fused_bn": fused, "arch": arch}


def onnx_to_iresnet(path: str | Path) -> IResNet:
    """Build the IResNet held by an ONNX file, weights loaded strictly, in eval mode."""
    from perception.ir_se50 import load_state_dict_checked

    state_dict, info = convert_onnx(path)
    model = IResNet(info["layers"], fused_bn=info["fused_bn"])
    load_state_dict_checked(model, state_dict, str(path))
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m perception.onnx_to_iresnet w600k_r50.onnx w600k_r50.pth`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx_path", type=Path)
    parser.add_argument("output", type=Path, help="where to torch.save the state dict")
    args = parser.parse_args(argv)
    state_dict, info = convert_onnx(args.onnx_path)
    torch.save(state_dict, args.output)
    print(f"{args.onnx_path} -> {args.output}: {info['arch']} stage depths {list(info['layers'])}, "
          f"folded BatchNorm: {info['fused_bn']}")


if __name__ == "__main__":
    main()
