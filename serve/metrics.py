"""The handler's custom Prometheus metrics: what they are, how the handler emits them, how the server declares them.

Every metric carries the backend that served it (`backend`: onnxruntime, torch, tensorrt; what `auto` chose) and
TorchServe's model labels `ModelName` and `Level` (and `Hostname`, which the frontend appends), scraped from the
metrics listener's `/metrics` (`metrics_mode=prometheus`):

    my3dgen_requests_total{op, status, backend}           requests answered, by op and HTTP status ('invalid' op:
                                                          the request could not be read far enough to know it)
    my3dgen_plane_cache_total{outcome, backend}           tri-plane cache lookups, `hit` or `miss` (a miss runs
                                                          synthesis)
    my3dgen_stage_milliseconds_total{op, stage, backend}  milliseconds spent in each stage (parse, adapter,
                                                          mapping, synthesis, render, encode, handler), summed over
                                                          requests: a mean is its rate over requests_total's
    my3dgen_budget_refusals_total{op, when, backend}      latency-budget refusals: `before` running (503: the
                                                          stage estimates could not fit) or `after` (504: it ran late)
    my3dgen_plane_cache_bytes{backend}                    gauge: bytes the worker's tri-plane cache holds now
    my3dgen_plane_cache_hit_ratio{backend}                gauge: the worker's plane-cache hits / lookups so far

The numbers are the runtime's own: its per-result stage timings, the deltas of its plane-cache counters over the
request, its cache's size. The handler emits through TorchServe's `context.metrics` (each update is a `[METRICS]`
line on the worker's stdout, which the frontend parses). In prometheus mode the frontend exposes only backend
metrics that the metrics configuration declares (TorchServe 0.12, model_metrics_auto_detect off), with the labels
in the declared order, so `serve/server.py` writes TorchServe's default metrics.yaml plus `model_metrics_spec()`
into the run folder and names it as `metrics_config`.

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
PLANE_CACHE_BYTES = "my3dgen_plane_cache_bytes"
PLANE_CACHE_HIT_RATIO = "my3dgen_plane_cache_hit_ratio"

METRICS = {
    REQUESTS: ("counter", "count", ("op", "status", "backend")),
    PLANE_CACHE: ("counter", "count", ("outcome", "backend")),
    STAGE_MS: ("counter", "ms", ("op", "stage", "backend")),
    BUDGET_REFUSALS: ("counter", "count", ("op", "when", "backend")),
    PLANE_CACHE_BYTES: ("gauge", "bytes", ("backend",)),
    PLANE_CACHE_HIT_RATIO: ("gauge", "ratio", ("backend",)),
}
"""name -> (TorchServe metric type, unit, our labels)."""

STAGES = ("parse", "adapter", "mapping", "synthesis", "render", "encode", "handler")
"""The stages counted in STAGE_MS ('total', the runtime's own sum, is left out: it double counts)."""


@dataclass(frozen=True)
class Label:
    """A label (TorchServe 'dimension'): what `context.metrics.add_counter` reads (`.name`, `.value`)."""

    name: str
    value: str


def model_metrics_spec() -> dict:
    """The `model_metrics` section declaring our counters and gauges (TorchServe's metrics.yaml layout)."""
    spec: dict = {}
    for name, (kind, unit, labels) in METRICS.items():
        spec.setdefault(kind, []).append({"name": name, "unit": unit, "dimensions": [*labels, *MODEL_LABELS]})
    return spec


def metrics_config(default: dict) -> dict:
    """TorchServe's default metrics configuration `default` (its ts/configs/metrics.yaml, parsed) with our
    metrics added to `model_metrics`; the default's own entries are kept."""
    out = dict(default)
    model = {k: list(v or []) for k, v in (out.get("model_metrics") or {}).items()}
    for kind, ours in model_metrics_spec().items():
        taken = {m["name"] for m in ours}
        model[kind] = [m for m in model.get(kind, []) if m.get("name") not in taken] + ours
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

    def __init__(self, model_name: str, backend: str = "?"):
        self.model_name, self.backend = model_name, backend
        self._warned = False

    def record(self, context: Any, idx: int, outcome: Outcome, cache: dict, cache_state: Optional[dict] = None
               ) -> None:
        """Count `outcome` and the plane-cache lookups `cache` ({'hit', 'miss'}); set the gauges from
        `cache_state` (the runtime's plane-cache stats: 'bytes', 'hit_rate')."""
        sink = getattr(context, "metrics", None)
        if sink is None:
            return
        try:
            for name, value, labels in self.updates(outcome, cache):
                sink.add_counter(name, value, idx=idx, dimensions=labels)
            for name, value, labels in self.gauges(cache_state or {}):
                sink.add_metric(name, value, METRICS[name][1], idx=idx, dimensions=labels, metric_type=_gauge())
        except Exception as e:  # noqa: BLE001 - metrics must never fail a request
            if not self._warned:
                self._warned = True
                logger.warning("could not emit metrics (%s: %s); further failures are not logged",
                               type(e).__name__, e)

    def _model(self) -> list:
        return [Label("backend", self.backend), Label("ModelName", self.model_name), Label("Level", LEVEL)]

    def updates(self, outcome: Outcome, cache: dict) -> Iterable[tuple[str, float, list]]:
        """(counter, increment, labels in the declared order) of one request."""
        model = self._model()
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

    def gauges(self, cache_state: dict) -> Iterable[tuple[str, float, list]]:
        """(gauge, value, labels) from the plane cache's stats; a ratio with no lookups yet is left out."""
        if "bytes" in cache_state:
            yield PLANE_CACHE_BYTES, float(cache_state["bytes"]), self._model()
        if cache_state.get("hit_rate") is not None:
            yield PLANE_CACHE_HIT_RATIO, float(cache_state["hit_rate"]), self._model()


def _gauge() -> Any:
    """TorchServe's gauge metric type (imported when first emitted: the module stays standard-library only)."""
    from ts.metrics.metric_type_enum import MetricTypes
    return MetricTypes.GAUGE
