"""Chamfer distance between two point sets (e.g. a mesh's vertices and a true surface's), numpy + scipy only."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Chamfer:
    """Mean nearest-neighbour distances a->b and b->a, their mean (the Chamfer distance) and the a->b 90th
    percentile, in the points' units."""

    a_to_b: float
    b_to_a: float
    a_to_b_p90: float

    @property
    def distance(self) -> float:
        return (self.a_to_b + self.b_to_a) / 2


def chamfer(a: np.ndarray, b: np.ndarray) -> Chamfer:
    """Chamfer distance between point sets a [N, 3] and b [M, 3] (each non-empty, finite)."""
    from scipy.spatial import cKDTree
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    for name, p in (("a", a), ("b", b)):
        if p.ndim != 2 or p.shape[1] != 3 or not len(p) or not np.isfinite(p).all():
            raise ValueError(f"chamfer: point set {name} must be a non-empty finite [N, 3] array, got {p.shape}")
    ab = cKDTree(b).query(a)[0]
    ba = cKDTree(a).query(b)[0]
    return Chamfer(float(ab.mean()), float(ba.mean()), float(np.percentile(ab, 90)))
