"""export/trt_support.py: the TensorRT 10.x / 11.x check of our graphs' operators, without TensorRT.

That it passes on the three exported graphs of every export mode is tested in tests/test_export.py
(`test_tensorrt_op_check_passes_on_every_graph`); here: what it must reject, and the 10.x/11.x rules.
"""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.trt_support import OPERATORS, TARGETS, check_onnx_for_tensorrt, format_report, main
from tests.conftest import REPO


def _vi(name, elem=TensorProto.FLOAT, shape=None):
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes, inputs, outputs, initializers=(), opset=17, extra_opsets=()):
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])
    model.ir_version = 8
    return model


def _problems(report):
    return sorted((u.op_type, u.node_name) for u in report.unsupported)


def _conv_relu(opset=17, dtype=np.float32):
    """Conv(3->4, 3x3) + Relu on a dynamic-batch 3x8x8 input, computing in `dtype`."""
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), dtype), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    return _model(nodes, [_vi("x", elem, ["N", 3, 8, 8])], [_vi("y", elem, ["N", 4, 8, 8])], [weight], opset)


def test_table_holds_only_our_operators_with_documented_rules():
    assert 40 <= len(OPERATORS) <= 60
    assert "CumProd" not in OPERATORS
    assert OPERATORS["GridSample"].types == ("FP32", "FP16") and "4-D" in OPERATORS["GridSample"].restriction
    assert "constant" in OPERATORS["CumSum"].restriction
    assert (TARGETS["10"].max_opset, TARGETS["11"].max_opset) == (20, 24)
    assert TARGETS["10"].weak_typing and not TARGETS["11"].weak_typing


def test_cumprod_fails_naming_node_and_rewrite():
    axis = numpy_helper.from_array(np.array(1, dtype=np.int64), "axis")
    model = _model([helper.make_node("CumProd", ["x", "axis"], ["y"], name="transmittance")],
                   [_vi("x", shape=[2, 16])], [_vi("y", shape=[2, 16])], [axis])
    report = check_onnx_for_tensorrt(model)
    assert not report.ok and _problems(report) == [("CumProd", "transmittance")]
    assert "cumsum" in report.unsupported[0].reason and report.op_counts == {"CumProd": 1}


def test_any_operator_outside_the_table_fails_with_its_name():
    nodes = [helper.make_node("Einsum", ["x", "x"], ["a"], name="mix", equation="i,i->i"),
             helper.make_node("FusedThing", ["a"], ["y"], name="vendor", domain="com.example")]
    model = _model(nodes, [_vi("x", shape=[2])], [_vi("y")], extra_opsets=[helper.make_opsetid("com.example", 1)])
    report = check_onnx_for_tensorrt(model)
    assert _problems(report) == [("Einsum", "mix"), ("FusedThing", "vendor")]
    einsum = next(u for u in report.unsupported if u.op_type == "Einsum")
    assert "Einsum is not among the operators" in einsum.reason and "operators.md" in einsum.reason
    assert "plugin" in next(u for u in report.unsupported if u.op_type == "FusedThing").reason


def test_gridsample_must_be_4d_and_its_rank_comes_from_shape_inference():
    axes = numpy_helper.from_array(np.array([2], dtype=np.int64), "axes")
    nodes = [helper.make_node("Unsqueeze", ["feat", "axes"], ["vol"], name="to_volume"),
             helper.make_node("GridSample", ["vol", "grid"], ["y"], name="sample_volume")]
    five_d = _model(nodes, [_vi("feat", shape=[1, 8, 4, 4]), _vi("grid", shape=[1, 2, 2, 2, 3])], [_vi("y")],
                    [axes], opset=18)
    report = check_onnx_for_tensorrt(five_d)
    assert _problems(report) == [("GridSample", "sample_volume")] and "5-D" in report.unsupported[0].reason
    four_d = _model([helper.make_node("GridSample", ["feat", "grid"], ["y"], name="sample_plane")],
                    [_vi("feat", shape=[1, 8, 4, 4]), _vi("grid", shape=[1, 5, 5, 2])], [_vi("y")], opset=18)
    report = check_onnx_for_tensorrt(four_d)
    assert report.ok and report.warnings == []


def test_axes_and_k_must_be_build_time_constants():
    k = numpy_helper.from_array(np.array([5000], dtype=np.int64), "k")
    nodes = [helper.make_node("CumSum", ["x", "axis_in"], ["c"], name="cumsum_input_axis"),
             helper.make_node("ReduceSum", ["x", "axes_in"], ["s"], name="sum_input_axes"),
             helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk_big_k"),
             helper.make_node("TopK", ["x", "k"], ["v2", "i2"], name="topk_unsorted", sorted=0)]
    inputs = [_vi("x", shape=[2, 8000]), _vi("axis_in", TensorProto.INT64, []), _vi("axes_in", TensorProto.INT64, [1])]
    outputs = [_vi("c"), _vi("s"), _vi("v"), _vi("i", TensorProto.INT64), _vi("v2"), _vi("i2", TensorProto.INT64)]
    report = check_onnx_for_tensorrt(_model(nodes, inputs, outputs, [k], opset=18))
    assert _problems(report) == [("CumSum", "cumsum_input_axis"), ("ReduceSum", "sum_input_axes"),
                                 ("TopK", "topk_big_k"), ("TopK", "topk_unsorted"), ("TopK", "topk_unsorted")]


def test_opset_ranges_of_10x_and_11x():
    assert check_onnx_for_tensorrt(_conv_relu(opset=18)).ok
    report = check_onnx_for_tensorrt(_conv_relu(opset=21))
    assert report.model_problems == [p for p in report.model_problems if p.startswith("TensorRT 10.x")] != []
    assert check_onnx_for_tensorrt(_conv_relu(opset=21), targets=("11",)).ok
    assert not check_onnx_for_tensorrt(_conv_relu(opset=25), targets=("11",)).ok
    assert len(check_onnx_for_tensorrt(_conv_relu(opset=8)).model_problems) == 2
    with pytest.raises(ValueError, match="target"):
        check_onnx_for_tensorrt(_conv_relu(), targets=("9",))


def test_fp16_engine_on_11x_needs_fp16_compute_in_the_graph():
    """11.x is strongly typed only: an FP32 graph (even with FP16 weights cast up) cannot give an FP16 engine."""
    fp32 = _conv_relu()
    assert check_onnx_for_tensorrt(fp32, targets=("10",), fp16=True).ok  # weak typing: BuilderFlag.FP16
    report = check_onnx_for_tensorrt(fp32, targets=("11",), fp16=True)
    assert not report.ok and "strongly typed" in report.model_problems[0]
    weights_only = _model([helper.make_node("Cast", ["w16"], ["w"], name="up", to=TensorProto.FLOAT),
                           helper.make_node("Add", ["x", "w"], ["y"], name="add")],
                          [_vi("x", shape=[4])], [_vi("y", shape=[4])],
                          [numpy_helper.from_array(np.ones(4, np.float16), "w16")])
    assert not check_onnx_for_tensorrt(weights_only, targets=("11",), fp16=True).ok
    assert check_onnx_for_tensorrt(_conv_relu(dtype=np.float16), fp16=True).ok


def test_types_tensorrt_lacks_fail():
    double = _model([helper.make_node("Cast", ["x"], ["y"], name="to_float", to=TensorProto.FLOAT)],
                    [_vi("x", TensorProto.DOUBLE, [2])], [_vi("y", shape=[2])])
    report = check_onnx_for_tensorrt(double)
    assert not report.ok and report.model_problems == ["graph input 'x' is DOUBLE, a type TensorRT does not support"]
    bf16 = _model([helper.make_node("GridSample", ["feat", "grid"], ["y"], name="sample_bf16")],
                  [_vi("feat", TensorProto.BFLOAT16, [1, 8, 4, 4]), _vi("grid", TensorProto.BFLOAT16, [1, 5, 5, 2])],
                  [_vi("y", TensorProto.BFLOAT16)], opset=18)
    report = check_onnx_for_tensorrt(bf16)
    assert _problems(report) == [("GridSample", "sample_bf16")] and "BF16" in report.unsupported[0].reason


def test_torch_grid_sample_and_cumsum_export_passes():
    torch = pytest.importorskip("torch")

    class Renderer(torch.nn.Module):
        def forward(self, planes, grid, sigma):
            features = torch.nn.functional.grid_sample(planes, grid, align_corners=False)
            sigma_delta = sigma * 0.1
            return features, torch.exp(-(torch.cumsum(sigma_delta, dim=-1) - sigma_delta))

    buffer = io.BytesIO()
    torch.onnx.export(Renderer(), (torch.randn(2, 4, 8, 8), torch.rand(2, 5, 5, 2) * 2 - 1, torch.rand(2, 16)),
                      buffer, opset_version=17, dynamo=False, input_names=["planes", "grid", "sigma"],
                      dynamic_axes={"planes": {0: "batch"}, "grid": {0: "batch"}, "sigma": {0: "batch"}})
    report = check_onnx_for_tensorrt(onnx.load_from_string(buffer.getvalue()))
    assert report.ok, format_report(report)
    assert report.op_counts["GridSample"] == 1 and report.op_counts["CumSum"] == 1


def test_report_text_and_command_line(tmp_path, capsys):
    bad, good = tmp_path / "bad.onnx", tmp_path / "good.onnx"
    onnx.save(_model([helper.make_node("CumProd", ["x", "axis"], ["y"], name="cp")], [_vi("x", shape=[4])],
                     [_vi("y")], [numpy_helper.from_array(np.array(0, dtype=np.int64), "axis")]), bad)
    onnx.save(_conv_relu(), good)
    text = format_report(check_onnx_for_tensorrt(bad))
    assert "NOT SUPPORTED" in text and "[CumProd] cp:" in text and "TensorRT 10.x, TensorRT 11.x" in text
    assert main([str(good)]) == 0
    assert main([str(good), str(bad)]) == 1
    assert main([str(good), "--target", "11", "--fp16"]) == 1
    assert "OK: nothing known to fail" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="absent.onnx"):
        check_onnx_for_tensorrt(tmp_path / "absent.onnx")


def test_check_imports_neither_torch_nor_tensorrt():
    code = ("import sys, export.trt_support; "
            "print(sorted(m for m in ('torch', 'tensorrt') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
