"""Check an ONNX graph against TensorRT's ONNX parser without TensorRT installed.

TensorRT cannot be installed on the project's CPU machines (docs/environment.md), so an
exported generator is checked here against the operator support matrix of the
onnx-tensorrt parser before it is shipped to a GPU box or a Jetson. The check reports:

* every op the parser does not import (``N`` in the matrix, absent from it, or from a
  non-default domain without a local function definition), e.g. ``CumProd``;
* documented restrictions that can be decided from the graph (GridSample input must be
  4-D, CumSum ``axis`` must be a build-time constant, Resize modes, pooling rank, ...);
* opsets outside the parser's range, and GridSample above opset 18;
* tensor types TensorRT lacks, DOUBLE (down-cast with clamping), UINT8 away from I/O;
* dynamic-shape caveats (dynamic non-batch input dims, data-dependent Loop lengths, ...).

Source of the support table: ``onnx/onnx-tensorrt`` ``docs/operators.md``, the revision
headed "TensorRT 10.15 supports operators in the inclusive range of opset 9 to opset 24"
(read through the project's search tool; the TensorRT 10.0 revision of the same file
states opset 9 to 20). The table below re-encodes that file's "Operator Support Matrix"
(operator, supported, types, restriction) as data. Entries of N and ops missing from the
matrix are reported as unsupported: ``CumProd`` is one of the latter.

Restrictions the checker cannot decide from the graph are reported once per op type as
warnings, so a clean report means "nothing known to fail", not "guaranteed to build".
"""

from __future__ import annotations

import argparse
import sys
from collections import ChainMap, Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import onnx
from onnx import numpy_helper

MATRIX_SOURCE = "onnx/onnx-tensorrt docs/operators.md (TensorRT 10.15 revision)"
MATRIX_TRT_VERSION = "10.15"
MATRIX_MIN_OPSET = 9
MATRIX_MAX_OPSET = 24
PORTABLE_MAX_OPSET = 20
GRIDSAMPLE_PREFERRED_OPSET = 18

# Operator | Y/N | supported types | documented restriction (shortened).
_MATRIX_TEXT = """
Abs | Y | FP32 FP16 BF16 INT32 INT64 |
Acos | Y | FP32 FP16 BF16 |
Acosh | Y | FP32 FP16 BF16 |
Add | Y | FP32 FP16 BF16 INT32 INT64 |
AffineGrid | N | |
And | Y | BOOL |
ArgMax | Y | FP32 FP16 BF16 INT32 INT64 |
ArgMin | Y | FP32 FP16 BF16 INT32 INT64 |
Asin | Y | FP32 FP16 BF16 |
Asinh | Y | FP32 FP16 BF16 |
Atan | Y | FP32 FP16 BF16 |
Atanh | Y | FP32 FP16 BF16 |
Attention | Y | FP32 FP16 BF16 INT8 FP8 | Q, K, V and attn_mask must be 4-D; past_key/past_value/nonpad_kv_seqlen inputs, present_key/present_value/qk_matmul_output outputs, qk_matmul_output_mode and softcap are unsupported
AveragePool | Y | FP32 FP16 BF16 | 2-D or 3-D pooling only; dilations must be empty or all ones
BatchNormalization | Y | FP32 FP16 BF16 |
Bernoulli | N | |
BitShift | N | |
BitwiseAnd | N | |
BitwiseNot | N | |
BitwiseOr | N | |
BitwiseXor | N | |
BlackmanWindow | Y | FP32 FP16 |
Cast | Y | FP32 FP16 BF16 INT32 INT64 UINT8 BOOL |
CastLike | Y | FP32 FP16 BF16 INT32 INT64 UINT8 BOOL |
Ceil | Y | FP32 FP16 BF16 |
Col2Im | N | |
Celu | Y | FP32 FP16 BF16 |
CenterCropPad | N | |
Clip | Y | FP32 FP16 BF16 |
Compress | N | |
Concat | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
ConcatFromSequence | N | |
Constant | Y | FP32 FP16 BF16 FP8 FP4 INT4 INT32 INT64 BOOL | sparse_value, value_string and value_strings attributes are unsupported
ConstantOfShape | Y | FP32 FP16 BF16 FP8 FP4 INT4 INT32 INT64 BOOL |
Conv | Y | FP32 FP16 BF16 |
ConvInteger | N | |
ConvTranspose | Y | FP32 FP16 BF16 |
Cos | Y | FP32 FP16 BF16 |
Cosh | Y | FP32 FP16 BF16 |
CumSum | Y | FP32 FP16 BF16 | axis must be a build-time constant
DFT | N | |
DeformConv | Y | FP32 FP16 | input must have 1-D or 2-D spatial dimensions; begin and end pads must match per spatial axis
DepthToSpace | Y | FP32 FP16 BF16 INT32 INT64 |
DequantizeLinear | Y | INT8 FP8 FP4 INT4 | x_zero_point must be zero
Det | N | |
Div | Y | FP32 FP16 BF16 INT32 INT64 |
Dropout | Y | FP32 FP16 BF16 | is_training must be an initializer that evaluates to False
DynamicQuantizeLinear | N | | compose TensorRT's dynamic quantize from ONNX ops in a local function instead
Einsum | Y | FP32 FP16 BF16 |
Elu | Y | FP32 FP16 BF16 |
Equal | Y | FP32 FP16 BF16 INT32 INT64 |
Erf | Y | FP32 FP16 BF16 |
Exp | Y | FP32 FP16 BF16 |
Expand | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
EyeLike | Y | FP32 FP16 BF16 INT32 INT64 BOOL | input must have static dimensions
Flatten | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
Floor | Y | FP32 FP16 BF16 |
Gather | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
GatherElements | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
GatherND | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
Gelu | Y | FP32 FP16 BF16 INT8 INT32 INT64 |
Gemm | Y | FP32 FP16 BF16 |
GlobalAveragePool | Y | FP32 FP16 BF16 |
GlobalLpPool | Y | FP32 FP16 BF16 |
GlobalMaxPool | Y | FP32 FP16 BF16 |
Greater | Y | FP32 FP16 BF16 INT32 INT64 |
GreaterOrEqual | Y | FP32 FP16 BF16 INT32 INT64 |
GridSample | Y | FP32 FP16 | input must be 4-D
GroupNormalization | Y | FP32 FP16 BF16 |
GRU | Y | FP32 FP16 BF16 | bidirectional GRUs need the same activations in both directions
HammingWindow | Y | FP32 FP16 |
HannWindow | Y | FP32 FP16 |
HardSigmoid | Y | FP32 FP16 BF16 |
HardSwish | Y | FP32 FP16 BF16 |
Hardmax | Y | FP32 FP16 BF16 | the axis dimension of the input must be a build-time constant
Identity | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
If | Y | FP32 FP16 BF16 INT32 INT64 BOOL | both branches' outputs must have the same rank and different names
ImageScaler | Y | FP32 FP16 BF16 |
ImageDecoder | N | |
InstanceNormalization | Y | FP32 FP16 BF16 |
IsInf | Y | FP32 FP16 BF16 |
IsNaN | Y | FP32 FP16 BF16 INT32 INT64 |
LayerNormalization | Y | FP32 FP16 BF16 | only the first output Y is supported
LeakyRelu | Y | FP32 FP16 BF16 |
Less | Y | FP32 FP16 BF16 INT32 INT64 |
LessOrEqual | Y | FP32 FP16 BF16 INT32 INT64 |
Log | Y | FP32 FP16 BF16 |
LogSoftmax | Y | FP32 FP16 BF16 |
Loop | Y | FP32 FP16 BF16 INT32 INT64 BOOL | scan output length cannot be dynamic; loop-carried shapes must not change across iterations
LRN | Y | FP32 FP16 BF16 |
LSTM | Y | FP32 FP16 BF16 | bidirectional LSTMs need the same activations in both directions; input_forget and layout must be 0
LpNormalization | Y | FP32 FP16 BF16 |
LpPool | Y | FP32 FP16 BF16 | dilations must be empty or all ones
MatMul | Y | FP32 FP16 BF16 |
MatMulInteger | N | |
Max | Y | FP32 FP16 BF16 INT32 INT64 |
MaxPool | Y | FP32 FP16 BF16 | 2-D or 3-D pooling only; the Indices output is unsupported; dilations must be empty or all ones
MaxRoiPool | N | |
MaxUnpool | N | |
Mean | Y | FP32 FP16 BF16 FP8 INT32 INT64 |
MeanVarianceNormalization | Y | FP32 FP16 BF16 |
MelWeightMatrix | N | |
Min | Y | FP32 FP16 BF16 INT32 INT64 |
Mish | Y | FP32 FP16 |
Mod | Y | FP32 FP16 BF16 INT32 INT64 |
Mul | Y | FP32 FP16 BF16 INT32 INT64 |
Multinomial | N | |
Neg | Y | FP32 FP16 BF16 INT32 INT64 |
NegativeLogLikelihoodLoss | N | |
NonMaxSuppression | Y | FP32 FP16 |
NonZero | Y | FP32 FP16 |
Not | Y | BOOL |
OneHot | Y | FP32 FP16 BF16 INT32 INT64 BOOL | depth must be a build-time constant
Optional | N | |
OptionalGetElement | N | |
OptionalHasElement | N | |
Or | Y | BOOL |
Pad | Y | FP32 FP16 BF16 INT32 INT64 |
ParametricSoftplus | Y | FP32 FP16 BF16 |
Pow | Y | FP32 FP16 BF16 INT32 INT64 |
PRelu | Y | FP32 FP16 BF16 |
QLinearConv | N | |
QLinearMatMul | N | |
QuantizeLinear | Y | FP32 FP16 BF16 | y_zero_point must be 0
RandomNormal | Y | FP32 FP16 BF16 | the seed value is ignored
RandomNormalLike | Y | FP32 FP16 BF16 | the seed value is ignored
RandomUniform | Y | FP32 FP16 BF16 | the seed value is ignored
RandomUniformLike | Y | FP32 FP16 BF16 | the seed value is ignored
Range | Y | FP32 FP16 BF16 INT32 INT64 |
Reciprocal | Y | FP32 FP16 BF16 |
ReduceL1 | Y | FP32 FP16 BF16 INT32 INT64 | axes must be an initializer
ReduceL2 | Y | FP32 FP16 BF16 INT32 INT64 | axes must be an initializer
ReduceLogSum | Y | FP32 FP16 BF16 INT32 INT64 | axes must be an initializer
ReduceLogSumExp | Y | FP32 FP16 BF16 INT32 INT64 | axes must be an initializer
ReduceMax | Y | FP32 FP16 BF16 INT32 INT64 | axes must be an initializer
ReduceMean | Y | FP32 FP16 BF16 INT32 INT64 | axes must be an initializer
ReduceMin | Y | FP32 FP16 BF16 INT32 INT64 | axes must be an initializer
ReduceProd | Y | FP32 FP16 BF16 INT32 INT64 | axes must be an initializer
ReduceSum | Y | FP32 FP16 BF16 INT32 INT64 | axes must be an initializer
ReduceSumSquare | Y | FP32 FP16 BF16 INT32 INT64 | axes must be an initializer
RegexFullMatch | N | |
Relu | Y | FP32 FP16 BF16 INT32 INT64 |
Reshape | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
Resize | Y | FP32 FP16 BF16 | modes nearest/linear; coordinate modes half_pixel, pytorch_half_pixel, tf_half_pixel_for_nn, asymmetric, align_corners; nearest modes floor, ceil, round_prefer_floor, round_prefer_ceil; aspect ratio policy stretch; axes must be an iota when scales is a tensor; no antialiasing
ReverseSequence | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
RMSNormalization | Y | FP32 FP16 BF16 |
RNN | Y | FP32 FP16 BF16 | bidirectional RNNs need the same activations in both directions
RoiAlign | Y | FP32 FP16 |
RotaryEmbedding | Y | FP32 FP16 BF16 | position_ids must be INT64
Round | Y | FP32 FP16 BF16 |
STFT | Y | FP32 | frame_step and window must be initializers; input must be real-valued
ScaledTanh | Y | FP32 FP16 BF16 |
Scan | Y | FP32 FP16 BF16 |
Scatter | Y | FP32 FP16 BF16 INT32 INT64 |
ScatterElements | Y | FP32 FP16 BF16 INT32 INT64 |
ScatterND | Y | FP32 FP16 BF16 INT32 INT64 | reduction other than none is not supported
Selu | Y | FP32 FP16 BF16 |
SequenceAt | N | |
SequenceConstruct | N | |
SequenceEmpty | N | |
SequenceErase | N | |
SequenceInsert | N | |
SequenceLength | N | |
SequenceMap | N | |
Shape | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
Shrink | Y | FP32 FP16 BF16 INT32 INT64 |
Sigmoid | Y | FP32 FP16 BF16 |
Sign | Y | FP32 FP16 BF16 INT32 INT64 |
Sin | Y | FP32 FP16 BF16 |
Sinh | Y | FP32 FP16 BF16 |
Size | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
Slice | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
Softmax | Y | FP32 FP16 BF16 |
SoftmaxCrossEntropyLoss | N | |
Softplus | Y | FP32 FP16 BF16 |
Softsign | Y | FP32 FP16 BF16 |
SpaceToDepth | Y | FP32 FP16 BF16 INT32 INT64 |
Split | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
SplitToSequence | N | |
Sqrt | Y | FP32 FP16 BF16 |
Squeeze | Y | FP32 FP16 BF16 INT32 INT64 BOOL | axes must be resolvable to a constant
StringConcat | N | |
StringNormalizer | N | |
StringSplit | N | |
Sub | Y | FP32 FP16 BF16 INT32 INT64 |
Sum | Y | FP32 FP16 BF16 INT32 INT64 |
Tan | Y | FP32 FP16 BF16 |
Tanh | Y | FP32 FP16 BF16 |
TensorScatter | Y | FP32 FP16 BF16 INT32 | past_cache and update must be 4-D; axis must be -2
TfIdfVectorizer | N | |
ThresholdedRelu | Y | FP32 FP16 BF16 |
Tile | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
TopK | Y | FP32 FP16 BF16 INT32 INT64 | sorted must be 1; K must be less than 3840
Transpose | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
Trilu | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
Unique | N | |
Unsqueeze | Y | FP32 FP16 BF16 INT32 INT64 BOOL | axes must be resolvable to a constant
Upsample | Y | FP32 FP16 BF16 |
Where | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
Xor | Y | BOOL |
"""

# Project-specific advice for ops the parser rejects (docs/environment.md).
REWRITE_HINTS: Mapping[str, str] = {
    "CumProd": "rewrite transmittance as exp(-(cumsum(sigma*delta) - sigma*delta)); CumSum is supported",
    "GridSample": "sample 3-D volumes as 2-D planes (tri-plane) or fold the depth axis into the batch",
}

# ONNX TensorProto element types, named as the matrix names them.
_TYPE_NAMES: Mapping[int, str] = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.BFLOAT16: "BF16",
    onnx.TensorProto.DOUBLE: "DOUBLE",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.INT4: "INT4",
    onnx.TensorProto.FLOAT8E4M3FN: "FP8",
    onnx.TensorProto.FLOAT4E2M1: "FP4",
}
# "TensorRT supports the following ONNX data types" (operators.md header).
_TRT_TYPES = frozenset(_TYPE_NAMES)
_DEFAULT_DOMAINS = ("", "ai.onnx")
_RESIZE_MODES = ("nearest", "linear")
_RESIZE_COORD_MODES = ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners")
_RESIZE_NEAREST_MODES = ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil")
_TOPK_MAX_K = 3840


@dataclass(frozen=True)
class OpSupport:
    """One row of the support matrix."""

    op_type: str
    supported: bool
    types: tuple[str, ...]
    restriction: str


def _parse_matrix(text: str) -> dict[str, OpSupport]:
    table: dict[str, OpSupport] = {}
    for line in text.strip().splitlines():
        op, flag, types, restriction = (part.strip() for part in line.split("|", 3))
        table[op] = OpSupport(op, flag == "Y", tuple(types.split()), restriction)
    return table


SUPPORT_MATRIX: Mapping[str, OpSupport] = _parse_matrix(_MATRIX_TEXT)


@dataclass(frozen=True)
class UnsupportedOp:
    """A node TensorRT's ONNX parser is expected to reject, with the reason."""

    op_type: str
    node_name: str
    reason: str


@dataclass
class TrtReport:
    """Result of :func:`check_onnx_for_tensorrt`.

    ``op_counts`` counts every node, subgraph and local-function bodies included (ops from
    other domains are keyed ``domain::Op``). ``unsupported`` lists node-level problems,
    ``model_problems`` graph-level ones (opset, I/O types); ``warnings`` are caveats that may
    or may not fail on a given TensorRT version.
    """

    source: str
    opset: int
    opset_imports: dict[str, int]
    op_counts: dict[str, int]
    unsupported: list[UnsupportedOp] = field(default_factory=list)
    model_problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    matrix: str = MATRIX_SOURCE

    @property
    def ok(self) -> bool:
        """True when nothing is known to make the parser or builder fail."""
        return not self.unsupported and not self.model_problems

    @property
    def unsupported_op_types(self) -> set[str]:
        return {item.op_type for item in self.unsupported}


class _Scope:
    """Names visible inside one graph: types, constants, graph inputs; chained to the outer scope."""

    def __init__(self, graph: onnx.GraphProto, parent: "_Scope | None", path: str):
        self.path = path
        self.types: ChainMap = ChainMap({}, *(parent.types.maps if parent else []))
        self.constants: ChainMap = ChainMap({}, *(parent.constants.maps if parent else []))
        self.graph_inputs: ChainMap = ChainMap({}, *(parent.graph_inputs.maps if parent else []))
        for info in list(graph.input) + list(graph.output) + list(graph.value_info):
            if info.type.HasField("tensor_type"):
                self.types[info.name] = info.type.tensor_type
        for init in graph.initializer:
            self.constants[init.name] = init
            tensor_type = onnx.TypeProto.Tensor(elem_type=init.data_type)
            for dim in init.dims:
                tensor_type.shape.dim.add(dim_value=dim)
            self.types.maps[0].setdefault(init.name, tensor_type)
        if parent is None:
            for info in graph.input:
                if info.name not in self.constants:
                    self.graph_inputs[info.name] = info
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS and node.output:
                self.constants[node.output[0]] = node

    def rank(self, name: str) -> int | None:
        tensor_type = self.types.get(name)
        if tensor_type is None or not tensor_type.HasField("shape"):
            return None
        return len(tensor_type.shape.dim)

    def elem_type(self, name: str) -> int | None:
        tensor_type = self.types.get(name)
        if tensor_type is None or not tensor_type.elem_type:
            return None
        return tensor_type.elem_type

    def dims(self, name: str) -> list[int | None] | None:
        tensor_type = self.types.get(name)
        if tensor_type is None or not tensor_type.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]

    def constant_value(self, name: str):
        """The numpy value of a constant tensor, or None when it is not a plain constant."""
        source = self.constants.get(name)
        if source is None:
            return None
        if isinstance(source, onnx.TensorProto):
            return numpy_helper.to_array(source)
        for attr in source.attribute:
            if attr.name == "value":
                return numpy_helper.to_array(attr.t)
            if attr.name in ("value_int", "value_float"):
                return onnx.helper.get_attribute_value(attr)
            if attr.name in ("value_ints", "value_floats"):
                return list(onnx.helper.get_attribute_value(attr))
        return None


class _Checker:
    def __init__(self, model: onnx.ModelProto, max_opset: int):
        self.model = model
        self.max_opset = max_opset
        self.counts: Counter = Counter()
        self.unsupported: list[UnsupportedOp] = []
        self.model_problems: list[str] = []
        self.warnings: list[str] = []
        self._warned_restrictions: set[str] = set()
        self._warned_types: set[tuple[str, str]] = set()
        self.functions = {(f.domain, f.name): f for f in model.functions}
        self.graph_outputs = {o.name for o in model.graph.output}
        self.opset = _default_opset(model)

    def flag(self, node_path: str, op_type: str, reason: str) -> None:
        self.unsupported.append(UnsupportedOp(op_type, node_path, reason))

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def run(self) -> None:
        self._check_opset()
        root = _Scope(self.model.graph, None, "")
        self._check_graph_io(self.model.graph, root)
        self._walk(self.model.graph, root, set())

    def _check_opset(self) -> None:
        opset = self.opset
        if opset < MATRIX_MIN_OPSET:
            self.model_problems.append(
                f"default-domain opset {opset} is below {MATRIX_MIN_OPSET}, the oldest the TensorRT "
                f"{MATRIX_TRT_VERSION} ONNX parser imports; re-export with opset 17 or 18"
            )
        elif opset > self.max_opset:
            self.model_problems.append(
                f"default-domain opset {opset} is above {self.max_opset}, the newest the targeted TensorRT ONNX "
                f"parser imports; re-export with opset 17 or 18"
            )
        elif opset > PORTABLE_MAX_OPSET:
            self.warn(
                f"opset {opset} > {PORTABLE_MAX_OPSET}: TensorRT 10.0's parser documents opset 9-20 only, so older "
                f"TensorRT 10.x releases (e.g. on JetPack) may reject this model; opset 17/18 is the portable choice"
            )
        for domain, version in _opset_imports(self.model).items():
            if domain not in _DEFAULT_DOMAINS and not any(f.domain == domain for f in self.model.functions):
                self.warn(f"opset import for domain '{domain}' (v{version}): nodes from it need TensorRT plugins")

    def _check_graph_io(self, graph: onnx.GraphProto, scope: _Scope) -> None:
        io = [("graph input", info) for info in graph.input if info.name not in scope.constants]
        io += [("graph output", info) for info in graph.output]
        for kind, info in io:
            elem = info.type.tensor_type.elem_type if info.type.HasField("tensor_type") else 0
            if elem and elem not in _TRT_TYPES:
                self.model_problems.append(
                    f"{kind} '{info.name}' has type {_type_name(elem)}, which TensorRT does not support"
                )
            elif elem == onnx.TensorProto.DOUBLE:
                self.warn(
                    f"{kind} '{info.name}' is DOUBLE: TensorRT has limited DOUBLE support and casts it down to "
                    f"FLOAT (clamping to +-FLT_MAX); export float32"
                )
            if kind == "graph input" and info.type.HasField("tensor_type"):
                dims = info.type.tensor_type.shape.dim
                dynamic = [i for i, d in enumerate(dims) if i > 0 and not d.HasField("dim_value")]
                if dynamic:
                    self.warn(
                        f"graph input '{info.name}' has dynamic non-batch axes {dynamic}: export.tensorrt_build only "
                        f"derives optimization profiles for a dynamic batch axis 0"
                    )
        for init in graph.initializer:
            if init.data_type not in _TRT_TYPES:
                self.model_problems.append(
                    f"initializer '{init.name}' has type {_type_name(init.data_type)}, which TensorRT does not support"
                )
            elif init.data_type == onnx.TensorProto.DOUBLE:
                self.warn(f"initializer '{init.name}' is DOUBLE: TensorRT casts it down to FLOAT with clamping")

    def _walk(self, graph: onnx.GraphProto, scope: _Scope, function_stack: set[tuple[str, str]]) -> None:
        for index, node in enumerate(graph.node):
            name = node.name or f"<{node.op_type}#{index}>"
            path = f"{scope.path}/{name}" if scope.path else name
            self._check_node(node, path, scope, function_stack)

    def _check_node(self, node: onnx.NodeProto, path: str, scope: _Scope, function_stack: set) -> None:
        domain = node.domain
        key = (domain, node.op_type)
        if key in self.functions:
            self.counts[node.op_type if domain in _DEFAULT_DOMAINS else f"{domain}::{node.op_type}"] += 1
            if key not in function_stack:
                body = self.functions[key]
                # Function parameters are renamed per call site, so the body gets a scope of its own.
                fn_scope = _Scope(onnx.helper.make_graph(list(body.node), body.name, [], []), None, f"{path}[fn]")
                self._walk_function(body, fn_scope, function_stack | {key})
            return
        if domain not in _DEFAULT_DOMAINS:
            self.counts[f"{domain}::{node.op_type}"] += 1
            self.flag(
                path, node.op_type,
                f"custom-domain op '{domain}::{node.op_type}' is not in the onnx-tensorrt matrix; the parser only "
                f"accepts it through a registered TensorRT plugin of that name",
            )
            return
        self.counts[node.op_type] += 1
        support = SUPPORT_MATRIX.get(node.op_type)
        if support is None or not support.supported:
            where = "marked unsupported (N) in" if support else "not in"
            reason = f"{node.op_type} is {where} the onnx-tensorrt operator matrix"
            hint = REWRITE_HINTS.get(node.op_type)
            self.flag(path, node.op_type, f"{reason}; {hint}" if hint else reason)
        else:
            self._check_types(node, path, scope, support)
            self._check_restrictions(node, path, scope, support)
        self._walk_subgraphs(node, path, scope, function_stack)

    def _walk_function(self, body: onnx.FunctionProto, scope: _Scope, function_stack: set) -> None:
        for index, node in enumerate(body.node):
            name = node.name or f"<{node.op_type}#{index}>"
            self._check_node(node, f"{scope.path}/{name}", scope, function_stack)

    def _walk_subgraphs(self, node: onnx.NodeProto, path: str, scope: _Scope, function_stack: set) -> None:
        for attr in node.attribute:
            graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in graphs:
                sub_scope = _Scope(_infer_subgraph(sub, scope, self.model), scope, f"{path}/{attr.name}")
                self._check_subgraph_types(sub, sub_scope)
                self._walk(sub, sub_scope, function_stack)

    def _check_subgraph_types(self, graph: onnx.GraphProto, scope: _Scope) -> None:
        for init in graph.initializer:
            if init.data_type not in _TRT_TYPES:
                self.flag(scope.path, "", f"subgraph initializer '{init.name}' has unsupported type "
                                          f"{_type_name(init.data_type)}")

    def _check_types(self, node: onnx.NodeProto, path: str, scope: _Scope, support: OpSupport) -> None:
        for out in node.output:
            elem = scope.elem_type(out) if out else None
            if elem is None:
                continue
            if elem not in _TRT_TYPES:
                self.flag(path, node.op_type, f"output '{out}' has type {_type_name(elem)}, which TensorRT "
                                              f"does not support")
            elif elem == onnx.TensorProto.DOUBLE:
                self.warn(f"{path}: output '{out}' is DOUBLE; TensorRT casts DOUBLE down to FLOAT with clamping")
            elif elem == onnx.TensorProto.UINT8 and node.op_type != "Cast" and out not in self.graph_outputs:
                self.warn(f"{path}: UINT8 tensor '{out}' away from network I/O; TensorRT supports UINT8 only as "
                          f"network input/output")
        data = node.input[0] if node.input else ""
        elem = scope.elem_type(data) if data else None
        type_name = _TYPE_NAMES.get(elem) if elem else None
        if type_name and type_name != "DOUBLE" and support.types and type_name not in support.types:
            key = (node.op_type, type_name)
            if key not in self._warned_types:
                self._warned_types.add(key)
                self.warn(f"{node.op_type} on {type_name} input (first at {path}) is outside the documented types "
                          f"{', '.join(support.types)}")

    def _check_restrictions(self, node: onnx.NodeProto, path: str, scope: _Scope, support: OpSupport) -> None:
        op = node.op_type
        check = _RESTRICTION_CHECKS.get(op)
        if check is None and op.startswith("Reduce"):
            check = _check_reduce
        if check is not None:
            check(self, node, path, scope)
        elif support.restriction and op not in self._warned_restrictions:
            self._warned_restrictions.add(op)
            self.warn(f"{op} (first at {path}): documented restriction not checked here: {support.restriction}")

    def require_constant(self, node: onnx.NodeProto, path: str, scope: _Scope, index: int, what: str) -> None:
        """Flag an input the matrix requires to be a build-time constant."""
        if len(node.input) <= index or not node.input[index]:
            return
        name = node.input[index]
        if name in scope.constants:
            return
        if name in scope.graph_inputs:
            self.flag(path, node.op_type, f"{what} '{name}' is a graph input, but must be a build-time constant")
        else:
            self.warn(f"{path}: {node.op_type} {what} '{name}' is computed; TensorRT needs it to fold to a "
                      f"build-time constant")


def _attr(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            value = onnx.helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _check_gridsample(checker: _Checker, node, path, scope) -> None:
    rank = scope.rank(node.input[0])
    if rank is None:
        checker.warn(f"{path}: GridSample input rank unknown after shape inference; TensorRT supports 4-D only")
    elif rank != 4:
        checker.flag(path, "GridSample", f"GridSample input '{node.input[0]}' is {rank}-D; TensorRT supports 4-D "
                                         f"input only; {REWRITE_HINTS['GridSample']}")
    if checker.opset > GRIDSAMPLE_PREFERRED_OPSET:
        checker.warn(f"GridSample at opset {checker.opset}: export with opset {GRIDSAMPLE_PREFERRED_OPSET} "
                     f"(GridSample-20 generalised the op and renamed its modes; TensorRT is validated on the 4-D form)")


def _check_cumsum(checker: _Checker, node, path, scope) -> None:
    checker.require_constant(node, path, scope, 1, "axis")


def _check_pool(checker: _Checker, node, path, scope) -> None:
    kernel = _attr(node, "kernel_shape", [])
    if kernel and len(kernel) not in (2, 3):
        checker.flag(path, node.op_type, f"{len(kernel)}-D pooling; TensorRT supports 2-D or 3-D pooling only")
    dilations = _attr(node, "dilations", [])
    if dilations and any(d != 1 for d in dilations):
        checker.flag(path, node.op_type, f"dilations {list(dilations)}; TensorRT needs empty or all-ones dilations")
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
        checker.flag(path, "MaxPool", "the Indices output of MaxPool is unsupported")


def _check_resize(checker: _Checker, node, path, scope) -> None:
    mode = _attr(node, "mode", "nearest")
    coord = _attr(node, "coordinate_transformation_mode", "half_pixel")
    nearest = _attr(node, "nearest_mode", "round_prefer_floor")
    reasons = []
    if mode not in _RESIZE_MODES:
        reasons.append(f"mode '{mode}' (supported: {', '.join(_RESIZE_MODES)})")
    if coord not in _RESIZE_COORD_MODES:
        reasons.append(f"coordinate_transformation_mode '{coord}'")
    if mode == "nearest" and nearest not in _RESIZE_NEAREST_MODES:
        reasons.append(f"nearest_mode '{nearest}'")
    if _attr(node, "antialias", 0):
        reasons.append("antialias=1")
    if _attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
        reasons.append("keep_aspect_ratio_policy other than stretch")
    axes = _attr(node, "axes")
    rank = scope.rank(node.input[0]) if node.input else None
    if axes is not None and rank is not None and sorted(a % rank for a in axes) != list(range(rank)):
        reasons.append(f"axes {list(axes)} is not an iota over all {rank} axes")
    for reason in reasons:
        checker.flag(path, "Resize", f"Resize with {reason} is unsupported")


def _check_topk(checker: _Checker, node, path, scope) -> None:
    if _attr(node, "sorted", 1) != 1:
        checker.flag(path, "TopK", "TopK requires sorted=1")
    if len(node.input) > 1:
        k = scope.constant_value(node.input[1])
        if k is None:
            checker.require_constant(node, path, scope, 1, "K")
        elif int(np.max(k)) >= _TOPK_MAX_K:
            checker.flag(path, "TopK", f"K={int(np.max(k))} must be less than {_TOPK_MAX_K}")


def _check_dropout(checker: _Checker, node, path, scope) -> None:
    if len(node.input) > 2 and node.input[2]:
        value = scope.constant_value(node.input[2])
        if value is None:
            checker.flag(path, "Dropout", "training_mode must be an initializer that evaluates to False")
        elif np.any(value):
            checker.flag(path, "Dropout", "training_mode is True; TensorRT only supports inference-mode Dropout")


def _check_layernorm(checker: _Checker, node, path, scope) -> None:
    if any(node.output[1:]):
        checker.flag(path, "LayerNormalization", "only the first output Y of LayerNormalization is supported")


def _check_lstm(checker: _Checker, node, path, scope) -> None:
    if _attr(node, "input_forget", 0) != 0:
        checker.flag(path, "LSTM", "input_forget must be 0")
    if _attr(node, "layout", 0) != 0:
        checker.flag(path, "LSTM", "layout must be 0")
    if _attr(node, "direction", "forward") == "bidirectional":
        checker.warn(f"{path}: bidirectional LSTM needs the same activations in both directions")


def _check_scatternd(checker: _Checker, node, path, scope) -> None:
    if _attr(node, "reduction", "none") != "none":
        checker.flag(path, "ScatterND", f"reduction '{_attr(node, 'reduction')}' is unsupported (only none)")


def _check_reduce(checker: _Checker, node, path, scope) -> None:
    checker.require_constant(node, path, scope, 1, "axes")


def _check_axes_input(checker: _Checker, node, path, scope) -> None:
    checker.require_constant(node, path, scope, 1, "axes")


def _check_onehot(checker: _Checker, node, path, scope) -> None:
    checker.require_constant(node, path, scope, 1, "depth")


def _check_eyelike(checker: _Checker, node, path, scope) -> None:
    dims = scope.dims(node.input[0])
    if dims is None or any(d is None for d in dims):
        checker.warn(f"{path}: EyeLike input must have static dimensions (dynamic or unknown here)")


def _check_constant(checker: _Checker, node, path, scope) -> None:
    for name in ("sparse_value", "value_string", "value_strings"):
        if _attr(node, name) is not None:
            checker.flag(path, "Constant", f"Constant with attribute '{name}' is unsupported")


def _check_if(checker: _Checker, node, path, scope) -> None:
    then_branch, else_branch = _attr(node, "then_branch"), _attr(node, "else_branch")
    if then_branch is None or else_branch is None:
        return
    shared = {o.name for o in then_branch.output} & {o.name for o in else_branch.output}
    if shared:
        checker.flag(path, "If", f"then/else branch outputs share names {sorted(shared)}; they must differ")
    for then_out, else_out in zip(then_branch.output, else_branch.output):
        ranks = [len(o.type.tensor_type.shape.dim) if o.type.tensor_type.HasField("shape") else None
                 for o in (then_out, else_out)]
        if None not in ranks and ranks[0] != ranks[1]:
            checker.flag(path, "If", f"branch outputs '{then_out.name}'/'{else_out.name}' have ranks {ranks}; "
                                     f"they must have the same rank")


def _check_loop(checker: _Checker, node, path, scope) -> None:
    body = _attr(node, "body")
    carried = max(len(node.input) - 2, 0)
    has_scan_outputs = body is not None and len(body.output) - 1 > carried
    trip_count = node.input[0] if node.input else ""
    if has_scan_outputs and (not trip_count or trip_count not in scope.constants):
        checker.warn(f"{path}: Loop has scan outputs but no constant trip count; TensorRT needs a static scan "
                     f"output length")


def _check_zero_point(checker: _Checker, node, path, scope) -> None:
    if len(node.input) > 2 and node.input[2]:
        value = scope.constant_value(node.input[2])
        if value is not None and np.any(value):
            checker.flag(path, node.op_type, "zero point must be 0")


def _check_stft(checker: _Checker, node, path, scope) -> None:
    for index, what in ((1, "frame_step"), (2, "window")):
        if len(node.input) > index and node.input[index] and node.input[index] not in scope.constants:
            checker.flag(path, "STFT", f"{what} must be an initializer")


_RESTRICTION_CHECKS = {
    "GridSample": _check_gridsample,
    "CumSum": _check_cumsum,
    "AveragePool": _check_pool,
    "MaxPool": _check_pool,
    "LpPool": _check_pool,
    "Resize": _check_resize,
    "TopK": _check_topk,
    "Dropout": _check_dropout,
    "LayerNormalization": _check_layernorm,
    "LSTM": _check_lstm,
    "ScatterND": _check_scatternd,
    "Squeeze": _check_axes_input,
    "Unsqueeze": _check_axes_input,
    "OneHot": _check_onehot,
    "EyeLike": _check_eyelike,
    "Constant": _check_constant,
    "If": _check_if,
    "Loop": _check_loop,
    "QuantizeLinear": _check_zero_point,
    "DequantizeLinear": _check_zero_point,
    "STFT": _check_stft,
}


def _type_name(elem: int) -> str:
    try:
        return onnx.TensorProto.DataType.Name(elem)
    except ValueError:
        return f"type#{elem}"


def _opset_imports(model: onnx.ModelProto) -> dict[str, int]:
    return {imp.domain: imp.version for imp in model.opset_import}


def _default_opset(model: onnx.ModelProto) -> int:
    imports = _opset_imports(model)
    return imports.get("", imports.get("ai.onnx", 0))


def _load(path_or_model: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model, path_or_model.graph.name or "<in-memory model>"
    path = Path(path_or_model)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    return onnx.load(str(path), load_external_data=False), str(path)


def _infer(model: onnx.ModelProto, warnings: list[str]) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # shape inference is best effort: unknown ops or >2 GB protos
        warnings.append(f"shape inference failed ({type(exc).__name__}: {exc}); rank checks are incomplete")
        return model


def _names_in(graph: onnx.GraphProto) -> tuple[set[str], set[str]]:
    """(names read, names defined) anywhere in ``graph``, nested subgraphs included."""
    used: set[str] = set()
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    for node in graph.node:
        used.update(n for n in node.input if n)
        defined.update(n for n in node.output if n)
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                sub_used, sub_defined = _names_in(sub)
                used |= sub_used
                defined |= sub_defined
    used.update(o.name for o in graph.output)
    return used, defined


def _infer_subgraph(graph: onnx.GraphProto, scope: _Scope, model: onnx.ModelProto) -> onnx.GraphProto:
    """``graph`` with value_info filled in by running shape inference on it as a model.

    onnx's shape inference does not store the types it infers inside If/Loop/Scan bodies,
    so the body is wrapped as a standalone model whose extra inputs are the outer-scope
    tensors it reads, typed from ``scope``. Falls back to ``graph`` unchanged on failure.
    """
    used, defined = _names_in(graph)
    outer = []
    for name in sorted(used - defined):
        tensor_type = scope.types.get(name)
        if tensor_type is not None:
            outer.append(onnx.helper.make_value_info(name, onnx.TypeProto(tensor_type=tensor_type)))
    wrapped = onnx.helper.make_model(
        onnx.helper.make_graph(
            list(graph.node), graph.name or "subgraph", list(graph.input) + outer, list(graph.output),
            initializer=list(graph.initializer), value_info=list(graph.value_info),
        ),
        opset_imports=list(model.opset_import),
        functions=list(model.functions),
        ir_version=model.ir_version,
    )
    try:
        inferred = onnx.shape_inference.infer_shapes(wrapped, strict_mode=False, data_prop=True)
    except Exception:  # best effort, as for the main graph
        return graph
    result = onnx.GraphProto()
    result.CopyFrom(graph)
    known = {v.name for v in result.value_info}
    result.value_info.extend(v for v in inferred.graph.value_info if v.name not in known)
    del result.output[:]
    result.output.extend(inferred.graph.output)
    return result


def check_onnx_for_tensorrt(
    path_or_model: str | Path | onnx.ModelProto, *, max_opset: int = MATRIX_MAX_OPSET
) -> TrtReport:
    """Report what TensorRT's ONNX parser would reject in ``path_or_model``.

    ``max_opset`` is the newest default-domain opset the target parser accepts (24 for the
    TensorRT 10.15 matrix; pass 20 to target TensorRT 10.0-era parsers). External weights
    are not loaded: only names, types and shapes are needed.
    """
    model, source = _load(path_or_model)
    early_warnings: list[str] = []
    inferred = _infer(model, early_warnings)
    checker = _Checker(inferred, max_opset)
    checker.warnings.extend(early_warnings)
    checker.run()
    return TrtReport(
        source=source,
        opset=checker.opset,
        opset_imports=_opset_imports(model),
        op_counts=dict(sorted(checker.counts.items())),
        unsupported=checker.unsupported,
        model_problems=checker.model_problems,
        warnings=checker.warnings,
    )


def format_report(report: TrtReport) -> str:
    """Human-readable multi-line summary for the command line."""
    status = "OK: no known TensorRT parser blockers" if report.ok else "NOT SUPPORTED by TensorRT as is"
    lines = [
        f"TensorRT ONNX check: {report.source}",
        f"  table: {report.matrix} (opset {MATRIX_MIN_OPSET}-{MATRIX_MAX_OPSET})",
        f"  opset: {report.opset}" + "".join(
            f", {d}={v}" for d, v in sorted(report.opset_imports.items()) if d not in _DEFAULT_DOMAINS
        ),
        f"  result: {status}",
        f"  ops ({sum(report.op_counts.values())} nodes, {len(report.op_counts)} types):",
    ]
    lines += [f"    {op:<28} {count:>6}" for op, count in report.op_counts.items()]
    if report.model_problems:
        lines.append(f"  model problems ({len(report.model_problems)}):")
        lines += [f"    - {problem}" for problem in report.model_problems]
    if report.unsupported:
        lines.append(f"  unsupported nodes ({len(report.unsupported)}):")
        lines += [f"    - [{u.op_type or '-'}] {u.node_name}: {u.reason}" for u in report.unsupported]
    if report.warnings:
        lines.append(f"  warnings ({len(report.warnings)}):")
        lines += [f"    - {warning}" for warning in report.warnings]
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m export.trt_support model.onnx [...]``: exit 1 when any model has blockers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--max-opset", type=int, default=MATRIX_MAX_OPSET)
    args = parser.parse_args(list(argv) if argv is not None else None)
    failed = False
    for path in args.models:
        report = check_onnx_for_tensorrt(path, max_opset=args.max_opset)
        print(format_report(report))
        failed |= not report.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
