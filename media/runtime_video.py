"""Turntable videos from the torch-free runtime (`runtime.Runtime`), on the same EG3D orbit as `cli.py render`.

Each frame is `Runtime.novel_view` at the orbit's (yaw, pitch): the first runs the synthesis graph, the rest hit
the runtime's tri-plane cache and run only the render graph, as `Runtime.turntable` does (whose own orbit is a
yaw-only sine; this one is EG3D's, so both sides of the project make the same video).
"""
from __future__ import annotations

import os
from typing import Any

from media.orbit import Orbit
from media.video_writer import VideoInfo, check_video_path, write_video


def runtime_turntable(rt: Any, person: str | None, anchor: Any, out: str | os.PathLike, frames: int = 60,
                      fps: float = 30.0, orbit: Orbit = Orbit(), budget_ms: float | None = None) -> VideoInfo:
    """Write the turntable of `person`'s `anchor` (name or index) rendered by runtime `rt` to `out` (.mp4/.gif).

    `budget_ms` applies to each frame (the runtime's BudgetExceeded stops the video).
    """
    check_video_path(out)
    views = orbit.views(frames)
    images = (rt.novel_view(person, anchor=anchor, yaw=yaw, pitch=pitch, budget_ms=budget_ms).to_uint8()
              for yaw, pitch in views)
    return write_video(images, out, fps=fps)
