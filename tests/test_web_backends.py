"""The web page served from an export through the runtime (web/sources.py RuntimeSource, `cli.py web --export`):
its views, interpolations, videos and meshes are the runtime's (onnxruntime and torch backends), the listing says
which backend serves and why, an export without its model directory refuses meshes saying why, and the command
line refuses a second model source or an unknown backend in one line. Exports come from tests/test_export.py's
session cache (tiny preset)."""
from __future__ import annotations

import io
import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from media.orbit import Orbit
from media.runtime_video import video_frames
from runtime import Runtime
from tests import test_export
from fixtures.people import make_person
from tests.test_web import get
from web.app import WebApp
from web.server import ServerOptions, WebServer
from web.sources import BASE_SEEDS, RuntimeSource

G, exports = test_export.G, test_export.exports  # fixtures: the tiny generator and the session's tiny exports
BACKENDS = ("onnxruntime", "torch")
ABSOLUTE_PATH = re.compile(r"(?:^|[\s'\"(\[=:,])/[^\s'\"]")


@pytest.fixture(scope="module")
def people(tmp_path_factory, exports):
    """alice and bob (W+ anchors) of the keep-LoRA export, a file that is no adapter, and an adapter of another
    base model."""
    from generator.model_dir import build_generator
    d = tmp_path_factory.mktemp("web people")
    for name in ("alice", "bob"):
        shutil.copy(exports["people"] / f"{name}.safetensors", d)
    (d / "broken.safetensors").write_bytes(b"not an adapter file")
    make_person(build_generator(preset_name="tiny", seed=5), d / "stranger.safetensors", seed=3)
    return d


@pytest.fixture(scope="module")
def apps(exports, people):
    """backend -> (WebApp over a Runtime of the keep-LoRA export, a second Runtime of the same export: the
    reference)."""
    made = {}

    def app(backend: str):
        if backend not in made:
            rt = Runtime(exports["keep"], people, threads=2, backend=backend)
            made[backend] = (WebApp(RuntimeSource(rt)), Runtime(exports["keep"], people, threads=2, backend=backend))
        return made[backend]
    return app


@pytest.fixture(scope="module")
def old_export(exports, tmp_path_factory):
    """A copy of the keep-LoRA export as exported before manifest 'torch' (no model directory)."""
    d = tmp_path_factory.mktemp("exports") / "old"
    shutil.copytree(exports["keep"], d)
    m = json.loads((d / "manifest.json").read_text())
    del m["torch"]
    shutil.rmtree(d / "model")
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def image(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def base_latents(rt: Runtime) -> np.ndarray:
    """The base model's anchors seed0..seed3 as the page makes them: rt.map of seeds 0-3 in one batch."""
    z = np.concatenate([np.random.RandomState(s).randn(1, rt.z_dim).astype(np.float32) for s in BASE_SEEDS])
    return rt.map(z, truncation_psi=0.7)


# ------------------------------------------------------------------------------------------ the runtime's pixels

@pytest.mark.parametrize("backend", BACKENDS)
def test_views_and_interpolations_are_the_runtimes(apps, backend):
    app, rt = apps(backend)
    cases = [(app.view("alice", "photo1", 0.3, -0.1), rt.novel_view("alice", anchor="photo1", yaw=0.3, pitch=-0.1)),
             (app.view("bob", "2", -0.4, 0.2), rt.novel_view("bob", anchor=2, yaw=-0.4, pitch=0.2)),
             (app.view("base", "seed1", 0.2, 0.0), rt.novel_view(None, latent=base_latents(rt)[1], yaw=0.2)),
             (app.interpolate("bob", "photo0", "photo2", 0.25, -0.2, 0.1),
              rt.interpolate("bob", "photo0", "photo2", 0.25, yaw=-0.2, pitch=0.1)),
             (app.interpolate("base", "seed0", "seed3", "0.5"),
              rt.novel_view(None, latent=(0.5 * base_latents(rt)[0] + 0.5 * base_latents(rt)[3]).astype(np.float32)))]
    diffs = [max_diff(image(png), want.to_uint8()) for png, want in cases]
    print(backend, "max abs differences (levels):", diffs)
    assert all(d <= 1 for d in diffs), diffs
    assert app.view("alice", "photo1", 0.3, -0.1) == cases[0][0]        # again: from the runtime's plane cache
    assert app.source.rt.counters["plane_cache_hits"] >= 1
    with pytest.raises(ValueError, match="unknown anchor 'nobody'"):
        app.view("alice", "nobody")
    with pytest.raises(ValueError, match="yaw must be within"):
        app.view("alice", "photo0", yaw=7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_video_frames_are_the_runtimes_and_a_short_video_comes_back(apps, backend):
    app, rt = apps(backend)
    src = app.source
    who = src.select("alice")
    turntable = list(src.frames(who, "turntable", "photo0", None, 3, Orbit(), None))
    want = video_frames(rt.orbit("alice", anchor="photo0", frames=3))
    assert [max_diff(a, b) for a, b in zip(turntable, want)] == [0, 0, 0]
    interpolation = list(src.frames(who, "interpolate", "photo0", "photo2", 3, Orbit(), None))
    want = video_frames(rt.interpolation("alice", "photo0", "photo2", frames=3))
    assert len(interpolation) == 3 and max(max_diff(a, b) for a, b in zip(interpolation, want)) <= 1
    data, suffix = app.video("alice", "turntable", "photo0", frames=3, fmt="gif")
    gif = Image.open(io.BytesIO(data))
    assert suffix == ".gif" and gif.n_frames == 3 and gif.size == (rt.image_size, rt.image_size)
    data, suffix = app.video("base", "interpolate", "seed0", "seed1", frames=2, fmt="gif")
    assert suffix == ".gif" and Image.open(io.BytesIO(data)).n_frames == 2
    with pytest.raises(ValueError, match="b: unknown anchor 'nobody'"):
        app.video("alice", "interpolate", "photo0", "nobody", frames=2, fmt="gif")
    assert app.running_jobs() == 0


# ------------------------------------------------------------------------------------------ meshes

def test_a_mesh_comes_from_the_exports_model_directory(apps, exports, people, tmp_path):
    """The mesh of an anchor is generator.mesh's mesh of that latent on the export's model directory with the
    person's adapter attached (the same bytes)."""
    from generator.adapter_file import load_adapter
    from generator.lora import attach
    from generator.mesh import MeshConfig, mesh_of_latent
    from generator.model_dir import load_model_dir
    from media.mesh_io import write_mesh
    app, rt = apps("onnxruntime")
    with pytest.raises(ValueError, match="no surface at density level 9999") as info:
        app.mesh("alice", "photo0", resolution=16, level=9999)
    level = float(str(info.value).split("[")[1].split(",")[0]) + 0.3
    body = app.mesh("alice", "photo0", resolution=16, level=level)
    assert body.startswith(b"ply\nformat binary_little_endian 1.0")
    model = load_model_dir(exports["keep"] / "model").eval()
    attach(model, load_adapter(people / "alice.safetensors", model)[0])
    ws = torch.from_numpy(rt.people_store.get("alice").anchor_latent("photo0"))[None]
    with torch.no_grad():
        expected = mesh_of_latent(model, ws, MeshConfig(resolution=16, level=level))[0]
    assert body == write_mesh(expected, tmp_path / "expected.ply").read_bytes()
    obj = app.mesh("alice", "photo0", "obj", resolution=16, level=level)
    assert b"\nv " in obj and b"\nf " in obj
    assert app.running_jobs() == 0


def test_an_export_without_its_model_directory_refuses_meshes_saying_why(old_export, people):
    rt = Runtime(old_export, people, threads=2, backend="auto")
    app = WebApp(RuntimeSource(rt))
    assert app.backend()["name"] == "onnxruntime" and "no 'torch' field" in app.backend()["why"]
    assert app.people()["alice"] == ["photo0", "photo1", "photo2"]
    assert image(app.view("alice", "photo0")).shape == (rt.image_size, rt.image_size, 3)
    with pytest.raises(ValueError, match="meshes are made by the generator of the export's model directory.*no "
                                         "'torch' field.*re-export"):
        app.mesh("alice", "photo0", resolution=16)
    assert app.running_jobs() == 0
    server = WebServer(app, ServerOptions(port=0)).start()
    try:
        status, body, _ = get(server.url + "api/mesh?person=alice&anchor=photo0&resolution=16&level=2")
        error = json.loads(body)["error"]
        assert status == 400 and "no 'torch' field" in error and not ABSOLUTE_PATH.search(error), error
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------ the listing

@pytest.mark.parametrize("backend", BACKENDS)
def test_the_listing_says_the_backend_and_leaves_out_bad_files(apps, backend):
    app, _ = apps(backend)
    people, skipped = app.people_listing()
    assert people == {"base": ["seed0", "seed1", "seed2", "seed3"], "alice": ["photo0", "photo1", "photo2"],
                      "bob": ["photo0", "photo1", "photo2"]}
    assert set(skipped) == {"broken", "stranger"} and "different base model" in skipped["stranger"]
    assert app.backend() == {"name": backend, "precision": "fp32", "why": "asked for by name"}
    with pytest.raises(ValueError, match="person 'broken': broken.safetensors is not a usable adapter file"):
        app.view("broken", "0")
    with pytest.raises(ValueError, match="unknown person 'ghost'"):
        app.view("ghost", "0")


def test_auto_says_why_it_chose_and_a_merged_export_lists_its_person(exports):
    rt = Runtime(exports["merged_alice"], threads=2, backend="auto")
    app = WebApp(RuntimeSource(rt))
    assert app.backend()["name"] in BACKENDS and "one cached-plane render" in app.backend()["why"]
    assert app.people() == {"alice": ["photo0", "photo1", "photo2"]}   # no base model in a merged export
    want = rt.novel_view("alice", anchor="photo1", yaw=0.1)
    assert max_diff(image(app.view("alice", "photo1", 0.1)), want.to_uint8()) <= 1
    with pytest.raises(ValueError, match="merged"):
        app.view("base", "seed0")


# ------------------------------------------------------------------------------------------ over HTTP

def test_the_server_answers_from_the_runtime(apps):
    app, rt = apps("torch")
    server = WebServer(app, ServerOptions(port=0)).start()
    try:
        status, body, _ = get(server.url + "api/people")
        listing = json.loads(body)
        assert status == 200 and listing["backend"]["name"] == "torch" and "alice" in listing["people"]
        status, png, headers = get(server.url + "api/view?person=alice&anchor=photo2&yaw=-0.3&pitch=0.1")
        assert status == 200 and headers["Content-Type"] == "image/png"
        assert max_diff(image(png), rt.novel_view("alice", anchor="photo2", yaw=-0.3, pitch=0.1).to_uint8()) <= 1
        status, body, _ = get(server.url + "api/interpolate?person=alice&a=photo0&b=photo1&t=0")
        assert status == 200 and max_diff(image(body), rt.novel_view("alice", anchor="photo0").to_uint8()) <= 1
        status, body, headers = get(server.url + "api/video?person=alice&kind=turntable&a=photo0&frames=2&format=gif")
        assert status == 200 and headers["Content-Type"] == "image/gif" and "attachment" in headers[
            "Content-Disposition"]
        for path, code, words in [("api/view?person=broken&anchor=0", 422, "broken.safetensors"),
                                  ("api/view?person=alice&anchor=nobody", 400, "unknown anchor 'nobody'"),
                                  ("api/view?person=ghost&anchor=0", 400, "unknown person 'ghost'"),
                                  ("api/view?person=alice&anchor=photo0&yaw=nan", 400, "yaw must be")]:
            status, body, _ = get(server.url + path)
            error = json.loads(body)["error"]
            assert status == code and words in error and not ABSOLUTE_PATH.search(error), (path, status, error)
    finally:
        server.stop()


def test_a_replaced_adapter_file_shows_its_new_face(exports, tmp_path):
    """The runtime resolves a person per request (its adapter cache re-reads a changed file, its plane cache is
    keyed by the file's hash): a file replaced under the same name renders as a fresh page would."""
    import os
    folder = tmp_path / "people"
    folder.mkdir()
    shutil.copy(exports["people"] / "alice.safetensors", folder / "carol.safetensors")
    app = WebApp(RuntimeSource(Runtime(exports["keep"], folder, threads=2, backend="onnxruntime")))
    first = app.view("carol", "photo0", 0.2)
    assert app.view("carol", "photo0", 0.2) == first
    shutil.copy(exports["people"] / "bob.safetensors", folder / "new.tmp")
    os.replace(folder / "new.tmp", folder / "carol.safetensors")
    now = app.view("carol", "photo0", 0.2)
    fresh = WebApp(RuntimeSource(Runtime(exports["keep"], folder, threads=2, backend="onnxruntime")))
    assert now != first and now == fresh.view("carol", "photo0", 0.2)


def test_a_source_brings_its_own_people_folder(apps, people):
    app, _ = apps("onnxruntime")
    with pytest.raises(ValueError, match="brings its own people folder"):
        WebApp(app.source, people)


# ------------------------------------------------------------------------------------------ the command line

def invoke(*args: str) -> tuple[int, list[str]]:
    from typer.testing import CliRunner
    import cli
    result = CliRunner().invoke(cli.app, list(args))
    return result.exit_code, [ln for ln in result.output.splitlines() if ln.strip()]


@pytest.mark.parametrize("args,words", [
    (["--export", "x", "--model", "y"], ["give exactly one of --export DIR, --model DIR or --preset NAME",
                                         "--export and --model"]),
    (["--export", "x", "--preset", "tiny"], ["give exactly one of"]),
    ([], ["give exactly one of"]),
    (["--export", "x", "--backend", "jax"], ["--backend", "jax"]),
    (["--export", "x", "--precision", "fp8"], ["--precision", "fp8"]),
    (["--preset", "tiny", "--backend", "torch"], ["--backend chooses how an export is served"]),
])
def test_the_command_line_refuses_in_one_line(args, words, monkeypatch):
    import generator.model_dir

    def built(*a, **k):
        raise AssertionError("a model was built before the command line was refused")
    monkeypatch.setattr(generator.model_dir, "build_generator", built)
    code, lines = invoke("web", *args)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, code, lines)
    assert all(w in lines[0] for w in words), (words, lines[0])
