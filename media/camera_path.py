"""The camera path of an interpolation video between two anchors, in numpy only (the runtime and the generator side
share it): the paper's synthesis (Figures 8-9) moves the latent from w_a to w_b and the camera from anchor a's to
anchor b's.

cam2world follows the rigid-motion (SE(3)) geodesic from pose A to pose B,

    pose(s) = A exp(s log(A^-1 B)),

so a camera looking at a pivot keeps looking near it and does not cut inside the orbit as a straight line would;
intrinsics are interpolated linearly. log and exp are the closed forms of SE(3) (Rodrigues' formula for the rotation,
the left Jacobian V for the translation), which equal scipy.linalg's logm / expm of the 4x4 matrices (a test
checks it) without needing scipy. The geodesic is evaluated from the nearer end, so t = 0 and t = 1 give the two
labels exactly, and the first and last frames of a video are the anchors' own renders.
"""
from __future__ import annotations

import math

import numpy as np

_SMALL = 1e-6
"""Below this rotation angle (radians) the closed forms use their Taylor series."""


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def _nearest_rotation(m: np.ndarray) -> np.ndarray:
    """The rotation matrix nearest to m (labels read from files are float32, so not exactly orthonormal)."""
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def _rotation_log(r: np.ndarray) -> tuple[np.ndarray, float]:
    """(axis * angle as a 3-vector, angle) of rotation r, angle in [0, pi]."""
    theta = math.acos(min(1.0, max(-1.0, (np.trace(r) - 1.0) / 2.0)))
    vee = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    if theta < _SMALL:
        return vee / 2.0, theta
    if math.pi - theta < 1e-4:  # sin(theta) ~ 0: the axis is r's eigenvector of eigenvalue 1
        w, v = np.linalg.eig(r)
        axis = np.real(v[:, np.argmin(np.abs(w - 1.0))])
        axis /= np.linalg.norm(axis)
        if vee @ axis < 0:
            axis = -axis
        return axis * theta, theta
    return vee * (theta / (2.0 * math.sin(theta))), theta


def _coefficients(theta: float) -> tuple[float, float, float]:
    """sin(x)/x, (1 - cos x)/x^2, (x - sin x)/x^3 at x = theta (series near 0)."""
    if theta < _SMALL:
        t2 = theta * theta
        return 1.0 - t2 / 6.0, 0.5 - t2 / 24.0, 1.0 / 6.0 - t2 / 120.0
    s, c = math.sin(theta), math.cos(theta)
    return s / theta, (1.0 - c) / theta ** 2, (theta - s) / theta ** 3


def _pose_from(m_from: np.ndarray, m_to: np.ndarray, s: float) -> np.ndarray:
    """m_from moved the fraction s of the way to m_to along the screw motion between them (4x4 float64)."""
    rel = np.linalg.solve(m_from, m_to)
    omega, theta = _rotation_log(_nearest_rotation(rel[:3, :3]))
    w = _skew(omega)
    w2 = w @ w
    _, b, c = _coefficients(theta)
    v = np.eye(3) + b * w + c * w2
    u = np.linalg.solve(v, rel[:3, 3])          # the translation part of log(rel)
    ws, ws2, ts = s * w, s * s * w2, s * theta
    a_s, b_s, c_s = _coefficients(ts)
    step = np.eye(4)
    step[:3, :3] = np.eye(3) + a_s * ws + b_s * ws2
    step[:3, 3] = (np.eye(3) + b_s * ws + c_s * ws2) @ (s * u)
    return m_from @ step


def interpolate_camera(c_a: np.ndarray, c_b: np.ndarray, t: float) -> np.ndarray:
    """The camera label [25] a fraction t in [0, 1] of the way from label c_a to c_b (see the module docstring)."""
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"interpolation weight t must be in [0, 1], got {t}")
    a = np.asarray(c_a, np.float64).reshape(25)
    b = np.asarray(c_b, np.float64).reshape(25)
    ma, mb = a[:16].reshape(4, 4), b[:16].reshape(4, 4)
    pose = _pose_from(ma, mb, t) if t <= 0.5 else _pose_from(mb, ma, 1.0 - t)
    k = (1.0 - t) * a[16:] + t * b[16:]
    return np.concatenate([pose.reshape(16), k]).astype(np.float32)


def interpolation_weights(frames: int) -> list[float]:
    """t = k / (frames - 1) for k = 0 .. frames - 1: both ends included (frames >= 2)."""
    if not isinstance(frames, int) or frames < 2:
        raise ValueError(f"an interpolation needs an integer frames >= 2, got {frames!r}")
    return [k / (frames - 1) for k in range(frames)]


def view_angles(label: np.ndarray) -> tuple[float, float]:
    """(yaw, pitch) in radians of a camera label's position, in formats.cameras.lookat_cam2world's convention
    (its exact inverse for look-at cameras; for any other camera, the angles of its position on the sphere)."""
    x, y, z = np.asarray(label, np.float64).reshape(25)[:16].reshape(4, 4)[:3, 3]
    r = math.sqrt(x * x + y * y + z * z)
    if r == 0:
        return 0.0, 0.0
    phi = math.acos(min(1.0, max(-1.0, y / r)))
    return math.atan2(x, z), math.pi * (1.0 - math.cos(phi)) / 2.0 - math.pi / 2.0
