"""Turntable and interpolation videos (generator/video.py, media/video_writer.py) on the tiny preset."""
from __future__ import annotations

import io
import itertools
import math
import re
import sys

import numpy as np
import pytest
import torch

from generator.adapter_file import Anchors, save_adapter
from formats.cameras import lookat_label
from formats.latent_file import LatentFileError, read_latent
from formats.limits import Limits
from generator.imaging import to_uint8
from generator.lora import PersonAdapter, attach
from generator.model_dir import build_generator
from generator.video import (Orbit, VideoOptions, interpolate_camera, interpolation_end, interpolation_frames,
                             turntable_frames, write_turntable)
from generator.views import camera_batch, seed_latent
from media import video_writer
from media.video_writer import read_video, write_video
from tests.helpers.cli import run_cli


@pytest.fixture(scope="module")
def G():
    return build_generator(preset_name="tiny")


@pytest.fixture(scope="module")
def ws(G):
    with torch.no_grad():
        return G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(1)), torch.zeros(1, 25),
                         truncation_psi=0.7)


def test_orbit_is_eg3d_gen_videos_orbit():
    views = Orbit().views(4)
    expected = [(0.0, 0.2), (0.35, -0.05), (0.0, -0.3), (-0.35, -0.05)]
    assert np.allclose(views, expected, atol=1e-12)


@pytest.mark.skipif(video_writer.ffmpeg_exe() is None, reason="imageio-ffmpeg is not installed")
def test_16_frame_turntable_mp4_decodes_to_16_frames_of_the_right_size(G, ws, tmp_path):
    info = write_turntable(G, ws, tmp_path / "t.mp4", VideoOptions(frames=16, fps=8, size=64), progress=False)
    assert (info.path, info.format, info.frames, info.width, info.height) == (tmp_path / "t.mp4", "H.264 mp4",
                                                                              16, 64, 64)
    decoded = read_video(info.path)
    assert len(decoded) == 16 and all(f.shape == (64, 64, 3) for f in decoded)
    rendered = list(itertools.islice(turntable_frames(G, ws, 16, size=64), 5))   # frames 0-4 (two batches)
    errors = [np.abs(d.astype(float) - r).mean() for d, r in zip(decoded, rendered)]
    assert max(errors) < 6, errors                      # lossy H.264, but the same pictures in the same order
    assert np.abs(rendered[0].astype(float) - rendered[4]).mean() > 2 * max(errors)  # and the head turns


def test_without_ffmpeg_an_mp4_request_writes_a_gif_and_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(video_writer, "ffmpeg_exe", lambda: None)
    frames = [np.full((16, 16, 3), 40 * k, np.uint8) for k in range(5)]
    info = write_video(frames, tmp_path / "v.mp4", fps=10)
    assert info.path == tmp_path / "v.gif" and info.format == "GIF" and "instead of the mp4" in info.note
    assert not (tmp_path / "v.mp4").exists()
    back = read_video(info.path)
    assert len(back) == 5 and all(np.array_equal(b, f) for b, f in zip(back, frames))


def test_bad_frames_and_paths_are_refused(tmp_path):
    with pytest.raises(ValueError, match="must end in"):
        write_video([np.zeros((16, 16, 3), np.uint8)], tmp_path / "v.avi")
    with pytest.raises(ValueError, match="even sides"):
        write_video([np.zeros((15, 16, 3), np.uint8)], tmp_path / "v.gif")
    with pytest.raises(ValueError, match="frame 1"):
        write_video([np.zeros((16, 16, 3), np.uint8), np.zeros((18, 16, 3), np.uint8)], tmp_path / "v.gif")
    assert not list(tmp_path.iterdir())


def test_camera_interpolation_is_exact_at_the_ends_and_stays_on_the_orbit():
    a, b = lookat_label(0.4, 0.1), lookat_label(-0.3, -0.2)
    assert np.array_equal(interpolate_camera(a, b, 0.0), a) and np.array_equal(interpolate_camera(a, b, 1.0), b)
    mid = interpolate_camera(a, b, 0.5).astype(np.float64)
    pos = mid[:16].reshape(4, 4)[:3, 3]
    assert abs(np.linalg.norm(pos) - 2.7) < 0.02                       # not cut inside the sphere (lerp: 2.63)
    forward = mid[:16].reshape(4, 4)[:3, 2]
    to_pivot = (np.array([0, 0, 0.2]) - pos) / np.linalg.norm(np.array([0, 0, 0.2]) - pos)
    assert math.degrees(math.acos(min(1.0, forward @ to_pivot))) < 0.5   # still looking at the face


def test_interpolation_first_and_last_frames_are_the_anchors_renders(G):
    person = PersonAdapter.create(G)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in person.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    anchors = Anchors(torch.randn(2, G.w_dim, generator=g),
                      torch.from_numpy(np.stack([lookat_label(0.3, 0.05), lookat_label(-0.25, -0.1)])), ["a", "b"])
    attach(G, person)
    try:
        wa, wb = anchors.ws_plus(G.num_ws)[:1], anchors.ws_plus(G.num_ws)[1:]
        frames = list(interpolation_frames(G, wa, anchors.c[0], wb, anchors.c[1], frames=3))
        with torch.no_grad():
            ra = to_uint8(G.synthesis(wa, anchors.c[:1])["image"][0])
            rb = to_uint8(G.synthesis(wb, anchors.c[1:])["image"][0])
    finally:
        attach(G, None)
    assert np.array_equal(frames[0], ra) and np.array_equal(frames[-1], rb)
    assert not np.array_equal(frames[1], ra) and not np.array_equal(frames[1], rb)


def test_cli_interpolation_video_of_a_persons_anchors(G, tmp_path):
    person = PersonAdapter.create(G)
    anchors = Anchors(torch.randn(2, G.w_dim, generator=torch.Generator().manual_seed(3)),
                      torch.from_numpy(np.stack([lookat_label(0.3, 0), lookat_label(-0.3, 0)])), ["left", "right"])
    path = save_adapter(tmp_path / "p.safetensors", person, G, anchors)
    out = tmp_path / "i.gif"
    proc = run_cli("render", "--preset", "tiny", "--adapter", path, "--video", "interpolate", "--anchor", "left",
                   "--to", "1", "--frames", 4, "--size", 32, "--out", out)
    assert f"wrote {out} (GIF, 4 frames, 32x32" in proc.stdout
    assert len(read_video(out)) == 4
    proc = run_cli("render", "--preset", "tiny", "--adapter", path, "--video", "interpolate", "--anchor", "left",
                   "--to", "nobody", "--out", out, check=False)
    assert proc.returncode == 2 and "--to: unknown anchor 'nobody'" in proc.stderr


@pytest.mark.slow  # the tiny exports it needs (~15 s each on 2 cores) are shared with the runtime tests in a session
@pytest.mark.skipif(video_writer.ffmpeg_exe() is None, reason="imageio-ffmpeg is not installed")
def test_runtime_turntable_is_the_same_orbit_without_torch(tmp_path_factory, tmp_path):
    """The torch-free runtime's video (media/runtime_video.py) shows the runtime's own novel views, frame by frame."""
    from media.runtime_video import runtime_turntable
    from runtime import Runtime
    from tests.test_export import TinyExports, tiny_generator
    exports = TinyExports(tmp_path_factory, tiny_generator())
    rt = Runtime(exports["keep"], exports["people"], threads=2)
    info = runtime_turntable(rt, "alice", 0, tmp_path / "rt.mp4", frames=6, fps=6)
    assert (info.frames, info.width) == (6, rt.novel_view("alice", anchor=0).image.shape[-1])
    decoded = read_video(info.path)
    views = Orbit().views(6)
    want = [rt.novel_view("alice", anchor=0, yaw=y, pitch=p).to_uint8() for y, p in views]
    assert len(decoded) == 6
    assert max(np.abs(d.astype(float) - w).mean() for d, w in zip(decoded, want)) < 6


def test_camera_path_is_scipys_se3_geodesic_in_closed_form():
    """media.camera_path's numpy closed forms equal A expm(t logm(A^-1 B)) (the definition, via scipy)."""
    import scipy.linalg
    from media.camera_path import interpolate_camera, view_angles
    a, b = lookat_label(0.45, 0.15), lookat_label(-0.35, -0.25)
    ma, mb = (x[:16].astype(np.float64).reshape(4, 4) for x in (a, b))
    for t in (0.0, 0.1, 0.25, 0.5, 0.6, 0.9, 1.0):
        near, far, s = (ma, mb, t) if t <= 0.5 else (mb, ma, 1 - t)
        want = near @ scipy.linalg.expm(s * np.real(scipy.linalg.logm(np.linalg.inv(near) @ far)))
        assert np.abs(interpolate_camera(a, b, t)[:16].reshape(4, 4) - want).max() < 1e-6, t
    assert np.allclose(interpolate_camera(a, a, 0.5), a, atol=1e-6)                # zero rotation: no NaN
    assert np.allclose(view_angles(lookat_label(0.3, -0.2)), (0.3, -0.2), atol=1e-6)
    with pytest.raises(ValueError, match="t must be in"):
        interpolate_camera(a, b, 1.5)


def test_encode_video_returns_the_bytes_and_their_content_type(tmp_path):
    from media.video_writer import encode_video
    frames = [np.full((16, 24, 3), 30 * k, np.uint8) for k in range(4)]
    gif = encode_video(frames, "gif", fps=10)
    assert gif.content_type == "image/gif" and gif.data[:6] == b"GIF89a" and gif.info.frames == 4
    (tmp_path / "v.gif").write_bytes(gif.data)
    assert [f.shape for f in read_video(tmp_path / "v.gif")] == [(16, 24, 3)] * 4
    with pytest.raises(ValueError, match="mp4, gif"):
        encode_video(frames, "avi")
    if video_writer.ffmpeg_exe() is not None:
        mp4 = encode_video(frames, "mp4", fps=10)
        assert mp4.content_type == "video/mp4" and mp4.data[4:8] == b"ftyp"
        (tmp_path / "v.mp4").write_bytes(mp4.data)
        assert len(read_video(tmp_path / "v.mp4")) == 4


@pytest.mark.slow  # shares the session's tiny keep-LoRA export with the runtime tests
def test_runtime_interpolation_ends_are_the_anchors_renders_and_matches_eager(tmp_path_factory):
    """Runtime.interpolation (torch-free): frame 0 and the last frame are the anchors seen from their own photo
    cameras (rendered separately, caches cleared: at most 1 level of 255 apart; observed 0), and a middle frame is
    what eager PyTorch renders for the lerped W and the interpolated camera (the export tests' tolerance)."""
    from generator.adapter_file import load_adapter
    from media.camera_path import interpolate_camera
    from runtime import Runtime
    from tests.test_export import TOL, TinyExports, eager_render, tiny_generator
    G = tiny_generator()
    exports = TinyExports(tmp_path_factory, G)
    rt = Runtime(exports["keep"], exports["people"], threads=2)
    first, last = rt.anchor_view("alice", "photo0").to_uint8(), rt.anchor_view("alice", 2).to_uint8()
    rt.clear_caches()
    frames = rt.interpolation("alice", "photo0", 2, frames=5)
    assert len(frames) == 5 and [r.cache_hit for r in frames] == [False] * 5
    for got, want in ((frames[0].to_uint8(), first), (frames[-1].to_uint8(), last)):
        assert np.abs(got.astype(int) - want).max() <= 1
    assert np.abs(frames[2].to_uint8().astype(int) - first).mean() > 1
    assert np.abs(frames[2].to_uint8().astype(int) - last).mean() > 1
    anchors = load_adapter(exports["people"] / "alice.safetensors", G)[1]
    ws = anchors.ws_plus(G.num_ws)
    c = interpolate_camera(anchors.c[0].numpy(), anchors.c[2].numpy(), 0.5)
    with torch.no_grad():
        want = eager_render(G, torch.lerp(ws[0:1], ws[2:3], 0.5), torch.from_numpy(c)[None],
                            exports["people"] / "alice.safetensors")["image"][0]
    assert float(np.abs(frames[2].image - want).max()) <= TOL
    assert frames[0].timings["synthesis"] > 0 and frames[1].timings["mapping"] == 0.0


@pytest.mark.slow  # shares the session's tiny keep-LoRA export with the runtime tests
def test_python_m_runtime_writes_videos(tmp_path_factory, tmp_path, capsys):
    from runtime.__main__ import main
    from tests.test_export import TinyExports, tiny_generator
    exports = TinyExports(tmp_path_factory, tiny_generator())
    alice = exports["people"] / "alice.safetensors"
    out = tmp_path / "i.gif"
    assert main([str(exports["keep"]), str(alice), "--anchor", "photo0", "--video", "interpolate", "--to", "2",
                 "--frames", "3", "--fps", "5", "--out", str(out)]) == 0
    assert f"wrote {out} (GIF, 3 frames" in capsys.readouterr().out and len(read_video(out)) == 3
    assert main([str(exports["keep"]), str(alice), "--video", "turntable", "--frames", "2", "--out",
                 str(tmp_path / "t.avi")]) == 2
    assert "must end in .mp4 or .gif" in capsys.readouterr().err
    assert main([str(exports["keep"]), str(alice), "--video", "interpolate", "--to", "nobody", "--out",
                 str(out)]) == 2
    assert "unknown anchor 'nobody'" in capsys.readouterr().err


# ------------------------------------------------------------------ interpolation between seeds, anchors and latent files
def _cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """cli.py in this process, as `main()` runs it: (exit code, stdout, stderr)."""
    import cli
    monkeypatch.setattr(sys, "argv", ["cli.py", *map(str, args)])
    monkeypatch.setattr(cli._Settings, "debug", False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out = capsys.readouterr()
    return exit_info.value.code or 0, out.out, out.err


def test_seed_to_seed_interpolation_ends_are_the_seeds_own_renders(G):
    """gen_videos.py's walk between seeds: the ends are the seeds' latents (as `render --seed` maps them) seen from
    the asked view, frame for frame what G.synthesis renders of them."""
    view = (0.2, -0.1)
    a = interpolation_end(G, ("--from", "seed", 1), view=view, truncation_psi=0.7)
    b = interpolation_end(G, ("--to", "seed", 2), view=view, truncation_psi=0.7)
    c = camera_batch(G, [view])
    assert torch.equal(a[1], c[0]) and torch.equal(b[1], c[0])
    frames = list(interpolation_frames(G, *a, *b, frames=3))
    with torch.no_grad():
        ra = to_uint8(G.synthesis(seed_latent(G, 1, 0.7), c)["image"][0])
        rb = to_uint8(G.synthesis(seed_latent(G, 2, 0.7), c)["image"][0])
    assert np.array_equal(frames[0], ra) and np.array_equal(frames[-1], rb)
    assert not np.array_equal(frames[1], ra) and not np.array_equal(frames[1], rb)
    # the truncation options reach the seeds: psi 0 is the average latent whatever the seed; a cutoff is passed on
    assert torch.equal(interpolation_end(G, ("--from", "seed", 1), truncation_psi=0.0)[0],
                       interpolation_end(G, ("--to", "seed", 2), truncation_psi=0.0)[0])
    assert torch.equal(interpolation_end(G, ("--from", "seed", 1), truncation_psi=0.5, truncation_cutoff=2)[0],
                       seed_latent(G, 1, 0.5, 2))


def test_latent_file_ends_read_eg3d_projected_w_and_npy(G, tmp_path):
    ws = seed_latent(G, 3, 0.7)
    np.savez(tmp_path / "projected_w.npz", w=ws.numpy())                      # EG3D projector.py's file
    np.save(tmp_path / "w_plus.npy", ws[0].numpy().astype(np.float64))       # W+ [num_ws, w_dim], float64
    np.save(tmp_path / "w.npy", ws[0, 0].numpy().astype(np.float16))        # W [w_dim], float16
    got, camera = interpolation_end(G, ("--from", "file", tmp_path / "projected_w.npz"))
    assert torch.equal(got, ws) and torch.equal(camera, camera_batch(G, [(0.0, 0.0)])[0])
    assert torch.equal(interpolation_end(G, ("--to", "file", tmp_path / "w_plus.npy"))[0], ws)
    w = interpolation_end(G, ("--to", "file", tmp_path / "w.npy"))[0]
    assert w.shape == ws.shape and torch.equal(w[0, -1], ws[0, 0].half().float())


def test_bad_latent_files_are_refused_naming_the_option_and_file(G, tmp_path):
    n, d = G.num_ws, G.w_dim
    nan = np.zeros((1, n, d), np.float32)
    nan[0, 1, 2] = np.nan
    np.savez(tmp_path / "shape.npz", w=np.zeros((1, n + 1, d), np.float32))
    np.savez(tmp_path / "nan.npz", w=nan)
    np.save(tmp_path / "inf.npy", np.full(d, 1e300))                         # finite in float64, not in float32
    np.save(tmp_path / "pickled.npy", np.array([{"w": 1}], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "pickled.npz", w=np.array([{"w": 1}], dtype=object))
    np.save(tmp_path / "ints.npy", np.zeros((n, d), np.int32))
    np.savez(tmp_path / "other.npz", latent=np.zeros((1, n, d), np.float32))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**5, 10**5)})
    (tmp_path / "huge.npy").write_bytes(header.getvalue())                   # claims 40 GB, holds none of it
    cases = {"shape.npz": f"shape [1, {n + 1}, {d}]: this model's latent is [1, {n}, {d}]",
             "nan.npz": "non-finite", "inf.npy": "non-finite", "pickled.npy": "dtype object",
             "pickled.npz": "dtype object", "ints.npy": "dtype int32", "other.npz": "has no array 'w'",
             "junk.npz": "not a readable .npz", "huge.npy": "shape [100000, 100000]", "missing.npz": "no such"}
    for name, words in cases.items():
        with pytest.raises(LatentFileError, match=re.escape(f"--to {tmp_path / name}: ") + ".*" + re.escape(words)):
            interpolation_end(G, ("--to", "file", tmp_path / name))
    with pytest.raises(LatentFileError, match="max_latent_file_bytes=100; raise it"):
        read_latent(tmp_path / "shape.npz", n, d, Limits(max_latent_file_bytes=100))


def test_bad_interpolation_ends_are_refused_before_any_work_naming_the_value(tmp_path, monkeypatch, capsys):
    import generator.model_dir
    np.savez(tmp_path / "w.npz", w=np.zeros((1, 8, 64), np.float32))

    def built(*args, **kwargs):
        raise AssertionError("a model was built before the bad value was refused")
    monkeypatch.setattr(generator.model_dir, "build_generator", built)
    base = ["render", "--preset", "tiny", "--video", "interpolate", "--out", tmp_path / "v.gif"]
    cases = [(["--from", "seed:abc", "--to", "seed:1"], "'--from': 'seed:abc': 'abc' is not an integer"),
             (["--from", "seed:1", "--to", "seed:4294967296"], "'--to': 'seed:4294967296': 4294967296 is outside"),
             (["--from", "seed:-1", "--to", "seed:1"], "'seed:-1': -1 is outside [0, 4294967295]"),
             (["--from", "latent:w", "--to", "seed:1"], "'--from': 'latent:w': unknown prefix 'latent:'"),
             (["--from", tmp_path / "none.npz", "--to", "seed:1"], "none.npz': no such latent file"),
             (["--from", "seed:1", "--to", "left"], "'--to': 'left' is an anchor, which needs --adapter"),
             (["--from", "seed:1", "--anchor", "left", "--to", "seed:2"], "--from or at --anchor, not both"),
             (["--from", "seed:1"], "needs --from (or --anchor) and --to")]
    for extra, words in cases:
        code, out, err = _cli(monkeypatch, capsys, *base, *extra)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], (extra, err)
    code, _, err = _cli(monkeypatch, capsys, "render", "--preset", "tiny", "--video", "turntable", "--from",
                        tmp_path / "w.npz", "--out", tmp_path / "v.gif")
    assert code == 2 and "--from is for --video interpolate" in err


def test_cli_interpolation_between_seeds_files_and_anchors(G, tmp_path, monkeypatch, capsys):
    np.savez(tmp_path / "projected_w.npz", w=seed_latent(G, 5, 0.7).numpy())
    out = tmp_path / "s.gif"
    code, stdout, _ = _cli(monkeypatch, capsys, "render", "--preset", "tiny", "--video", "interpolate", "--from",
                           "seed:1", "--to", "seed:2", "--yaw", "0.3", "--frames", 3, "--size", 32, "--out", out)
    assert code == 0 and f"wrote {out} (GIF, 3 frames, 32x32" in stdout and len(read_video(out)) == 3
    person = PersonAdapter.create(G)
    anchors = Anchors(torch.randn(2, G.w_dim, generator=torch.Generator().manual_seed(3)),
                      torch.from_numpy(np.stack([lookat_label(0.3, 0), lookat_label(-0.3, 0)])), ["left", "right"])
    path = save_adapter(tmp_path / "p.safetensors", person, G, anchors)
    for ends in (["--from", "seed:1", "--to", "anchor:right"], ["--from", tmp_path / "projected_w.npz", "--to", "0"]):
        code, stdout, err = _cli(monkeypatch, capsys, "render", "--preset", "tiny", "--adapter", path, "--video",
                                 "interpolate", *ends, "--frames", 2, "--size", 32, "--out", out)
        assert code == 0 and f"wrote {out} (GIF, 2 frames" in stdout, (ends, err)
    np.savez(tmp_path / "bad.npz", w=np.zeros((1, 3, G.w_dim), np.float32))   # refused once the model says num_ws
    code, _, err = _cli(monkeypatch, capsys, "render", "--preset", "tiny", "--video", "interpolate", "--from",
                        "seed:1", "--to", tmp_path / "bad.npz", "--out", out)
    assert code == 2 and err.strip().splitlines()[-1].startswith(f"error: --to {tmp_path / 'bad.npz'}: shape [1, 3")
