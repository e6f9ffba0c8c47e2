"""The tri-plane cache: planes per (person, adapter identity, latent), so a new view of a known latent runs only
the render graph. A person's entries are dropped when their adapter file changes or they are removed.

Bounded in entries and in bytes: a tri-plane is [1, 3, C, H, W] (ffhq512-128: 3 x 32 x 256 x 256 float32, 25.2 MB),
so a count alone would let 64 entries take 1.6 GB. Entries live where the backend keeps them (host arrays, an
onnxruntime OrtValue or a torch CUDA tensor on the device) and are weighed where they live (`nbytes`).
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from runtime.cache import LRUCache

DEFAULT_MAX_BYTES = 1 << 30
"""1 GiB of tri-planes per runtime unless told otherwise (42 ffhq512-128 latents in fp32)."""
_ORT_ITEMSIZE = {"tensor(float)": 4, "tensor(float16)": 2, "tensor(bfloat16)": 2, "tensor(double)": 8}


def latent_key(ws: np.ndarray) -> str:
    """sha1 of the float32 W+ bytes: the latent's part of the cache key (also returned in RenderResult)."""
    return hashlib.sha1(np.ascontiguousarray(ws, np.float32).tobytes()).hexdigest()


def nbytes(value: Any) -> int:
    """Bytes of a numpy array, a torch tensor or an onnxruntime OrtValue (without importing torch/onnxruntime)."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if hasattr(value, "element_size") and hasattr(value, "numel"):  # torch.Tensor
        return int(value.numel() * value.element_size())
    if hasattr(value, "data_type") and hasattr(value, "shape"):  # onnxruntime.OrtValue
        return int(np.prod(value.shape())) * _ORT_ITEMSIZE.get(value.data_type(), 4)
    return int(np.asarray(value).nbytes)


class PlaneCache:
    """An LRU of tri-planes keyed by (person name, adapter identity, latent key), at most `capacity` entries and
    `max_bytes` bytes (None: DEFAULT_MAX_BYTES)."""

    def __init__(self, capacity: int = 64, max_bytes: int | None = None):
        self._lru = LRUCache(capacity, DEFAULT_MAX_BYTES if max_bytes is None else max_bytes, nbytes)

    def get(self, person: str | None, identity: str, key: str) -> Any:
        return self._lru.get((person, identity, key))

    def put(self, person: str | None, identity: str, key: str, planes: Any) -> None:
        self._lru.put((person, identity, key), planes)

    def forget(self, person: str | None) -> None:
        """Drop every entry of `person`."""
        self._lru.discard(lambda k: k[0] == person)

    def clear(self) -> None:
        self._lru.clear()

    def stats(self) -> dict[str, Any]:
        return self._lru.stats()
