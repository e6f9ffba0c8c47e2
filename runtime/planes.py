"""The tri-plane cache: planes per (person, adapter identity, latent), so a new view of a known latent runs only
the render graph. A person's entries are dropped when their adapter file changes or they are removed."""
from __future__ import annotations

import hashlib

import numpy as np

from runtime.cache import LRUCache


def latent_key(ws: np.ndarray) -> str:
    """sha1 of the float32 W+ bytes: the latent's part of the cache key (also returned in RenderResult)."""
    return hashlib.sha1(np.ascontiguousarray(ws, np.float32).tobytes()).hexdigest()


class PlaneCache:
    """An LRU of tri-planes keyed by (person name, adapter identity, latent key)."""

    def __init__(self, capacity: int = 64):
        self._lru = LRUCache(capacity)

    def get(self, person: str | None, identity: str, key: str) -> np.ndarray | None:
        return self._lru.get((person, identity, key))

    def put(self, person: str | None, identity: str, key: str, planes: np.ndarray) -> None:
        self._lru.put((person, identity, key), planes)

    def forget(self, person: str | None) -> None:
        """Drop every entry of `person`."""
        self._lru.discard(lambda k: k[0] == person)

    def clear(self) -> None:
        self._lru.clear()

    def stats(self) -> dict[str, int]:
        return self._lru.stats()
