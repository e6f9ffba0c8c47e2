"""Videos from the torch-free runtime (`runtime.Runtime`), the same as `cli.py render --video` makes with torch.

Turntable: `Runtime.orbit` on EG3D's orbit (media.orbit): one synthesis, then one render per frame.
Interpolation: `Runtime.interpolation` between two anchors, latent and camera interpolated (media.camera_path).
Frames are resized to `size` when asked (even sides, for H.264) and encoded by media.video_writer.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from media.frames import VIDEO_KINDS, resize_frame
from media.orbit import Orbit
from media.video_writer import EncodedVideo, VideoInfo, check_video_path, encode_video, write_video

def video_frames(results: Sequence[Any], size: int | None = None) -> list[np.ndarray]:
    """The runtime's RenderResults as HWC uint8 frames of side `size` (None: the model's)."""
    return [resize_frame(r.to_uint8(), size) for r in results]


def render_video(rt: Any, kind: str, person: str | None, anchor: Any = None, latent: Any = None, a: Any = None,
                 b: Any = None, frames: int = 16, orbit: Orbit = Orbit(), budget_ms: float | None = None) -> list:
    """The RenderResults of a turntable (of `anchor` or `latent`) or an interpolation (from anchor `a` to `b`)."""
    if kind == "turntable":
        return rt.orbit(person, anchor=anchor, latent=latent, frames=frames, orbit=orbit, budget_ms=budget_ms)
    if kind == "interpolate":
        return rt.interpolation(person, a, b, frames=frames, budget_ms=budget_ms)
    raise ValueError(f"video kind must be one of {', '.join(VIDEO_KINDS)}, got {kind!r}")


def runtime_video(rt: Any, kind: str, person: str | None, fmt: str = "mp4", fps: float = 30.0,
                  size: int | None = None, **what: Any) -> EncodedVideo:
    """A turntable or interpolation video as bytes (mp4, or GIF without ffmpeg: see its content_type);
    `what`: anchor / latent / a / b / frames / orbit / budget_ms, as `render_video` takes them."""
    return encode_video(video_frames(render_video(rt, kind, person, **what), size), fmt, fps)


def runtime_turntable(rt: Any, person: str | None, anchor: Any, out: str | os.PathLike, frames: int = 60,
                      fps: float = 30.0, orbit: Orbit = Orbit(), budget_ms: float | None = None) -> VideoInfo:
    """Write the turntable of `person`'s `anchor` (name or index) rendered by runtime `rt` to `out` (.mp4/.gif);
    `budget_ms` covers the whole video."""
    check_video_path(out)
    results = render_video(rt, "turntable", person, anchor=anchor, frames=frames, orbit=orbit, budget_ms=budget_ms)
    return write_video(video_frames(results), out, fps=fps)


def runtime_interpolation(rt: Any, person: str | None, a: Any, b: Any, out: str | os.PathLike, frames: int = 30,
                          fps: float = 30.0, budget_ms: float | None = None) -> VideoInfo:
    """Write the interpolation from anchor `a` to anchor `b` of `person` rendered by runtime `rt` to `out`."""
    check_video_path(out)
    results = render_video(rt, "interpolate", person, a=a, b=b, frames=frames, budget_ms=budget_ms)
    return write_video(video_frames(results), out, fps=fps)
