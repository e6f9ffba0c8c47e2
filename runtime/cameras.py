"""EG3D camera labels in numpy: a copy of generator.cameras' look-at math (the runtime may not import generator/).

A label is 16 numbers of a row-major 4x4 cam2world (OpenCV axes: x right, y down, z forward; world y up) and 9 of
row-major normalized intrinsics. `yaw`/`pitch` are radians from the frontal pose, as EG3D's
LookAtPoseSampler.sample(pi/2 + yaw, pi/2 + pitch, pivot, radius); tests check equality with generator.cameras.
"""
from __future__ import annotations

import math

import numpy as np

FFHQ_FOCAL = 4.2647
FFHQ_RADIUS = 2.7
FFHQ_PIVOT = (0.0, 0.0, 0.2)


def intrinsics(focal: float = FFHQ_FOCAL, cx: float = 0.5, cy: float = 0.5) -> np.ndarray:
    """Normalized 3x3 intrinsics."""
    return np.array([[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def lookat_cam2world(yaw: float, pitch: float, radius: float = FFHQ_RADIUS,
                     pivot: tuple[float, float, float] = FFHQ_PIVOT) -> np.ndarray:
    """4x4 cam2world of a camera on the sphere of `radius` about the origin, at (yaw, pitch), looking at `pivot`."""
    theta = math.pi / 2 + yaw
    v = min(max(math.pi / 2 + pitch, 1e-5), math.pi - 1e-5) / math.pi
    phi = math.acos(1 - 2 * v)
    origin = radius * np.array([math.sin(phi) * math.cos(math.pi - theta), math.cos(phi),
                                math.sin(phi) * math.sin(math.pi - theta)])
    forward = np.asarray(pivot, dtype=np.float64) - origin
    forward /= np.linalg.norm(forward)
    right = -np.cross([0.0, 1.0, 0.0], forward)
    right /= np.linalg.norm(right)
    up = np.cross(forward, right)
    up /= np.linalg.norm(up)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, forward, origin
    return m


def lookat_label(yaw: float, pitch: float, radius: float = FFHQ_RADIUS, focal: float = FFHQ_FOCAL,
                 pivot: tuple[float, float, float] = FFHQ_PIVOT) -> np.ndarray:
    """The 25-d float32 label of a look-at camera with square pixels and the principal point at 0.5."""
    cam2world = lookat_cam2world(yaw, pitch, radius, pivot)
    return np.concatenate([cam2world.reshape(16), intrinsics(focal).reshape(9)]).astype(np.float32)
