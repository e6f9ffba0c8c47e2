"""A person's training photos: a dataset folder (EG3D dataset.json + aligned crops) -> tensors for the trainer.

The folder must come from `cli.py preprocess` (or be an EG3D-style dataset with camera labels). A folder of raw
photos is refused with a message saying how to preprocess it: alignment and pose estimation are a separate,
inspectable step and are never run silently here.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from formats.cameras import yaw_pitch_of
from formats.dataset import DATASET_JSON, DatasetError, load_dataset
from preprocess import load_photo


class TrainingDataError(ValueError):
    """A dataset folder that cannot be trained on; the message names the folder or file and what to do."""


@dataclass
class TrainingSet:
    """Photos of one person at the generator's output size, with their EG3D cameras."""

    images: torch.Tensor
    """[N, 3, S, S] float32 in [-1, 1], S = the generator's output resolution."""
    cameras: torch.Tensor
    """[N, 25] float32 EG3D camera labels."""
    names: list[str]
    """Image names relative to the dataset folder (anchor names in the adapter file)."""

    def __post_init__(self):
        n = self.images.shape[0]
        if self.images.ndim != 4 or self.images.shape[1] != 3 or self.images.shape[2] != self.images.shape[3]:
            raise ValueError(f"images must be [N, 3, S, S], got {tuple(self.images.shape)}")
        if tuple(self.cameras.shape) != (n, 25):
            raise ValueError(f"cameras must be [{n}, 25], got {tuple(self.cameras.shape)}")
        if len(self.names) != n:
            raise ValueError(f"{len(self.names)} names for {n} images")
        if n == 0:
            raise ValueError("a training set needs at least one image")

    def __len__(self) -> int:
        return self.images.shape[0]

    def yaws(self) -> list[float]:
        """Camera yaw of every photo (radians; > 0: the camera is toward +x, formats/cameras.py)."""
        return [yaw_pitch_of(c)[0] for c in self.cameras.detach().cpu().numpy()]

    def digest(self) -> str:
        """sha256 of the image and camera bytes: identifies the data a checkpoint was trained on."""
        h = hashlib.sha256()
        h.update(self.images.detach().float().contiguous().cpu().numpy().tobytes())
        h.update(self.cameras.detach().float().contiguous().cpu().numpy().tobytes())
        h.update("\n".join(self.names).encode())
        return "sha256:" + h.hexdigest()


ONE_SIDED_YAW = 0.10
"""A side of the head counts as photographed when some photo's yaw is beyond this (radians) on that side."""


def one_sided_warning(yaws: list[float], sym: bool) -> str | None:
    """A one-line warning when every photo looks at the head from one side, else None.

    Such a set leaves the other side to the prior; the symmetry loss (paper §3.3) is what carries the seen side
    over, so the warning says whether it is on."""
    if len(yaws) < 2:
        return None
    seen_pos = any(y > ONE_SIDED_YAW for y in yaws)
    seen_neg = any(y < -ONE_SIDED_YAW for y in yaws)
    if seen_pos == seen_neg:
        return None  # both sides photographed, or every photo near-frontal
    seen, missing = ("yaw > 0", "yaw < 0") if seen_pos else ("yaw < 0", "yaw > 0")
    extreme = max(yaws, key=abs)
    cover = ("the symmetry loss (on) is what fills it in from the photographed side" if sym else
             "the symmetry loss is off (--no-sym), so that side comes from the prior alone")
    return (f"warning: one-sided reference set: all {len(yaws)} photos look from {seen} (up to {extreme:+.2f} rad) "
            f"and none from {missing} beyond {ONE_SIDED_YAW} rad; {cover}. Photos from the other side help most.")


def _not_a_dataset(folder: Path) -> TrainingDataError:
    photos = [p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp")] \
        if folder.is_dir() else []
    hint = (f" It holds {len(photos)} image file(s) but no camera labels." if photos else "")
    return TrainingDataError(
        f"{folder}: no {DATASET_JSON} here, so this is not a preprocessed dataset.{hint} Align the photos and "
        f"estimate their cameras first:\n    python cli.py preprocess {folder} --out {folder}_aligned\n"
        f"then train on the new folder (--data {folder}_aligned). An EG3D dataset folder with a "
        f"{DATASET_JSON} of camera labels also works.")


def image_to_tensor(pixels: np.ndarray, size: int, where: str) -> torch.Tensor:
    """HWC uint8 RGB -> [3, size, size] in [-1, 1]; square images only, resized with Lanczos if needed."""
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise TrainingDataError(f"{where}: expected an RGB image, got array shape {pixels.shape}")
    h, w = pixels.shape[:2]
    if h != w:
        raise TrainingDataError(f"{where}: image is {w}x{h}; training crops must be square (as `cli.py "
                                f"preprocess` writes them)")
    if h != size:
        pixels = np.asarray(Image.fromarray(pixels).resize((size, size), Image.LANCZOS))
    return torch.from_numpy(np.array(pixels, dtype=np.uint8)).permute(2, 0, 1).float() / 127.5 - 1.0


def load_training_set(dataset_dir: str | Path, resolution: int) -> TrainingSet:
    """Load every labelled image of `dataset_dir` (validated dataset.json) at `resolution` x `resolution`."""
    folder = Path(dataset_dir)
    if not folder.exists():
        raise TrainingDataError(f"{folder}: no such dataset folder")
    if not folder.is_dir():
        raise TrainingDataError(f"{folder}: not a folder (expected a dataset folder with {DATASET_JSON})")
    if not (folder / DATASET_JSON).is_file():
        raise _not_a_dataset(folder)
    try:
        samples = load_dataset(folder)
    except DatasetError as e:
        raise TrainingDataError(str(e)) from None
    if not samples:
        raise TrainingDataError(f"{folder / DATASET_JSON}: lists no images")
    root = folder.resolve()
    images, cameras, names = [], [], []
    for s in samples:
        try:
            pixels = load_photo(s.path)
        except (OSError, ValueError) as e:
            raise TrainingDataError(f"{s.path}: unreadable image ({e})") from None
        images.append(image_to_tensor(pixels, resolution, str(s.path)))
        cameras.append(torch.from_numpy(np.asarray(s.label, dtype=np.float32)))
        names.append(s.path.relative_to(root).as_posix())
    return TrainingSet(torch.stack(images), torch.stack(cameras), names)
