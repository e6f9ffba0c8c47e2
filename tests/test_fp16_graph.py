"""Mixed-precision ONNX graphs (export/fp16_graph.py): fp16 where safe, fp32 for rendering, checked on CPU.

Stated tolerances against fp32 eager PyTorch on the tiny preset (batch 2, onnxruntime CPU): images (in [-1, 1])
and depth within 2e-3, tri-planes within 1e-2 (their values reach ~6, so ~2e-3 relative). Measured: planes
5.2e-3, image 5.4e-4, image_raw 6.6e-4, depth 3.1e-4.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

pytest.importorskip("onnxconverter_common")
ort = pytest.importorskip("onnxruntime")

from export.exporter import export_generator  # noqa: E402
from export.graph_edits import convert_weights_fp16  # noqa: E402
from export.options import ExportOptions  # noqa: E402
from export.fp16_graph import (FP16_COMPUTE_GRAPHS, Fp16GraphError, convert_export_graphs,  # noqa: E402
                               to_mixed_precision)
from formats.export_manifest import GRAPH_FILES  # noqa: E402
from generator.model_dir import build_generator  # noqa: E402
from generator.views import camera_batch  # noqa: E402

pytestmark = pytest.mark.slow  # one tiny export (dynamo exporter): ~20-35 s on 2 busy cores

TOL_IMAGE = 2e-3
TOL_DEPTH = 2e-3
TOL_PLANES = 1e-2
F16, F32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny fp32 base export (unverified: only the graphs matter here) and its generator."""
    G = build_generator(preset_name="tiny")
    out = export_generator(G, tmp_path_factory.mktemp("fp16") / "export", options=ExportOptions(verify=False))
    return G, out


def _session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    out = {v.name: v.type.tensor_type.elem_type for v in list(g.input) + list(g.value_info) + list(g.output)}
    out.update({t.name: t.data_type for t in g.initializer})
    return out


@pytest.fixture(scope="module")
def mixed(exported, tmp_path_factory):
    _, out = exported
    d = tmp_path_factory.mktemp("mixed")
    paths = {}
    for name, f in GRAPH_FILES.items():
        paths[name] = d / f
        paths[name].write_bytes((out / f).read_bytes())
    reports = convert_export_graphs(paths)
    return paths, reports


def test_fp16_graphs_match_fp32_eager_within_stated_tolerance(exported, mixed):
    G, _ = exported
    paths, reports = mixed
    assert set(reports) == set(FP16_COMPUTE_GRAPHS)
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(2, G.z_dim, generator=gen)
    c = camera_batch(G, [(0.3, 0.1), (-0.25, -0.05)])
    with torch.no_grad():
        ws = G.mapping(z, c, truncation_psi=0.7)
        planes = G.planes(ws, noise_mode="const", fused_modconv=False)
        ref = G.render_planes(planes, ws, c, sampling="deterministic", fused_modconv=False)
    planes16 = _session(paths["synthesis"]).run(None, {"ws": ws.numpy()})[0]
    image, raw, depth = _session(paths["render"]).run(None, {"planes": planes16, "ws": ws.numpy(), "c": c.numpy()})
    diffs = {"planes": np.abs(planes16 - planes.numpy()).max(), "image": np.abs(image - ref["image"].numpy()).max(),
             "image_raw": np.abs(raw - ref["image_raw"].numpy()).max(),
             "depth": np.abs(depth - ref["image_depth"].numpy()).max()}
    assert diffs["planes"] <= TOL_PLANES, diffs
    assert diffs["image"] <= TOL_IMAGE and diffs["image_raw"] <= TOL_IMAGE, diffs
    assert diffs["depth"] <= TOL_DEPTH, diffs
    # fp16 really changes the numbers (a graph left in fp32 would agree within ~1e-6)
    assert diffs["planes"] > 1e-5 and diffs["image"] > 1e-6, diffs


def test_fp16_where_safe_fp32_for_rendering(exported, mixed):
    paths, reports = mixed
    for name in FP16_COMPUTE_GRAPHS:
        model = onnx.load(str(paths[name]))
        types = _types(model)
        convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm")]
        assert convs and all(types.get(n.input[0]) == F16 for n in convs), name
        assert reports[name]["fp16_ops"].get("Conv", 0) > 0
        for n in model.graph.node:
            if n.op_type in ("Softplus", "CumSum", "Exp", "Log", "GridSample", "ReduceSum", "Pow", "Sqrt"):
                assert types.get(n.input[0]) == F32, (name, n.name, n.op_type)
        # no value is rounded to fp16 on its way between two fp32 nodes
        producer = {o: n for n in model.graph.node for o in n.output}
        for n in model.graph.node:
            if n.op_type == "Cast" and n.attribute[0].i == F32 and n.input[0] in producer:
                up = producer[n.input[0]]
                assert not (up.op_type == "Cast" and up.attribute[0].i == F16), (name, up.name, n.name)
        # inputs and outputs keep the element types of the fp32 graph
        io = [v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)]
        assert set(io) == {F32}, name


def test_graphs_with_fp16_weights_are_refused(exported, tmp_path):
    _, out = exported
    p = tmp_path / "render.onnx"
    p.write_bytes((out / GRAPH_FILES["render"]).read_bytes())
    convert_weights_fp16(p)
    with pytest.raises(Fp16GraphError, match="float16 initializers"):
        to_mixed_precision(onnx.load(str(p)), name="render.onnx")


def test_graph_without_scopes_is_refused(exported):
    _, out = exported
    model = onnx.load(str(out / GRAPH_FILES["mapping"]))
    with pytest.raises(Fp16GraphError, match="no node lies in the fp16 scopes"):
        to_mixed_precision(model, name="mapping.onnx")
