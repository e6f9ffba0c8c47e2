"""The handler's custom Prometheus metrics: what they are, how the handler emits them, how the server declares them.

Every metric is a counter with TorchServe's model labels `ModelName` and `Level` (and `Hostname`, which the frontend
appends), scraped from the metrics listener's `/metrics` (`metrics_mode=prometheus`):

    my3dgen_requests_total{op, status}            requests answered, by op and HTTP status ('invalid' op: the
                                                  request could not be read far enough to know it)
    my3dgen_plane_cache_total{outcome}            tri-plane cache lookups, `hit` or `miss` (a miss runs synthesis)
    my3dgen_stage_milliseconds_total{op, stage}   milliseconds spent in each stage (parse, adapter, mapping,
                                                  synthesis, render, encode, handler), summed over requests: a mean
                                                  is its rate over my3dgen_requests_total's
    my3dgen_budget_refusals_total{op, when}       latency-budget refusals: `before` running (503: the stage
                                                  estimates could not fit) or `after` (504: it ran late)

The numbers are the runtime's own: its per-result stage timings and the deltas of its plane-cache counters over
the request. The handler emits through TorchServe's `context.metrics` (each update is a `[METRICS]` line on the
worker's stdout, which the frontend parses). In prometheus mode the frontend exposes only backend metrics that the
metrics configuration declares (TorchServe 0.12, model_metrics_auto_detect off), with the labels in the declared
order, so `serve/server.py` writes TorchServe's default metrics.yaml plus `model_metrics_spec()` into the run folder
and names it as `metrics_config`.

Shipped inside every `.mar` (the handler imports it): standard library only at import time.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Optional

logger = logging.getLogger(__name__)

MODEL_LABELS = ("ModelName", "Level")
"""TorchServe's default model dimensions, declared after ours (the worker adds them when a metric lacks them)."""
LEVEL = "Model"

REQUESTS = "my3dgen_requests_total"
PLANE_CACHE = "my3dgen_plane_cache_total"
STAGE_MS = "my3dgen_stage_milliseconds_total"
BUDGET_REFUSALS = "my3dgen_budget_refusals_total"

METRICS = {
    REQUESTS: ("count", ("op", "status")),
    PLANE_CACHE: ("count", ("outcome",)),
    STAGE_MS: ("ms", ("op", "stage")),
    BUDGET_REFUSALS: ("count", ("op", "when")),
}
"""name -> (unit, our labels); every one a counter."""

STAGES = ("parse", "adapter", "mapping", "synthesis", "render", "encode", "handler")
"""The stages counted in STAGE_MS ('total', the runtime's own sum, is left out: it double counts)."""


@dataclass(frozen=True)
class Label:
    """A label (TorchServe 'dimension'): what `context.metrics.add_counter` reads (`.name`, `.value`)."""

    name: str
    value: str


def model_metrics_spec() -> dict:
    """The `model_metrics` section declaring our counters (TorchServe's metrics.yaml layout)."""
    return {"counter": [{"name": name, "unit": unit, "dimensions": [*labels, *MODEL_LABELS]}
                        for name, (unit, labels) in METRICS.items()]}


def metrics_config(default: dict) -> dict:
    """TorchServe's default metrics configuration `default` (its ts/configs/metrics.yaml, parsed) with our
    counters added to `model_metrics`; the default's own entries are kept."""
    out = dict(default)
    model = {k: list(v or []) for k, v in (out.get("model_metrics") or {}).items()}
    ours = model_metrics_spec()["counter"]
    taken = {m["name"] for m in ours}
    model["counter"] = [m for m in model.get("counter", []) if m.get("name") not in taken] + ours
    out["model_metrics"] = model
    return out


@dataclass
class Outcome:
    """What one request did, for the metrics: filled in while it is handled."""

    op: str = "invalid"
    status: int = 200
    timings: Optional[dict] = None
    """Milliseconds per stage (None when nothing was rendered)."""
    budget_refusal: Optional[str] = None
    """'before' or 'after' when the latency budget refused the request."""


def cache_delta(before: dict, after: dict) -> dict:
    """Plane-cache hits and misses between two snapshots of the runtime's counters."""
    return {"hit": after.get("plane_cache_hits", 0) - before.get("plane_cache_hits", 0),
            "miss": after.get("plane_cache_misses", 0) - before.get("plane_cache_misses", 0)}


class ServeMetrics:
    """Emits one request's metrics through TorchServe's `context.metrics`; a context without one (in-process
    tests, other servers) is skipped, and an emitting fault is logged once and never fails a request."""

    def __init__(self, model_name: str):
        self.model_name = model_name
        self._warned = False

    def record(self, context: Any, idx: int, outcome: Outcome, cache: dict) -> None:
        sink = getattr(context, "metrics", None)
        if sink is None:
            return
        try:
            for name, value, labels in self.updates(outcome, cache):
                sink.add_counter(name, value, idx=idx, dimensions=labels)
        except Exception as e:  # noqa: BLE001 - metrics must never fail a request
            if not self._warned:
                self._warned = True
                logger.warning("could not emit metrics (%s: %s); further failures are not logged",
                               type(e).__name__, e)

    def updates(self, outcome: Outcome, cache: dict) -> Iterable[tuple[str, float, list]]:
        """(metric, increment, labels in the declared order) of one request."""
        model = [Label("ModelName", self.model_name), Label("Level", LEVEL)]
        yield REQUESTS, 1, [Label("op", outcome.op), Label("status", str(int(outcome.status))), *model]
        for outcome_name in ("hit", "miss"):
            if cache.get(outcome_name, 0) > 0:
                yield PLANE_CACHE, cache[outcome_name], [Label("outcome", outcome_name), *model]
        for stage in STAGES:
            ms = (outcome.timings or {}).get(stage)
            if ms is not None and ms > 0:
                yield STAGE_MS, round(float(ms), 3), [Label("op", outcome.op), Label("stage", stage), *model]
        if outcome.budget_refusal is not None:
            yield BUDGET_REFUSALS, 1, [Label("op", outcome.op), Label("when", outcome.budget_refusal), *model]
