"""Grouping requests into graph runs: `Runtime.render_batch` renders N queued requests in as few runs as it can.

Requests of one person (one adapter identity) share their adapter feeds, so each person's requests run together
through the dynamic-batch graphs. Requests of several people run through the export's static-batch mixed graphs
(`cli.py export --keep-lora --mixed-batch N`), N samples per run with one person per sample; a last, partial run
is padded by repeating its last sample (the padding's outputs are dropped). Without mixed graphs each person's
group is its own run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Sequence, TypeVar

from runtime.requests import Anchor

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
class Run(Generic[T]):
    """One graph run of a batch: `items` in sample order; `mixed` runs use the static mixed graphs, padded to
    `size` samples by repeating the last item."""

    items: list[T]
    mixed: bool
    size: int

    @property
    def padding(self) -> int:
        return self.size - len(self.items)


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
