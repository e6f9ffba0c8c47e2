"""TensorRT stage: ONNX support check (runs everywhere) and engine build/refit/run (only where TensorRT imports)."""

from __future__ import annotations

import io
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export import tensorrt_build as tb
from export.trt_support import (
    MATRIX_MAX_OPSET,
    SUPPORT_MATRIX,
    check_onnx_for_tensorrt,
    format_report,
    main,
)

REPO = Path(__file__).resolve().parents[1]
TRT_SKIP_REASON = "TensorRT not installed (no wheels on this machine; see docs)"


def _vi(name, elem=TensorProto.FLOAT, shape=None):
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes, inputs, outputs, initializers=(), opset=17, functions=(), extra_opsets=()):
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset), *extra_opsets]
    model = helper.make_model(graph, opset_imports=opsets, functions=list(functions))
    model.ir_version = 8 if not functions else 10
    return model


def _problems(report):
    return sorted((u.op_type, u.node_name) for u in report.unsupported)


def _clean_conv_relu(batch="N", opset=17, seed=0):
    """Conv(3->4, 3x3) + Relu on a dynamic-batch 3x8x8 input."""
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "conv.weight")
    bias = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "conv.bias")
    nodes = [
        helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    return _model(nodes, [_vi("x", shape=[batch, 3, 8, 8])], [_vi("y", shape=[batch, 4, 8, 8])], [weight, bias], opset)


# --- support matrix -----------------------------------------------------------------------


def test_matrix_encodes_the_documented_rows():
    assert len(SUPPORT_MATRIX) > 180
    assert "CumProd" not in SUPPORT_MATRIX
    assert SUPPORT_MATRIX["CumSum"].supported and "constant" in SUPPORT_MATRIX["CumSum"].restriction
    assert SUPPORT_MATRIX["GridSample"].types == ("FP32", "FP16")
    assert "4-D" in SUPPORT_MATRIX["GridSample"].restriction
    assert not SUPPORT_MATRIX["NonMaxSuppression"].restriction
    assert not SUPPORT_MATRIX["Unique"].supported and not SUPPORT_MATRIX["SequenceAt"].supported
    assert MATRIX_MAX_OPSET == 24
    allowed = {"FP32", "FP16", "BF16", "FP8", "FP4", "INT4", "INT8", "INT32", "INT64", "UINT8", "BOOL"}
    for row in SUPPORT_MATRIX.values():
        assert set(row.types) <= allowed, row
        assert row.supported or not row.types, row


# --- graphs that TensorRT's parser rejects -------------------------------------------------------


def test_cumprod_is_reported_with_node_name_and_rewrite_hint():
    axis = numpy_helper.from_array(np.array(1, dtype=np.int64), "axis")
    model = _model([helper.make_node("CumProd", ["x", "axis"], ["y"], name="transmittance")],
                   [_vi("x", shape=[2, 16])], [_vi("y", shape=[2, 16])], [axis], opset=17)
    report = check_onnx_for_tensorrt(model)
    assert _problems(report) == [("CumProd", "transmittance")]
    assert "cumsum" in report.unsupported[0].reason
    assert not report.ok and report.model_problems == []
    assert report.op_counts == {"CumProd": 1}


def test_gridsample_5d_input_is_unsupported_4d_is_fine():
    five_d = _model([helper.make_node("GridSample", ["vol", "grid"], ["y"], name="sample_volume")],
                    [_vi("vol", shape=[1, 8, 4, 4, 4]), _vi("grid", shape=[1, 2, 2, 2, 3])], [_vi("y")], opset=20)
    report = check_onnx_for_tensorrt(five_d)
    assert _problems(report) == [("GridSample", "sample_volume")]
    assert "5-D" in report.unsupported[0].reason
    assert any("opset 18" in w for w in report.warnings)

    four_d = _model([helper.make_node("GridSample", ["feat", "grid"], ["y"], name="sample_plane")],
                    [_vi("feat", shape=[1, 8, 4, 4]), _vi("grid", shape=[1, 5, 5, 2])], [_vi("y")], opset=18)
    report = check_onnx_for_tensorrt(four_d)
    assert report.ok and report.warnings == []


def test_gridsample_rank_comes_from_shape_inference():
    axes = numpy_helper.from_array(np.array([2], dtype=np.int64), "axes")
    nodes = [
        helper.make_node("Unsqueeze", ["feat", "axes"], ["vol"], name="to_volume"),
        helper.make_node("GridSample", ["vol", "grid"], ["y"], name="sample"),
    ]
    model = _model(nodes, [_vi("feat", shape=[1, 8, 4, 4]), _vi("grid", shape=[1, 2, 2, 2, 3])], [_vi("y")],
                   [axes], opset=18)
    assert _problems(check_onnx_for_tensorrt(model)) == [("GridSample", "sample")]


def test_unsupported_ops_inside_if_and_loop_subgraphs():
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [2])
    then_branch = helper.make_graph(
        [helper.make_node("Unsqueeze", ["feat", "axes"], ["vol"], name="lift"),
         helper.make_node("GridSample", ["vol", "grid"], ["t"], name="gs3d")],
        "then", [], [_vi("t")], initializer=[axes])
    else_branch = helper.make_graph(
        [helper.make_node("CumProd", ["sigma", "cum_axis"], ["e"], name="cp")], "else", [], [_vi("e")])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going"),
         helper.make_node("Unique", ["acc_in"], ["acc_out"], name="uniq")],
        "body", [_vi("i", TensorProto.INT64, []), _vi("cond_in", TensorProto.BOOL, []), _vi("acc_in", shape=[4])],
        [_vi("cond_out", TensorProto.BOOL, []), _vi("acc_out", shape=[4])])
    nodes = [
        helper.make_node("If", ["flag"], ["branch_out"], name="choose", then_branch=then_branch,
                         else_branch=else_branch),
        helper.make_node("Loop", ["trips", "flag", "acc0"], ["acc_final"], name="repeat", body=body),
    ]
    inputs = [_vi("flag", TensorProto.BOOL, []), _vi("feat", shape=[1, 2, 4, 4]), _vi("grid", shape=[1, 2, 2, 2, 3]),
              _vi("sigma", shape=[16]), _vi("acc0", shape=[4])]
    inits = [numpy_helper.from_array(np.array(3, dtype=np.int64), "trips"),
             numpy_helper.from_array(np.array(0, dtype=np.int64), "cum_axis")]
    report = check_onnx_for_tensorrt(_model(nodes, inputs, [_vi("branch_out"), _vi("acc_final")], inits))
    assert _problems(report) == [
        ("CumProd", "choose/else_branch/cp"),
        ("GridSample", "choose/then_branch/gs3d"),
        ("Unique", "repeat/body/uniq"),
    ]
    assert report.op_counts["Unsqueeze"] == 1 and report.op_counts["If"] == 1 and report.op_counts["Loop"] == 1


def test_unsupported_op_inside_scan_body():
    body = helper.make_graph(
        [helper.make_node("Add", ["state_in", "row"], ["state_out"], name="accumulate"),
         helper.make_node("IsInf", ["row"], ["inf"], name="check"),
         helper.make_node("Det", ["square"], ["det"], name="determinant"),
         helper.make_node("Identity", ["state_out"], ["scan_out"], name="emit")],
        "scan_body", [_vi("state_in", shape=[3]), _vi("row", shape=[3])],
        [_vi("state_out", shape=[3]), _vi("scan_out", shape=[3])])
    node = helper.make_node("Scan", ["init", "rows"], ["final", "all"], name="scan", body=body,
                            num_scan_inputs=1)
    model = _model([node], [_vi("init", shape=[3]), _vi("rows", shape=[5, 3]), _vi("square", shape=[3, 3])],
                   [_vi("final"), _vi("all")])
    assert _problems(check_onnx_for_tensorrt(model)) == [("Det", "scan/body/determinant")]


def test_ops_outside_the_table_and_custom_domains():
    nodes = [
        helper.make_node("NoSuchOp", ["x"], ["a"], name="mystery"),
        helper.make_node("FusedThing", ["a"], ["y"], name="vendor", domain="com.example"),
    ]
    model = _model(nodes, [_vi("x", shape=[2])], [_vi("y")], extra_opsets=[helper.make_opsetid("com.example", 1)])
    report = check_onnx_for_tensorrt(model)
    assert _problems(report) == [("FusedThing", "vendor"), ("NoSuchOp", "mystery")]
    assert "not in the onnx-tensorrt operator matrix" in report.unsupported[0].reason
    assert "plugin" in report.unsupported[1].reason
    assert report.op_counts == {"NoSuchOp": 1, "com.example::FusedThing": 1}


def test_local_function_bodies_are_walked_not_flagged():
    function = helper.make_function(
        "my.fn", "Transmittance", ["s"], ["t"],
        [helper.make_node("Constant", [], ["ax"], value=helper.make_tensor("v", TensorProto.INT64, [], [0])),
         helper.make_node("CumProd", ["s", "ax"], ["t"], name="inner_cp")],
        [helper.make_opsetid("", 17)])
    model = _model([helper.make_node("Transmittance", ["x"], ["y"], name="call", domain="my.fn")],
                   [_vi("x", shape=[8])], [_vi("y")], functions=[function],
                   extra_opsets=[helper.make_opsetid("my.fn", 1)])
    report = check_onnx_for_tensorrt(model)
    assert _problems(report) == [("CumProd", "call[fn]/inner_cp")]
    assert report.op_counts == {"Constant": 1, "CumProd": 1, "my.fn::Transmittance": 1}


def test_opset_limits():
    too_new = check_onnx_for_tensorrt(_clean_conv_relu(opset=MATRIX_MAX_OPSET + 1))
    assert too_new.unsupported == [] and len(too_new.model_problems) == 1
    assert f"opset {MATRIX_MAX_OPSET + 1}" in too_new.model_problems[0]
    recent = check_onnx_for_tensorrt(_clean_conv_relu(opset=21))
    assert recent.ok and any("opset 9-20" in w for w in recent.warnings)
    assert not check_onnx_for_tensorrt(_clean_conv_relu(opset=21), max_opset=20).ok
    assert not check_onnx_for_tensorrt(_clean_conv_relu(opset=8)).ok


def test_dtype_restrictions():
    double = _model([helper.make_node("Cast", ["x"], ["y"], name="to_float", to=TensorProto.FLOAT)],
                    [_vi("x", TensorProto.DOUBLE, [2])], [_vi("y", shape=[2])])
    report = check_onnx_for_tensorrt(double)
    assert report.ok and any("DOUBLE" in w and "'x'" in w for w in report.warnings)

    int16 = _model([helper.make_node("Identity", ["x"], ["y"], name="id")],
                   [_vi("x", TensorProto.INT16, [2])], [_vi("y", TensorProto.INT16, [2])])
    report = check_onnx_for_tensorrt(int16)
    assert not report.ok and any("INT16" in p for p in report.model_problems)
    assert _problems(report) == [("Identity", "id")]

    computed = _model([helper.make_node("Cast", ["x"], ["d"], name="to_i16", to=TensorProto.INT16),
                       helper.make_node("Cast", ["d"], ["y"], name="back", to=TensorProto.FLOAT)],
                      [_vi("x", shape=[2])], [_vi("y", shape=[2])])
    assert _problems(check_onnx_for_tensorrt(computed)) == [("Cast", "to_i16")]


def test_documented_restrictions_decided_from_the_graph():
    nodes = [
        helper.make_node("CumSum", ["x", "axis_in"], ["c"], name="cumsum_dynamic_axis"),
        helper.make_node("Resize", ["img", "", "scales"], ["r"], name="bicubic", mode="cubic"),
        helper.make_node("MaxPool", ["img"], ["p", "idx"], name="pool_with_indices", kernel_shape=[2, 2]),
        helper.make_node("Resize", ["img", "", "scales"], ["r2"], name="bilinear", mode="linear"),
    ]
    inputs = [_vi("x", shape=[2, 5]), _vi("axis_in", TensorProto.INT64, []), _vi("img", shape=[1, 3, 8, 8])]
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "scales")
    outputs = [_vi("c"), _vi("r"), _vi("p"), _vi("idx", TensorProto.INT64), _vi("r2")]
    report = check_onnx_for_tensorrt(_model(nodes, inputs, outputs, [scales]))
    assert _problems(report) == [
        ("CumSum", "cumsum_dynamic_axis"), ("MaxPool", "pool_with_indices"), ("Resize", "bicubic")]


def test_dynamic_non_batch_axes_warn():
    report = check_onnx_for_tensorrt(_model([helper.make_node("Relu", ["x"], ["y"], name="r")],
                                            [_vi("x", shape=["N", 3, "H", "W"])], [_vi("y")]))
    assert report.ok and any("dynamic non-batch axes [2, 3]" in w for w in report.warnings)


# --- graphs that TensorRT accepts -------------------------------------------------------------


def test_clean_conv_relu_dynamic_batch_has_no_problems(tmp_path):
    path = tmp_path / "clean.onnx"
    onnx.save(_clean_conv_relu(), path)
    report = check_onnx_for_tensorrt(path)
    assert report.ok and report.unsupported == [] and report.model_problems == [] and report.warnings == []
    assert report.opset == 17 and report.op_counts == {"Conv": 1, "Relu": 1}
    assert report.source == str(path)


def test_torch_grid_sample_and_cumsum_export_is_supported():
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional

    class Renderer(torch.nn.Module):
        def forward(self, planes, grid, sigma):
            features = functional.grid_sample(planes, grid, mode="bilinear", padding_mode="zeros",
                                              align_corners=False)
            sigma_delta = sigma * 0.1
            transmittance = torch.exp(-(torch.cumsum(sigma_delta, dim=-1) - sigma_delta))
            return features, transmittance

    args = (torch.randn(2, 4, 8, 8), torch.rand(2, 5, 5, 2) * 2 - 1, torch.rand(2, 16))
    buffer = io.BytesIO()
    torch.onnx.export(Renderer(), args, buffer, opset_version=17, dynamo=False,
                      input_names=["planes", "grid", "sigma"], output_names=["features", "transmittance"],
                      dynamic_axes={"planes": {0: "batch"}, "grid": {0: "batch"}, "sigma": {0: "batch"}})
    report = check_onnx_for_tensorrt(onnx.load_from_string(buffer.getvalue()))
    assert report.ok, format_report(report)
    assert report.warnings == []
    assert report.op_counts["GridSample"] == 1 and report.op_counts["CumSum"] == 1


def test_format_report_and_cli(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    axis = numpy_helper.from_array(np.array(0, dtype=np.int64), "axis")
    onnx.save(_model([helper.make_node("CumProd", ["x", "axis"], ["y"], name="cp")], [_vi("x", shape=[4])],
                     [_vi("y")], [axis]), bad)
    text = format_report(check_onnx_for_tensorrt(bad))
    assert "NOT SUPPORTED" in text and "[CumProd] cp:" in text and "operators.md" in text
    good = tmp_path / "good.onnx"
    onnx.save(_clean_conv_relu(), good)
    assert main([str(good)]) == 0
    assert main([str(good), str(bad)]) == 1
    assert "OK: no known TensorRT parser blockers" in capsys.readouterr().out


# --- tensorrt_build without TensorRT ----------------------------------------------------------


def test_profile_shapes_from_graph_inputs(tmp_path):
    weight = numpy_helper.from_array(np.zeros((4,), np.float32), "w")
    model = _model([helper.make_node("Add", ["x", "w"], ["y"]), helper.make_node("Relu", ["cam"], ["c"])],
                   [_vi("x", shape=["batch", 4]), _vi("cam", shape=[1, 25]), _vi("w", shape=[4]),
                    _vi("z", shape=[None, 3, 8])],
                   [_vi("y"), _vi("c")], [weight])
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    profiles = tb.derive_profile_shapes(path, min_batch=1, opt_batch=2, max_batch=8)
    assert profiles == {
        "x": tb.ProfileShape((1, 4), (2, 4), (8, 4)),
        "z": tb.ProfileShape((1, 3, 8), (2, 3, 8), (8, 3, 8)),
    }
    assert tb.derive_profile_shapes(_clean_conv_relu(batch=1)) == {}


def test_profile_shapes_reject_dynamic_spatial_axes_and_bad_ranges():
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", shape=["N", 3, "H", 8])], [_vi("y")])
    with pytest.raises(ValueError, match=r"input 'x' has dynamic non-batch axes \[2\]"):
        tb.derive_profile_shapes(model)
    with pytest.raises(ValueError, match="min_batch <= opt_batch"):
        tb.derive_profile_shapes(_clean_conv_relu(), min_batch=4, opt_batch=2, max_batch=8)


def test_parser_errors_are_described_with_node_names():
    model = _clean_conv_relu()
    issues = [tb.ParserIssue(1, "", "", "UNSUPPORTED_NODE", "no importer"),
              tb.ParserIssue(0, "conv", "Conv", "INVALID_NODE", "bad weights"),
              tb.ParserIssue(-1, "", "", "MODEL_DESERIALIZE_FAILED", "truncated")]
    text = tb.describe_parser_errors(issues, model)
    assert text.splitlines() == [
        "  - node #1 'relu' (Relu): [UNSUPPORTED_NODE] no importer",
        "  - node #0 'conv' (Conv): [INVALID_NODE] bad weights",
        "  - model: [MODEL_DESERIALIZE_FAILED] truncated",
    ]


def test_missing_tensorrt_gives_install_instructions(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    path = tmp_path / "clean.onnx"
    onnx.save(_clean_conv_relu(), path)
    calls = [
        lambda: tb.build_engine(path, tmp_path / "m.engine"),
        lambda: tb.refit_engine(tmp_path / "m.engine", {}),
        lambda: tb.TrtRunner(tmp_path / "m.engine"),
    ]
    for call in calls:
        with pytest.raises(RuntimeError) as info:
            call()
        message = str(info.value)
        assert message.startswith("TensorRT is not installed")
        assert "JetPack" in message and "pip install tensorrt --extra-index-url https://pypi.nvidia.com" in message
    assert not (tmp_path / "m.engine").exists()


def test_build_option_errors_come_before_tensorrt(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ValueError, match="strongly typed"):
        tb.build_engine(tmp_path / "x.onnx", tmp_path / "x.engine", fp16=True, strongly_typed=True)
    with pytest.raises(FileNotFoundError):
        tb.build_engine(tmp_path / "missing.onnx", tmp_path / "x.engine")


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "sub" / "a.engine"
    tb._atomic_write(target, b"first")
    tb._atomic_write(target, memoryview(b"second"))
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["a.engine"]


def test_build_module_imports_neither_torch_nor_tensorrt():
    code = ("import sys, export.tensorrt_build, export.trt_support; "
            "print(sorted(m for m in ('torch', 'tensorrt', 'cuda') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --- tensorrt_build against a recording stand-in for the tensorrt module -----------------------
# The stand-in only mirrors the TensorRT 10 Python names build_engine/refit_engine call, so the
# plumbing (flags, profiles, error text, atomic writes) runs here; TensorRT semantics are tested
# by the GPU-only tests further down.


class _FakeTrt(types.ModuleType):
    def __init__(self, stripped_missing=()):
        super().__init__("tensorrt")
        self.__version__ = "10.99-fake"
        self.calls = {}
        fake = self

        class Logger:
            VERBOSE, WARNING = "VERBOSE", "WARNING"

            def __init__(self, level):
                self.level = level

        class Tensor:
            def __init__(self, name, shape):
                self.name, self.shape = name, shape

        class Network:
            def __init__(self, flags):
                fake.calls["network_flags"] = flags
                self.inputs, self.outputs = [], []

            num_inputs = property(lambda self: len(self.inputs))
            num_outputs = property(lambda self: len(self.outputs))

            def get_input(self, i):
                return self.inputs[i]

            def get_output(self, i):
                return self.outputs[i]

        class ParserError:
            def __init__(self, index, op):
                self.index, self.op = index, op

            def node(self):
                return self.index

            def node_name(self):
                return ""

            def node_operator(self):
                return self.op

            def code(self):
                return "ErrorCode.UNSUPPORTED_NODE"

            def desc(self):
                return f"No importer registered for op: {self.op}"

        class OnnxParser:
            def __init__(self, network, logger):
                self.network, self.errors = network, []

            num_errors = property(lambda self: len(self.errors))

            def get_error(self, i):
                return self.errors[i]

            def parse_from_file(self, path):
                graph = onnx.load(path).graph
                for info in graph.input:
                    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in info.type.tensor_type.shape.dim]
                    self.network.inputs.append(Tensor(info.name, tuple(dims)))
                self.network.outputs = [Tensor(o.name, ()) for o in graph.output]
                self.errors = [ParserError(i, n.op_type) for i, n in enumerate(graph.node) if n.op_type == "CumProd"]
                return not self.errors

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, lo, opt, hi):
                self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

        class Cache:
            def __init__(self, data):
                self.data = data

            def serialize(self):
                return self.data + b"+timings"

        class Config:
            def __init__(self):
                self.flags, self.profiles, self.cache = set(), [], None

            def set_memory_pool_limit(self, pool, size):
                fake.calls["pool"] = (pool, size)

            def set_flag(self, flag):
                self.flags.add(flag)

            def add_optimization_profile(self, profile):
                self.profiles.append(profile.shapes)

            def create_timing_cache(self, data):
                return Cache(data)

            def set_timing_cache(self, cache, ignore_mismatch):
                self.cache = cache

            def get_timing_cache(self):
                return self.cache

        class Builder:
            platform_has_fast_fp16 = True

            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return Network(flags)

            def create_builder_config(self):
                fake.calls["config"] = Config()
                return fake.calls["config"]

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"plan:" + ",".join(sorted(config.flags)).encode()

        class Engine:
            def __init__(self, data):
                self.data, self.refittable = data, b"REFIT" in data
                self.refitted = {}

            def create_serialization_config(self):
                return types.SimpleNamespace(flags=set(), clear_flag=lambda f: None,
                                             set_flag=lambda f: fake.calls.setdefault("ser_flags", []).append(f))

            def serialize_with_config(self, config):
                return b"refitted:" + ",".join(sorted(self.refitted)).encode()

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                return Engine(data) if data.startswith(b"plan:") else None

        class Refitter:
            def __init__(self, engine, logger):
                self.engine, self.pending = engine, {}

            def get_all_weights(self):
                return ["conv.weight", "conv.bias"]

            def get_weights_prototype(self, name):
                return types.SimpleNamespace(size=108 if name == "conv.weight" else 4, dtype="float32")

            def set_named_weights(self, name, weights):
                self.pending[name] = weights
                return True

            def get_missing_weights(self):
                return [n for n in stripped_missing if n not in self.pending]

            def refit_cuda_engine(self):
                self.engine.refitted.update(self.pending)
                return True

        self.Logger, self.Builder, self.OnnxParser, self.Runtime, self.Refitter = Logger, Builder, OnnxParser, Runtime, Refitter
        self.Weights = lambda array: ("weights", array.dtype.name, array.size)
        self.nptype = lambda dtype: np.dtype(dtype).type
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        self.BuilderFlag = types.SimpleNamespace(FP16="FP16", REFIT="REFIT", STRIP_PLAN="STRIP_PLAN",
                                                 REFIT_IDENTICAL="REFIT_IDENTICAL")
        self.SerializationFlag = types.SimpleNamespace(EXCLUDE_WEIGHTS="EXCLUDE_WEIGHTS", INCLUDE_REFIT="INCLUDE_REFIT")


def test_build_engine_plumbing_with_stand_in(tmp_path, monkeypatch):
    fake = _FakeTrt()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    onnx_path = tmp_path / "clean.onnx"
    onnx.save(_clean_conv_relu(), onnx_path)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    info = tb.build_engine(onnx_path, tmp_path / "out" / "m.engine", fp16=True, refit=True, max_batch=4,
                           workspace_gb=0.5, timing_cache=cache)
    assert fake.calls["network_flags"] == 0
    assert fake.calls["pool"] == ("WORKSPACE", 1 << 29)
    assert fake.calls["config"].profiles == [{"x": ((1, 3, 8, 8), (1, 3, 8, 8), (4, 3, 8, 8))}]
    assert info.engine_path.read_bytes() == b"plan:FP16,REFIT"
    assert cache.read_bytes() == b"old+timings"
    assert (info.inputs, info.outputs, info.tensorrt_version) == (["x"], ["y"], "10.99-fake")
    assert [p.name for p in info.engine_path.parent.iterdir()] == ["m.engine"]

    strict = tb.build_engine(onnx_path, tmp_path / "s.engine", fp16=False, strip_weights=True)
    assert fake.calls["network_flags"] == 1 and strict.strongly_typed
    assert strict.engine_path.read_bytes() == b"plan:REFIT_IDENTICAL,STRIP_PLAN"


def test_build_engine_reports_parser_errors_by_node(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", _FakeTrt())
    axis = numpy_helper.from_array(np.array(1, dtype=np.int64), "axis")
    onnx_path = tmp_path / "bad.onnx"
    onnx.save(_model([helper.make_node("Relu", ["x"], ["r"], name="act"),
                      helper.make_node("CumProd", ["r", "axis"], ["y"], name="transmittance")],
                     [_vi("x", shape=["N", 16])], [_vi("y")], [axis]), onnx_path)
    with pytest.raises(tb.TensorRTBuildError) as info:
        tb.build_engine(onnx_path, tmp_path / "bad.engine")
    assert "node #1 'transmittance' (CumProd): [UNSUPPORTED_NODE] No importer registered" in str(info.value)
    assert not (tmp_path / "bad.engine").exists()


def test_refit_engine_plumbing_with_stand_in(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", _FakeTrt(stripped_missing=("conv.weight", "conv.bias")))
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan:REFIT")
    weight = np.ones((4, 3, 3, 3), np.float64)
    with pytest.raises(ValueError, match=r"not refittable in .*\['lora.A'\]"):
        tb.refit_engine(engine, {"lora.A": np.zeros(3)})
    with pytest.raises(ValueError, match="has 3 elements, the engine expects 108"):
        tb.refit_engine(engine, {"conv.weight": np.zeros(3)})
    with pytest.raises(ValueError, match=r"needs 1 more weight\(s\).*conv.bias"):
        tb.refit_engine(engine, {"conv.weight": weight})
    assert engine.read_bytes() == b"plan:REFIT"
    tb.refit_engine(engine, {"conv.weight": weight, "conv.bias": np.zeros(4, np.float32)})
    assert engine.read_bytes() == b"refitted:conv.bias,conv.weight"
    not_refittable = tmp_path / "plain.engine"
    not_refittable.write_bytes(b"plan:FP16")
    with pytest.raises(ValueError, match="build it with refit=True"):
        tb.refit_engine(not_refittable, {})
    garbage = tmp_path / "garbage.engine"
    garbage.write_bytes(b"not a plan")
    with pytest.raises(RuntimeError, match="could not deserialize"):
        tb.refit_engine(garbage, {})


# --- tensorrt_build with TensorRT (GPU machines only) ------------------------------------------


def _onnxruntime_run(model, feeds):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.fixture
def trt_env():
    trt = pytest.importorskip("tensorrt", reason=TRT_SKIP_REASON)
    try:
        tb.import_cudart()
    except RuntimeError:
        pytest.skip("cuda-python not installed (needed by TrtRunner)")
    return trt


@pytest.mark.parametrize("fp16, atol", [(False, 1e-4), (True, 3e-2)])
def test_engine_matches_onnxruntime(trt_env, tmp_path, fp16, atol):
    model = _clean_conv_relu()
    onnx_path = tmp_path / "clean.onnx"
    onnx.save(model, onnx_path)
    info = tb.build_engine(onnx_path, tmp_path / "clean.engine", fp16=fp16, max_batch=4,
                           timing_cache=tmp_path / "timing.cache", workspace_gb=1)
    assert info.profiles["x"].max == (4, 3, 8, 8) and info.outputs == ["y"] and info.strongly_typed == (not fp16)
    assert (tmp_path / "timing.cache").stat().st_size > 0
    rng = np.random.default_rng(1)
    with tb.TrtRunner(info.engine_path) as runner:
        for batch in (1, 3):
            x = rng.standard_normal((batch, 3, 8, 8)).astype(np.float32)
            got = runner({"x": x})["y"]
            np.testing.assert_allclose(got, _onnxruntime_run(model, {"x": x}), atol=atol, rtol=atol)
        with pytest.raises(ValueError, match="outside the engine profile"):
            runner({"x": np.zeros((5, 3, 8, 8), np.float32)})


def test_refit_by_initializer_name_matches_onnxruntime(trt_env, tmp_path):
    original, updated = _clean_conv_relu(seed=0), _clean_conv_relu(seed=1)
    onnx_path = tmp_path / "clean.onnx"
    onnx.save(original, onnx_path)
    engine = tb.build_engine(onnx_path, tmp_path / "clean.engine", fp16=False, refit=True).engine_path
    new_weights = {init.name: numpy_helper.to_array(init) for init in updated.graph.initializer}
    with pytest.raises(ValueError, match="not refittable"):
        tb.refit_engine(engine, {"no_such_weight": np.zeros(3, np.float32)})
    tb.refit_engine(engine, new_weights)
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with tb.TrtRunner(engine) as runner:
        np.testing.assert_allclose(runner({"x": x})["y"], _onnxruntime_run(updated, {"x": x}), atol=1e-4)


def test_weight_stripped_engine_is_filled_from_onnx(trt_env, tmp_path):
    model = _clean_conv_relu()
    onnx_path = tmp_path / "clean.onnx"
    onnx.save(model, onnx_path)
    engine = tb.build_engine(onnx_path, tmp_path / "stripped.engine", fp16=False, strip_weights=True).engine_path
    full = tmp_path / "full.engine"
    tb.refit_engine(engine, {}, onnx_path=onnx_path, out_path=full)
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    with tb.TrtRunner(full) as runner:
        np.testing.assert_allclose(runner({"x": x})["y"], _onnxruntime_run(model, {"x": x}), atol=1e-4)
