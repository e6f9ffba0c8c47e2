"""Turn generator outputs into pictures: [-1, 1] tensors to uint8, grids of views, PNG files."""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from formats.atomic import atomic_file


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
