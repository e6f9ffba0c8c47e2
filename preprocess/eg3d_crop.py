"""EG3D's face framing: Deep3DFaceRecon's `align_img` geometry, as EG3D's own preprocessing applies it.

The released EG3D FFHQ models were trained on crops made this way (EG3D `dataset_preprocessing/ffhq/
crop_images.py`), and EG3D's `preprocess_in_the_wild.py` (via `crop_images_in_the_wild.py`) frames users'
photos the same way. Per photo:

1. five landmarks: the two eye centres, the nose tip and the two mouth corners, image-left first;
2. with y pointing up (y' = H - 1 - y), a least-squares affine camera fit of five standard 3-D landmarks to them
   (Deep3DFaceRecon `POS`: 8 unknowns, x' = R1.X + tx, y' = R2.X + ty); the face scale is
   s_fit = (|R1| + |R2|) / 2 and t = (tx, ty) is where the standard face's origin projects;
3. the photo is resized by s = RESCALE_FACTOR / s_fit (so one unit of the standard face spans 300 pixels),
   sizes truncated to integers, and a TARGET_SIZE (1024) square is cut around t (its corner truncated to an
   integer too; outside the photo PIL's crop fills black);
4. the central CENTER_CROP_SIZE (700) square of that is resized to 512 (Lanczos).

There is no rotation: roll stays in the crop (unlike the FFHQ recipe). Here the whole chain is one axis-aligned
square in photo coordinates, computed with the same integer truncations, and resampled once
(`align.crop_quad`: supersampled bilinear + Lanczos, which avoids building the up-to-4x resized photo).

How the constants were established (clean room: facts read with the search tools, no code copied):
* `TARGET_SIZE = 1024.`, `RESCALE_FACTOR = 300`, `CENTER_CROP_SIZE = 700`, `OUTPUT_SIZE = 512`: the literal
  values in NVlabs/eg3d `dataset_preprocessing/ffhq/crop_images_in_the_wild.py`; `crop_images.py` (the FFHQ
  training crops) passes `target_size=1024.` and reads rescale factor, centre-crop and output sizes per image
  from its downloaded `cropping_params.json`.
* The resize / crop arithmetic (int32 truncation of the resized size and of the crop corner, `h0/2 - t_y` for
  the vertical centre because t is fitted with y up) and the POS fit: `util/preprocess.py` (`resize_n_crop_img`,
  `align_img`, `POS`) of sicxu/Deep3DFaceRecon_pytorch at commit 6ba3d22f, the commit EG3D's README pins;
  `dataset_preprocessing/ffhq/preprocess.py` in EG3D is a link to that file.
* `LM3D_STD`: EG3D passes `load_lm3d("Deep3DFaceRecon_pytorch/BFM/")`, which reads `BFM/similarity_Lm3D_all.mat`
  (68 x 3) and keeps, in this order, the mean of points 37 and 40 (1-based), the mean of 43 and 46, point 31,
  point 49 and point 55. The values below were obtained by loading that .mat file from the Deep3DFaceRecon_pytorch
  repository (unchanged since its first commit, so identical at 6ba3d22f) with scipy and applying that
  selection; they agree with the 5 x 3 array that the TensorFlow Deep3DFaceReconstruction's `align_img` docstring
  writes out (and several projects copy literally). Other projects publish variants with y shifted by -0.2 and
  then +0.1, z +0.4: those are not what EG3D feeds.
* Landmark order and source: EG3D's `batch_mtcnn.py` writes MTCNN's `left_eye, right_eye, nose, mouth_left,
  mouth_right` (image-left first, as SCRFD's 5 points); with 68 points, align_img's own `extract_5p` uses the
  same iBUG points as load_lm3d (eye = mean of its two corners 37/40 and 43/46, nose tip 31, mouth corners
  49/55).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from preprocess.align import AlignedFace, crop_quad
from preprocess.detect import LANDMARKS_5, LANDMARKS_68

LM3D_STD = np.array([
    [-0.31148657, 0.29036078, 0.13377953],   # image-left eye centre (the face's right eye)
    [0.30979887, 0.28972036, 0.13179526],    # image-right eye centre
    [0.0032535, -0.04617932, 0.55244243],    # nose tip
    [-0.25216928, -0.38133916, 0.22405732],  # image-left mouth corner
    [0.2484662, -0.38128236, 0.22235769],    # image-right mouth corner
], dtype=np.float64)
"""Deep3DFaceRecon's five standard 3-D landmarks (x right, y up, z towards the camera), EG3D's order."""
TARGET_SIZE = 1024.0
"""align_img's output square in pixels of the resized photo."""
RESCALE_FACTOR = 300.0
"""Pixels per unit of the standard face in the resized photo."""
CENTER_CROP_SIZE = 700
"""Side of the central square kept from the TARGET_SIZE crop."""
OUTPUT_SIZE = 512
"""EG3D ffhq512's image side."""

_IBUG_EYE_CORNERS = ((36, 39), (42, 45))
_IBUG_NOSE_TIP, _IBUG_MOUTH_CORNERS = 30, (48, 54)


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """(5, 2) eye centres, nose tip, mouth corners (image-left first) from iBUG-68 or SCRFD 5-point landmarks.

    From 68 points each eye centre is the midpoint of its two corners (not the mean of its six points, which the
    FFHQ recipe uses): that is how `load_lm3d` built the standard points the fit compares them with.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape == (LANDMARKS_68, 2):
        (a, b), (c, d) = _IBUG_EYE_CORNERS
        return np.stack([(lm[a] + lm[b]) / 2, (lm[c] + lm[d]) / 2, lm[_IBUG_NOSE_TIP],
                         lm[_IBUG_MOUTH_CORNERS[0]], lm[_IBUG_MOUTH_CORNERS[1]]])
    if lm.shape == (LANDMARKS_5, 2):
        return lm.copy()
    raise ValueError(f"landmarks must have shape (68, 2) or (5, 2), got {lm.shape}")


def pos_fit(points_y_up: np.ndarray, points3d: np.ndarray = LM3D_STD) -> tuple[np.ndarray, float]:
    """Affine camera fit of `points3d` (N, 3) to 2-D points (N, 2) with y up -> (t (2,), scale).

    Least squares over the 8 unknowns of x' = R1.X + tx, y' = R2.X + ty; scale is the mean norm of R1 and R2.
    """
    p2 = np.asarray(points_y_up, dtype=np.float64)
    p3 = np.asarray(points3d, dtype=np.float64)
    n = len(p2)
    if p2.shape != (n, 2) or p3.shape != (n, 3) or n < 4:
        raise ValueError(f"pos_fit needs >= 4 matching points, got {p2.shape} and {p3.shape}")
    system = np.zeros((2 * n, 8))
    system[0::2, 0:3] = p3
    system[0::2, 3] = 1.0
    system[1::2, 4:7] = p3
    system[1::2, 7] = 1.0
    solution = np.linalg.lstsq(system, p2.reshape(-1), rcond=None)[0]
    scale = (np.linalg.norm(solution[0:3]) + np.linalg.norm(solution[4:7])) / 2
    if not np.isfinite(scale) or scale < 1e-9:
        raise ValueError(f"degenerate face landmarks (fitted face scale {scale})")
    return np.array([solution[3], solution[7]]), float(scale)


@dataclass(frozen=True)
class EG3DFraming:
    """Where EG3D's crop of one photo lies: the numbers align_img computes and the resulting square."""

    t: np.ndarray
    """POS translation (x, y with y up), photo pixels: where the standard face's origin lands."""
    scale: float
    """align_img's resize factor RESCALE_FACTOR / s_fit."""
    resized: tuple[int, int]
    """(width, height) of the resized photo (truncated)."""
    corner: tuple[int, int]
    """(left, top) of the TARGET_SIZE crop in the resized photo (truncated)."""
    quad: np.ndarray
    """The final square in photo pixel-index coordinates, (4, 2): top-left, bottom-left, bottom-right,
    top-right (the convention of `align.AlignedFace.quad`)."""


def eg3d_framing(landmarks: np.ndarray, photo_size: tuple[int, int], target_size: float = TARGET_SIZE,
                 rescale_factor: float = RESCALE_FACTOR, center_crop_size: int = CENTER_CROP_SIZE,
                 ) -> EG3DFraming:
    """The crop EG3D makes of a photo of `photo_size` = (width, height) from its landmarks (68 or 5 points)."""
    width, height = int(photo_size[0]), int(photo_size[1])
    five = five_points(landmarks)
    y_up = np.stack([five[:, 0], height - 1 - five[:, 1]], axis=1)
    t, fitted = pos_fit(y_up)
    s = rescale_factor / fitted
    w, h = int(np.float64(width * s)), int(np.float64(height * s))
    left = int(w / 2 - target_size / 2 + (t[0] - width / 2) * s)
    top = int(h / 2 - target_size / 2 + (height / 2 - t[1]) * s)
    margin = int(target_size / 2 - center_crop_size / 2)
    x0, x1 = left + margin, left + margin + center_crop_size
    y0, y1 = top + margin, top + margin + center_crop_size
    # Edges of resized-photo pixels map to photo edges by width / w (PIL's resize); index = edge - 0.5.
    sx, sy = width / w, height / h
    xa, xb = x0 * sx - 0.5, x1 * sx - 0.5
    ya, yb = y0 * sy - 0.5, y1 * sy - 0.5
    quad = np.array([[xa, ya], [xa, yb], [xb, yb], [xb, ya]], dtype=np.float64)
    return EG3DFraming(t=t, scale=float(s), resized=(w, h), corner=(left, top), quad=quad)


def eg3d_align(image: np.ndarray, landmarks: np.ndarray, output_size: int = OUTPUT_SIZE, supersample: int = 4,
               padding: str = "reflect") -> AlignedFace:
    """EG3D-framed crop of one face: RGB uint8 (H, W, 3) photo + its landmarks -> `AlignedFace`.

    `padding='black'` fills the parts outside the photo exactly as `crop_images_in_the_wild.py` does; the
    default 'reflect' uses FFHQ's blurred reflection, which is what EG3D's FFHQ training images have there
    (they were realigned from the padded FFHQ crops before `align_img`).
    """
    image = np.asarray(image)
    framing = eg3d_framing(landmarks, (image.shape[1], image.shape[0]))
    return crop_quad(image, framing.quad, output_size, supersample, padding)


def expected_crop_position(point3d: np.ndarray, output_size: int = OUTPUT_SIZE,
                           rescale_factor: float = RESCALE_FACTOR, center_crop_size: int = CENTER_CROP_SIZE,
                           ) -> np.ndarray:
    """Where a point of the standard face (x right, y up) lands in the output crop of a frontal, upright face.

    The fitted origin sits at the crop's centre and one unit spans rescale_factor * output_size /
    center_crop_size pixels (219.4 for 512): e.g. the eye midpoint at y = 0.376 of the height, the mouth centre
    at 0.663. Pixel-index coordinates.
    """
    p = np.asarray(point3d, dtype=np.float64)
    unit = rescale_factor * output_size / center_crop_size
    centre = output_size / 2 - 0.5
    return np.array([centre + p[0] * unit, centre - p[1] * unit])
