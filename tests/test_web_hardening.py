"""The web page under attack: time budgets, cancellation, long jobs beside views, connection timeouts, error
messages without paths, people whose files fail their checks, and every numeric field's range.

Long work is made slow on purpose by wrapping web.app's frame and density functions (monkeypatch) with a delay
per frame or chunk, on the `tiny` preset; each test says the bound it checks.
"""
from __future__ import annotations

import json
import math
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import quote

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import generator.mesh
import generator.video
import web.app
from formats.limits import MAX_ABS_PITCH, MAX_ABS_YAW
from generator.adapter_file import Anchors, save_adapter
from formats.cameras import lookat_label
from generator.lora import PersonAdapter
from generator.mesh import MeshConfig, mesh_of_latent
from generator.model_dir import build_generator
from generator.views import camera_batch, latent_from_seed
from media.mesh_io import write_mesh
from web.app import WebApp
from web.settings import WebLimits
from web.server import ServerOptions, WebServer

FRAME_DELAY_S = 0.2
"""Added to every frame (or mesh chunk) of the slowed long jobs."""
VIEW_BOUND_S = 2.0
"""Most a view may take while a video runs: one slowed frame (0.2 s) plus the view itself, with room for a
loaded 2-core machine (measured: 0.25-0.4 s); the whole video would take 20 s."""
ABSOLUTE_PATH = re.compile(r"(?:^|[\s'\"(\[=:,])/[^\s'\"]")


@pytest.fixture(scope="module")
def people_dir(tmp_path_factory):
    """alice (good); nanny (a NaN tensor); noanchors; otherbase (made for another base model); broken, empty
    (not adapter files); a folder named like a person."""
    G = build_generator(preset_name="tiny")
    folder = tmp_path_factory.mktemp("people folder")  # a space: paths in messages cannot be cut at it
    g = torch.Generator().manual_seed(5)
    cams = torch.from_numpy(np.stack([lookat_label(0.0, 0.0), lookat_label(0.4, 0.0)]))
    anchors = Anchors(torch.randn(2, G.w_dim, generator=g), cams, ["front", "side"])
    alice = PersonAdapter.create(G)
    with torch.no_grad():
        for p in alice.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    save_adapter(folder / "alice.safetensors", alice, G, anchors)
    nanny = PersonAdapter.create(G)
    with torch.no_grad():
        next(nanny.parameters()).view(-1)[0] = float("nan")
    save_adapter(folder / "nanny.safetensors", nanny, G, anchors)
    save_adapter(folder / "noanchors.safetensors", PersonAdapter.create(G), G)
    other = build_generator(preset_name="tiny")
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    save_adapter(folder / "otherbase.safetensors", PersonAdapter.create(other), other, anchors)
    (folder / "broken.safetensors").write_bytes(b"not an adapter file")
    (folder / "empty.safetensors").write_bytes(b"")
    (folder / "adir.safetensors").mkdir()
    return folder


@pytest.fixture
def serve(people_dir):
    """serve(limits=..., **server options) -> a started WebServer on a fresh tiny model; all stopped at the end."""
    servers = []

    def start(limits: WebLimits = WebLimits(), **options) -> WebServer:
        s = WebServer(WebApp(build_generator(preset_name="tiny"), people_dir, limits), ServerOptions(port=0, **options))
        servers.append(s.start())
        return s
    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def server(people_dir):
    s = WebServer(WebApp(build_generator(preset_name="tiny"), people_dir), ServerOptions(port=0)).start()
    yield s
    s.stop()


def get(url: str, timeout: float = 60) -> tuple[int, bytes, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def error_of(body: bytes) -> str:
    return json.loads(body)["error"]


def slowed(fn, log: list, delay_s: float = FRAME_DELAY_S):
    """A generator function yielding what `fn` yields, `delay_s` later each, logging when each came out."""
    def frames(*args, **kwargs):
        for frame in fn(*args, **kwargs):
            time.sleep(delay_s)
            log.append(time.monotonic())
            yield frame
    return frames


def slowed_call(fn, log: list):
    """`fn`, FRAME_DELAY_S slower per call, logging when each call ended."""
    def call(*args, **kwargs):
        time.sleep(FRAME_DELAY_S)
        out = fn(*args, **kwargs)
        log.append(time.monotonic())
        return out
    return call


def slow_turntable(monkeypatch, log: list, delay_s: float = FRAME_DELAY_S) -> None:
    """Slow every turntable frame by `delay_s` (under both names of the frame function: web.app's and
    generator.video's, so the test means the same thing against any version of web/app.py)."""
    frames = slowed(generator.video.turntable_frames, log, delay_s)
    monkeypatch.setattr(generator.video, "turntable_frames", frames)
    monkeypatch.setattr(web.app, "turntable_frames", frames, raising=False)


def slow_density(monkeypatch, log: list, chunk: int) -> None:
    """Slow every density lookup by FRAME_DELAY_S, web meshes sampled `chunk` points at a time."""
    decode = slowed_call(generator.mesh.decode_points, log)
    monkeypatch.setattr(generator.mesh, "decode_points", decode)
    monkeypatch.setattr(web.app, "decode_points", decode, raising=False)
    monkeypatch.setattr(web.app, "MESH_CHUNK", chunk, raising=False)


def wait_for(predicate, timeout: float = 30.0, what: str = "the server"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def in_thread(fn) -> tuple[threading.Thread, dict]:
    """Run fn() in a thread; its result lands in the returned dict under 'result'."""
    out: dict = {}
    thread = threading.Thread(target=lambda: out.setdefault("result", fn()), daemon=True)
    thread.start()
    return thread, out


def raw_request(server: WebServer, path: str) -> socket.socket:
    """A connection that sent GET `path` and reads nothing yet (so the test can hang up)."""
    host, port = server.httpd.server_address[:2]
    sock = socket.create_connection((host, port), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return sock


# ------------------------------------------------------------------------------------------ long jobs and views

def test_views_answer_while_a_video_is_made(serve, monkeypatch):
    log: list = []
    slow_turntable(monkeypatch, log)
    s = serve()
    frames = 100  # 100 x 0.2 s: a video of 20 s, stopped (by hanging up) once the views are done
    video = raw_request(s, f"/api/video?person=alice&kind=turntable&a=front&frames={frames}&format=gif")
    wait_for(lambda: len(log) >= 2, what="the video's first frames")
    latencies = []
    for i in range(5):
        start = time.monotonic()
        status, body, headers = get(s.url + f"api/view?person=base&anchor=seed{i % 4}&yaw={0.1 * i:.1f}")
        latencies.append(time.monotonic() - start)
        assert status == 200 and headers["Content-Type"] == "image/png"
    print(f"view latency while a video runs: max {max(latencies):.3f} s, mean {np.mean(latencies):.3f} s")
    assert max(latencies) < VIEW_BOUND_S
    assert len(log) < frames and s.app.running_jobs() == 1, "the video ended before the views: nothing was shown"
    video.close()


def test_a_long_job_renders_its_own_person_while_views_of_another_interleave(serve, monkeypatch):
    """The video's frames are the same bytes whether or not views of another person (which attach another
    adapter) run between them: each chunk re-attaches the video's person."""
    s = serve()
    url = s.url + "api/video?person=alice&kind=turntable&a=front&frames=8&format=gif"
    status, alone, _ = get(url)
    view_alone = get(s.url + "api/view?person=base&anchor=seed1&yaw=0.3")[1]
    log: list = []
    slow_turntable(monkeypatch, log)
    video, out = in_thread(lambda: get(url))
    views = []
    while video.is_alive():
        views.append(get(s.url + "api/view?person=base&anchor=seed1&yaw=0.3")[1])
    assert status == 200 and out["result"][0] == 200 and out["result"][1] == alone
    assert len(views) >= 3 and all(v == view_alone for v in views)


def test_a_second_long_job_gets_503_with_retry_after(serve, monkeypatch):
    log: list = []
    slow_turntable(monkeypatch, log)
    s = serve()
    video, out = in_thread(lambda: get(s.url + "api/video?person=alice&kind=turntable&a=front&frames=10&format=gif"))
    wait_for(lambda: len(log) >= 1, what="the first video")
    for path in ("api/video?person=base&kind=turntable&a=seed0&frames=2&format=gif",
                 "api/mesh?person=base&anchor=seed0&resolution=16&level=2"):
        status, body, headers = get(s.url + path)
        assert status == 503 and "max_jobs=1" in error_of(body)
        assert int(headers["Retry-After"]) >= 1
    assert get(s.url + "api/view?person=alice&anchor=front")[0] == 200  # views still go through
    video.join(60)
    assert out["result"][0] == 200


@pytest.mark.parametrize("kind", ["video", "mesh"])
def test_a_client_that_leaves_stops_the_work(serve, monkeypatch, kind):
    log: list = []
    if kind == "video":
        slow_turntable(monkeypatch, log)
        path = "api/video?person=alice&kind=turntable&a=front&frames=60&format=gif"
    else:
        slow_density(monkeypatch, log, chunk=64)  # 16^3 samples: 64 chunks
        path = "api/mesh?person=alice&anchor=front&resolution=16&level=2"
    s = serve()
    sock = raw_request(s, "/" + path)
    wait_for(lambda: len(log) >= 3, what="the first chunks")
    sock.close()
    left = time.monotonic()
    time.sleep(10 * FRAME_DELAY_S)  # room for 10 more chunks, had the work gone on
    after = [t for t in log if t > left]
    print(f"{kind}: {len(log)} chunks rendered, {len(after)} after the client left")
    assert len(after) <= 2 and s.app.running_jobs() == 0


def test_stopping_the_server_stops_running_work(people_dir, monkeypatch):
    log: list = []
    slow_turntable(monkeypatch, log)
    s = WebServer(WebApp(build_generator(preset_name="tiny"), people_dir), ServerOptions(port=0)).start()
    video, out = in_thread(lambda: get(s.url + "api/video?person=alice&kind=turntable&a=front&frames=100&format=gif"))
    wait_for(lambda: len(log) >= 2, what="the video's first frames")
    start = time.monotonic()
    s.stop()  # the video would take 20 s more
    took = time.monotonic() - start
    video.join(10)
    assert took < 2.0 and len(log) < 10 and out["result"][0] == 503
    assert "the server is stopping" in error_of(out["result"][1])


def test_the_budget_stops_work_midway_504_and_refuses_what_cannot_fit_503(serve, monkeypatch):
    log: list = []
    slow_turntable(monkeypatch, log)
    s = serve(WebLimits(video_budget_s=1.0))
    start = time.monotonic()
    status, body, headers = get(s.url + "api/video?person=alice&kind=turntable&a=front&frames=30&format=gif")
    took = time.monotonic() - start
    assert status == 504, body
    assert "video_budget_s=1 exceeded" in error_of(body) and "/30 frame(s) done" in error_of(body)
    assert took < 4.0 and len(log) < 12  # all 30 frames would take 6 s
    assert s.app.running_jobs() == 0
    done = len(log)
    time.sleep(3 * FRAME_DELAY_S)
    assert len(log) == done                                  # nothing went on after the answer
    # now the running estimate (about 0.2 s a frame) says 30 frames cannot fit: refused before anything runs
    status, body, headers = get(s.url + "api/video?person=alice&kind=turntable&a=front&frames=30&format=gif")
    assert status == 503 and "video_budget_s=1 cannot be met: estimated" in error_of(body)
    assert "nothing was run" in error_of(body) and int(headers["Retry-After"]) >= 1 and len(log) == done


def test_a_mesh_over_its_budget_is_stopped_504(serve, monkeypatch):
    log: list = []
    slow_density(monkeypatch, log, chunk=256)  # 16^3 samples: 16 chunks of 0.2 s
    s = serve(WebLimits(mesh_budget_s=0.5))
    status, body, _ = get(s.url + "api/mesh?person=alice&anchor=front&resolution=16&level=2")
    assert status == 504 and "mesh_budget_s=0.5 exceeded" in error_of(body) and "/16 mesh chunk(s)" in error_of(body)
    assert len(log) < 8


def test_a_view_that_cannot_get_the_model_within_its_budget_is_503_with_retry_after(serve, monkeypatch):
    log: list = []
    slow_turntable(monkeypatch, log, delay_s=1.5)
    s = serve(WebLimits(view_budget_s=0.3))
    video = raw_request(s, "/api/video?person=alice&kind=turntable&a=front&frames=3&format=gif")
    wait_for(lambda: s.app.running_jobs() == 1, what="the video")
    time.sleep(0.2)  # the first frame (1.5 s under the model lock) is under way
    status, body, headers = get(s.url + "api/view?person=base&anchor=seed0")
    assert status == 503 and "view_budget_s=0.3 cannot be met" in error_of(body)
    assert int(headers["Retry-After"]) >= 1
    video.close()


def _ply_arrays(data: bytes) -> tuple[str, np.ndarray, np.ndarray]:
    """(header, vertex records, face records) of a PLY written by media.mesh_io.write_ply."""
    head, _, body = data.partition(b"end_header\n")
    n_vertices = int(re.search(rb"element vertex (\d+)", head).group(1))
    vertex = np.dtype([("xyz", "<f4", 3), ("rgb", "u1", 3)])
    return head.decode(), np.frombuffer(body[:n_vertices * vertex.itemsize], vertex), \
        np.frombuffer(body[n_vertices * vertex.itemsize:], [("n", "u1"), ("idx", "<i4", 3)])


@pytest.mark.parametrize("chunk", [1 << 18, 1000])
def test_web_mesh_is_the_mesh_of_generator_mesh(serve, monkeypatch, tmp_path, chunk):
    """The web's chunked density volume gives mesh_of_latent's mesh: the same bytes with its chunk size, the same
    mesh up to float rounding with chunks that do not divide 24^3."""
    monkeypatch.setattr(web.app, "MESH_CHUNK", chunk, raising=False)
    s = serve()
    G = build_generator(preset_name="tiny").eval()
    with torch.no_grad():  # the base person's anchors, as the app maps them: seeds 0-3 in one batch
        z = torch.cat([latent_from_seed(G, seed) for seed in range(4)])
        ws = G.mapping(z, camera_batch(G, [(0.0, 0.0)] * 4), truncation_psi=0.7)[:1]
    status, body, _ = get(s.url + "api/mesh?person=base&anchor=seed0&resolution=24&level=9999")
    level = float(error_of(body).split("[")[1].split(",")[0]) + 0.3
    status, body, _ = get(s.url + f"api/mesh?person=base&anchor=seed0&resolution=24&level={level}")
    expected = write_mesh(mesh_of_latent(G, ws, MeshConfig(resolution=24, level=level))[0],
                          tmp_path / "expected.ply").read_bytes()
    assert status == 200
    if chunk == MeshConfig().chunk:
        assert body == expected
    else:
        (head, vertices, faces), (head_x, vertices_x, faces_x) = _ply_arrays(body), _ply_arrays(expected)
        assert head == head_x and np.array_equal(faces, faces_x)
        assert np.allclose(vertices["xyz"], vertices_x["xyz"], atol=1e-5)
        assert np.abs(vertices["rgb"].astype(int) - vertices_x["rgb"]).max() <= 1


# ------------------------------------------------------------------------------------------ connections

def test_an_idle_or_half_sent_connection_is_closed_after_the_read_timeout(serve):
    s = serve(read_timeout_s=0.5)
    host, port = s.httpd.server_address[:2]
    for opening in (b"", b"GET /api/people HTTP/1.1\r\nHost: x\r\n"):
        sock = socket.create_connection((host, port), timeout=10)
        sock.sendall(opening)
        start = time.monotonic()
        assert sock.recv(1024) == b""                     # closed by the server, nothing answered
        took = time.monotonic() - start
        sock.close()
        assert 0.3 < took < 3.0, took
    assert get(s.url + "api/people")[0] == 200


def test_connections_over_the_limit_get_503(serve):
    s = serve(max_connections=2)
    host, port = s.httpd.server_address[:2]
    idle = [socket.create_connection((host, port), timeout=10) for _ in range(2)]
    wait_for(lambda: s.httpd.open_connections() == 2, what="two open connections")
    extra = socket.create_connection((host, port), timeout=10)
    answer = extra.recv(4096)
    assert answer.startswith(b"HTTP/1.0 503") and b"Retry-After: 1" in answer and b"max_connections=2" in answer
    for sock in idle + [extra]:
        sock.close()
    wait_for(lambda: get(s.url + "api/people")[0] == 200, what="a connection slot")


@pytest.mark.parametrize("field,value", [("read_timeout_s", 0), ("read_timeout_s", float("nan")),
                                         ("max_connections", 0), ("max_connections", 2.5)])
def test_server_options_are_checked(field, value):
    with pytest.raises(ValueError, match=f"ServerOptions.{field} must be"):
        ServerOptions(**{field: value})


@pytest.mark.parametrize("field,value", [("view_budget_s", 0), ("video_budget_s", float("inf")),
                                         ("mesh_budget_s", 1e9), ("max_jobs", 0), ("max_frames", 1),
                                         ("video_size", 15)])
def test_web_limits_are_checked(field, value):
    with pytest.raises(ValueError, match=f"WebLimits.{field} must be"):
        WebLimits(**{field: value})


# ------------------------------------------------------------------------------------------ people and errors

def test_people_listing_leaves_out_files_that_fail_their_checks(server):
    status, body, _ = get(server.url + "api/people")
    listing = json.loads(body)
    assert status == 200 and listing["people"] == {"base": ["seed0", "seed1", "seed2", "seed3"],
                                                   "alice": ["front", "side"]}
    skipped = listing["skipped"]
    assert set(skipped) == {"nanny", "noanchors", "otherbase", "broken", "empty", "adir"}
    assert "non-finite" in skipped["nanny"] and "no anchors" in skipped["noanchors"]
    assert "different base model" in skipped["otherbase"]
    status, body, _ = get(server.url + "api/view?person=nanny&anchor=front")
    assert status == 422 and "person 'nanny': nanny.safetensors" in error_of(body)


def _error_cases() -> list[str]:
    cases = [f"api/view?person={p}&anchor=front" for p in ("nanny", "noanchors", "otherbase", "broken", "empty",
                                                           "adir", "ghost", "..%2Fetc", "%2Fetc%2Fpasswd")]
    cases += ["api/view?person=alice&anchor=nobody", "api/view?person=alice", "api/view?person=alice&anchor=%2Froot",
              "api/view?person=alice&anchor=front&yaw=nan", "api/interpolate?person=alice&a=front&b=x",
              "api/video?person=alice&kind=spin&a=front", "api/video?person=broken&kind=turntable&a=0&frames=2",
              "api/mesh?person=alice&anchor=front&resolution=16&level=9999",
              "api/mesh?person=empty&anchor=0&resolution=16", "api/nothing", "api/people?" + "&".join(
                  f"f{i}=1" for i in range(40))]
    return cases


def test_no_error_names_a_folder(server, people_dir, monkeypatch):
    def failing(*args, **kwargs):  # errors from deep inside, naming files by their absolute paths
        raise ValueError(f"{people_dir}/alice.safetensors: cannot decode; see /var/log/x.log")
        yield
    checked = 0
    for path in _error_cases() + ["video"]:
        if path == "video":
            monkeypatch.setattr(generator.video, "turntable_frames", failing)
            monkeypatch.setattr(web.app, "turntable_frames", failing, raising=False)
            path = "api/video?person=alice&kind=turntable&a=front&frames=2&format=gif"
        status, body, _ = get(server.url + path)
        text = body.decode()
        assert 400 <= status < 600 and "error" in json.loads(body), (path, status, text)
        assert str(people_dir) not in text and str(people_dir.resolve()) not in text, (path, text)
        assert not ABSOLUTE_PATH.search(error_of(body)), (path, text)
        checked += 1
    listing = get(server.url + "api/people")[1].decode()
    assert str(people_dir) not in listing and not any(ABSOLUTE_PATH.search(v) for v in
                                                      json.loads(listing)["skipped"].values())
    assert checked == len(_error_cases()) + 1


# ------------------------------------------------------------------------------------------ fields and ranges

def test_the_angle_range_is_the_shared_one(server):
    page = get(server.url)[1].decode()
    assert f'id="yaw" type="range" min="-{MAX_ABS_YAW:g}" max="{MAX_ABS_YAW:g}"' in page
    assert f'id="pitch" type="range" min="-{MAX_ABS_PITCH:g}" max="{MAX_ABS_PITCH:g}"' in page
    assert "{{" not in page
    for route in ("api/view?person=alice&anchor=front", "api/interpolate?person=alice&a=front&b=side"):
        assert get(server.url + f"{route}&yaw={MAX_ABS_YAW}&pitch=-{MAX_ABS_PITCH}")[0] == 200
        assert get(server.url + f"{route}&yaw=-0&pitch=-0")[0] == 200
        status, body, _ = get(server.url + f"{route}&yaw={MAX_ABS_YAW + 0.01:.2f}")
        assert status == 400 and f"yaw must be within [-{MAX_ABS_YAW:g}, {MAX_ABS_YAW:g}]" in error_of(body)
        status, body, _ = get(server.url + f"{route}&pitch={MAX_ABS_PITCH + 0.01:.2f}")
        assert status == 400 and f"pitch must be within [-{MAX_ABS_PITCH:g}, {MAX_ABS_PITCH:g}]" in error_of(body)


@pytest.mark.parametrize("route,field,ok", [
    ("api/view?person=base&anchor=seed0", "yaw", True), ("api/view?person=base&anchor=seed0", "pitch", True),
    ("api/interpolate?person=base&a=seed0&b=seed1", "t", True),
    ("api/video?person=base&kind=turntable&a=seed0&format=gif", "frames", False),
    ("api/video?person=base&kind=turntable&a=seed0&format=gif&frames=2", "fps", False),
    ("api/mesh?person=base&anchor=seed0&level=2", "resolution", False)])
def test_minus_zero_is_zero(server, route, field, ok):
    """-0 is the number 0: fine for an angle or t, out of range for frames, fps and the mesh grid."""
    status, body, _ = get(server.url + f"{route}&{field}=-0")
    if ok:
        assert status == 200
    else:
        assert status == 400 and error_of(body).startswith(f"{field} must be within")


NUMERIC_FIELDS = {  # field: (route with the other fields valid, lo, hi, integer)
    "yaw": ("api/view?person=base&anchor=seed0", -MAX_ABS_YAW, MAX_ABS_YAW, False),
    "pitch": ("api/interpolate?person=base&a=seed0&b=seed1", -MAX_ABS_PITCH, MAX_ABS_PITCH, False),
    "t": ("api/interpolate?person=base&a=seed0&b=seed1", 0.0, 1.0, False),
    "frames": ("api/video?person=base&kind=turntable&a=seed0&format=gif", 2, WebLimits().max_frames, True),
    "fps": ("api/video?person=base&kind=turntable&a=seed0&format=gif&frames=2", 1.0, 60.0, False),
    "resolution": ("api/mesh?person=base&anchor=seed0&level=2", 16, WebLimits().max_mesh_resolution, True),
    "level": ("api/mesh?person=base&anchor=seed0&resolution=16", -1e4, 1e4, False),
}
MALFORMED = ["", " ", "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e999", "-1e999", "1e308", "-1e308",
             "0x1", "0x1p-2", "1_0", "\uff11", "\u0661", "1,5", "1.2.3", "--1", "+-1", "1e", "e1", ".", "-",
             " 1", "1 ", "1\n", "true", "None", "0b1", "1" * 40, "0" * 33 + "1"]
DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


def _is_bad(value: str, lo: float, hi: float, integer: bool) -> bool:
    """Independent oracle: text that is not a plain decimal (an integer for integer fields) in range."""
    if len(value) > 32 or not DECIMAL.fullmatch(value):
        return True
    if integer and not re.fullmatch(r"[+-]?\d+", value, re.ASCII):
        return True
    x = float(value)
    return not (math.isfinite(x) and lo <= x <= hi)


@st.composite
def bad_field_values(draw):
    field = draw(st.sampled_from(sorted(NUMERIC_FIELDS)))
    route, lo, hi, integer = NUMERIC_FIELDS[field]
    value = draw(st.one_of(
        st.sampled_from(MALFORMED),
        st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not lo <= x <= hi).map(repr),
        st.floats(lo, hi).filter(lambda x: x != int(x)).map(repr) if integer else st.nothing(),
        st.integers(-10 ** 40, 10 ** 40).filter(lambda n: not lo <= n <= hi).map(str),
        st.text(max_size=12).filter(lambda s: _is_bad(s, lo, hi, integer))))
    return field, route, value


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.filter_too_much])
@given(case=bad_field_values())
def test_every_numeric_field_refuses_non_finite_huge_or_malformed_values(server, case):
    field, route, value = case
    status, body, _ = get(server.url + f"{route}&{field}={quote(value, safe='')}")
    assert status == 400, (field, value, status)
    assert error_of(body).startswith(f"{field} must be"), (field, value, error_of(body))


def test_a_replaced_adapter_file_is_read_again_while_its_person_stays_chosen(people_dir, tmp_path):
    """Cached planes and the attached adapter are derived from a person's file: when the file is replaced while
    that person is the chosen one, the next view renders the new file (as a fresh page would), never the planes of
    the file it replaced."""
    import os
    import shutil
    folder = tmp_path / "people"
    folder.mkdir()
    shutil.copy(people_dir / "alice.safetensors", folder / "bob.safetensors")
    app = WebApp(build_generator(preset_name="tiny"), folder)
    first = app.view("bob", "front", 0.2, 0.0)
    assert app.view("bob", "front", 0.2, 0.0) == first
    G = build_generator(preset_name="tiny")
    g = torch.Generator().manual_seed(9)
    other = PersonAdapter.create(G)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    cams = torch.from_numpy(np.stack([lookat_label(0.0, 0.0), lookat_label(0.4, 0.0)]))
    save_adapter(folder / "carol.safetensors", other, G, Anchors(torch.randn(2, G.w_dim, generator=g), cams,
                                                                  ["front", "side"]))
    shutil.copy(folder / "carol.safetensors", folder / "new.tmp")
    os.replace(folder / "new.tmp", folder / "bob.safetensors")
    now = app.view("bob", "front", 0.2, 0.0)
    fresh = WebApp(build_generator(preset_name="tiny"), folder).view("bob", "front", 0.2, 0.0)
    assert now != first and now == fresh
