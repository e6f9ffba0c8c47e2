"""What a render call returns: the images, the per-stage timings and how the tri-planes were obtained."""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class RenderResult:
    """One rendered view."""

    image: np.ndarray
    """float32 [3, S, S] in [-1, 1] (S = 512 for ffhq512-128)."""
    image_raw: np.ndarray
    """float32 [3, R, R]: the neural render before super-resolution."""
    depth: np.ndarray
    """float32 [1, R, R]: expected depth along each ray (scene units)."""
    timings: dict[str, float]
    """Milliseconds per stage: mapping, adapter, synthesis (0.0 on a cache hit), render, total."""
    cache_hit: bool
    """True when the tri-planes came from the cache (the synthesis graph did not run)."""
    person: str | None = None
    """Who was rendered (None: the base model)."""
    yaw: float = 0.0
    """Camera yaw (radians from frontal)."""
    pitch: float = 0.0
    """Camera pitch (radians from frontal)."""
    latent_key: str = ""
    """Hash of the W+ latent (the plane-cache key together with the adapter identity)."""

    @classmethod
    def of_sample(cls, outputs: dict[str, Any], k: int, **fields: Any) -> RenderResult:
        """Sample k of a render graph's outputs (image, image_raw, depth: float32 copies) with the other `fields`."""
        return cls(image=outputs["image"][k].astype(np.float32), image_raw=outputs["image_raw"][k].astype(np.float32),
                   depth=outputs["depth"][k].astype(np.float32), **fields)

    def to_uint8(self) -> np.ndarray:
        """The image as HWC uint8, as generator.imaging.to_uint8 maps [-1, 1]."""
        x = np.clip(np.rint((self.image.transpose(1, 2, 0) + 1) * 127.5), 0, 255)
        return x.astype(np.uint8)

    def png_bytes(self) -> bytes:
        """The image as PNG bytes (Pillow)."""
        from PIL import Image
        buf = io.BytesIO()
        Image.fromarray(self.to_uint8()).save(buf, format="PNG")
        return buf.getvalue()
