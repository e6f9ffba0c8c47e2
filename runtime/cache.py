"""A small thread-safe LRU cache with hit/miss counters (tri-planes per (person, latent); parsed adapters), bounded
in entries and optionally in bytes."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable


class LRUCache:
    """At most `capacity` entries (and, with `max_bytes`, at most that many bytes as `size_of` weighs the values);
    `get` refreshes an entry, `put` evicts the least recently used ones. A value larger than `max_bytes` alone is
    not stored. `capacity` 0 disables caching (every get misses, put stores nothing).
    """

    def __init__(self, capacity: int, max_bytes: int | None = None, size_of: Callable[[Any], int] | None = None):
        if capacity < 0:
            raise ValueError(f"cache capacity must be >= 0, got {capacity}")
        if max_bytes is not None and (max_bytes < 0 or size_of is None):
            raise ValueError(f"max_bytes={max_bytes}: must be >= 0, with a size_of")
        self.capacity, self.max_bytes, self._size_of = capacity, max_bytes, size_of
        self._data: OrderedDict = OrderedDict()
        self._sizes: dict = {}
        self.bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def get(self, key: Hashable, default: Any = None) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
            self.misses += 1
            return default

    def put(self, key: Hashable, value: Any) -> None:
        if self.capacity == 0:
            return
        size = self._size_of(value) if self._size_of is not None else 0
        if self.max_bytes is not None and size > self.max_bytes:
            return
        with self._lock:
            self._remove(key)
            self._data[key], self._sizes[key] = value, size
            self.bytes += size
            while len(self._data) > self.capacity or (self.max_bytes is not None and self.bytes > self.max_bytes):
                self._remove(next(iter(self._data)))
                self.evictions += 1

    def _remove(self, key: Hashable) -> None:
        if key in self._data:
            del self._data[key]
            self.bytes -= self._sizes.pop(key)

    def discard(self, predicate: Callable[[Hashable], bool]) -> int:
        """Remove every entry whose key satisfies `predicate`; returns how many."""
        with self._lock:
            gone = [k for k in self._data if predicate(k)]
            for k in gone:
                self._remove(k)
            return len(gone)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._sizes.clear()
            self.bytes = 0

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def stats(self) -> dict[str, Any]:
        lookups = self.hits + self.misses
        out = {"size": len(self._data), "capacity": self.capacity, "hits": self.hits, "misses": self.misses,
               "evictions": self.evictions, "hit_rate": round(self.hits / lookups, 4) if lookups else None}
        if self.max_bytes is not None:
            out.update(bytes=self.bytes, max_bytes=self.max_bytes)
        return out
