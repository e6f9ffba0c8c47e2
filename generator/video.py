"""Frames of the two videos people ask of a 3D face generator: a turntable and an interpolation between two latents.

Turntable: one latent seen along EG3D's gen_videos.py orbit (`media.orbit.Orbit`, on the generator's average
camera radius and pivot). Tri-planes are computed once.

Interpolation (the paper's synthesis, Figures 8-9, and gen_videos.py's walk between seeds): w = (1 - t) w_a + t w_b
in W+ and the camera moves from a's to b's along the rigid-motion geodesic (`media.camera_path.interpolate_camera`,
shared with the torch-free runtime), t = k / (n - 1), so the first and last frames are exactly the ends' own
renders. An end (`interpolation_end`) is an adapter's anchor, seen from its own photo's camera; a seed of the model
(mapped as `cli.py render --seed` maps it, truncation included); or a latent file (EG3D's projected_w.npz, or a
.npy; `formats.latent_file`). Seeds and files have no camera of their own: they are seen from one look-at view
(frontal unless asked), so between two of them only the face changes.

Frames come out as HxWx3 uint8 arrays, resized to `size` when asked; `media.video_writer` writes them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch

from formats.latent_file import LatentFileError, read_latent
from generator.imaging import to_uint8
from generator.triplane import TriPlaneGenerator
from generator.views import anchor_latent, camera_batch, seed_latent
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


def interpolation_end(G: TriPlaneGenerator, end: tuple[str, str, object], anchors=None,
                      view: tuple[float, float] = (0.0, 0.0), truncation_psi: float = 0.7,
                      truncation_cutoff: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ws [1, num_ws, w_dim], camera [25]) of one end of an interpolation. `end` is (option, kind, value), as
    `cli_options.parse_endpoint` gives it: kind 'anchor' (a name or index of `anchors`, with its own photo camera),
    'seed' (z of the seed mapped with the truncation, as `generator.views.seed_latent`) or 'file' (a latent file,
    `formats.latent_file.read_latent`); a seed or file is seen from `view` (yaw, pitch). A bad end is a ValueError
    (a LatentFileError for a file) naming `option` and the value."""
    option, kind, value = end
    if kind == "anchor":
        if anchors is None:
            raise ValueError(f"{option} {value}: an anchor needs an --adapter file that stores anchors")
        return anchor_latent(G, anchors, value, option)
    camera = camera_batch(G, [view])[0]
    if kind == "seed":
        return seed_latent(G, int(value), truncation_psi, truncation_cutoff), camera
    if kind == "file":
        try:
            w = read_latent(value, G.num_ws, G.w_dim)
        except LatentFileError as e:
            raise LatentFileError(f"{option} {e.path}", e.reason) from None
        return torch.from_numpy(w).unsqueeze(0), camera
    raise ValueError(f"{option}: unknown kind of interpolation end {kind!r}")


def render_video_command(G: TriPlaneGenerator, kind: str, ws: torch.Tensor, ends, out, frames: int, fps: float,
                         size: int | None, grid: bool = False) -> str:
    """`cli.py render --video KIND`: check the options, write the video, return the line to print.

    turntable: of ws (a seed's latent or --anchor's). interpolate: between `ends`, the two (ws, camera) pairs of
    `interpolation_end` (None for a turntable). Grid, depth and stochastic options do not apply to videos and are
    refused (`grid`).
    """
    if kind not in VIDEO_KINDS:
        raise ValueError(f"--video must be one of {', '.join(VIDEO_KINDS)}, got {kind!r}")
    if grid:
        raise ValueError("--video renders one latent: --grid-yaws, --grid-pitches, --depth and --stochastic "
                         "do not apply")
    opts = VideoOptions(frames=frames, fps=fps, size=size)
    if kind == "turntable":
        if ends is not None:
            raise ValueError("--from and --to are for --video interpolate")
        info = write_turntable(G, ws, out, opts)
    else:
        if ends is None:
            raise ValueError("--video interpolate needs its two ends: --from (or --anchor) and --to")
        info = write_interpolation(G, ends[0], ends[1], out, opts)
    return info.summary()
