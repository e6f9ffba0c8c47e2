"""export/tensorrt_build.py: profile shapes, errors and the engine build/refit plumbing (a recording stand-in for
the `tensorrt` module), and real engines where TensorRT imports (GPU machines only)."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from formats.fingerprint import sha256_file
from export import tensorrt_build as tb

REPO = Path(__file__).resolve().parents[1]
TRT_SKIP_REASON = "TensorRT not installed (no wheels on this machine; see docs/ENVIRONMENT.md)"


def _vi(name, elem=TensorProto.FLOAT, shape=None):
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


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
    with pytest.raises(ValueError, match="workspace_gb"):
        tb.build_engine(tmp_path / "x.onnx", tmp_path / "x.engine", workspace_gb=0)
    with pytest.raises(FileNotFoundError):
        tb.build_engine(tmp_path / "missing.onnx", tmp_path / "x.engine")


@pytest.mark.parametrize("version, fp16, graph_fp16, typed, flags, engine_fp16", [
    ("10.3.0", True, False, False, ("FP16",), True),      # JetPack 6: weak typing, FP16 kernels by flag
    ("10.15.1", False, False, True, (), False),           # FP32: strongly typed, follows the graph
    ("10.15.1", True, True, True, (), True),              # mixed-precision graph: strongly typed, no flag
    ("11.0.0", False, False, True, (), False),            # 11.x: always strongly typed, never BuilderFlag.FP16
    ("11.4.1", True, True, True, (), True),
])
def test_plan_build_per_version(version, fp16, graph_fp16, typed, flags, engine_fp16):
    plan = tb.plan_build(version, fp16=fp16, graph_fp16=graph_fp16)
    assert (plan.strongly_typed, plan.builder_flags, plan.fp16) == (typed, flags, engine_fp16)
    assert plan.major == int(version.split(".")[0])


def test_plan_build_refuses_what_a_version_cannot_do():
    with pytest.raises(ValueError, match="graph that computes in FP16.*--no-fp16"):
        tb.plan_build("11.2.0", fp16=True, graph_fp16=False)
    with pytest.raises(ValueError, match="strongly typed networks only"):
        tb.plan_build("11.2.0", fp16=False, graph_fp16=False, strongly_typed=False)
    with pytest.raises(ValueError, match="weak typing"):
        tb.plan_build("10.3.0", fp16=True, graph_fp16=False, strongly_typed=True)
    with pytest.raises(ValueError, match="older than 10"):
        tb.plan_build("8.6.1", fp16=False, graph_fp16=False)
    assert tb.plan_build("11.0.0", fp16=False, graph_fp16=False, refit=True).builder_flags == ("REFIT",)
    assert tb.plan_build("10.3.0", fp16=False, graph_fp16=False, strip_weights=True).builder_flags == (
        "STRIP_PLAN", "REFIT_IDENTICAL")


def test_build_module_imports_neither_torch_nor_tensorrt():
    code = ("import sys, export.tensorrt_build, export.trt_support; "
            "print(sorted(m for m in ('torch', 'tensorrt', 'cuda') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --- tensorrt_build against recording stand-ins for the tensorrt module of 10.x and 11.x ---------
# Each stand-in has only the Python names its version documents: the 11.x one has no BuilderFlag.FP16 and no
# Builder.platform_has_fast_fp16 (removed in 11.0), so touching them fails the test. Every API call is recorded
# in `fake.calls`; TensorRT semantics are tested by the GPU-only tests further down.


class _FakeTrt(types.ModuleType):
    def __init__(self, version="10.15.1", stripped_missing=()):
        super().__init__("tensorrt")
        self.__version__ = version
        self.calls = []
        fake = self
        major = int(version.split(".")[0])

        class Logger:
            VERBOSE, WARNING = "VERBOSE", "WARNING"

            def __init__(self, level):
                self.level = level

        class Tensor:
            def __init__(self, name, shape):
                self.name, self.shape = name, shape

        class Network:
            def __init__(self):
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
                fake.calls.append(("parse_from_file", Path(path).name))
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
                self.flags, self.profiles, self.cache = [], [], None

            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("set_memory_pool_limit", pool, size))

            def set_flag(self, flag):
                fake.calls.append(("set_flag", flag))
                self.flags.append(flag)

            def add_optimization_profile(self, profile):
                fake.calls.append(("add_optimization_profile", profile.shapes))

            def create_timing_cache(self, data):
                return Cache(data)

            def set_timing_cache(self, cache, ignore_mismatch):
                self.cache = cache

            def get_timing_cache(self):
                return self.cache

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls.append(("create_network", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                fake.calls.append(("build_serialized_network",))
                return b"plan:" + ",".join(sorted(config.flags)).encode()

        if major == 10:
            def platform_has_fast_fp16(builder):
                fake.calls.append(("platform_has_fast_fp16",))
                return True
            Builder.platform_has_fast_fp16 = property(platform_has_fast_fp16)

        class Engine:
            def __init__(self, data):
                self.data, self.refittable = data, b"REFIT" in data
                self.refitted = {}

            def create_serialization_config(self):
                return types.SimpleNamespace(clear_flag=lambda f: None,
                                             set_flag=lambda f: fake.calls.append(("serialization_flag", f)))

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
                fake.calls.append(("set_named_weights", name))
                self.pending[name] = weights
                return True

            def get_missing_weights(self):
                return [n for n in stripped_missing if n not in self.pending]

            def refit_cuda_engine(self):
                fake.calls.append(("refit_cuda_engine",))
                self.engine.refitted.update(self.pending)
                return True

        class OnnxParserRefitter:
            def __init__(self, refitter, logger):
                self.refitter = refitter

            def refit_from_file(self, path):
                fake.calls.append(("refit_from_file", Path(path).name))
                self.refitter.pending.update({name: "from-onnx" for name in self.refitter.get_all_weights()})
                return True

        self.Logger, self.Builder, self.OnnxParser, self.Runtime = Logger, Builder, OnnxParser, Runtime
        self.Refitter, self.OnnxParserRefitter = Refitter, OnnxParserRefitter
        self.Weights = lambda array: ("weights", array.dtype.name, array.size)
        self.nptype = lambda dtype: np.dtype(dtype).type
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=5)
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        flags = dict(REFIT="REFIT", STRIP_PLAN="STRIP_PLAN", REFIT_IDENTICAL="REFIT_IDENTICAL")
        if major == 10:
            flags["FP16"] = "FP16"
        self.BuilderFlag = types.SimpleNamespace(**flags)
        self.SerializationFlag = types.SimpleNamespace(EXCLUDE_WEIGHTS="EXCLUDE_WEIGHTS", INCLUDE_REFIT="INCLUDE_REFIT")

    def names(self):
        """The API calls made, without their arguments."""
        return [call[0] for call in self.calls]


def _fp16_conv(tmp_path):
    """A graph that computes in FP16 (what a mixed-precision export gives TensorRT 11.x)."""
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float16), "conv.weight")
    model = _model([helper.make_node("Conv", ["x", "conv.weight"], ["y"], name="conv", pads=[1, 1, 1, 1])],
                   [_vi("x", TensorProto.FLOAT16, ["N", 3, 8, 8])], [_vi("y", TensorProto.FLOAT16, ["N", 4, 8, 8])],
                   [weight])
    path = tmp_path / "fp16.onnx"
    onnx.save(model, path)
    return path


def test_tensorrt_10_weakly_typed_fp16_build_calls(tmp_path, monkeypatch):
    fake = _FakeTrt("10.3.0")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    onnx_path = tmp_path / "clean.onnx"
    onnx.save(_clean_conv_relu(), onnx_path)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    info = tb.build_engine(onnx_path, tmp_path / "out" / "m.engine", fp16=True, refit=True, max_batch=4,
                           workspace_gb=0.5, timing_cache=cache)
    assert fake.calls == [
        ("create_network", 0), ("parse_from_file", "clean.onnx"), ("set_memory_pool_limit", "WORKSPACE", 1 << 29),
        ("platform_has_fast_fp16",), ("set_flag", "FP16"), ("set_flag", "REFIT"),
        ("add_optimization_profile", {"x": ((1, 3, 8, 8), (1, 3, 8, 8), (4, 3, 8, 8))}),
        ("build_serialized_network",)]
    assert info.engine_path.read_bytes() == b"plan:FP16,REFIT"
    assert (info.fp16, info.strongly_typed, info.tensorrt_version) == (True, False, "10.3.0")
    assert cache.read_bytes() == b"old+timings"
    assert (info.inputs, info.outputs) == (["x"], ["y"])
    assert [p.name for p in info.engine_path.parent.iterdir()] == ["m.engine"]


def test_tensorrt_10_strongly_typed_fp32_and_stripped(tmp_path, monkeypatch):
    fake = _FakeTrt("10.15.1")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    onnx_path = tmp_path / "clean.onnx"
    onnx.save(_clean_conv_relu(), onnx_path)
    info = tb.build_engine(onnx_path, tmp_path / "s.engine", fp16=False, strip_weights=True)
    assert ("create_network", 1 << 5) in fake.calls and "platform_has_fast_fp16" not in fake.names()
    assert [c for c in fake.calls if c[0] == "set_flag"] == [("set_flag", "STRIP_PLAN"), ("set_flag", "REFIT_IDENTICAL")]
    assert info.strongly_typed and not info.fp16 and "fp32" in info.precision


def test_tensorrt_11_builds_strongly_typed_without_removed_apis(tmp_path, monkeypatch):
    fake = _FakeTrt("11.4.1")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    info = tb.build_engine(_fp16_conv(tmp_path), tmp_path / "m16.engine", fp16=True, refit=True)
    assert fake.calls[:2] == [("create_network", 0), ("parse_from_file", "fp16.onnx")]
    assert [c for c in fake.calls if c[0] == "set_flag"] == [("set_flag", "REFIT")]
    assert "platform_has_fast_fp16" not in fake.names()
    assert info.strongly_typed and info.fp16 and info.precision == "as the graph: fp16 (strongly typed)"
    assert info.engine_path.read_bytes() == b"plan:REFIT"

    fake.calls.clear()
    fp32 = tmp_path / "clean.onnx"
    onnx.save(_clean_conv_relu(), fp32)
    with pytest.raises(ValueError, match="computes in FP32"):
        tb.build_engine(fp32, tmp_path / "x.engine", fp16=True)
    assert fake.calls == [] and not (tmp_path / "x.engine").exists()
    info = tb.build_engine(fp32, tmp_path / "fp32.engine", fp16=False)
    assert not info.fp16 and [c for c in fake.calls if c[0] == "set_flag"] == []


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


@pytest.mark.parametrize("version", ["10.3.0", "11.4.1"])
def test_refit_engine_plumbing_with_stand_in(tmp_path, monkeypatch, version):
    monkeypatch.setitem(sys.modules, "tensorrt", _FakeTrt(version, stripped_missing=("conv.weight", "conv.bias")))
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


def test_new_person_is_a_refit_from_its_merged_graph_not_a_rebuild(tmp_path, monkeypatch):
    """A merged-weight engine changes person by taking every weight from the new person's exported graph."""
    fake = _FakeTrt("11.0.0", stripped_missing=("conv.weight", "conv.bias"))
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    engine = tmp_path / "alice.engine"
    engine.write_bytes(b"plan:REFIT")
    person = tmp_path / "bob_render.onnx"
    onnx.save(_clean_conv_relu(seed=1), person)
    tb.refit_engine(engine, {}, onnx_path=person, out_path=tmp_path / "bob.engine")
    assert fake.names() == ["refit_from_file", "refit_cuda_engine", "serialization_flag"]
    assert "build_serialized_network" not in fake.names()
    assert (tmp_path / "bob.engine").read_bytes() == b"refitted:conv.bias,conv.weight"
    assert engine.read_bytes() == b"plan:REFIT"


def test_engines_of_another_merged_person_are_refitted_from_this_exports_graphs(tmp_path, monkeypatch):
    fake = _FakeTrt("10.3.0")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    bob.mkdir()
    onnx.save(_clean_conv_relu(seed=1), bob / "render.onnx")
    alice.mkdir()
    (alice / "render.engine").write_bytes(b"plan:REFIT")
    engines = {"render": {"file": "render.engine", "fp16": True, "refit": True, "build_seconds": 90.0}}
    graphs = {"render": {"file": "render.onnx", "sha256": sha256_file(bob / "render.onnx")}}
    result = tb.refit_engines_from(alice, engines, bob, graphs)
    assert fake.names() == ["refit_from_file", "refit_cuda_engine", "serialization_flag"]
    assert (bob / "render.engine").read_bytes() == b"refitted:conv.bias,conv.weight"
    assert result["render"]["refitted_from"] == str(alice / "render.engine") and result["render"]["fp16"]
    assert result["render"]["build_seconds"] < 90
    # the refitted engine records its own hash and the graph it now carries the weights of (manifest format 3)
    assert result["render"]["sha256"] == sha256_file(bob / "render.engine")
    assert result["render"]["graph_sha256"] == graphs["render"]["sha256"]
    with pytest.raises(ValueError, match=r"no graph\(s\) \['render'\]"):
        tb.refit_engines_from(alice, engines, bob, {})
    with pytest.raises(ValueError, match="not built refittable.*--refittable"):
        tb.refit_engines_from(alice, {"render": {**engines["render"], "refit": False}}, bob, graphs)


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
    if fp16 and tb.tensorrt_major(trt_env.__version__) >= 11:
        pytest.skip("TensorRT 11.x builds FP16 engines only from FP16 graphs (plan_build's stand-in tests cover it)")
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
