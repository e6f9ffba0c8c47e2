"""Face detection + landmark backends behind one small protocol.

A backend takes an RGB uint8 image (H, W, 3) and returns every face it finds as a `Face`: a box, landmarks in
either the iBUG 68-point layout (dlib, insightface `1k3d68`) or the 5-point layout of SCRFD/ArcFace, and a
detector score. Everything downstream (crop, head pose) works from those landmarks only, so adding a backend
means writing one `detect` method.

- `DlibBackend` (default) runs fully offline: dlib's HOG frontal face detector plus the 68-point shape
  predictor shipped by the `face-recognition-models` package.
- `InsightFaceBackend` runs the user's insightface `buffalo_l` ONNX models (SCRFD `det_10g.onnx` and, if
  present, `1k3d68.onnx`). The `insightface` package is optional and imported only when this backend is built.
"""
from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

LANDMARKS_68 = 68
"""iBUG 300-W layout: 0-16 jaw, 17-26 brows, 27-35 nose, 36-47 eyes, 48-67 mouth (image-left first)."""
LANDMARKS_5 = 5
"""SCRFD/ArcFace layout: image-left eye, image-right eye, nose tip, image-left mouth corner, image-right one."""


class BackendUnavailable(RuntimeError):
    """A backend's package or model files are missing; the message says what to install or where to put them."""


@dataclass(frozen=True)
class Face:
    """One detected face in the coordinates of the image given to `detect` (pixels, x right, y down)."""

    box: tuple[float, float, float, float]
    """(left, top, right, bottom) of the detector's box."""
    landmarks: np.ndarray
    """float64 (68, 2) iBUG points or (5, 2) SCRFD points, (x, y) pixel-index coordinates."""
    score: float
    """Detector confidence; its scale depends on the backend (dlib HOG margin, SCRFD probability)."""

    @property
    def size(self) -> float:
        """Geometric mean of the box sides: how big the face is, for comparing faces in one photo."""
        left, top, right, bottom = self.box
        return float(np.sqrt(max(right - left, 0.0) * max(bottom - top, 0.0)))


@runtime_checkable
class FaceBackend(Protocol):
    """What `preprocess_folder` needs from a detector: a name for the report and `detect`."""

    name: str

    def detect(self, image: np.ndarray) -> list[Face]:
        """All faces in an RGB uint8 (H, W, 3) image, any order."""
        ...


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)


def dlib_model_path(filename: str) -> Path:
    """Path of a `.dat` model shipped by `face-recognition-models`, found without importing the package.

    `import face_recognition_models` fails on environments without `pkg_resources`, so the package directory is
    located with importlib instead.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailable(
            "the dlib backend needs the 'face-recognition-models' package (68-point landmark model): "
            "pip install face-recognition-models -c constraints.txt")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / filename
    if not path.is_file():
        raise BackendUnavailable(f"dlib model file missing: {path} (reinstall face-recognition-models)")
    return path


@functools.lru_cache(maxsize=1)
def _dlib_models():
    """Detector and 68-point predictor, loaded once per process (the predictor takes ~0.7 s to read)."""
    try:
        import dlib
    except ImportError as exc:
        raise BackendUnavailable("the dlib backend needs dlib: pip install dlib-bin -c constraints.txt") from exc
    predictor = dlib.shape_predictor(str(dlib_model_path("shape_predictor_68_face_landmarks.dat")))
    return dlib, dlib.get_frontal_face_detector(), predictor


class DlibBackend:
    """dlib HOG frontal face detector + 68-point shape predictor (offline, CPU, ~0.1-0.3 s per photo).

    The HOG detector only finds roughly frontal faces (|yaw| up to ~45-60 degrees), which suits EG3D's pose
    range. Large photos are downscaled to `max_side` for detection (speed), landmarks are then fitted on the
    full-resolution image.
    """

    name = "dlib"

    def __init__(self, upsample: int = 1, min_score: float = 0.3, max_side: int = 1024) -> None:
        """
        Args:
            upsample: dlib pyramid upsampling steps; 1 finds faces down to ~40 px in the detection image.
            min_score: HOG margin below which a detection is dropped. True faces score ~0.5-3; dlib's own
                threshold 0 lets through weak same-size false positives (0.1 on skimage's astronaut suit),
                which would wrongly turn single-face photos into "several faces".
            max_side: longest side of the image the detector sees.
        """
        if upsample < 0 or max_side < 64:
            raise ValueError(f"DlibBackend: upsample must be >= 0 and max_side >= 64, got {upsample}, {max_side}")
        self.upsample = int(upsample)
        self.min_score = float(min_score)
        self.max_side = int(max_side)
        self._dlib, self._detector, self._predictor = _dlib_models()

    def detect(self, image: np.ndarray) -> list[Face]:
        image = _check_image(image)
        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        small = image
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        boxes, scores, _ = self._detector.run(small, self.upsample, 0.0)
        faces = []
        for rect, score in zip(boxes, scores):
            if score < self.min_score:
                continue
            box = (rect.left() / scale, rect.top() / scale, (rect.right() + 1) / scale, (rect.bottom() + 1) / scale)
            full = self._dlib.rectangle(int(round(box[0])), int(round(box[1])),
                                        int(round(box[2])) - 1, int(round(box[3])) - 1)
            shape = self._predictor(image, full)
            points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
            faces.append(Face(box=tuple(float(v) for v in box), landmarks=points, score=float(score)))
        return faces


INSIGHTFACE_DETECTOR = "det_10g.onnx"
INSIGHTFACE_LANDMARKS_68 = "1k3d68.onnx"


class InsightFaceBackend:
    """insightface SCRFD detector (+ optional 68-point `1k3d68` landmarks) from user-provided ONNX files.

    Put the `buffalo_l` files in `model_dir` (at least `det_10g.onnx`; `1k3d68.onnx` for 68 landmarks, which
    gives a better head pose than the detector's 5 keypoints). `2d106det.onnx` is not used: its 106-point
    layout is not the iBUG-68 one the crop and pose code expect.
    """

    name = "insightface"

    def __init__(self, model_dir: str | Path, min_score: float = 0.5, det_size: int = 640) -> None:
        model_dir = Path(model_dir).expanduser()
        detector_file = model_dir / INSIGHTFACE_DETECTOR
        if not detector_file.is_file():
            raise BackendUnavailable(
                f"InsightFaceBackend: detector model not found: {detector_file}. Download insightface's "
                f"'buffalo_l' model pack and put {INSIGHTFACE_DETECTOR} (and {INSIGHTFACE_LANDMARKS_68} for "
                f"68-point landmarks) in {model_dir}, or use the offline 'dlib' backend.")
        try:
            from insightface.app.common import Face as InsightFace
            from insightface.model_zoo import get_model
        except ImportError as exc:
            raise BackendUnavailable(
                "InsightFaceBackend needs the optional 'insightface' package (not a my3dgen dependency): "
                "pip install insightface -c constraints.txt, then put the buffalo_l ONNX files in "
                f"{model_dir}; or use the offline 'dlib' backend.") from exc
        self.min_score = float(min_score)
        self.det_size = int(det_size)
        self._face_type = InsightFace
        self._detector = get_model(str(detector_file))
        self._detector.prepare(ctx_id=-1, input_size=(self.det_size, self.det_size), det_thresh=self.min_score)
        landmark_file = model_dir / INSIGHTFACE_LANDMARKS_68
        self._landmarker = None
        if landmark_file.is_file():
            self._landmarker = get_model(str(landmark_file))
            self._landmarker.prepare(ctx_id=-1)

    def detect(self, image: np.ndarray) -> list[Face]:
        image = _check_image(image)
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        boxes, keypoints = self._detector.detect(bgr, input_size=(self.det_size, self.det_size))
        faces = []
        for i, row in enumerate(boxes):
            score = float(row[4])
            if score < self.min_score:
                continue
            box = tuple(float(v) for v in row[:4])
            points = None if keypoints is None else np.asarray(keypoints[i], dtype=np.float64)
            if self._landmarker is not None:
                record = self._face_type(bbox=np.asarray(row[:4]), kps=points, det_score=score)
                points = np.asarray(self._landmarker.get(bgr, record), dtype=np.float64)[:, :2]
            if points is None:
                raise BackendUnavailable(
                    f"{INSIGHTFACE_DETECTOR} returned no keypoints and {INSIGHTFACE_LANDMARKS_68} is missing")
            faces.append(Face(box=box, landmarks=points, score=score))
        return faces


def _mirror_permutation_68() -> np.ndarray:
    pairs = [(i, 16 - i) for i in range(8)] + [(17 + i, 26 - i) for i in range(5)] + [(31, 35), (32, 34)] + \
        [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)] + \
        [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)]
    perm = np.arange(LANDMARKS_68)
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


MIRROR_68 = _mirror_permutation_68()
"""iBUG-68 index of each point's mirror partner (jaw 0<->16, eye corners 36<->45, mouth corners 48<->54, ...)."""
MIRROR_5 = np.array([1, 0, 2, 4, 3])
"""SCRFD 5-point mirror partners: the eyes swap, the nose stays, the mouth corners swap."""


def mirror_face(face: Face, width: int) -> Face:
    """The same face described in the horizontally flipped image of `width` pixels.

    Pixel index x becomes width - 1 - x and each landmark takes its mirror partner's slot, so that e.g. point 36
    is still the image-left outer eye corner.
    """
    lm = np.asarray(face.landmarks, dtype=np.float64)
    perm = MIRROR_68 if len(lm) == LANDMARKS_68 else MIRROR_5
    flipped = lm[perm].copy()
    flipped[:, 0] = width - 1 - flipped[:, 0]
    left, top, right, bottom = face.box
    return Face(box=(width - right, top, width - left, bottom), landmarks=flipped, score=face.score)


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def detect_flip_averaged(backend: FaceBackend, image: np.ndarray, min_iou: float = 0.3) -> list[Face]:
    """Detect on the photo and on its mirror image and average each face's two landmark estimates.

    Landmark predictors are not exactly mirror-equivariant (dlib's 68-point model places a face's eye
    corners a pixel or two differently on the flipped photo), which shows up as a yaw bias of a few degrees.
    The average is mirror-equivariant by construction: the flipped photo gets exactly the mirrored landmarks,
    hence exactly the negated yaw. Faces seen in only one of the two passes are kept as seen (so that a
    second face is never lost from the "several faces" check). Costs a second detection pass.
    """
    image = _check_image(image)
    width = image.shape[1]
    direct = backend.detect(image)
    flipped = [mirror_face(face, width) for face in backend.detect(np.ascontiguousarray(image[:, ::-1]))]
    faces = []
    unmatched = list(flipped)
    for face in direct:
        match = max(unmatched, key=lambda other: box_iou(face.box, other.box), default=None)
        if match is None or box_iou(face.box, match.box) < min_iou or match.landmarks.shape != face.landmarks.shape:
            faces.append(face)
            continue
        unmatched.remove(match)
        faces.append(Face(box=tuple((a + b) / 2 for a, b in zip(face.box, match.box)),
                          landmarks=(face.landmarks + match.landmarks) / 2,
                          score=min(face.score, match.score)))
    return faces + unmatched


def make_backend(backend: str | FaceBackend = "dlib", model_dir: str | Path | None = None) -> FaceBackend:
    """A backend from its name ('dlib' or 'insightface') or an already built backend object."""
    if not isinstance(backend, str):
        if not isinstance(backend, FaceBackend):
            raise TypeError(f"backend must be 'dlib', 'insightface' or a FaceBackend, got {type(backend).__name__}")
        return backend
    if backend == "dlib":
        return DlibBackend()
    if backend == "insightface":
        if model_dir is None:
            raise BackendUnavailable(
                "backend 'insightface' needs model_dir: the folder holding the buffalo_l ONNX files "
                f"({INSIGHTFACE_DETECTOR}, {INSIGHTFACE_LANDMARKS_68})")
        return InsightFaceBackend(model_dir)
    raise ValueError(f"unknown backend {backend!r}: expected 'dlib' or 'insightface'")
