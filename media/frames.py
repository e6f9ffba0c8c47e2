"""What every video and picture path shares: the video kinds people ask for, and the frame resize."""
from __future__ import annotations

import numpy as np

VIDEO_KINDS = ("turntable", "interpolate")
"""A turntable of one latent, or an interpolation between two (a person's anchors; `cli.py render` also takes
seeds and latent files)."""


def resize_frame(frame: np.ndarray, size: int | None) -> np.ndarray:
    """HWC uint8 resized to size x size with Lanczos (unchanged when size is None or already that size)."""
    if size is None or frame.shape[:2] == (size, size):
        return frame
    from PIL import Image
    return np.asarray(Image.fromarray(frame).resize((size, size), Image.LANCZOS))
