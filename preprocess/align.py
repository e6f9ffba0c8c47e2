"""FFHQ-style face crop (`preprocess --crop ffhq`): the alignment recipe of NVlabs/ffhq-dataset
(`download_ffhq.py`, `recreate_aligned_images`), and the square resampler both crops share (`crop_quad`).
EG3D's own framing (the default) is `preprocess.eg3d_crop`.

From the eye centres and mouth centre an oriented square is chosen: its x axis follows the eye line (averaged
with the rotated eye-to-mouth direction, so roll is removed), its half side is max(2 * eye distance,
1.8 * eye-to-mouth distance) and its centre sits 0.1 of the eye-to-mouth vector below the eye midpoint. The
photo is shrunk when the square is far larger than the output, cropped around it, padded by reflection
(blurred towards the median colour) where the square leaves the photo, and resampled with PIL's QUAD
transform at 4x the output size, then downsampled.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.ndimage
from PIL import Image

from preprocess.detect import LANDMARKS_5, LANDMARKS_68


@dataclass(frozen=True)
class FaceKeypoints:
    """The four points the FFHQ recipe uses, (x, y) pixels; left/right as seen in the image."""

    eye_left: np.ndarray
    eye_right: np.ndarray
    mouth_left: np.ndarray
    mouth_right: np.ndarray


def keypoints_from_landmarks(landmarks: np.ndarray) -> FaceKeypoints:
    """Eye centres and mouth corners from iBUG-68 (as FFHQ: eye = mean of its 6 points, mouth = 48 and 54)
    or from the 5 SCRFD points (eyes and mouth corners given directly)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape == (LANDMARKS_68, 2):
        return FaceKeypoints(lm[36:42].mean(0), lm[42:48].mean(0), lm[48].copy(), lm[54].copy())
    if lm.shape == (LANDMARKS_5, 2):
        return FaceKeypoints(lm[0].copy(), lm[1].copy(), lm[3].copy(), lm[4].copy())
    raise ValueError(f"landmarks must have shape (68, 2) or (5, 2), got {lm.shape}")


def ffhq_quad(keypoints: FaceKeypoints) -> np.ndarray:
    """The oriented crop square as 4 corners (top-left, bottom-left, bottom-right, top-right), float64 (4, 2)."""
    eye_avg = (keypoints.eye_left + keypoints.eye_right) * 0.5
    eye_to_eye = keypoints.eye_right - keypoints.eye_left
    mouth_avg = (keypoints.mouth_left + keypoints.mouth_right) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1.0, 1.0]
    norm = np.hypot(*x)
    if not np.isfinite(norm) or norm < 1e-6:
        raise ValueError(f"degenerate face keypoints (eyes and mouth coincide): {keypoints}")
    x = x / norm * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1.0, 1.0]
    c0 = eye_avg + eye_to_mouth * 0.1
    return np.stack([c0 - x - y, c0 - x + y, c0 + x + y, c0 + x - y])


@dataclass(frozen=True)
class AlignedFace:
    """A square crop and the map from source-photo pixels to crop pixels."""

    image: np.ndarray
    """RGB uint8 (size, size, 3)."""
    quad: np.ndarray
    """The crop square in source-photo pixel coordinates, (4, 2) as `ffhq_quad`."""
    padded: bool
    """Whether part of the square lay outside the photo and was filled (blurred reflection or black)."""

    @property
    def size(self) -> int:
        return int(self.image.shape[0])

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """Source-photo pixel coordinates (N, 2) -> crop pixel coordinates (N, 2).

        The crop is a similarity transform of the photo: pixel centres (index + 0.5) of the square's corners
        go to the crop's corners.
        """
        points = np.asarray(points, dtype=np.float64) + 0.5
        origin = self.quad[0] + 0.5
        axis_x = (self.quad[3] - self.quad[0]) / self.size
        axis_y = (self.quad[1] - self.quad[0]) / self.size
        rel = points - origin
        u = rel @ axis_x / (axis_x @ axis_x)
        v = rel @ axis_y / (axis_y @ axis_y)
        return np.stack([u, v], axis=-1) - 0.5


PADDINGS = ("reflect", "black")
"""How `crop_quad` fills the parts of the square that lie outside the photo: 'reflect' = FFHQ's mirrored photo
blurred towards its median colour (what EG3D's FFHQ training images got from the realignment stage), 'black' =
zeros (what EG3D's `crop_images_in_the_wild.py` gets from PIL's crop)."""


def align_face(image: np.ndarray, landmarks: np.ndarray, output_size: int = 512,
               supersample: int = 4, enable_padding: bool = True) -> AlignedFace:
    """FFHQ-aligned crop of one face: RGB uint8 (H, W, 3) photo + its landmarks -> `AlignedFace`."""
    quad = ffhq_quad(keypoints_from_landmarks(landmarks))
    return crop_quad(image, quad, output_size, supersample, "reflect" if enable_padding else "black")


def crop_quad(image: np.ndarray, quad: np.ndarray, output_size: int = 512, supersample: int = 4,
              padding: str = "reflect") -> AlignedFace:
    """Resample the square `quad` (corners top-left, bottom-left, bottom-right, top-right, photo pixel-index
    coordinates) of an RGB uint8 photo into an `output_size` square -> `AlignedFace`.

    `supersample` is FFHQ's transform_size / output_size (4096 / 1024): the QUAD transform samples bilinearly
    at that multiple of the output size and a Lanczos resize brings it down, which avoids aliasing. A square
    much larger than the output is first shrunk, and the photo is cut to the square plus a border. `padding`
    (one of PADDINGS) fills what lies outside the photo.
    """
    if output_size < 8 or supersample < 1:
        raise ValueError(f"output_size must be >= 8 and supersample >= 1, got {output_size}, {supersample}")
    if padding not in PADDINGS:
        raise ValueError(f"padding={padding!r}: expected one of {PADDINGS}")
    quad = np.asarray(quad, dtype=np.float64)
    source_quad = quad.copy()
    transform_size = output_size * supersample
    img = Image.fromarray(np.asarray(image, dtype=np.uint8), "RGB")
    qsize = np.hypot(*(quad[3] - quad[0]) / 2) * 2

    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        rsize = (int(np.rint(float(img.size[0]) / shrink)), int(np.rint(float(img.size[1]) / shrink)))
        img = img.resize(rsize, Image.Resampling.LANCZOS)
        quad = quad / shrink
        qsize = qsize / shrink

    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))),
            int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))
    crop = (max(crop[0] - border, 0), max(crop[1] - border, 0),
            min(crop[2] + border, img.size[0]), min(crop[3] + border, img.size[1]))
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad = quad - crop[0:2]

    pad = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))),
           int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))
    pad = (max(-pad[0] + border, 0), max(-pad[1] + border, 0),
           max(pad[2] - img.size[0] + border, 0), max(pad[3] - img.size[1] + border, 0))
    padded = False
    if padding == "black":
        padded = bool(quad.min() < -0.5 or quad[:, 0].max() > img.size[0] - 0.5 or quad[:, 1].max() > img.size[1] - 0.5)
    elif max(pad) > border - 4:
        padded = True
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        arr = np.pad(np.float32(img), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
        h, w, _ = arr.shape
        yy, xx, _ = np.ogrid[:h, :w, :1]
        mask = np.maximum(1.0 - np.minimum(np.float32(xx) / pad[0], np.float32(w - 1 - xx) / pad[2]),
                          1.0 - np.minimum(np.float32(yy) / pad[1], np.float32(h - 1 - yy) / pad[3]))
        blur = qsize * 0.02
        arr += (scipy.ndimage.gaussian_filter(arr, [blur, blur, 0]) - arr) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
        arr += (np.median(arr, axis=(0, 1)) - arr) * np.clip(mask, 0.0, 1.0)
        img = Image.fromarray(np.uint8(np.clip(np.rint(arr), 0, 255)), "RGB")
        quad = quad + pad[:2]

    img = img.transform((transform_size, transform_size), Image.Transform.QUAD, (quad + 0.5).flatten(),
                        Image.Resampling.BILINEAR)
    if output_size < transform_size:
        img = img.resize((output_size, output_size), Image.Resampling.LANCZOS)
    return AlignedFace(image=np.asarray(img, dtype=np.uint8), quad=source_quad, padded=padded)
