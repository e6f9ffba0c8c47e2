"""Counters of what a runtime did (graph runs, adapter loads, plane-cache outcomes), safe to update from threads."""
from __future__ import annotations

import threading

NAMES = ("synthesis_runs", "render_runs", "mapping_runs", "adapter_loads", "plane_cache_hits", "plane_cache_misses")


class Counters:
    """Named counters; `add` and `snapshot` hold the lock."""

    def __init__(self):
        self._lock = threading.Lock()
        self._values = dict.fromkeys(NAMES, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)
