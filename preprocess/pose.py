"""Head pose from 2-D landmarks -> EG3D camera label.

The head rotation is found by perspective-n-point (PnP): a generic 3-D face (a handful of stable landmarks of
a mean face) is rotated and translated until its projection through EG3D's own camera (focal 4.2647, centred
principal point) best matches the landmarks in the aligned crop, by robust nonlinear least squares
(`scipy.optimize.least_squares`, soft-L1 loss, a few starting yaws). From the rotation only the viewing
direction is kept: the direction from the head to the camera, in head coordinates, becomes the yaw/pitch of
an EG3D look-at camera (radius 2.7, pivot (0, 0, 0.2)). Roll is not part of the label (a look-at camera
has none; the head-to-camera direction does not depend on it).

Template: vertices of MediaPipe's canonical face model (`mediapipe/modules/face_geometry/data/
canonical_face_model.obj`, Apache-2.0, a metric mean face in centimetres), taken at the vertex indices that
correspond to the iBUG-68 points below. Its axes are the head axes used here and by EG3D's world: x towards the
face's own left (image right in a frontal photo), y up, z out of the face towards a frontal camera. Sliding
contour points (jaw line, brows, nose bridge), the mouth corners and the lower lip (they move with the
expression) are left out.

Sign convention (as EG3D's LookAtPoseSampler): positive yaw puts the camera towards +x, i.e. at the face's
own left, so a face turned towards its own left (its right cheek shows) gets a negative yaw; positive pitch
puts the camera below the face (a face tilted up).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from formats.cameras import FFHQ_FOCAL, lookat_label
from preprocess.detect import LANDMARKS_5, LANDMARKS_68

_EYE_OUTER = (4.445859, 2.663991, 3.173422)
_EYE_INNER = (1.856432, 2.585245, 3.757904)
_MOUTH_CORNER = (2.456206, -4.342621, 4.283884)


def _mirror_x(point: tuple[float, float, float]) -> tuple[float, float, float]:
    return (-point[0], point[1], point[2])


TEMPLATE_68: dict[int, tuple[float, float, float]] = {
    36: _mirror_x(_EYE_OUTER),       # face's right eye, outer corner (MediaPipe vertex 33)
    39: _mirror_x(_EYE_INNER),       # face's right eye, inner corner (133)
    42: _EYE_INNER,                  # face's left eye, inner corner (362)
    45: _EYE_OUTER,                  # face's left eye, outer corner (263)
    30: (0.0, -1.126865, 7.475604),  # nose tip (1)
    33: (0.0, -2.089024, 6.058267),  # subnasale, bottom of the nose (2)
    51: (0.0, -3.406404, 5.979507),  # upper lip, top centre (0)
    8: (0.0, -9.403378, 4.264492),   # chin, lowest point (152)
}
"""iBUG-68 index -> template point (cm, head axes). The model is left-right symmetric (vertex 263 mirrors 33).

The mouth corners (iBUG 48/54, MediaPipe 61/291) are left out: a smile moves them by centimetres (on
skimage's astronaut they miss the template by ~25 px of a 512 crop, 4x the other points' error)."""

_EYE_CENTRE = tuple((a + b) / 2 for a, b in zip(_EYE_OUTER, _EYE_INNER))
TEMPLATE_5: dict[int, tuple[float, float, float]] = {
    0: _mirror_x(_EYE_CENTRE),       # image-left eye: the face's right eye, midpoint of its corners
    1: _EYE_CENTRE,
    2: TEMPLATE_68[30],
    3: _mirror_x(_MOUTH_CORNER),     # mouth corners (61, 291): needed, 5 points leave no choice
    4: _MOUTH_CORNER,
}
"""SCRFD 5-point index -> template point; eye centres are approximated by the corners' midpoint."""

_FRONTAL = np.diag([1.0, -1.0, -1.0])
"""Head axes -> OpenCV camera axes for a frontal camera: x stays right, up becomes -y, towards-camera is -z."""


@dataclass(frozen=True)
class HeadPose:
    """Result of `estimate_head_pose`, in EG3D's camera conventions."""

    yaw: float
    """Radians, unclamped. Positive: camera towards the face's own left."""
    pitch: float
    """Radians, unclamped, EG3D's look-at parametrization (camera height = -2.7 * 2 * pitch / pi)."""
    direction: np.ndarray
    """Unit vector from the head to the camera in head axes (x face's left, y up, z out of the face)."""
    rotation: np.ndarray
    """3x3 head -> camera (OpenCV axes) rotation found by PnP."""
    translation: np.ndarray
    """Head template centroid in camera coordinates (cm)."""
    rms_px: float
    """Root-mean-square reprojection error of the template points, in crop pixels."""


def template_for(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(2-D points used, matching 3-D template points) for iBUG-68 or 5-point landmarks."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape == (LANDMARKS_68, 2):
        table = TEMPLATE_68
    elif lm.shape == (LANDMARKS_5, 2):
        table = TEMPLATE_5
    else:
        raise ValueError(f"landmarks must have shape (68, 2) or (5, 2), got {lm.shape}")
    index = sorted(table)
    return lm[index], np.array([table[i] for i in index], dtype=np.float64)


def project(points3d: np.ndarray, rotation: np.ndarray, translation: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pinhole projection of (N, 3) points to (N, 2) pixels."""
    cam = points3d @ rotation.T + translation
    uvw = cam @ K.T
    return uvw[:, :2] / uvw[:, 2:3]


def solve_pnp(points2d: np.ndarray, points3d: np.ndarray, K: np.ndarray,
              start_yaws_deg: tuple[float, ...] = (0.0, -35.0, 35.0), robust_scale_px: float = 3.0,
              ) -> tuple[np.ndarray, np.ndarray, float]:
    """Rotation (head -> camera), translation and RMS reprojection error fitting `points3d` to `points2d`.

    Parameters are a rotation vector applied on top of the frontal orientation and the translation. The
    translation starts where the template's size and centroid match the points'; several starting yaws guard
    against a local minimum on strongly turned faces.
    """
    points2d = np.asarray(points2d, np.float64)
    points3d = np.asarray(points3d, np.float64)
    if len(points2d) < 4 or points2d.shape != (len(points3d), 2):
        raise ValueError(f"solve_pnp needs >= 4 matching points, got {points2d.shape} and {points3d.shape}")
    focal = float(K[0, 0])
    centre2d = points2d.mean(0)
    spread2d = np.sqrt(((points2d - centre2d) ** 2).sum(1).mean())
    spread3d = np.sqrt(((points3d[:, :2] - points3d[:, :2].mean(0)) ** 2).sum(1).mean())
    if spread2d < 1e-6:
        raise ValueError("solve_pnp: all 2-D points coincide")
    depth = focal * spread3d / spread2d
    t0 = np.array([(centre2d[0] - K[0, 2]) / focal * depth, (centre2d[1] - K[1, 2]) / focal * depth, depth])

    def unpack(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return Rotation.from_rotvec(params[:3]).as_matrix() @ _FRONTAL, params[3:]

    def residuals(params: np.ndarray) -> np.ndarray:
        rotation, translation = unpack(params)
        return (project(points3d, rotation, translation, K) - points2d).ravel()

    best = None
    for yaw0 in start_yaws_deg:
        x0 = np.concatenate([[0.0, math.radians(yaw0), 0.0], t0])
        fit = least_squares(residuals, x0, method="trf", loss="soft_l1", f_scale=robust_scale_px, x_scale="jac")
        if best is None or fit.cost < best.cost:
            best = fit
    rotation, translation = unpack(best.x)
    rms = float(np.sqrt(np.mean(residuals(best.x).reshape(-1, 2) ** 2 * 2)))
    return rotation, translation, rms


def direction_to_yaw_pitch(direction: np.ndarray) -> tuple[float, float]:
    """Head-to-camera unit direction -> EG3D (yaw, pitch), the exact inverse of `lookat_cam2world`'s placement."""
    d = np.asarray(direction, np.float64)
    d = d / np.linalg.norm(d)
    yaw = math.atan2(d[0], d[2])
    pitch = -float(np.clip(d[1], -1.0, 1.0)) * math.pi / 2
    return yaw, pitch


def crop_intrinsics(size: int, focal: float = FFHQ_FOCAL) -> np.ndarray:
    """EG3D's normalized intrinsics in pixels of a `size` crop (pixel-index coordinates)."""
    c = size / 2 - 0.5
    return np.array([[focal * size, 0.0, c], [0.0, focal * size, c], [0.0, 0.0, 1.0]])


def estimate_head_pose(crop_landmarks: np.ndarray, size: int, focal: float = FFHQ_FOCAL) -> HeadPose:
    """Head pose of a face from its landmarks in an aligned `size`x`size` crop seen by EG3D's camera."""
    points2d, points3d = template_for(crop_landmarks)
    points3d = points3d - points3d.mean(0)
    rotation, translation, rms = solve_pnp(points2d, points3d, crop_intrinsics(size, focal))
    direction = -rotation.T @ np.array([0.0, 0.0, 1.0])
    yaw, pitch = direction_to_yaw_pitch(direction)
    return HeadPose(yaw=yaw, pitch=pitch, direction=direction, rotation=rotation, translation=translation,
                    rms_px=rms)


def pose_label(yaw: float, pitch: float, focal: float = FFHQ_FOCAL) -> np.ndarray:
    """EG3D 25-d label (float32) of the look-at camera at (yaw, pitch): radius 2.7, pivot (0, 0, 0.2)."""
    return lookat_label(yaw, pitch, focal=focal)
