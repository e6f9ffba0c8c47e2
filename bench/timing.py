"""Side-by-side timing for benchmarks on noisy shared machines."""
from __future__ import annotations

import statistics
import time


def paired_ms(fa, fb, reps: int, warmup: int = 1) -> tuple[float, float]:
    """Medians (ms) of fa and fb, called alternately (order swapped every repetition) so both see the same load."""
    for _ in range(warmup):
        fa()
        fb()
    times: dict[int, list[float]] = {0: [], 1: []}
    for k in range(reps):
        for i in ((0, 1) if k % 2 == 0 else (1, 0)):
            t = time.perf_counter()
            (fa, fb)[i]()
            times[i].append((time.perf_counter() - t) * 1000)
    return statistics.median(times[0]), statistics.median(times[1])
