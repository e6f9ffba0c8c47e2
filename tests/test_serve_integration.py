"""A real TorchServe server on 127.0.0.1 serving the tiny preset: parity with the runtime, people added without a
restart, every kind of bad request answered with a 4xx JSON naming the field, token auth, videos (mp4 / GIF), the
custom Prometheus counters scraped from /metrics, a bounded load run, and a clean stop by PID.

Everything (export, model store, run folder) lives under pytest's tmp folders; the module fixture's finalizer stops
the server (and kills anything it left) even when a test fails.
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.serve_load import (SECTION, default_bodies, run_load, section_text, serve_config, tiny_store,
                              write_section)
from fixtures.people import make_person
from media import video_writer
from media.runtime_video import video_frames
from media.video_writer import read_video
from serve.package import add_person, remove_person
from serve.server import http_request, start_server, stop_server

pytestmark = [pytest.mark.server, pytest.mark.slow]

MODEL = "tiny"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import psutil
    work = tmp_path_factory.mktemp("serve")
    store, export_dir, G, files = tiny_store(work / "build", people=("alice",), name=MODEL)
    files["bob"] = make_person(G, work / "build" / "bob.safetensors", seed=7)
    run_dir = work / "run"
    info = start_server(serve_config(store, run_dir), timeout_s=180)
    procs = [psutil.Process(info.pid)] + psutil.Process(info.pid).children(recursive=True)
    try:
        yield dict(info=info, store=store, export_dir=export_dir, G=G, files=files, work=work)
    finally:
        try:
            stop_server(run_dir)
        finally:
            for p in procs:  # only processes this fixture started
                if p.is_running():
                    p.kill()


@pytest.fixture(scope="module")
def runtime(served):
    from runtime import Runtime
    return Runtime(served["export_dir"], people_dir=served["store"] / "people" / MODEL)


def call(served, body, token=True, **kw):
    info = served["info"]
    return http_request(f"{info.inference_url}/predictions/{MODEL}", body,
                        token=info.token() if token is True else token, **kw)


def png(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG"
    return np.asarray(img.convert("RGB"))


def worker_pids(served) -> list:
    info = served["info"]
    status, _, body = http_request(f"{info.management_url}/models/{MODEL}", token=info.token("management"))
    assert status == 200, body
    return sorted(w["pid"] for w in json.loads(body)[0]["workers"])


def assert_close(a: np.ndarray, b: np.ndarray, levels: int = 1):
    assert a.shape == b.shape
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() <= levels, f"max difference {diff.max()} levels (allowed {levels})"


def test_token_is_required(served):
    info = served["info"]
    for body, token in (({"op": "people"}, None), ({"op": "people"}, "wrong-key")):
        status, _, data = call(served, body, token=token)
        assert status in (400, 401, 403), (status, data)
        assert b"Token Authorization failed" in data
    status, _, data = http_request(f"{info.inference_url}/ping")
    assert status in (400, 401, 403) and b"Token Authorization failed" in data
    status, _, data = http_request(f"{info.inference_url}/ping", token=info.token())
    assert status == 200 and json.loads(data)["status"] == "Healthy"
    # management API: registering models is off by default (and never from remote URLs)
    status, _, _ = http_request(f"{info.management_url}/models?url=https://example.com/x.mar",
                                token=info.token("management"), method="POST")
    assert status == 405


def test_people_list(served):
    status, headers, data = call(served, {"op": "people"})
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert json.loads(data) == {"model": MODEL, "people": ["alice"]}
    status, _, data = call(served, {"op": "person", "person": "alice"})
    assert status == 200 and json.loads(data)["person"] == "alice"


def test_novel_view_equals_runtime(served, runtime):
    body = {"op": "novel_view", "person": "alice", "anchor": 1, "yaw": 0.3, "pitch": 0.1}
    status, headers, data = call(served, body)
    assert status == 200, data
    assert headers["content-type"] == "image/png"
    timing = headers["server-timing"]
    for stage in ("parse", "encode", "handler", "total"):
        assert f"{stage};dur=" in timing, timing
    got = png(data)
    ref = runtime.novel_view("alice", anchor=1, yaw=0.3, pitch=0.1).to_uint8()
    assert got.shape == (128, 128, 3)
    assert_close(got, ref)
    # the same view as JSON (base64 + timings) decodes to the same pixels; a second call reuses the tri-planes
    status, headers, data = call(served, {**body, "response": "json"})
    assert status == 200 and headers["content-type"].startswith("application/json")
    out = json.loads(data)
    assert out["cache_hit"] is True and out["width"] == 128 and "total" in out["timings"]
    assert_close(png(base64.b64decode(out["image"])), ref)
    # JPEG, resized
    status, headers, data = call(served, {**body, "format": "jpeg", "size": 64})
    assert status == 200 and headers["content-type"] == "image/jpeg"
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG" and img.size == (64, 64)
    # a W latent on the base model
    w = np.random.default_rng(0).standard_normal(runtime_w_dim(served)).astype(np.float32)
    status, _, data = call(served, {"op": "novel_view", "latent": w.tolist(), "yaw": -0.2})
    assert status == 200, data
    assert_close(png(data), runtime.novel_view(None, latent=w, yaw=-0.2).to_uint8())


def runtime_w_dim(served) -> int:
    return int(served["G"].w_dim)


def test_interpolation(served, runtime):
    status, headers, data = call(served, {"op": "interpolate", "person": "alice", "a": 0, "b": "photo1", "t": 0.5,
                                          "yaw": -0.2})
    assert status == 200, data
    assert_close(png(data), runtime.interpolate("alice", 0, "photo1", 0.5, yaw=-0.2).to_uint8())
    status, headers, data = call(served, {"op": "interpolate", "person": "alice", "a": 0, "b": 1, "frames": 4})
    assert status == 200, data
    assert headers["x-my3dgen-frames"] == "4" and headers["x-my3dgen-frame-size"] == "128"
    strip = png(data)
    assert strip.shape == (128, 4 * 128, 3)
    for i, t in enumerate((0.0, 1 / 3, 2 / 3, 1.0)):
        assert_close(strip[:, i * 128:(i + 1) * 128], runtime.interpolate("alice", 0, 1, t).to_uint8())
    assert np.abs(strip[:, :128].astype(int) - strip[:, -128:].astype(int)).mean() > 1  # the ends differ
    status, _, data = call(served, {"op": "interpolate", "person": "alice", "a": 0, "b": 1, "frames": 3,
                                    "response": "json"})
    out = json.loads(data)
    assert status == 200 and len(out["frames"]) == 3 and out["ts"] == [0.0, 0.5, 1.0]
    assert_close(png(base64.b64decode(out["frames"][1])), runtime.interpolate("alice", 0, 1, 0.5).to_uint8())


def decode_video(data: bytes, content_type: str, folder: Path) -> list:
    path = folder / {"video/mp4": "v.mp4", "image/gif": "v.gif"}[content_type]
    path.write_bytes(data)
    return read_video(path)


def mean_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(float) - b.astype(float)).mean())


H264_TOLERANCE = 6.0
"""Mean absolute difference (levels of 255) allowed between a decoded H.264 frame and the rendered one (lossy)."""
GIF_TOLERANCE = 4.0
"""The same for a GIF frame (a 256-colour palette per frame)."""


def test_video_op_turntable_and_interpolation(served, runtime, tmp_path):
    mp4 = video_writer.ffmpeg_exe() is not None
    ctype, tol = ("video/mp4", H264_TOLERANCE) if mp4 else ("image/gif", GIF_TOLERANCE)
    body = {"op": "video", "kind": "turntable", "person": "alice", "anchor": "photo1", "frames": 16, "fps": 8,
            "size": 64}
    status, headers, data = call(served, body)
    assert status == 200, data
    assert headers["content-type"] == ctype and headers["x-my3dgen-frames"] == "16"
    assert headers["x-my3dgen-frame-size"] == "64" and headers["x-my3dgen-fps"] == "8"
    assert "render;dur=" in headers["server-timing"] and "encode;dur=" in headers["server-timing"]
    frames = decode_video(data, ctype, tmp_path)
    assert len(frames) == 16 and all(f.shape == (64, 64, 3) for f in frames)
    want = video_frames(runtime.orbit("alice", anchor="photo1", frames=16), 64)
    errors = [mean_error(f, w) for f, w in zip(frames, want)]
    assert max(errors) < tol, errors
    for k in range(16):   # the frames keep their order: each is nearer its own view than the opposite one
        assert errors[k] < mean_error(frames[k], want[(k + 8) % 16]), k
    # the interpolation: first and last frames are the anchors seen from their own photo cameras
    status, headers, data = call(served, {"op": "video", "kind": "interpolate", "person": "alice", "a": "photo0",
                                          "b": "photo1", "frames": 5})
    assert status == 200, data
    frames = decode_video(data, headers["content-type"], tmp_path)
    assert len(frames) == 5 and frames[0].shape == (128, 128, 3)
    ends = [runtime.anchor_view("alice", a).to_uint8() for a in ("photo0", "photo1")]
    assert mean_error(frames[0], ends[0]) < tol and mean_error(frames[-1], ends[1]) < tol
    assert mean_error(ends[0], ends[1]) > 2 * tol                   # the ends differ far more than the tolerance
    # a GIF on request
    status, headers, data = call(served, {**body, "format": "gif", "frames": 3, "size": 32})
    assert status == 200 and headers["content-type"] == "image/gif" and data[:6] == b"GIF89a"
    assert [f.shape for f in decode_video(data, "image/gif", tmp_path)] == [(32, 32, 3)] * 3


def test_bad_video_requests_get_4xx_naming_the_field(served):
    base = {"op": "video", "kind": "turntable", "person": "alice", "anchor": 0}
    cases = [({**base, "frames": 65}, 400, "frames"), ({**base, "frames": 1}, 400, "frames"),
             ({**base, "size": 63}, 400, "size"), ({**base, "size": 4096}, 400, "size"),
             ({**base, "fps": 0}, 400, "fps"), ({**base, "fps": 1000}, 400, "fps"),
             ({**base, "format": "avi"}, 400, "format"), ({**base, "kind": "spin"}, 400, "kind"),
             ({**base, "anchor": "nobody"}, 400, "anchor"), ({**base, "person": "zed"}, 404, "person"),
             ({"op": "video", "kind": "interpolate", "person": "alice", "a": 0, "b": 7}, 400, "b"),
             ({**base, "budget_ms": 0.001}, 503, "budget_ms")]
    for body, want_status, want_field in cases:
        status, headers, data = call(served, body)
        assert headers.get("content-type", "").startswith("application/json"), (body, status, data)
        err = json.loads(data)
        assert (status, err["field"]) == (want_status, want_field), (body, status, err)


def test_person_added_and_removed_without_restart(served, runtime):
    before = worker_pids(served)
    view = {"op": "novel_view", "person": "bob", "anchor": 0, "yaw": 0.2}
    status, _, data = call(served, view)
    assert status == 404 and json.loads(data)["field"] == "person"
    add_person(served["store"], MODEL, "bob", served["files"]["bob"])
    status, _, data = call(served, {"op": "people"})
    assert json.loads(data)["people"] == ["alice", "bob"]
    status, _, bob = call(served, view)
    assert status == 200, bob
    assert_close(png(bob), runtime.novel_view("bob", anchor=0, yaw=0.2).to_uint8())
    _, _, alice = call(served, {**view, "person": "alice"})
    assert np.abs(png(bob).astype(int) - png(alice).astype(int)).mean() > 1
    assert remove_person(served["store"], MODEL, "bob")
    status, _, data = call(served, view)
    assert status == 404
    add_person(served["store"], MODEL, "bob", served["files"]["bob"])
    assert worker_pids(served) == before  # no restart


def test_bad_requests_get_4xx_naming_the_field(served):
    import torch
    from generator.model_dir import build_generator
    store = served["store"]
    people = store / "people" / MODEL
    (people / "broken.safetensors").write_bytes(b"\x00garbage, not a safetensors file" * 4)
    other_base = build_generator(preset_name="tiny", seed=1)
    torch.manual_seed(0)
    make_person(other_base, people / "stranger.safetensors", seed=3)
    before = worker_pids(served)
    view = {"op": "novel_view", "person": "alice", "anchor": 0}
    cases = [
        (b'{"op": "novel_view", "person": ', 400, "body"),
        (b"\xff\xfe not utf-8", 400, "body"),
        (b"[" * 200_000, 400, "body"),
        (b"[1, 2]", 400, "body"),
        ({"op": "teleport"}, 400, "op"),
        ({**view, "person": "zed"}, 404, "person"),
        ({**view, "yaw": 2.0}, 400, "yaw"),
        ({**view, "pitch": -0.9}, 400, "pitch"),
        ({**view, "anchor": "no-such-photo"}, 400, "anchor"),
        ({**view, "anchor": 99}, 400, "anchor"),
        ({**view, "yaww": 0.1}, 400, "yaww"),
        ({**view, "size": 4096}, 400, "size"),
        ({"op": "novel_view", "latent": [1.0, 2.0, 3.0]}, 400, "latent"),
        ({"op": "interpolate", "person": "alice", "a": 0, "b": 1, "frames": 17}, 400, "frames"),
        ({**view, "person": "../alice"}, 400, "person"),
        ({**view, "person": "/etc/passwd"}, 400, "person"),
        ({**view, "person": "alice\u0000"}, 400, "person"),
        ({"op": "person", "person": "../../model_store"}, 400, "person"),
        ({**view, "person": "broken"}, 422, "person"),
        ({**view, "person": "stranger"}, 422, "person"),
        ({**view, "budget_ms": 0.001}, 503, "budget_ms"),
    ]
    for body, want_status, want_field in cases:
        status, headers, data = call(served, body)
        assert headers.get("content-type", "").startswith("application/json"), (body, status, data)
        err = json.loads(data)
        assert (status, err["field"]) == (want_status, want_field), (body, status, err)
        assert err["status"] == status and err["error"]
        if want_status == 422:
            assert f"{body['person']}.safetensors" in err["error"], err
            assert str(store) not in err["error"]  # no server paths in messages
    assert worker_pids(served) == before  # nothing crashed a worker
    (people / "broken.safetensors").unlink()
    (people / "stranger.safetensors").unlink()
    status, _, data = call(served, view)
    assert status == 200


def scrape(served) -> dict:
    """The metrics listener's Prometheus text as {(metric, frozenset of (label, value)): value}."""
    info = served["info"]
    status, _, data = http_request(f"{info.metrics_url}/metrics")
    assert status == 200, data
    samples = {}
    for line in data.decode().splitlines():
        m = re.match(r"^([A-Za-z_:][\w:]*)\{(.*)\} (\S+)$", line)
        if m:
            labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2)))
            samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def series(samples: dict, metric: str, **labels) -> list:
    """(labels dict, value) of every sample of `metric` whose labels include `labels`."""
    want = set(labels.items())
    return [(dict(lab), v) for (name, lab), v in samples.items() if name == metric and want <= lab]


def test_metrics_scrape_shows_our_counters(served):
    """After a few requests (a plane-cache miss, hits, a 400 and a budget refusal), /metrics on the metrics port
    has our counters, non-zero, with the declared labels."""
    w = np.random.default_rng(5).standard_normal(runtime_w_dim(served)).tolist()
    for body, want in (({"op": "novel_view", "latent": w}, 200), ({"op": "novel_view", "latent": w, "yaw": 0.2}, 200),
                       ({"op": "novel_view", "person": "alice", "anchor": 0, "yaw": 3.0}, 400),
                       ({"op": "novel_view", "person": "alice", "anchor": 0, "budget_ms": 0.001}, 503),
                       ({"op": "people"}, 200)):
        status, _, data = call(served, body)
        assert status == want, data
    deadline = time.monotonic() + 20   # the frontend reads the worker's metric lines asynchronously
    while True:
        samples = scrape(served)
        refusals = series(samples, "my3dgen_budget_refusals_total", op="novel_view", when="before")
        if refusals or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    model = {"ModelName": MODEL, "Level": "Model"}
    ok = series(samples, "my3dgen_requests_total", op="novel_view", status="200", **model)
    assert ok and ok[0][1] >= 2, sorted(k for k in samples if k[0].startswith("my3dgen"))
    assert set(ok[0][0]) == {"op", "status", "backend", "ModelName", "Level", "Hostname"}
    assert ok[0][0]["backend"] in ("onnxruntime", "torch")  # what the packaged 'auto' chose in the worker
    assert series(samples, "my3dgen_plane_cache_bytes", **model)[0][1] > 0
    assert 0 < series(samples, "my3dgen_plane_cache_hit_ratio", **model)[0][1] < 1
    assert series(samples, "my3dgen_requests_total", op="novel_view", status="400", **model)[0][1] >= 1
    assert series(samples, "my3dgen_requests_total", op="people", status="200", **model)[0][1] >= 1
    assert refusals and refusals[0][1] >= 1
    assert series(samples, "my3dgen_plane_cache_total", outcome="miss", **model)[0][1] >= 1
    assert series(samples, "my3dgen_plane_cache_total", outcome="hit", **model)[0][1] >= 1
    for stage in ("synthesis", "render", "encode", "handler"):
        assert series(samples, "my3dgen_stage_milliseconds_total", op="novel_view", stage=stage)[0][1] > 0, stage
    assert any(name == "ts_inference_requests_total" for name, _ in samples)   # TorchServe's own metrics stay


def test_bounded_load_has_no_server_errors(served, tmp_path):
    info = served["info"]
    before = worker_pids(served)
    result = run_load(f"{info.inference_url}/predictions/{MODEL}", info.token(),
                      default_bodies(["alice", "bob"]), requests=300, threads=4, time_limit_s=60)
    assert result.server_errors == 0 and result.client_errors == 0, result.statuses
    assert result.requests >= 100 and result.ok == result.requests  # the time limit may stop it early on slow CI
    p = result.percentiles()
    assert 0 < p["p50"] <= p["p90"] <= p["p99"] <= p["max"]
    assert result.cache_hits > 0
    status, _, data = http_request(f"{info.inference_url}/ping", token=info.token())
    assert status == 200 and json.loads(data)["status"] == "Healthy"
    status, _, _ = call(served, {"op": "novel_view", "person": "alice", "anchor": 0})
    assert status == 200
    assert worker_pids(served) == before
    text = section_text([("4 clients", result)],
                        "Model: the tiny preset, keep-LoRA export, one worker (integration test run).",
                        ".venv/bin/python -m pytest tests/test_serve_integration.py")
    out = REPO / "docs" / "BENCHMARKS.md" if os.environ.get("MY3DGEN_WRITE_BENCHMARKS") == "1" else \
        tmp_path / "BENCHMARKS.md"
    if out.parent == tmp_path:
        out.write_text("# Benchmarks\n\n## Other\nkeep me\n\n" + SECTION + "\nold numbers\n\n## Later\nkeep too\n")
    write_section(out, text)
    doc = out.read_text()
    assert doc.count(SECTION) == 1 and f"{p['p50']:.1f}" in doc
    if out.parent == tmp_path:
        assert "keep me" in doc and "keep too" in doc and "old numbers" not in doc


def test_model_api_when_enabled_takes_only_local_archives(served, tmp_path):
    """A second server with --enable-model-api: remote and out-of-store archives are refused whatever the URL
    form - a plain absolute path and a symlink out of the store included (serve.model_api_guard) - while the rest
    of the management API works through the guard, and TorchServe's own management listener is a private socket."""
    import shutil
    cfg = serve_config(served["store"], tmp_path / "run2")
    cfg.enable_model_api = True
    foreign = tmp_path / "foreign.mar"
    shutil.copy(served["store"] / f"{MODEL}.mar", foreign)
    link = served["store"] / "linked.mar"
    link.symlink_to(foreign)
    info = start_server(cfg, timeout_s=120)
    try:
        url, key = info.management_url, info.token("management")
        for bad_url in ("https://example.com/x.mar", "file:///etc/passwd", "../x.mar", str(foreign),
                        f"file://{foreign}", "linked.mar", str(link)):
            query = urllib.parse.urlencode({"url": bad_url, "model_name": "x"})
            status, _, data = http_request(f"{url}/models?{query}", token=key, method="POST")
            assert status == 403 and b'"field": "url"' in data, (bad_url, status, data)
        status, _, data = http_request(f"{url}/models/{MODEL}", token=key)
        assert status == 200
        status, _, _ = http_request(f"{url}/models", token="wrong-key")
        assert status in (400, 401, 403)
        props = (info.run_dir / "config.properties").read_text()
        assert "management_address=unix:" in props
    finally:
        link.unlink()
        assert stop_server(info.run_dir)
    assert not (info.run_dir / "model_api_guard.pid").exists()


def test_stop_by_pid_leaves_nothing(served):
    import psutil
    info = served["info"]
    children = psutil.Process(info.pid).children(recursive=True)
    assert children, "expected at least one worker process"
    assert stop_server(info.run_dir) is True
    assert not psutil.pid_exists(info.pid) or psutil.Process(info.pid).status() == psutil.STATUS_ZOMBIE
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
    assert not (info.run_dir / "torchserve.pid").exists()
    assert stop_server(info.run_dir) is False


def test_torchserve_serves_on_the_torch_backend(served, runtime):
    """`cli.py serve --backend torch` (ServeConfig.backend): the packaged archive's workers run the torch backend
    (the `generator` package travels in the .mar), answer the same image as an in-process torch Runtime, and label
    their metrics with it."""
    import dataclasses
    from runtime import Runtime
    run_dir = served["work"] / "run-torch"
    cfg = dataclasses.replace(serve_config(served["store"], run_dir), backend="torch")
    info = start_server(cfg, timeout_s=180)
    try:
        body = {"op": "novel_view", "person": "alice", "anchor": 1, "yaw": 0.3}
        status, headers, data = http_request(f"{info.inference_url}/predictions/{MODEL}", body, token=info.token())
        assert status == 200, data
        local = Runtime(served["export_dir"], people_dir=served["store"] / "people" / MODEL, backend="torch")
        assert_close(png(data), local.novel_view("alice", anchor=1, yaw=0.3).to_uint8())
        deadline = time.monotonic() + 20
        while True:
            status, _, text = http_request(f"{info.metrics_url}/metrics")
            if 'backend="torch"' in text.decode() or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert re.search(r'my3dgen_requests_total\{[^}]*backend="torch"', text.decode()), text.decode()[-2000:]
    finally:
        stop_server(run_dir)
