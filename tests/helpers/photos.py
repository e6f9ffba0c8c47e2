"""The photos and the detector the preprocess tests share (tests/test_preprocess.py, test_preprocess_folders.py):
skimage's astronaut (one frontal face), one dlib backend per test module, and two steps most tests repeat."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from preprocess import DlibBackend, align_face, detect_flip_averaged, estimate_head_pose

DEG = math.pi / 180


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    """skimage's astronaut photo (512 x 512 RGB, one frontal face)."""
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def backend() -> DlibBackend:
    """The dlib detector with its 68 landmarks (loaded once per module: its models take a while)."""
    return DlibBackend()


def save_image(pixels: np.ndarray, path: Path) -> Path:
    """`pixels` written to `path` (the format from its suffix); returns `path`."""
    Image.fromarray(pixels).save(path)
    return path


def photo_and_mirror(folder: Path, photo: np.ndarray) -> Path:
    """`folder` made, holding `photo` as a.png and its left-right mirror as b.png; returns `folder`."""
    folder.mkdir()
    save_image(photo, folder / "a.png")
    save_image(np.ascontiguousarray(photo[:, ::-1]), folder / "b.png")
    return folder


def pose_of(image: np.ndarray, backend, flip_average: bool):
    """(FFHQ crop, head pose) of the one face in `image`, detected with or without flip averaging."""
    faces = detect_flip_averaged(backend, image) if flip_average else backend.detect(image)
    assert len(faces) == 1
    aligned = align_face(image, faces[0].landmarks)
    return aligned, estimate_head_pose(aligned.to_crop(faces[0].landmarks), aligned.size)
