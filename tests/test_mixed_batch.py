"""Mixed-person batches through the stack: keep-LoRA graphs with per-sample adapter inputs (a static batch N, one
person per sample), `Runtime.render_batch` grouping queued requests, and runtime.batching's plan.

Parity: each sample of a batch equals its own single run (`Runtime.novel_view`) within MIXED_TOL. The export (N = 4,
~30-60 s on 2 busy cores, so its two tests are marked slow) is made once per session in tests/test_export.py's
cache.
"""
from __future__ import annotations

import numpy as np
import pytest

from runtime import Runtime, UnknownPerson
from runtime.batching import Run, ViewRequest, plan_runs
from tests.test_export import G, cached_export, exports, load_manifest, session_root  # noqa: F401 - G, exports: fixtures

MIXED_TOL = 1e-5
N = 4


@pytest.fixture(scope="module")
def mixed_export(tmp_path_factory, G, exports):
    from export.exporter import export_generator
    from export.options import ExportOptions
    people = exports["people"]
    return cached_export(session_root(tmp_path_factory), f"tiny-keep-mixed{N}", lambda p: export_generator(
        G, p, people / "alice.safetensors", ExportOptions(mode="keep", mixed_batch=N)))


def test_plan_groups_people_and_pads_only_mixed_runs():
    items = ["a1", "b1", "a2", "c1", "a3"]
    person = lambda s: s[0]  # noqa: E731
    runs = plan_runs(items, person, None)
    assert [(r.items, r.mixed, r.size) for r in runs] == [(["a1", "a2", "a3"], False, 3), (["b1"], False, 1),
                                                          (["c1"], False, 1)]
    runs = plan_runs(items, person, 4)
    assert [(r.items, r.mixed, r.padding) for r in runs] == [(["a1", "a2", "a3", "b1"], True, 0), (["c1"], False, 0)]
    assert [(r.items, r.mixed) for r in plan_runs(["a1", "a2"], person, 4)] == [(["a1", "a2"], False)]
    assert plan_runs([], person, 4) == [] and Run(["x"], True, 4).padding == 3


@pytest.mark.slow  # the mixed export: ~30-60 s on 2 busy cores
def test_mixed_graphs_take_per_sample_adapters_and_match_single_runs(mixed_export):
    m = load_manifest(mixed_export)
    assert m["adapter"]["mixed_batch"] == N and m["adapter"]["defaults_in_graph"] is True
    for g in ("synthesis", "render"):
        spec = {i["name"]: i for i in m["graphs"][f"{g}_mixed"]["inputs"]}
        single = {i["name"]: i for i in m["graphs"][g]["inputs"]}
        names = m["graphs"][f"{g}_mixed"]["adapter_inputs"]
        assert names == m["graphs"][g]["adapter_inputs"]
        assert all(spec[n]["shape"] == [N] + single[n]["shape"] and not spec[n].get("default") for n in names)
    # the export's own check: sample k (base model or the example person) vs its run alone
    assert m["verification"]["mixed_batch_max_abs_diff"] <= MIXED_TOL


@pytest.mark.slow  # the mixed export
def test_render_batch_of_several_people_equals_each_single_run(mixed_export, exports, tmp_path):
    people = tmp_path / "people"
    people.mkdir()
    rt = Runtime(mixed_export, people, threads=2)
    for name in ("alice", "bob"):
        rt.add_person(name, exports["people"] / f"{name}.safetensors")
    w = np.random.default_rng(3).standard_normal((rt.num_ws, rt.w_dim)).astype(np.float32) * 0.3
    requests = [ViewRequest("alice", anchor=0, yaw=0.2), ViewRequest("bob", anchor=1, yaw=-0.3, pitch=0.1),
                ViewRequest(None, latent=w, yaw=0.1), ViewRequest("alice", anchor=2),
                ViewRequest("nobody", anchor=0), ViewRequest("bob", latent=w, yaw=0.4)]
    results = rt.render_batch(requests)
    stats = rt.stats()
    # 5 valid requests of 3 people: 2 synthesis runs and 2 render runs of the mixed graphs (4 + 1 padded)
    assert stats["synthesis_runs"] == 2 and stats["render_runs"] == 2, stats
    assert isinstance(results[4], UnknownPerson)
    single = Runtime(mixed_export, people, threads=2)
    for req, res in zip(requests, results):
        if req.person == "nobody":
            continue
        want = single.novel_view(req.person, anchor=req.anchor, latent=req.latent, yaw=req.yaw, pitch=req.pitch)
        assert res.person == req.person and res.latent_key == want.latent_key and not res.cache_hit
        for key in ("image", "image_raw", "depth"):
            diff = float(np.abs(getattr(res, key) - getattr(want, key)).max())
            assert diff <= MIXED_TOL, (req, key, diff)
    # a second batch of the same latents hits the plane cache and runs only render
    again = rt.render_batch(requests[:4])
    assert all(r.cache_hit for r in again) and rt.stats()["synthesis_runs"] == 2
    assert np.array_equal(again[1].image, results[1].image)


def test_render_batch_without_mixed_graphs_runs_one_batch_per_person(exports, tmp_path):
    rt = Runtime(exports["keep"], exports["people"], threads=2)
    assert rt.manifest.mixed_batch is None
    requests = [ViewRequest("alice", anchor=k, yaw=0.1 * k) for k in range(3)] + [ViewRequest("bob", anchor=0)]
    results = rt.render_batch(requests)
    assert rt.stats()["synthesis_runs"] == 2 and rt.stats()["render_runs"] == 2
    want = Runtime(exports["keep"], exports["people"], threads=2).novel_view("alice", anchor=2, yaw=0.2)
    assert float(np.abs(results[2].image - want.image).max()) <= MIXED_TOL


def test_mixed_batch_option_is_checked():
    from export.options import ExportError, ExportOptions
    for bad in (ExportOptions(mode="base", mixed_batch=4), ExportOptions(mode="keep", mixed_batch=1),
                ExportOptions(mode="keep", mixed_batch=4, fp16=True)):
        with pytest.raises(ExportError, match="mixed_batch"):
            bad.validate(has_adapter=bad.mode != "base")


def png_pixels(b64: str) -> np.ndarray:
    import base64
    import io
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def test_torchserve_handler_renders_a_batch_of_requests_together(exports, tmp_path, monkeypatch):
    """handle() with batchSize > 1: the batch's novel views share graph runs, each answer equals the answer the
    request gets on its own, and a bad request in the batch gets its own error."""
    import json
    from serve import handler
    from tests.test_hardening_serve import Context
    people = tmp_path / "people"
    people.mkdir()
    for name in ("alice", "bob"):
        (people / f"{name}.safetensors").write_bytes((exports["people"] / f"{name}.safetensors").read_bytes())
    service = handler.Service(Runtime(exports["keep"], people, threads=2),
                              "tiny", handler.HandlerConfig(warmup=False), people)
    monkeypatch.setattr(handler, "_SERVICE", service)
    bodies = [{"op": "novel_view", "person": "alice", "anchor": 0, "yaw": 0.1, "response": "json"},
              {"op": "novel_view", "person": "bob", "anchor": 1, "response": "json"},
              {"op": "novel_view", "person": "carol", "anchor": 0},
              {"op": "novel_view", "person": "alice", "anchor": 2, "yaw": -0.2, "response": "json"}]
    ctx = Context()
    out = handler.handle([{"body": json.dumps(b).encode()} for b in bodies], ctx)
    assert [ctx.status[i] for i in range(4)] == [200, 200, 404, 200]
    assert service.rt.counters["synthesis_runs"] == 2 and service.rt.counters["render_runs"] == 2  # alice, bob
    single = handler.Service(Runtime(exports["keep"], people, threads=2), "tiny",
                             handler.HandlerConfig(warmup=False), people)
    for i in (0, 1, 3):
        alone = Context()
        want = json.loads(single.handle_one(json.dumps(bodies[i]).encode(), 0, alone))
        got = json.loads(out[i])
        assert got["cache_hit"] is False and set(got["timings"]) >= {"synthesis", "render", "encode"}
        diff = np.abs(png_pixels(got["image"]).astype(int) - png_pixels(want["image"]).astype(int)).max()
        assert diff <= 1, diff  # uint8 rounding of values within MIXED_TOL of each other


def test_batched_views_with_budgets_join_when_the_budget_covers_the_batch(exports, tmp_path, monkeypatch):
    """Packaged models give every request a default budget: views whose budget covers the batch (by the stage
    estimates) are still rendered together; one whose budget cannot runs alone (and is refused before running);
    a joined view that finished late is answered 504 like a view alone."""
    import json
    from serve import handler
    from tests.test_hardening_serve import Context
    people = tmp_path / "people"
    people.mkdir()
    (people / "alice.safetensors").write_bytes((exports["people"] / "alice.safetensors").read_bytes())
    cfg = handler.HandlerConfig(warmup=False, default_budget_ms=60_000.0)
    service = handler.Service(Runtime(exports["keep"], people, threads=2), "tiny", cfg, people)
    service.rt.warmup("alice")  # stage estimates exist, as after the handler's own warm-up
    monkeypatch.setattr(handler, "_SERVICE", service)
    view = {"op": "novel_view", "person": "alice", "response": "json"}
    bodies = [{**view, "anchor": 0}, {**view, "anchor": 1}, {**view, "anchor": 2, "budget_ms": 0.5}]
    runs = service.rt.counters["synthesis_runs"]
    ctx = Context()
    handler.handle([{"body": json.dumps(b).encode()} for b in bodies], ctx)
    assert [ctx.status[i] for i in range(3)] == [200, 200, 503]
    assert service.rt.counters["synthesis_runs"] == runs + 1  # the two default-budget views: one run
    monkeypatch.setattr(service.rt.budget, "estimate", lambda stage: 0.0)  # the estimate lets a tight budget in
    bodies = [{**view, "anchor": 1, "yaw": 0.2, "budget_ms": 1e-3}, {**view, "anchor": 0, "yaw": 0.3}]
    ctx = Context()
    out = handler.handle([{"body": json.dumps(b).encode()} for b in bodies], ctx)
    assert [ctx.status[i] for i in range(2)] == [504, 200]
    assert json.loads(out[0])["type"] == "budget_exceeded"
