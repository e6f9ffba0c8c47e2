"""A small thread-safe LRU cache with hit/miss counters (tri-planes per (person, latent); parsed adapters)."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable


class LRUCache:
    """At most `capacity` entries; `get` refreshes an entry, `put` evicts the least recently used one.

    `capacity` 0 disables caching (every get misses, put stores nothing).
    """

    def __init__(self, capacity: int):
        if capacity < 0:
            raise ValueError(f"cache capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._data: OrderedDict = OrderedDict()
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
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)
                self.evictions += 1

    def discard(self, predicate: Callable[[Hashable], bool]) -> int:
        """Remove every entry whose key satisfies `predicate`; returns how many."""
        with self._lock:
            gone = [k for k in self._data if predicate(k)]
            for k in gone:
                del self._data[k]
            return len(gone)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def stats(self) -> dict[str, int]:
        return {"size": len(self._data), "capacity": self.capacity, "hits": self.hits, "misses": self.misses,
                "evictions": self.evictions}
