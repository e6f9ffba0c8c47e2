"""The torch-free runtime against eager PyTorch: novel views, interpolation, turntables, the tri-plane cache, the
latency budget, people management and every error class. Exports come from tests/test_export.py's session cache."""
from __future__ import annotations

import ast
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures.people import make_person
from tests.test_export import TOL, TOL_FP16, G, eager_render, exports  # noqa: F401 - G, exports: fixtures
from runtime import (AdapterInvalid, BudgetExceeded, InvalidRequest, RenderResult, RequestLimits, Runtime,
                     RuntimeErrorBase, UnknownPerson)


@pytest.fixture
def people(tmp_path, exports):
    """A private copy of the people folder (tests add and remove people)."""
    d = tmp_path / "people"
    shutil.copytree(exports["people"], d)
    return d


@pytest.fixture
def rt(exports, people):
    return Runtime(exports["keep"], people, threads=2)


def camera(G, yaw, pitch):
    from generator.views import camera_batch
    return camera_batch(G, [(yaw, pitch)])


def anchor_ws(G, path, i):
    from generator.adapter_file import load_adapter
    _, anchors, _ = load_adapter(path, G)
    return anchors.ws_plus(G.num_ws)[i:i + 1], anchors


def assert_close_to_eager(res: RenderResult, want: dict, tol=TOL):
    for got, key in ((res.image, "image"), (res.image_raw, "image_raw"), (res.depth, "depth")):
        diff = float(np.abs(got - want[key][0]).max())
        assert diff <= tol, (key, diff)


# ---------------------------------------------------------------------------------------------- parity

def test_novel_view_equals_eager_for_anchor_w_and_w_plus(G, rt, people):
    alice = people / "alice.safetensors"
    res = rt.novel_view("alice", anchor="photo1", yaw=0.4, pitch=-0.2)
    ws, _ = anchor_ws(G, alice, 1)
    assert_close_to_eager(res, eager_render(G, ws, camera(G, 0.4, -0.2), alice))
    assert res.image.dtype == np.float32 and res.image.shape == (3, 128, 128) and res.depth.shape == (1, 32, 32)
    assert set(res.timings) == {"mapping", "adapter", "synthesis", "render", "total"} and not res.cache_hit
    # a given W+ latent (bob's anchors are W+) and a given W latent
    bob = people / "bob.safetensors"
    ws_b, _ = anchor_ws(G, bob, 2)
    res_b = rt.novel_view("bob", latent=ws_b[0].numpy(), yaw=-0.5, pitch=0.1)
    assert_close_to_eager(res_b, eager_render(G, ws_b, camera(G, -0.5, 0.1), bob))
    w = ws_b[0, 0].numpy()
    res_w = rt.novel_view("bob", latent=w, yaw=0.0, pitch=0.0)
    assert_close_to_eager(res_w, eager_render(G, torch.from_numpy(w)[None, None].repeat(1, G.num_ws, 1),
                                              camera(G, 0.0, 0.0), bob))


def test_base_model_through_the_keep_lora_export(G, rt):
    w = np.random.default_rng(3).standard_normal((G.num_ws, G.w_dim)).astype(np.float32) * 0.3
    res = rt.novel_view(None, latent=w, yaw=0.2)
    assert_close_to_eager(res, eager_render(G, torch.from_numpy(w)[None], camera(G, 0.2, 0.0)))
    # the mapping graph gives the same ws as eager mapping
    z = np.random.RandomState(0).randn(G.z_dim).astype(np.float32)
    with torch.no_grad():
        want = G.mapping(torch.from_numpy(z)[None], camera(G, 0.0, 0.0), truncation_psi=0.7)[0].numpy()
    assert np.abs(rt.map(z, truncation_psi=0.7) - want).max() < 1e-5


def test_two_people_through_one_keep_lora_runtime_match_their_merged_exports(exports, rt):
    for name in ("alice", "bob"):
        merged = Runtime(exports[f"merged_{name}"], threads=2)
        assert merged.people() == [name]
        a = rt.novel_view(name, anchor=1, yaw=0.3, pitch=0.1)
        b = merged.novel_view(name, anchor=1, yaw=0.3, pitch=0.1)
        for key in ("image", "image_raw", "depth"):
            assert float(np.abs(getattr(a, key) - getattr(b, key)).max()) <= TOL
    assert float(np.abs(rt.novel_view("alice", anchor=0).image - rt.novel_view("bob", anchor=0).image).max()) > 1e-2


def test_interpolation_and_turntable(G, rt, people):
    alice = people / "alice.safetensors"
    a0 = rt.novel_view("alice", anchor=0, yaw=0.1)
    i0 = rt.interpolate("alice", 0, "photo2", 0.0, yaw=0.1)
    i1 = rt.interpolate("alice", 0, "photo2", 1.0, yaw=0.1)
    a2 = rt.novel_view("alice", anchor=2, yaw=0.1)
    assert np.array_equal(i0.image, a0.image) and i0.cache_hit
    assert np.array_equal(i1.image, a2.image)
    mid = rt.interpolate("alice", 0, 2, 0.25, yaw=-0.2, pitch=0.1)
    w0, _ = anchor_ws(G, alice, 0)
    w2, _ = anchor_ws(G, alice, 2)
    assert_close_to_eager(mid, eager_render(G, 0.75 * w0 + 0.25 * w2, camera(G, -0.2, 0.1), alice))
    runs = rt.counters["synthesis_runs"]
    frames = rt.turntable("alice", "photo1", frames=5, yaw_range=0.6, pitch=0.05)
    assert len(frames) == 5 and rt.counters["synthesis_runs"] == runs + 1
    assert [f.cache_hit for f in frames] == [False, True, True, True, True]
    assert [round(f.yaw, 6) for f in frames] == [round(0.6 * math.sin(2 * math.pi * k / 5), 6) for k in range(5)]
    assert all(f.timings["synthesis"] == 0.0 for f in frames[1:])
    w1, _ = anchor_ws(G, alice, 1)
    assert_close_to_eager(frames[3], eager_render(G, w1, camera(G, frames[3].yaw, 0.05), alice))


def test_fp16_base_export_serves_the_base_model_only(G, exports):
    rt = Runtime(exports["base_fp16"], threads=2)
    assert rt.people() == []
    w = np.random.default_rng(4).standard_normal((G.num_ws, G.w_dim)).astype(np.float32) * 0.3
    res = rt.novel_view(None, latent=w, yaw=-0.3)
    assert_close_to_eager(res, eager_render(G, torch.from_numpy(w)[None], camera(G, -0.3, 0.0)), tol=TOL_FP16)
    assert res.image.dtype == np.float32
    with pytest.raises(UnknownPerson, match="no adapters"):
        rt.novel_view("alice", latent=w)


def test_fp16_adapter_file_renders_like_eager(G, rt, people, tmp_path):
    path = make_person(G, tmp_path / "dora.safetensors", seed=9, dtype=torch.float16)
    rt.add_person("dora", path)
    res = rt.novel_view("dora", anchor=1, yaw=0.25)
    ws, _ = anchor_ws(G, path, 1)
    assert_close_to_eager(res, eager_render(G, ws, camera(G, 0.25, 0.0), path))


# ---------------------------------------------------------------------------------------------- caches and budget

def test_plane_cache_hit_skips_synthesis_and_gives_the_same_image(G, exports, people, rt):
    first = rt.novel_view("alice", anchor=0, yaw=0.2)
    runs = rt.counters["synthesis_runs"]
    again = rt.novel_view("alice", anchor=0, yaw=0.2)
    other_view = rt.novel_view("alice", anchor=0, yaw=-0.4, pitch=0.2)
    assert again.cache_hit and other_view.cache_hit and not first.cache_hit
    assert again.timings["synthesis"] == 0.0 and first.timings["synthesis"] > 0.0
    assert rt.counters["synthesis_runs"] == runs and rt.counters["plane_cache_hits"] >= 2
    assert np.array_equal(again.image, first.image)
    uncached = Runtime(exports["keep"], people, plane_cache_size=0, threads=2)
    fresh = uncached.novel_view("alice", anchor=0, yaw=-0.4, pitch=0.2)
    assert not fresh.cache_hit and float(np.abs(fresh.image - other_view.image).max()) <= 1e-6
    # another person with the same latent is a different cache entry
    ws, _ = anchor_ws(G, people / "alice.safetensors", 0)
    assert rt.novel_view("alice", latent=ws[0].numpy(), yaw=0.5).cache_hit   # the same W+ as anchor 0
    assert not rt.novel_view("bob", latent=ws[0].numpy(), yaw=0.2).cache_hit


def test_plane_cache_is_lru(exports, people):
    rt = Runtime(exports["keep"], people, plane_cache_size=1, threads=2)
    rt.novel_view("alice", anchor=0)
    rt.novel_view("alice", anchor=1)
    assert not rt.novel_view("alice", anchor=0).cache_hit
    assert rt.novel_view("alice", anchor=0, yaw=0.3).cache_hit
    assert rt.stats()["plane_cache"]["evictions"] == 2


@pytest.fixture(params=["onnxruntime", "torch"])
def rt_any(request, exports, people):
    """A runtime on each backend: latency budgets work the same on every one."""
    return Runtime(exports["keep"], people, threads=2, backend=request.param)


def test_impossible_budget_fails_before_running(rt_any):
    rt = rt_any
    before = dict(rt.counters)
    with pytest.raises(BudgetExceeded) as info:
        rt.novel_view("alice", anchor=0, budget_ms=0.001)
    assert info.value.before_running and info.value.budget_ms == 0.001
    assert rt.counters["synthesis_runs"] == before["synthesis_runs"]
    assert rt.counters["render_runs"] == before["render_runs"]
    # with measured stage times, a budget below the render estimate is refused before running, even on a hit
    rt.novel_view("alice", anchor=0)
    estimate = rt.estimates()["render"]
    runs = rt.counters["render_runs"]
    with pytest.raises(BudgetExceeded, match="cannot be met") as info:
        rt.novel_view("alice", anchor=0, yaw=0.1, budget_ms=estimate / 2)
    assert info.value.before_running and rt.counters["render_runs"] == runs
    ok = rt.novel_view("alice", anchor=0, yaw=0.1, budget_ms=60_000)
    assert ok.cache_hit
    with pytest.raises(BudgetExceeded):
        rt.turntable("alice", 0, frames=8, budget_ms=estimate * 3)


def test_budget_exceeded_after_running_carries_the_result(rt_any, monkeypatch):
    rt = rt_any
    rt.person_info("alice")                      # adapter parsed: the call itself is fast up to the graphs
    from runtime.budget import LatencyBudget
    monkeypatch.setattr(rt, "budget", LatencyBudget())  # no estimates yet: the check before running lets it run
    w = np.full((rt.num_ws, rt.w_dim), 0.05, np.float32)
    with pytest.raises(BudgetExceeded) as info:
        rt.novel_view("alice", latent=w, budget_ms=2.0)
    assert not info.value.before_running and info.value.elapsed_ms > 2.0
    assert isinstance(info.value.result, RenderResult) and info.value.result.image.shape == (3, 128, 128)


def test_adapters_are_cached_and_reloaded_when_the_file_changes(G, rt, people, tmp_path):
    rt.novel_view("alice", anchor=0)
    loads = rt.counters["adapter_loads"]
    rt.novel_view("alice", anchor=1)
    assert rt.counters["adapter_loads"] == loads
    old = rt.novel_view("alice", anchor=0, yaw=0.1)
    rt.add_person("alice", make_person(G, tmp_path / "alice2.safetensors", seed=21))
    new = rt.novel_view("alice", anchor=0, yaw=0.1)
    assert rt.counters["adapter_loads"] == loads + 1 and not new.cache_hit
    assert float(np.abs(new.image - old.image).max()) > 1e-2


# ---------------------------------------------------------------------------------------------- people and errors

def test_people_management(G, rt, people, tmp_path):
    assert rt.people() == ["alice", "bob"]
    info = rt.person_info("alice")
    assert info["anchors"] == ["photo0", "photo1", "photo2"] and info["rank"] == 4 and info["layout"] == "loralib"
    assert info["fingerprint"].startswith("sha256:") and info["base_fingerprint"] == rt.manifest.base_fingerprint
    rt.add_person("erin", make_person(G, tmp_path / "e.safetensors", seed=5))
    assert rt.people() == ["alice", "bob", "erin"] and (people / "erin.safetensors").is_file()
    rt.novel_view("erin", anchor=0)
    rt.remove_person("erin")
    assert rt.people() == ["alice", "bob"]
    with pytest.raises(UnknownPerson, match="erin"):
        rt.novel_view("erin", anchor=0)
    with pytest.raises(UnknownPerson):
        rt.remove_person("erin")
    for bad in ("../x", "a b", "", "x" * 65):
        with pytest.raises(InvalidRequest) as e:
            rt.add_person(bad, people / "alice.safetensors")
        assert e.value.field == "name"
    assert not list(people.glob(".*"))  # no temp files left behind


def test_merged_export_serves_only_its_person(exports):
    rt = Runtime(exports["merged_alice"], threads=2)
    assert rt.people() == ["alice"] and rt.person_info("alice")["anchors"] == ["photo0", "photo1", "photo2"]
    rt.novel_view("alice", anchor="photo2")
    with pytest.raises(UnknownPerson, match="only 'alice'"):
        rt.novel_view("bob", anchor=0)
    with pytest.raises(UnknownPerson, match="merged"):
        rt.novel_view(None, latent=np.zeros(rt.w_dim, np.float32))
    with pytest.raises(InvalidRequest):
        rt.add_person("bob", exports["people"] / "bob.safetensors")


@pytest.mark.parametrize("kwargs, field", [
    (dict(yaw=1.5), "yaw"), (dict(pitch=-0.9), "pitch"), (dict(yaw=float("nan")), "yaw"), (dict(yaw="left"), "yaw"),
    (dict(anchor="nope"), "anchor"), (dict(anchor=7), "anchor"), (dict(anchor=True), "anchor"),
    (dict(latent=np.zeros(3, np.float32)), "latent"), (dict(latent=np.full(64, np.inf, np.float32)), "latent"),
    (dict(anchor=0, latent=np.zeros(64, np.float32)), "latent"), (dict(budget_ms=-1), "budget_ms"),
])
def test_invalid_requests_name_the_field(rt, kwargs, field):
    with pytest.raises(InvalidRequest) as info:
        rt.novel_view("alice", **kwargs)
    assert info.value.field == field and str(info.value).startswith(f"{field}:")
    assert isinstance(info.value, RuntimeErrorBase)


def test_invalid_interpolation_and_turntable_fields(rt):
    for kwargs, field in ((dict(t=1.5), "t"), (dict(t=-0.1), "t"), (dict(t=0.5, b="nope"), "b")):
        with pytest.raises(InvalidRequest) as info:
            rt.interpolate("alice", kwargs.pop("a", 0), kwargs.pop("b", 1), **kwargs)
        assert info.value.field == field
    for kwargs, field in ((dict(frames=0), "frames"), (dict(frames=65), "frames"), (dict(frames=2.5), "frames"),
                          (dict(yaw_range=2.0), "yaw_range")):
        with pytest.raises(InvalidRequest) as info:
            rt.turntable("alice", 0, **kwargs)
        assert info.value.field == field
    assert rt.limits == RequestLimits(max_abs_yaw=0.8, max_abs_pitch=0.5, max_frames=64)
    with pytest.raises(InvalidRequest) as info:
        rt.novel_view(None)  # the base model has no anchors
    assert info.value.field == "anchor"


def test_unknown_person(rt):
    with pytest.raises(UnknownPerson) as info:
        rt.novel_view("zoe", anchor=0)
    assert info.value.person == "zoe" and "zoe" in str(info.value)
    with pytest.raises(UnknownPerson):
        rt.person_info("zoe")


def test_corrupt_and_mismatched_adapters_are_refused(G, rt, people, tmp_path):
    from generator.lora import AdapterPolicy
    from generator.model_dir import build_generator
    good = (people / "alice.safetensors").read_bytes()
    cases = {
        "truncated": good[: len(good) // 2],
        "garbage": b"\x00" * 7,
        "badheader": (1000).to_bytes(8, "little") + b"{not json" + b" " * 1000,
    }
    for name, data in cases.items():
        (people / f"{name}.safetensors").write_bytes(data)
        with pytest.raises(AdapterInvalid) as info:
            rt.novel_view(name, anchor=0)
        assert f"{name}.safetensors" in str(info.value) and info.value.reason
    other_policy = make_person(G, tmp_path / "r2.safetensors", seed=6, policy=AdapterPolicy(rank=2, alpha=2.0))
    with pytest.raises(AdapterInvalid, match=r"policy differs.*rank=2 \(export: 4\)"):
        rt.add_person("rank2", other_policy)
    assert not (people / "rank2.safetensors").exists()
    shutil.copy(other_policy, people / "rank2.safetensors")
    with pytest.raises(AdapterInvalid, match="rank=2"):
        rt.novel_view("rank2", anchor=0)
    stranger = make_person(build_generator(preset_name="tiny", seed=8), tmp_path / "s.safetensors", seed=7)
    with pytest.raises(AdapterInvalid, match="different base model"):
        rt.add_person("stranger", stranger)
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open
    with safe_open(str(people / "alice.safetensors"), "np") as f:
        meta = f.metadata()
    tensors = load_file(str(people / "alice.safetensors"))
    key = next(k for k in tensors if k.endswith("lora_B"))
    tensors[key] = tensors[key].copy()
    tensors[key][0, 0] = np.nan
    save_file(tensors, str(people / "nan.safetensors"), metadata=meta)
    with pytest.raises(AdapterInvalid, match=f"'{key}' has non-finite"):
        rt.novel_view("nan", anchor=0)


# ---------------------------------------------------------------------------------------------- parts

def test_budget_counters_and_estimates_are_consistent_under_threads():
    """Stage estimates and counters are updated under their locks: concurrent updates lose nothing."""
    from concurrent.futures import ThreadPoolExecutor
    from runtime.budget import LatencyBudget
    from runtime.stats import Counters
    counters, budget = Counters(), LatencyBudget(ema_weight=1.0)
    def work(i):
        for _ in range(2000):
            counters.add("render_runs")
            budget.observe("render", 5.0)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    assert counters.snapshot()["render_runs"] == 16000 and budget.estimates() == {"render": 5.0}
    with pytest.raises(BudgetExceeded, match="cannot be met") as info:
        budget.check(12.0, 3.0, {"synthesis": 0, "render": 2}, "2 render(s)")
    assert info.value.before_running and info.value.estimate_ms == 13.0
    budget.check(13.0, 3.0, {"render": 2}, "2 render(s)")


def test_provider_choice():
    from runtime.session import choose_providers
    assert choose_providers("auto")[-1] == "CPUExecutionProvider"
    assert choose_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(InvalidRequest) as info:
        choose_providers(["NoSuchExecutionProvider"])
    assert info.value.field == "providers"
    with pytest.raises(InvalidRequest, match="no TensorRT engines"):
        choose_providers(["TensorRTEngine"], engines_present=False)


def test_runtime_sources_import_no_torch_generator_or_export():
    allowed = {"numpy", "onnxruntime", "safetensors", "PIL", "runtime", "formats", "launch", "tensorrt", "cuda",
               "media", "imageio_ffmpeg", "__future__"}
    import sys
    stdlib = set(sys.stdlib_module_names)
    repo = Path(__file__).resolve().parents[1]
    videos = [repo / "media" / f"{m}.py" for m in ("camera_path", "orbit", "video_writer", "runtime_video")]
    # the optional torch backend and its parts: imported only when chosen (runtime.choose_backend._open)
    torch_modules = {f"runtime.{m}" for m in ("torch_backend", "adapter_slots", "static_graphs")}
    for path in sorted([*(repo / "runtime").glob("*.py"), *(repo / "formats").glob("*.py"),
                        *(repo / "launch").glob("*.py"), *videos]):
        if f"runtime.{path.stem}" in torch_modules and path.parent.name == "runtime":
            continue
        tree = ast.parse(path.read_text())
        top_level = [n.module for n in tree.body if isinstance(n, ast.ImportFrom)]
        assert not torch_modules & set(top_level), f"{path.name} imports the torch backend at module level"
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            for name in names:
                top = name.split(".")[0]
                assert top in allowed or top in stdlib, f"{path.name} imports {name}"
                assert name != "safetensors.torch", path.name


def test_camera_view_renders_a_latent_from_a_camera_label(rt):
    """camera_view from an anchor's own camera is anchor_view; bad cameras are refused naming the field."""
    info = rt.person_info("alice")
    p = rt.people_store.get("alice")
    a = rt.anchor_view("alice", 1)
    b = rt.camera_view("alice", p.anchor_ws[1], p.anchor_c[1])
    assert np.array_equal(a.image, b.image) and b.cache_hit and info["anchors"]
    for bad in (np.zeros(24), np.full(25, np.nan), "x"):
        with pytest.raises(InvalidRequest) as e:
            rt.camera_view("alice", p.anchor_ws[1], bad)
        assert e.value.field == "camera"


def test_python_m_runtime_renders_a_merged_export_without_an_adapter(exports, tmp_path, capsys):
    """A merged export is one person: rendered with no adapter argument (one is refused, naming why); a keep-LoRA
    export needs one."""
    from runtime.__main__ import main
    out = tmp_path / "merged.png"
    assert main([str(exports["merged_alice"]), "--backend", "onnxruntime", "--yaw", "0.2", "--out", str(out)]) == 0
    rt = Runtime(exports["merged_alice"], backend="onnxruntime")
    want = rt.novel_view(rt.people()[0], anchor=0, yaw=0.2)
    assert out.read_bytes() == want.png_bytes()
    alice = exports["people"] / "alice.safetensors"
    assert main([str(exports["merged_alice"]), str(alice), "--out", str(tmp_path / "x.png")]) == 2
    assert "merged into its weights; render it without an adapter" in capsys.readouterr().err
    assert main([str(exports["keep"]), "--backend", "onnxruntime", "--out", str(tmp_path / "y.png")]) == 2
    assert "give ADAPTER" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "y.png").exists()
