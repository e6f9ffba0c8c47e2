"""EG3D camera labels: 16 numbers of a row-major 4x4 cam2world plus 9 of row-major normalized intrinsics.

The one definition, in numpy: dataset.json labels (preprocess), training and rendering cameras (generator/,
train/) and the runtime's look-at cameras all come from here.

Conventions (eg3d-reference.md §2.3): OpenCV camera axes (x right, y down, z forward), world y up, cameras
on a sphere looking at a pivot. `yaw`/`pitch` are offsets from the frontal pose in radians, the same as
`LookAtPoseSampler.sample(pi/2 + yaw, pi/2 + pitch, pivot, radius)`: positive yaw moves the camera to +x.
"""
from __future__ import annotations

import math

import numpy as np

FFHQ_FOCAL = 4.2647
"""Normalized focal length of FFHQ/EG3D cameras (18.837 degree field of view)."""
FFHQ_RADIUS = 2.7
FFHQ_PIVOT = (0.0, 0.0, 0.2)


def intrinsics(focal: float = FFHQ_FOCAL, cx: float = 0.5, cy: float = 0.5) -> np.ndarray:
    """Normalized 3x3 intrinsics (focal and principal point divided by the image size)."""
    return np.array([[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def lookat_cam2world(yaw: float, pitch: float, radius: float = FFHQ_RADIUS,
                     pivot: tuple[float, float, float] = FFHQ_PIVOT) -> np.ndarray:
    """4x4 cam2world of a camera at (yaw, pitch) offsets from frontal, looking at `pivot`.

    As in EG3D's LookAtPoseSampler, the camera sits on the sphere of `radius` about the world origin (not
    about the pivot), and the polar angle is arccos(1 - 2v) with v = (pi/2 + pitch)/pi.
    """
    theta = math.pi / 2 + yaw
    v = min(max(math.pi / 2 + pitch, 1e-5), math.pi - 1e-5) / math.pi
    phi = math.acos(1 - 2 * v)
    origin = radius * np.array([
        math.sin(phi) * math.cos(math.pi - theta),
        math.cos(phi),
        math.sin(phi) * math.sin(math.pi - theta),
    ])
    forward = np.asarray(pivot, dtype=np.float64) - origin
    forward /= np.linalg.norm(forward)
    right = -np.cross([0.0, 1.0, 0.0], forward)
    right /= np.linalg.norm(right)
    up = np.cross(forward, right)
    up /= np.linalg.norm(up)
    cam2world = np.eye(4)
    cam2world[:3, 0] = right
    cam2world[:3, 1] = up
    cam2world[:3, 2] = forward
    cam2world[:3, 3] = origin
    return cam2world


def camera_label(cam2world: np.ndarray, intrinsics_3x3: np.ndarray | None = None) -> np.ndarray:
    """The 25-d label: row-major cam2world then row-major normalized intrinsics, float32."""
    k = intrinsics() if intrinsics_3x3 is None else np.asarray(intrinsics_3x3, dtype=np.float64)
    return np.concatenate([np.asarray(cam2world, np.float64).reshape(16), k.reshape(9)]).astype(np.float32)


def lookat_label(yaw: float, pitch: float, radius: float = FFHQ_RADIUS, focal: float = FFHQ_FOCAL,
                 pivot: tuple[float, float, float] = FFHQ_PIVOT) -> np.ndarray:
    """Label of a look-at camera at (yaw, pitch) with square-pixel intrinsics centred at 0.5."""
    return camera_label(lookat_cam2world(yaw, pitch, radius, pivot), intrinsics(focal))


def mirror_label(label: np.ndarray) -> np.ndarray:
    """Label of the horizontally mirrored photo: reflect the world in x (x -> -x) and flip the image's x axis.

    For a camera label c of image I, mirror_label(c) is the camera of I[:, ::-1] (yaw negated), which is how
    EG3D's dataset builds its mirror augmentation.
    """
    label = np.asarray(label, dtype=np.float64)
    cam2world = label[..., :16].reshape(label.shape[:-1] + (4, 4)).copy()
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    cam2world = flip @ cam2world @ flip
    k = label[..., 16:].reshape(label.shape[:-1] + (3, 3)).copy()
    k[..., 0, 2] = 1.0 - k[..., 0, 2]
    out = np.concatenate([cam2world.reshape(label.shape[:-1] + (16,)), k.reshape(label.shape[:-1] + (9,))], -1)
    return out.astype(np.float32)


def yaw_pitch_of(label: np.ndarray) -> tuple[float, float]:
    """Inverse of `lookat_cam2world` for the camera position: (yaw, pitch) offsets from frontal."""
    cam2world = np.asarray(label, dtype=np.float64)[:16].reshape(4, 4)
    d = cam2world[:3, 3] / np.linalg.norm(cam2world[:3, 3])
    v = (1 - float(np.clip(d[1], -1, 1))) / 2
    pitch = v * math.pi - math.pi / 2
    yaw = math.atan2(d[0], d[2])
    return yaw, pitch
