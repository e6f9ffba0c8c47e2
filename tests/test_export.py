"""ONNX export: eager PyTorch vs onnxruntime parity (merged and keep-LoRA, tiny and the official fixture), the
manifest, TensorRT operator checks and the TensorRT/CLI failure modes.

Exports are slow (~15 s each on 2 cores), so each one is made once per test session and cached under the session's
base temp dir (`cached_export`); tests/test_runtime.py and tests/test_runtime_no_torch.py reuse them.
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from fixtures.people import make_person
from tests.helpers.cli import run_cli

TOL = 1e-3          # fp32: max abs difference of images in [-1, 1] (and depth) between eager and onnxruntime
TOL_FP16 = 5e-2     # fp16 weights + fp16 tri-planes


# ---------------------------------------------------------------------------------------------- shared helpers

def tiny_generator():
    from generator.model_dir import build_generator
    return build_generator(preset_name="tiny")  # seed 0: the same weights as `cli.py export --preset tiny`


def people_dir(root: Path, G) -> Path:
    """alice and bob (same policy, different tensors), written once per session."""
    d = root / "people"
    if not (d / "bob.safetensors").is_file():
        d.mkdir(parents=True, exist_ok=True)
        make_person(G, d / "alice.safetensors", seed=1)
        make_person(G, d / "bob.safetensors", seed=2, w_plus=True)
    return d


def cached_export(root: Path, key: str, make) -> Path:
    """root/exports/key, made by make(path) the first time it is asked for in this session."""
    out = root / "exports" / key
    if not (out / "manifest.json").is_file():
        make(out)
    return out


def session_root(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "my3dgen-export-cache"


class TinyExports:
    """The session's tiny exports, made on first use: 'merged_alice', 'merged_bob', 'keep' (through the CLI, alice
    as the example adapter), 'base_fp16'; 'people' is the folder with alice.safetensors and bob.safetensors."""

    def __init__(self, tmp_path_factory, G):
        self.root, self.G = session_root(tmp_path_factory), G

    def __getitem__(self, key: str) -> Path:
        from export.exporter import export_generator
        from export.options import ExportOptions
        people = people_dir(self.root, self.G)
        makers = {
            "merged_alice": lambda p: export_generator(self.G, p, people / "alice.safetensors",
                                                       ExportOptions(mode="merge")),
            "merged_bob": lambda p: export_generator(self.G, p, people / "bob.safetensors",
                                                     ExportOptions(mode="merge")),
            "keep": lambda p: run_cli("export", "--preset", "tiny", "--keep-lora", "--adapter",
                                      people / "alice.safetensors", "--out", p),
            "base_fp16": lambda p: export_generator(self.G, p, None, ExportOptions(mode="base", fp16=True)),
        }
        if key == "people":
            return people
        return cached_export(self.root, f"tiny-{key}", makers[key])


def session(path: Path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def adapter_feeds(manifest: dict, graph: str, adapter_path: Path | None) -> dict[str, np.ndarray]:
    """Keep-LoRA inputs of one graph from an adapter file (None: the export's base values), read with numpy."""
    from safetensors.numpy import load_file
    inputs = [i for i in manifest["adapter"].get("inputs", []) if i["graph"] == graph]
    if not inputs:
        return {}
    if adapter_path is None:
        base = load_file(str(Path(manifest["_dir"]) / manifest["adapter"]["base_values_file"]))
        return {i["input"]: base[i["input"]] for i in inputs}
    tensors = load_file(str(adapter_path))
    return {i["input"]: tensors[i["tensor"]].astype(np.float32) for i in inputs}


def load_manifest(d: Path) -> dict:
    m = json.loads((d / "manifest.json").read_text())
    m["_dir"] = str(d)
    return m


def onnx_render(export_dir: Path, ws: torch.Tensor, c: torch.Tensor, adapter_path: Path | None = None) -> dict:
    """Run synthesis + render graphs of an export with onnxruntime on W+ latents ws [B, num_ws, w_dim]."""
    m = load_manifest(export_dir)
    planes = session(export_dir / "synthesis.onnx").run(None, {"ws": ws.numpy(), **adapter_feeds(
        m, "synthesis", adapter_path)})[0]
    image, raw, depth = session(export_dir / "render.onnx").run(None, {
        "planes": planes, "ws": ws.numpy(), "c": c.numpy(), **adapter_feeds(m, "render", adapter_path)})
    return {"planes": planes, "image": image, "image_raw": raw, "depth": depth}


@torch.no_grad()
def eager_render(G, ws, c, adapter_path: Path | None = None) -> dict:
    """Eager PyTorch with the adapter attached through LoRA routes (not merged), deterministic mode."""
    from generator.adapter_file import load_adapter
    from generator.lora import attach, detach
    if adapter_path is not None:
        attach(G, load_adapter(adapter_path, G)[0])
    try:
        planes = G.planes(ws)
        out = G.render_planes(planes, ws, c)
    finally:
        detach(G)
    return {"planes": planes.numpy(), "image": out["image"].numpy(), "image_raw": out["image_raw"].numpy(),
            "depth": out["image_depth"].numpy()}


def max_diffs(a: dict, b: dict) -> dict[str, float]:
    return {k: float(np.abs(np.asarray(a[k], np.float32) - np.asarray(b[k], np.float32)).max())
            for k in ("planes", "image", "image_raw", "depth")}


def anchors_of(G, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from generator.adapter_file import load_adapter
    _, anchors, _ = load_adapter(path, G)
    return anchors.ws_plus(G.num_ws), anchors.c


# ---------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def G():
    return tiny_generator()


@pytest.fixture(scope="module")
def exports(tmp_path_factory, G):
    return TinyExports(tmp_path_factory, G)


# ---------------------------------------------------------------------------------------------- unit tests

def test_renderer_formulations_equal_the_official_ops():
    """The export-friendly steps of generator.rendering / superresolution equal the ops the official code uses."""
    from generator.rendering import Softplus, max_then_mean_of_neighbours
    g = torch.Generator().manual_seed(0)
    w = torch.rand(50, 1, 11, generator=g)
    assert torch.equal(max_then_mean_of_neighbours(w), F.avg_pool1d(F.max_pool1d(w, 2, 1, padding=1), 2, 1))
    x = torch.cat([torch.randn(1000, generator=g) * 10, torch.tensor([-80.0, -20.0, 0.0, 19.9, 20.1, 90.0])])
    assert float((Softplus()(x) - F.softplus(x)).abs().max()) < 2e-6
    # upsampling: the antialiased bilinear resize is the plain one (the SR resizes without antialias when upsampling)
    x = torch.randn(1, 2, 32, 32, generator=g)
    kw = dict(size=(128, 128), mode="bilinear", align_corners=False)
    assert float((F.interpolate(x, antialias=True, **kw) - F.interpolate(x, antialias=False, **kw)).abs().max()) < 1e-5


def test_graph_wrappers_run_G_as_it_is_and_leave_it_unchanged(G, tmp_path):
    """Keep-LoRA wrappers bind their inputs into an attached adapter (= the eager adapter's render); the merge made
    for tracing is undone bit for bit, and no module of G is replaced."""
    from export.adapter_inputs import adapter_inputs_for
    from export.exporter import _graph_state
    from export.onnx_graphs import RenderGraph, SynthesisGraph
    from generator.adapter_file import load_adapter
    from generator.lora import attachment_of
    path = make_person(G, tmp_path / "p.safetensors", seed=4)
    adapter, anchors, _ = load_adapter(path, G)
    ws, c = anchors.ws_plus(G.num_ws), anchors.c
    want = eager_render(G, ws, c, path)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    modules = [(n, m) for n, m in G.named_modules()]
    inputs = adapter_inputs_for(adapter)
    syn, ren = [i for i in inputs if i.graph == "synthesis"], [i for i in inputs if i.graph == "render"]
    tensors = {k: v.detach() for k, v in adapter.file_tensors().items()}
    with torch.no_grad():
        with _graph_state(G, "keep", adapter) as live:
            planes = SynthesisGraph(G, syn, live)(ws, [tensors[i.tensor_name] for i in syn])
            image, raw, depth = RenderGraph(G, ren, live)(planes, ws, c, [tensors[i.tensor_name] for i in ren])
        with _graph_state(G, "merge", adapter) as live:
            assert live is None and any(not torch.equal(before[k], v) for k, v in G.state_dict().items())
            merged = G.render_planes(G.planes(ws, fused_modconv=False), ws, c, fused_modconv=False)
    kept = {"planes": planes, "image": image, "image_raw": raw, "depth": depth}
    merged = {"planes": planes, "image": merged["image"], "image_raw": merged["image_raw"],
              "depth": merged["image_depth"]}
    for got in (kept, merged):
        diffs = max_diffs({k: v.numpy() for k, v in got.items()}, want)
        assert all(v <= 1e-5 for v in diffs.values()), diffs
    assert attachment_of(G) is None
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())
    assert all(a[0] == b[0] and a[1] is b[1] for a, b in zip(modules, G.named_modules()))


def test_adapter_input_names_are_file_names_and_sanitised(G):
    from export.adapter_inputs import adapter_inputs_for, sanitize_names
    from generator.lora import PersonAdapter
    ad = PersonAdapter.create(G)
    inputs = adapter_inputs_for(ad)
    assert [i.tensor_name for i in inputs] == list(ad.file_tensors())
    assert all(i.input_name == i.tensor_name for i in inputs)  # these names are valid ONNX/TensorRT names as is
    assert {i.graph for i in inputs} == {"synthesis", "render"}
    assert all(i.graph == "render" for i in inputs if i.target_key.startswith(("decoder.", "superresolution.")))
    assert sanitize_names(["a b/c", "a_b_c", "ws", "x:y"]) == {"a b/c": "a_b_c", "a_b_c": "a_b_c_1", "ws": "ws_1",
                                                               "x:y": "x_y"}


def test_keep_lora_refuses_a_mapping_policy(G, tmp_path):
    from export.exporter import export_generator
    from export.options import ExportError, ExportOptions
    from generator.lora import AdapterPolicy
    policy = AdapterPolicy(parts=("synthesis", "superresolution", "mapping"))
    with pytest.raises(ExportError, match="mapping network"):
        export_generator(G, tmp_path / "x", None, ExportOptions(mode="keep", policy=policy))
    assert not (tmp_path / "x").exists()


def test_option_errors_and_atomicity(G, tmp_path):
    from export.exporter import export_generator
    from export.options import ExportError, ExportOptions
    from generator.model_dir import build_generator
    with pytest.raises(ExportError, match="--merge-lora needs --adapter"):
        export_generator(G, tmp_path / "a", None, ExportOptions(mode="merge"))
    with pytest.raises(ExportError, match="opset=17"):
        export_generator(G, tmp_path / "a", None, ExportOptions(opset=17))
    other = build_generator(preset_name="tiny", seed=5)
    stranger = make_person(other, tmp_path / "stranger.safetensors", seed=3)
    with pytest.raises(ExportError, match="different base model"):
        export_generator(G, tmp_path / "a", stranger, ExportOptions(mode="merge"))
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob(".a.*"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        export_generator(G, tmp_path / "full", None, ExportOptions())
    assert (tmp_path / "full" / "keep.txt").read_text() == "x"


def test_trt_flag_fails_clearly_without_tensorrt(G, tmp_path, monkeypatch):
    from export.exporter import export_generator
    from export.options import ExportOptions
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(RuntimeError) as info:
        export_generator(G, tmp_path / "t", None, ExportOptions(trt=True))
    assert str(info.value).startswith("TensorRT is not installed") and "JetPack" in str(info.value)
    assert not (tmp_path / "t").exists()


# ---------------------------------------------------------------------------------------------- tiny parity

def test_merged_export_matches_eager(G, exports):
    alice = exports["people"] / "alice.safetensors"
    ws, c = anchors_of(G, alice)                 # batch 3: the export traced batch 2
    got = onnx_render(exports["merged_alice"], ws, c)
    want = eager_render(G, ws, c, alice)
    diffs = max_diffs(got, want)
    assert all(v <= TOL for v in diffs.values()), diffs
    assert got["image"].shape == (3, 3, 128, 128) and got["depth"].shape == (3, 1, 32, 32)
    # the adapter changes the picture (so the check is not trivially passed by the base weights)
    assert float(np.abs(want["image"] - eager_render(G, ws, c)["image"]).max()) > 1e-2


def test_an_opaque_head_exports_without_nan(tmp_path):
    """Why: a well-trained head (models/heads) has intervals dense enough that 1 - alpha rounds to 0; the exported
    graph then took log(0) and onnxruntime rendered NaN colours. Here the decoder's density is pushed up until
    every interval past the surface is opaque, and the export's own eager-vs-onnxruntime check must pass."""
    import copy
    from export.exporter import export_generator
    from export.options import ExportOptions
    from generator.rendering import march_weights
    from generator.views import camera_batch
    G = copy.deepcopy(tiny_generator())
    with torch.no_grad():
        G.decoder.net[-1].bias[0] += 400.0 / G.decoder.net[-1].bias_gain  # raw density ~ +400 everywhere
        c = camera_batch(G, [(0.2, 0.0)])
        ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0)), c)
        depths = torch.linspace(2.25, 3.3, 12).reshape(1, 1, 12, 1)
        w = march_weights(torch.full((1, 1, 12, 1), 400.0), depths)
    assert torch.isfinite(w).all() and float(w[0, 0, 0]) == pytest.approx(1.0)   # all the weight on the first
    out = export_generator(G, tmp_path / "opaque", None, ExportOptions(mode="base"))   # verify=True refuses NaN
    got = onnx_render(out, ws, c)
    assert all(np.isfinite(got[k]).all() for k in ("image", "image_raw", "depth"))


def test_mapping_graph_matches_eager_with_psi_input(G, exports):
    from generator.views import camera_batch
    z = torch.randn(3, G.z_dim, generator=torch.Generator().manual_seed(7))
    c = camera_batch(G, [(0.0, 0.0), (0.2, 0.1), (-0.3, 0.0)])
    sess = session(exports["keep"] / "mapping.onnx")
    for psi in (1.0, 0.5):
        got = sess.run(None, {"z": z.numpy(), "c": c.numpy(), "truncation_psi": np.array([psi], np.float32)})[0]
        with torch.no_grad():
            want = G.mapping(z, c, truncation_psi=psi).numpy()
        assert np.abs(got - want).max() <= 1e-5


def test_keep_lora_one_graph_serves_two_people_like_their_merged_graphs(G, exports):
    for name in ("alice", "bob"):
        path = exports["people"] / f"{name}.safetensors"
        ws, c = anchors_of(G, path)
        kept = onnx_render(exports["keep"], ws, c, path)
        merged = onnx_render(exports[f"merged_{name}"], ws, c)
        eager = eager_render(G, ws, c, path)
        d_merged, d_eager = max_diffs(kept, merged), max_diffs(kept, eager)
        assert all(v <= TOL for v in d_merged.values()), (name, d_merged)
        assert all(v <= TOL for v in d_eager.values()), (name, d_eager)
    # the base values (LoRA B = 0, base biases/decoder) reproduce the base model through the same graph
    ws, c = anchors_of(G, exports["people"] / "alice.safetensors")
    d_base = max_diffs(onnx_render(exports["keep"], ws, c, None), eager_render(G, ws, c))
    assert all(v <= TOL for v in d_base.values()), d_base


def test_fp16_export_within_its_tolerance(G, exports):
    d = exports["base_fp16"]
    m = load_manifest(d)
    assert m["precision"] == "fp16"
    planes_out = m["graphs"]["synthesis"]["outputs"][0]
    assert planes_out["dtype"] == "float16" and m["graphs"]["render"]["inputs"][0]["dtype"] == "float16"
    ws, c = anchors_of(G, exports["people"] / "alice.safetensors")
    diffs = max_diffs(onnx_render(d, ws, c), eager_render(G, ws, c))
    assert all(v <= TOL_FP16 for v in diffs.values()), diffs
    def weight_bytes(path, dtype):
        model = onnx.load(str(path))
        return sum(len(i.raw_data) for i in model.graph.initializer if i.data_type == dtype)
    fp16 = weight_bytes(d / "synthesis.onnx", onnx.TensorProto.FLOAT16)
    fp32 = weight_bytes(exports["merged_alice"] / "synthesis.onnx", onnx.TensorProto.FLOAT)
    assert weight_bytes(d / "synthesis.onnx", onnx.TensorProto.FLOAT) < 100 and 0.45 * fp32 < fp16 < 0.55 * fp32


# ---------------------------------------------------------------------------------------------- manifest / TRT

def test_manifest_content(G, exports):
    from generator.adapter_file import base_fingerprint, read_adapter_meta
    keep = load_manifest(exports["keep"])
    assert keep["format"] == "my3dgen-export" and keep["format_version"] == 3 and keep["opset"] == 18
    assert keep["base_fingerprint"] == base_fingerprint(G)
    assert keep["rendering_mode"]["noise_mode"] == "const" and keep["rendering_mode"]["sampling"] == "deterministic"
    assert keep["rendering_mode"]["fused_modconv"] is False
    assert keep["model"]["num_ws"] == G.num_ws and keep["model"]["img_resolution"] == 128
    assert keep["generator"] == json.loads(json.dumps(G.cfg.to_dict()))
    assert set(keep["versions"]) >= {"torch", "onnx", "onnxruntime", "python"}
    graphs = keep["graphs"]
    spec = {g: {i["name"]: i for i in graphs[g]["inputs"]} for g in graphs}
    assert spec["mapping"]["z"]["shape"] == ["batch", G.z_dim] and spec["mapping"]["truncation_psi"]["shape"] == [1]
    assert spec["synthesis"]["ws"]["shape"] == ["batch", G.num_ws, G.w_dim]
    assert spec["render"]["c"]["shape"] == ["batch", 25]
    outs = {o["name"]: o for o in graphs["render"]["outputs"]}
    assert outs["image"]["shape"] == ["batch", 3, 128, 128] and outs["depth"]["shape"] == ["batch", 1, 32, 32]
    assert graphs["synthesis"]["outputs"][0]["shape"] == ["batch", 3, 8, 32, 32]
    a = keep["adapter"]
    alice_meta = read_adapter_meta(exports["people"] / "alice.safetensors")
    assert a["mode"] == "keep-lora" and a["policy"] == alice_meta["policy"] and a["targets"] == alice_meta["targets"]
    file_names = [i["tensor"] for i in a["inputs"]]
    from safetensors import safe_open
    with safe_open(str(exports["people"] / "alice.safetensors"), "np") as f:
        assert set(file_names) == set(f.keys()) - {"anchors.ws", "anchors.c"}
    assert graphs["mapping"]["adapter_inputs"] == []
    assert set(graphs["synthesis"]["adapter_inputs"]) | set(graphs["render"]["adapter_inputs"]) == set(file_names)
    for g in ("synthesis", "render"):  # every adapter input is a static-shape float32 graph input
        for name in graphs[g]["adapter_inputs"]:
            assert "batch" not in spec[g][name]["shape"] and spec[g][name]["dtype"] == "float32"
    assert keep["verification"]["passed"] and max(keep["verification"]["max_abs_diff"].values()) <= TOL
    # the torch backend's model directory: the base weights of a keep-LoRA export, fingerprint checked
    assert keep["torch"] == {"model_dir": "model", "weights_fingerprint": base_fingerprint(G)}
    assert (exports["keep"] / "model" / "model.safetensors").is_file()
    merged = load_manifest(exports["merged_alice"])
    assert merged["adapter"]["mode"] == "merged" and merged["adapter"]["person"] == "alice"
    assert merged["adapter"]["anchor_names"] == ["photo0", "photo1", "photo2"]
    assert all(not g["adapter_inputs"] for g in merged["graphs"].values())
    import hashlib
    digest = hashlib.sha256((exports["people"] / "alice.safetensors").read_bytes()).hexdigest()
    assert merged["adapter"]["adapter_sha256"] == "sha256:" + digest
    for g in merged["graphs"].values():
        assert g["sha256"] == "sha256:" + hashlib.sha256((exports["merged_alice"] / g["file"]).read_bytes()).hexdigest()
    assert merged["tensorrt"]["engines"] is None


def test_tensorrt_op_check_passes_on_every_graph(exports):
    from export.trt_support import check_onnx_for_tensorrt
    for key in ("keep", "merged_alice", "base_fp16"):
        m = load_manifest(exports[key])
        for name, g in m["graphs"].items():
            report = check_onnx_for_tensorrt(exports[key] / g["file"])
            assert report.ok, (key, name, report.unsupported, report.model_problems)
            assert "CumProd" not in report.op_counts
            summary = m["tensorrt"]["check"][name]
            assert summary["ok"] and summary["cumprod_nodes"] == 0 and summary["gridsample_4d"]
        assert m["tensorrt"]["check"]["render"]["gridsample_nodes"] > 0
        model = onnx.load(str(exports[key] / "render.onnx"), load_external_data=False)
        assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {18}


def test_build_engine_cli_reports_then_needs_tensorrt(exports):
    proc = run_cli("build-engine", exports["keep"], check=False)
    assert "TensorRT ONNX check" in proc.stdout and "result: OK" in proc.stdout and "GridSample" in proc.stdout
    assert proc.returncode != 0 and "TensorRT is not installed" in proc.stderr
    check = run_cli("build-engine", exports["keep"], "--check-only")
    assert check.stdout.count("result: OK") == 3


# ---------------------------------------------------------------------------------------------- official fixture

@pytest.fixture(scope="module")
def official_exports(tmp_path_factory, official_generator):
    from export.exporter import export_generator
    from export.options import ExportOptions
    root = session_root(tmp_path_factory)
    G = official_generator
    person = root / "official-people" / "carol.safetensors"
    if not person.is_file():
        person.parent.mkdir(parents=True, exist_ok=True)
        make_person(G, person, seed=11, anchors=1)
    merged = cached_export(root, "official-merged", lambda p: export_generator(
        G, p, person, ExportOptions(mode="merge", verify=False)))
    keep = cached_export(root, "official-keep", lambda p: export_generator(
        G, p, person, ExportOptions(mode="keep", verify=False)))
    return person, merged, keep


@pytest.mark.slow
def test_official_fixture_merged_and_keep_lora_match_eager(official_generator, official_exports):
    person, merged, keep = official_exports
    G = copy.deepcopy(official_generator)
    from generator.views import camera_batch
    ws, _ = anchors_of(G, person)
    c = camera_batch(G, [(0.35, -0.15)])
    want = eager_render(G, ws, c, person)
    for d, path in ((merged, None), (keep, person)):
        diffs = max_diffs(onnx_render(d, ws, c, path), want)
        assert all(v <= TOL for v in diffs.values()), (d.name, diffs)
    assert want["image"].shape == (1, 3, 512, 512)
    for d in (merged, keep):
        m = load_manifest(d)
        assert all(g["ok"] and g["cumprod_nodes"] == 0 and g["gridsample_4d"] for g in m["tensorrt"]["check"].values())
