"""EG3D's turntable orbit (gen_videos.py), torch-free so the generator side and the runtime side share it.

At frame k of n the camera's yaw and pitch offsets from frontal (radians; `formats.cameras.lookat_label`'s
convention, LookAtPoseSampler.sample(pi/2 + yaw, pi/2 + pitch, ...)) are

    yaw = 0.35 * sin(2 pi k / n),    pitch = -0.05 + 0.25 * cos(2 pi k / n)

The official script writes pi as 3.14; we use pi, so the loop closes exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


def check_frames(frames: int, least: int = 1) -> int:
    """`frames` when it is an integer >= least, else a ValueError saying so."""
    if not isinstance(frames, int) or frames < least:
        raise ValueError(f"frames must be an integer >= {least}, got {frames!r}")
    return frames


@dataclass(frozen=True)
class Orbit:
    """yaw = yaw_range sin(2 pi k/n), pitch = pitch_offset + pitch_range cos(2 pi k/n) (radians)."""

    yaw_range: float = 0.35
    pitch_range: float = 0.25
    pitch_offset: float = -0.05

    def views(self, frames: int) -> list[tuple[float, float]]:
        """(yaw, pitch) of each of `frames` frames."""
        check_frames(frames)
        return [(self.yaw_range * math.sin(2 * math.pi * k / frames),
                 self.pitch_offset + self.pitch_range * math.cos(2 * math.pi * k / frames)) for k in range(frames)]
