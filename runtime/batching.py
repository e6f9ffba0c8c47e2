"""Grouping requests into graph runs: `Runtime.render_batch` renders N queued requests in as few runs as it can.

Requests of one person (one adapter identity) share their adapter feeds, so each person's requests run together
through the dynamic-batch graphs. Requests of several people run through the export's static-batch mixed graphs
(`cli.py export --keep-lora --mixed-batch N`), N samples per run with one person per sample; a last, partial run
is padded by repeating its last sample (the padding's outputs are dropped). Without mixed graphs each person's
group is its own run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Sequence, TypeVar

from runtime.requests import Anchor

if TYPE_CHECKING:
    import numpy as np

    from runtime.people import Person

T = TypeVar("T")


@dataclass(frozen=True)
class ViewRequest:
    """One novel-view request of a batch (the arguments of `Runtime.novel_view`, without a budget)."""

    person: str | None = None
    anchor: Anchor | None = None
    latent: Any = None
    yaw: float = 0.0
    pitch: float = 0.0


@dataclass
class BatchItem:
    """An accepted request of a batch as `Runtime.render_batch` carries it through the runs: where its result goes,
    who and what it renders, and its tri-planes once the cache or a synthesis run gave them."""

    index: int
    """Position of the request (and of its result) in the batch."""
    person: Person
    ws: np.ndarray
    """W+ [num_ws, w_dim]."""
    key: str
    """runtime.planes.latent_key of `ws`."""
    yaw: float
    pitch: float
    timings: dict[str, float] = field(default_factory=dict)
    """The request's own stages (its 'adapter' time)."""
    planes: Any = None
    """Tri-planes [1, ...] as Backend.batch_planes keeps them; None until known."""
    cache_hit: bool = False
    synthesis_ms: float = 0.0
    """Time of the synthesis run that made `planes` (0.0 on a cache hit)."""


@dataclass
class Run(Generic[T]):
    """One graph run of a batch: `items` in sample order; `mixed` runs use the static mixed graphs, padded to
    `size` samples by repeating the last item."""

    items: list[T]
    mixed: bool
    size: int

    @property
    def padding(self) -> int:
        return self.size - len(self.items)

    def padded(self, parts: list) -> list:
        """One part per item (feeds, people), padded to `size` by repeating the last."""
        return parts + parts[-1:] * self.padding


def plan_runs(items: Sequence[T], identity_of, mixed_batch: int | None) -> list[Run[T]]:
    """The runs that render `items`: one per identity, or mixed runs of `mixed_batch` samples when the items hold
    several identities and the export has mixed graphs (a run whose items share one identity uses the
    dynamic-batch graphs instead, with no padding)."""
    groups: dict[Any, list[T]] = {}
    for item in items:
        groups.setdefault(identity_of(item), []).append(item)
    if not mixed_batch or len(groups) < 2:
        return [Run(g, False, len(g)) for g in groups.values()]
    ordered = [item for g in groups.values() for item in g]
    runs = []
    for start in range(0, len(ordered), mixed_batch):
        chunk = ordered[start:start + mixed_batch]
        if len({identity_of(i) for i in chunk}) == 1:
            runs.append(Run(chunk, False, len(chunk)))
        else:
            runs.append(Run(chunk, True, mixed_batch))
    return runs
