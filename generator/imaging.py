"""Turn generator outputs into pictures: [-1, 1] tensors to uint8, grids of views, PNG and JPEG files."""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from formats.atomic import atomic_file

IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
"""Picture files by suffix: lossless PNG, or JPEG (quality JPEG_QUALITY) for smaller files."""
JPEG_QUALITY = 95


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[C, H, W] or [N, C, H, W] in [-1, 1] -> HWC / NHWC uint8 (clipped)."""
    x = (img.detach().float().cpu() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return x.movedim(-3, -1).numpy()


def depth_to_uint8(depth: torch.Tensor) -> np.ndarray:
    """[1, H, W] depth -> HWC uint8, near = bright, normalized to the image's own range."""
    d = depth.detach().float().cpu()[0]
    lo, hi = d.min(), d.max()
    d = 1 - (d - lo) / (hi - lo).clamp_min(1e-8)
    return (d * 255).round().to(torch.uint8).numpy()[..., None].repeat(3, -1)


def grid(images: list[np.ndarray], cols: int, pad: int = 2) -> np.ndarray:
    """Tile HWC uint8 images (same size) row by row with `pad` pixels of white between them."""
    h, w, c = images[0].shape
    rows = (len(images) + cols - 1) // cols
    out = np.full((rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad, c), 255, np.uint8)
    for i, im in enumerate(images):
        r, k = divmod(i, cols)
        out[r * (h + pad): r * (h + pad) + h, k * (w + pad): k * (w + pad) + w] = im
    return out


def save_png(array: np.ndarray, path: str | os.PathLike) -> None:
    """Write an HWC uint8 array as PNG, atomically."""
    with atomic_file(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def image_format(path: str | os.PathLike, option: str = "--out") -> str:
    """The PIL format a picture path's suffix names; any other suffix is a ValueError naming the option, so a
    `.jpg` never holds PNG bytes."""
    suffix = os.path.splitext(str(path))[1].lower()
    if suffix not in IMAGE_FORMATS:
        raise ValueError(f"{option} {path}: a picture is written as {' or '.join(IMAGE_FORMATS)} (got "
                         f"{suffix or 'no suffix'!r})")
    return IMAGE_FORMATS[suffix]


def save_image(array: np.ndarray, path: str | os.PathLike, option: str = "--out") -> None:
    """Write an HWC uint8 array as PNG or JPEG, by the path's suffix, atomically."""
    fmt = image_format(path, option)
    with atomic_file(path) as tmp:
        Image.fromarray(array).save(tmp, format=fmt, **({"quality": JPEG_QUALITY} if fmt == "JPEG" else {}))
