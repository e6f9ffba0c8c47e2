"""Execution-provider choice and the I/O-binding path of runtime.session, without a GPU.

What the GPU build reports is simulated by monkeypatching `onnxruntime.get_available_providers` (and, for the
CUDA I/O-binding calls, `onnxruntime.InferenceSession`); the binding code itself also runs for real on the CPU EP
on a small ONNX graph. What only a GPU can show (that CUDA kernels run, that bound tri-planes stay in device memory)
is not tested here.
"""
from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from formats.fingerprint import sha256_file
from runtime import session
from runtime.errors import InvalidRequest
from runtime.session import CPU_EP, CUDA_EP, ENGINE_PROVIDER, TRT_EP, OrtGraph, choose_providers

GPU_BUILD = [TRT_EP, CUDA_EP, "AzureExecutionProvider", CPU_EP]
CPU_BUILD = ["AzureExecutionProvider", CPU_EP]


@pytest.fixture
def build(monkeypatch):
    """Set what onnxruntime reports; the once-per-process fallback message is re-armed for each test."""
    monkeypatch.setattr(session, "_fallback_said", False)

    def set_build(providers: list[str]) -> None:
        monkeypatch.setattr(ort, "get_available_providers", lambda: list(providers))
    return set_build


def test_auto_prefers_tensorrt_then_cuda_when_the_build_has_them(build, caplog):
    build(GPU_BUILD)
    with caplog.at_level(logging.WARNING, "my3dgen.runtime"):
        assert choose_providers("auto") == [TRT_EP, CUDA_EP, CPU_EP]
    assert not caplog.records  # nothing to say: the GPU is used
    build([CUDA_EP, CPU_EP])
    assert choose_providers("auto") == [CUDA_EP, CPU_EP]
    assert choose_providers("gpu") == choose_providers("cuda") == [CUDA_EP, CPU_EP]
    build(GPU_BUILD)
    assert choose_providers("tensorrt") == [TRT_EP, CUDA_EP, CPU_EP]
    assert choose_providers("cpu") == [CPU_EP]
    assert choose_providers([CUDA_EP]) == [CUDA_EP]


@pytest.mark.parametrize("gpu_package", [False, True])
def test_auto_falls_back_to_cpu_and_says_so_once(build, caplog, monkeypatch, gpu_package):
    """Said once; a warning only where onnxruntime-gpu is installed but finds no GPU (on the CPU build: INFO)."""
    monkeypatch.setattr(session, "gpu_build_installed", lambda: gpu_package)
    build(CPU_BUILD)
    with caplog.at_level(logging.INFO, "my3dgen.runtime"):
        assert choose_providers("auto") == [CPU_EP]
        assert choose_providers("auto") == [CPU_EP]
    said = [r for r in caplog.records if r.name == "my3dgen.runtime"]
    assert len(said) == 1, said
    msg = said[0].getMessage()
    assert "run on the CPU" in msg and "onnxruntime-gpu" in msg and "[gpu]" in msg
    assert said[0].levelno == (logging.WARNING if gpu_package else logging.INFO)


def test_asking_for_the_gpu_on_a_cpu_build_names_what_to_install(build):
    build(CPU_BUILD)
    for asked in ("gpu", "cuda", "tensorrt", [CUDA_EP, CPU_EP]):
        with pytest.raises(InvalidRequest) as e:
            choose_providers(asked)
        msg = str(e.value)
        assert e.value.field == "providers" and "onnxruntime-gpu" in msg and "my3dgen-runtime[gpu]" in msg, msg
        assert (TRT_EP if asked == "tensorrt" else CUDA_EP) in msg
    with pytest.raises(InvalidRequest, match="NoSuch") as e:
        choose_providers(["NoSuchExecutionProvider"])
    assert "onnxruntime-gpu" not in str(e.value)  # only a missing GPU provider gets the GPU install hint


def test_engines_lead_only_when_tensorrt_is_usable(build, monkeypatch):
    build([CUDA_EP, CPU_EP])
    monkeypatch.setattr(session, "tensorrt_usable", lambda: False)
    assert choose_providers("auto", engines_present=True) == [CUDA_EP, CPU_EP]
    monkeypatch.setattr(session, "tensorrt_usable", lambda: True)
    assert choose_providers("auto", engines_present=True) == [ENGINE_PROVIDER, CUDA_EP, CPU_EP]


# ---------------------------------------------------------------------------------------------- the graphs

def tiny_graph(path) -> dict:
    """y = x @ W + (a @ b) with overridable defaults a, b (a LoRA-like pair), z = x * 2; its manifest spec."""
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])
    a = helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [4, 2])
    b = helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [2, 4])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("MatMul", ["a", "b"], ["ab"]),
             helper.make_node("MatMul", ["x", "ab"], ["xab"]), helper.make_node("Add", ["xw", "xab"], ["y"]),
             helper.make_node("Add", ["x", "x"], ["z"])]
    inits = [numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4) / 10, "W"),
             numpy_helper.from_array(np.zeros((4, 2), np.float32), "a"),
             numpy_helper.from_array(np.zeros((2, 4), np.float32), "b")]
    outs = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["batch", 4]) for n in ("y", "z")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x, a, b], outs, inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return {"sha256": sha256_file(path), "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]},
                       {"name": "a", "dtype": "float32", "shape": [4, 2], "default": True},
                       {"name": "b", "dtype": "float32", "shape": [2, 4], "default": True}],
            "outputs": [{"name": "y", "dtype": "float32"}, {"name": "z", "dtype": "float32"}]}


def test_cpu_path_is_plain_session_run_and_io_binding_gives_the_same_numbers(tmp_path):
    spec = tiny_graph(tmp_path / "g.onnx")
    plain = OrtGraph("g", spec, tmp_path / "g.onnx", [CPU_EP], 1, None)
    assert plain.provider == CPU_EP and plain.device == "cpu" and plain.io_binding is False
    bound = OrtGraph("g", spec, tmp_path / "g.onnx", [CPU_EP], 1, None, io_binding=True)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    a = np.random.default_rng(1).standard_normal((4, 2)).astype(np.float32)
    b = np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32)
    want = plain.run({"x": x, "a": a, "b": b})
    np.testing.assert_allclose(want["y"], x @ (np.arange(16, dtype=np.float32).reshape(4, 4) / 10 + a @ b),
                               rtol=1e-5, atol=1e-5)
    got = bound.run({"x": x, "a": a, "b": b}, keep_on_device=("z",))
    assert isinstance(got["y"], np.ndarray) and isinstance(got["z"], ort.OrtValue)
    assert np.array_equal(got["y"], want["y"]) and np.array_equal(got["z"].numpy(), want["z"])
    # an OrtValue output is bound straight back in as an input (how cached tri-planes reach the render graph)
    again = bound.run({"x": got["z"]})
    assert np.array_equal(again["z"], 2 * want["z"])
    # defaults: a and b may be left out (the base model), natively replaced by an adapter through RunOptions
    assert np.array_equal(plain.run({"x": x})["y"], x @ (np.arange(16, dtype=np.float32).reshape(4, 4) / 10))
    fmt = ort.AdapterFormat()
    fmt.set_parameters({"a": ort.OrtValue.ortvalue_from_numpy(a), "b": ort.OrtValue.ortvalue_from_numpy(b)})
    fmt.export_adapter(str(tmp_path / "p.onnx_adapter"))
    adapter = ort.LoraAdapter()
    adapter.Load(str(tmp_path / "p.onnx_adapter"))
    options = ort.RunOptions()
    options.add_active_adapter(adapter)
    assert plain.native_adapters and np.array_equal(plain.run({"x": x}, run_options=options)["y"], want["y"])
    # onnxruntime's I/O binding ignores active adapters (it runs the defaults): a bound graph says it takes none,
    # and gets adapter values bound as OrtValues instead (on CUDA: uploaded once, runtime.native_adapters)
    assert not bound.native_adapters
    assert np.array_equal(bound.run({"x": x}, run_options=options)["y"], plain.run({"x": x})["y"])
    values = bound.to_device({"a": a, "b": b, "x": x})
    assert all(isinstance(v, ort.OrtValue) and v.device_name() == "cpu" for v in values.values())
    assert np.array_equal(bound.run(values)["y"], want["y"])
    with pytest.raises(ValueError, match="missing inputs"):
        plain.run({"a": a})


class FakeBinding:
    def __init__(self, calls):
        self.calls = calls

    def bind_cpu_input(self, name, value):
        self.calls.append(("cpu_input", name, type(value).__name__))

    def bind_ortvalue_input(self, name, value):
        self.calls.append(("ortvalue_input", name))

    def bind_output(self, name, device, device_id=0):
        self.calls.append(("output", name, device, device_id))

    def get_outputs(self):
        return [SimpleNamespace(numpy=lambda: np.ones(1, np.float32), where="cuda"),
                SimpleNamespace(numpy=lambda: np.ones(1, np.float32), where="cuda")]


def test_cuda_session_gets_device_options_and_binds_outputs_on_the_device(tmp_path, monkeypatch):
    """The calls a CUDA session would get, on a fake session that reports the CUDA EP."""
    spec = tiny_graph(tmp_path / "g.onnx")
    calls: list = []

    class FakeSession:
        def __init__(self, path, so, providers):
            calls.append(("providers", providers))

        def get_inputs(self):
            return [SimpleNamespace(name="x")]

        def get_overridable_initializers(self):
            return [SimpleNamespace(name="a"), SimpleNamespace(name="b")]

        def get_providers(self):
            return [CUDA_EP, CPU_EP]

        def io_binding(self):
            return FakeBinding(calls)

        def run_with_iobinding(self, binding, run_options=None):
            calls.append(("run_with_iobinding", run_options))

        def run(self, *a, **k):
            raise AssertionError("a CUDA session must run through I/O binding")

    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    g = OrtGraph("g", spec, tmp_path / "g.onnx", [TRT_EP, CUDA_EP, CPU_EP], None, tmp_path / "cache")
    trt, cuda, cpu = calls[0][1]
    assert trt[0] == TRT_EP and trt[1]["device_id"] == 0 and trt[1]["trt_engine_cache_enable"]
    assert cuda == (CUDA_EP, {"device_id": 0}) and cpu == CPU_EP
    assert g.device == "cuda" and g.io_binding and not g.native_adapters
    device_planes = ort.OrtValue.ortvalue_from_numpy(np.zeros((2, 4), np.float32))
    marker = object()
    out = g.run({"x": device_planes, "a": np.zeros((4, 2))}, keep_on_device=("y",), run_options=marker)
    assert ("ortvalue_input", "x") in calls and ("ortvalue_input", "a") in calls  # overridable: never bind_cpu_input
    assert ("output", "y", "cuda", 0) in calls and ("output", "z", "cpu", 0) in calls
    assert ("run_with_iobinding", marker) in calls
    assert getattr(out["y"], "where", None) == "cuda" and isinstance(out["z"], np.ndarray)
