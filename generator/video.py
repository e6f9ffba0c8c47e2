"""Frames of the two videos people ask of a 3D face generator: a turntable and an interpolation between anchors.

Turntable: one latent seen along EG3D's gen_videos.py orbit (`media.orbit.Orbit`, on the generator's average
camera radius and pivot). Tri-planes are computed once.

Interpolation (the paper's synthesis, Figures 8-9): between two anchors of a person, w = (1 - t) w_a + t w_b in W
(W+ when the anchors are W+) and the camera moves from anchor a's to anchor b's along the rigid-motion geodesic
(`media.camera_path.interpolate_camera`, shared with the torch-free runtime), t = k / (n - 1), so the first and
last frames are exactly the anchors' own renders.

Frames come out as HxWx3 uint8 arrays, resized to `size` when asked; `media.video_writer` writes them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch

from generator.imaging import to_uint8
from generator.triplane import TriPlaneGenerator
from generator.views import camera_batch
from media.camera_path import interpolate_camera
from media.frames import VIDEO_KINDS, resize_frame
from media.orbit import Orbit, check_frames

def check_size(size: int | None) -> int | None:
    if size is not None and (not isinstance(size, int) or size < 16 or size % 2):
        raise ValueError(f"size must be an even number of pixels >= 16, got {size!r}")
    return size


@torch.no_grad()
def turntable_frames(G: TriPlaneGenerator, ws: torch.Tensor, frames: int, orbit: Orbit = Orbit(),
                     size: int | None = None, batch: int = 4, sampling: str = "deterministic") -> Iterator[np.ndarray]:
    """Frames of latent ws [1, num_ws, w_dim] along `orbit`; tri-planes once, then `batch` views per render."""
    check_size(size)
    views = orbit.views(frames)
    planes = G.planes(ws)
    for i in range(0, len(views), batch):
        c = camera_batch(G, views[i:i + batch])
        n = len(c)
        out = G.render_planes(planes.expand(n, -1, -1, -1, -1), ws.expand(n, -1, -1), c, sampling=sampling)
        for img in to_uint8(out["image"]):
            yield resize_frame(img, size)


@torch.no_grad()
def interpolation_frames(G: TriPlaneGenerator, ws_a: torch.Tensor, c_a: torch.Tensor, ws_b: torch.Tensor,
                         c_b: torch.Tensor, frames: int, size: int | None = None,
                         sampling: str = "deterministic") -> Iterator[np.ndarray]:
    """Frames from (ws_a [1, num_ws, w_dim], camera c_a [25]) to (ws_b, c_b): W lerp and camera geodesic.

    Each frame is its own latent (its own tri-planes), rendered alone, exactly as G.synthesis renders a latent
    and a camera.
    """
    check_frames(frames, least=2)
    check_size(size)
    ca, cb = c_a.detach().cpu().numpy(), c_b.detach().cpu().numpy()
    for k in range(frames):
        t = k / (frames - 1)
        ws = torch.lerp(ws_a, ws_b, t)  # exact at both ends: torch evaluates t >= 0.5 from the end
        c = torch.from_numpy(interpolate_camera(ca, cb, t)).unsqueeze(0)
        out = G.render_planes(G.planes(ws), ws, c, sampling=sampling)
        yield resize_frame(to_uint8(out["image"][0]), size)


def with_progress(frames: Iterable[np.ndarray], total: int, desc: str) -> Iterable[np.ndarray]:
    """The same frames behind a tqdm progress bar on stderr."""
    from tqdm import tqdm
    return tqdm(frames, total=total, desc=desc, unit="frame", dynamic_ncols=True)


@dataclass(frozen=True)
class VideoOptions:
    """Frame count, frame rate, frame side in pixels (None: the generator's) and the turntable orbit."""

    frames: int = 60
    fps: float = 30.0
    size: int | None = None
    orbit: Orbit = Orbit()

    def validate(self) -> "VideoOptions":
        check_frames(self.frames)
        check_size(self.size)
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        return self


def write_turntable(G: TriPlaneGenerator, ws: torch.Tensor, out, opts: VideoOptions = VideoOptions(),
                    progress: bool = True):
    """A turntable video of ws [1, num_ws, w_dim] to `out` (.mp4 or .gif); returns media's VideoInfo."""
    from media.video_writer import check_video_path, write_video
    opts.validate()
    check_video_path(out)
    frames = turntable_frames(G, ws, opts.frames, opts.orbit, opts.size)
    if progress:
        frames = with_progress(frames, opts.frames, "turntable")
    return write_video(frames, out, fps=opts.fps)


def write_interpolation(G: TriPlaneGenerator, a: tuple[torch.Tensor, torch.Tensor],
                        b: tuple[torch.Tensor, torch.Tensor], out, opts: VideoOptions = VideoOptions(),
                        progress: bool = True):
    """An interpolation video from a = (ws_a, c_a) to b = (ws_b, c_b) to `out`; returns media's VideoInfo."""
    from media.video_writer import check_video_path, write_video
    opts.validate()
    check_frames(opts.frames, least=2)
    check_video_path(out)
    frames = interpolation_frames(G, a[0], a[1], b[0], b[1], opts.frames, opts.size)
    if progress:
        frames = with_progress(frames, opts.frames, "interpolate")
    return write_video(frames, out, fps=opts.fps)


def render_video_command(G: TriPlaneGenerator, kind: str, ws: torch.Tensor, anchors, anchor: str | None,
                         to: str | None, out, frames: int, fps: float, size: int | None, grid: bool = False) -> str:
    """`cli.py render --video KIND`: check the options, write the video, return the line to print.

    turntable: of ws (a seed's latent or --anchor's). interpolate: from --anchor to --to of the --adapter's
    anchors. Grid, depth and stochastic options do not apply to videos and are refused (`grid`).
    """
    from generator.views import anchor_latent
    if kind not in VIDEO_KINDS:
        raise ValueError(f"--video must be one of {', '.join(VIDEO_KINDS)}, got {kind!r}")
    if grid:
        raise ValueError("--video renders one latent: --grid-yaws, --grid-pitches, --depth and --stochastic "
                         "do not apply")
    opts = VideoOptions(frames=frames, fps=fps, size=size)
    if kind == "turntable":
        if to is not None:
            raise ValueError("--to is for --video interpolate")
        info = write_turntable(G, ws, out, opts)
    else:
        if anchors is None or anchor is None or to is None:
            raise ValueError("--video interpolate needs --adapter (with anchors), --anchor A and --to B")
        info = write_interpolation(G, anchor_latent(G, anchors, anchor), anchor_latent(G, anchors, to, "--to"),
                                   out, opts)
    return info.summary()
