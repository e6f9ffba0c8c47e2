"""Runtime: novel views, interpolations and turntables of personalized generators from an export directory.

Torch-free by default: numpy + onnxruntime (TensorRT engines where present); where torch is installed and the
export carries its model directory, the product's generator can serve instead (`backend='torch'`: eager on the
CPU, CUDA graphs on a GPU), or `backend='auto'` times both at start-up and logs the choice (runtime.choose_backend).
This class defaults to 'onnxruntime' (a library call does not pay a start-up measurement); the product's entry
points (`python -m runtime`, the TorchServe handler, `cli.py package|serve`) default to 'auto'. A request runs
at most two stages:

    latent (anchor W, or given W / W+)  --synthesis-->  tri-planes  --render(camera)-->  images

Videos: `orbit` (a turntable on EG3D's gen_videos.py orbit, media.orbit) and `interpolation` (the paper's synthesis
between two anchors, latent and camera interpolated: media.camera_path) return the frames;
media.video_writer.encode_video / write_video turn them into an mp4 or GIF. media/ is numpy + Pillow (+ the
optional imageio-ffmpeg), shipped beside the runtime in its wheel and in every `.mar`.

`Runtime` is the typed interface that callers (`python -m runtime`, serve/handler.py, bench/) use. It composes
small parts, each with one job:

    formats.export_manifest.ExportManifest   the checked manifest
    runtime.people.PeopleStore               who can be rendered: base model, merged person, adapter files (LRU)
    runtime.planes.PlaneCache                tri-planes per (person, adapter identity, latent), so a new view of a
                                             known latent runs only the render graph (cache_hit True)
    runtime.budget.LatencyBudget             stage-time estimates; a call whose `budget_ms` cannot be met raises
                                             BudgetExceeded without running, one that finishes late raises it with
                                             the result attached
    runtime.backend.Backend                  what runs the stages and builds the look-at cameras: the onnxruntime
                                             Renderer (runtime.renderer; also TensorRT) or the torch backend
                                             (runtime.torch_backend), chosen by runtime.choose_backend.open_backend
    runtime.native_adapters                  a person's adapter per graph: native onnxruntime adapter files,
                                             values kept on a CUDA device, or numpy feeds
    runtime.batching                         `render_batch`: N queued requests in one run per person, or in the
                                             export's mixed-person graphs (one person per sample); BatchItem is
                                             one request on its way through the runs
    runtime.requests                         validation of every argument (InvalidRequest names the field)

Export modes (manifest 'adapter.mode'): 'none' serves only the base model (person=None); 'merged' serves only the
person baked into the weights; 'keep-lora' serves the base model and every adapter file in `people_dir` whose
policy and base model match the export.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np

from formats.errors import ManifestError
from formats.export_manifest import ExportManifest
from formats.limits import Limits
from media.camera_path import interpolate_camera, interpolation_weights, view_angles
from media.orbit import Orbit
from runtime import requests as check
from runtime.backend import Backend, BackendOptions
from runtime.choose_backend import open_backend
from runtime.batching import BatchItem, Run, ViewRequest, plan_runs
from runtime.budget import LatencyBudget
from runtime.errors import (AdapterInvalid, BudgetExceeded, ExportInvalid, InvalidRequest, RuntimeErrorBase,
                            UnknownPerson)
from runtime.people import Person, PeopleStore
from runtime.planes import PlaneCache, latent_key
from runtime.requests import Anchor, RequestLimits
from runtime.result import RenderResult
from runtime.stats import Counters


log = logging.getLogger("my3dgen.runtime")


L = TypeVar("L")


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def _lerp(wa: np.ndarray, wb: np.ndarray, t: float) -> np.ndarray:
    """(1 - t) * wa + t * wb in float32 (exact at both ends: 0 * w + 1 * w')."""
    return ((1.0 - t) * wa + t * wb).astype(np.float32)


def _timings(stages: dict[str, float], synthesis_ms: float, render_ms: float, total_ms: float) -> dict[str, float]:
    """A result's milliseconds per stage: the request's own 'mapping' and 'adapter' (0.0 where not measured), then
    its synthesis, render and total."""
    return {"mapping": stages.get("mapping", 0.0), "adapter": stages.get("adapter", 0.0), "synthesis": synthesis_ms,
            "render": render_ms, "total": total_ms}


@dataclass
class _Call:
    """One request in flight: when it started, its budget (ms; None: no deadline) and the times of its own stages
    ('adapter', 'mapping'), which its first result reports."""

    t0: float
    budget: float | None
    timings: dict[str, float] = field(default_factory=dict)

    def elapsed_ms(self) -> float:
        return _ms(self.t0)

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Time the block as `stage` (recorded when the block completes)."""
        t = time.perf_counter()
        yield
        self.timings[stage] = _ms(t)

    def rest(self) -> _Call:
        """The rest of this call as a call of its own (a next frame): its clock starts now, its budget is what is
        left of this one (<= 0 when spent), and it has no stage times yet."""
        start = time.perf_counter()
        return _Call(start, None if self.budget is None else self.budget - (start - self.t0) * 1000.0)


class Runtime:
    """Serve an export directory (+ a directory of adapter files). See the module docstring.

    backend, precision, threads, providers, io_binding, device, compile: runtime.backend.BackendOptions (which
    backend serves, and how; runtime.choose_backend states the rule 'auto' follows).
    plane_cache_size / plane_cache_bytes: the tri-plane cache's bounds in entries and in bytes (runtime.planes).
    """

    def __init__(self, export_dir: str | os.PathLike, people_dir: str | os.PathLike | None = None,
                 providers: str | Sequence[str] = "auto", plane_cache_size: int = 64, adapter_cache_size: int = 16,
                 threads: int | None = None, limits: RequestLimits | None = None, file_limits: Limits | None = None,
                 io_binding: bool | None = None, backend: str = "onnxruntime", precision: str = "fp32",
                 device: str | None = None, compile: bool = False, plane_cache_bytes: int | None = None):
        self.export_dir = Path(export_dir)
        try:
            self.manifest = ExportManifest.read(self.export_dir)
        except ManifestError as e:
            raise ExportInvalid.of(e) from None
        self.limits: RequestLimits = limits or RequestLimits()
        self._counters = Counters()
        self.people_store = PeopleStore(self.manifest, people_dir, adapter_cache_size,
                                        on_load=lambda: self._counters.add("adapter_loads"), limits=file_limits)
        self.options = BackendOptions(backend=backend, precision=precision, threads=threads, providers=providers,
                                      io_binding=io_binding, device=device, compile=compile)
        self.backend: Backend
        self.backend, self.backend_reason = open_backend(self.manifest, self.options, self.people_store.base)
        log.info("backend=%r: %s (precision %s, export %s)", backend, f"{self.backend.name}, {self.backend_reason}",
                 self.backend.precision, self.export_dir)
        self.planes = PlaneCache(plane_cache_size, plane_cache_bytes)
        self.budget = LatencyBudget()

    # ------------------------------------------------------------------ what this runtime serves

    @property
    def mode(self) -> str:
        """'none', 'merged' or 'keep-lora'."""
        return self.manifest.mode

    @property
    def people_dir(self) -> Path | None:
        return self.people_store.people_dir

    @property
    def num_ws(self) -> int:
        return self.manifest.num_ws

    @property
    def w_dim(self) -> int:
        return self.manifest.w_dim

    @property
    def z_dim(self) -> int:
        return self.manifest.z_dim

    @property
    def image_size(self) -> int:
        """Side of the final image (512 for ffhq512-128)."""
        return self.manifest.image_size

    @property
    def renderer(self) -> Backend:
        """The backend (the onnxruntime Renderer before backends existed: the name stays for its callers)."""
        return self.backend

    @property
    def providers(self) -> list[str]:
        return self.backend.providers

    @property
    def graph_providers(self) -> dict[str, str]:
        """The provider each loaded graph actually runs on."""
        return self.backend.graph_providers

    @property
    def counters(self) -> dict[str, int]:
        """A snapshot of the graph-run, adapter-load and plane-cache counters."""
        return self._counters.snapshot()

    def people(self) -> list[str]:
        """Servable people: adapter files <name>.safetensors in people_dir (keep-lora), the merged person, or []."""
        return self.people_store.names()

    def person_info(self, name: str) -> dict[str, Any]:
        """Anchors (names), rank, alpha, layout, fingerprint (sha256 of the adapter file), base fingerprint."""
        return self.people_store.info(check.name(name))

    def add_person(self, name: str, adapter_path: str | os.PathLike) -> list[Path]:
        """Check an adapter file against this export, then copy it to people_dir/<name>.safetensors atomically
        (with the person's native adapter files: PeopleStore.add); returns the files written."""
        written = self.people_store.add(check.name(name, "name"), adapter_path)
        self.planes.forget(name)
        return written

    def remove_person(self, name: str) -> None:
        """Delete people_dir/<name>.safetensors and drop the person's cached adapter and tri-planes."""
        self.people_store.remove(check.name(name, "name"))
        self.planes.forget(name)

    # ------------------------------------------------------------------ requests

    def novel_view(self, person: str | None = None, anchor: Anchor | None = None, latent: Any = None,
                   yaw: float = 0.0, pitch: float = 0.0, budget_ms: float | None = None) -> RenderResult:
        """Render `person` at (yaw, pitch) from an anchor (name or index) or a latent W [w_dim] / W+ [num_ws, w_dim]."""
        call = self._start(budget_ms)
        view = self._view(yaw, pitch)
        p, ws = self._subject(call, person, lambda p: self._latent(p, anchor, latent))
        return self._render_views(call, p, ws, [view])[0]

    def interpolate(self, person: str | None, a: Anchor, b: Anchor, t: float, yaw: float = 0.0, pitch: float = 0.0,
                    budget_ms: float | None = None) -> RenderResult:
        """Render the W-space lerp (1 - t) * w_a + t * w_b of two anchors at (yaw, pitch)."""
        call = self._start(budget_ms)
        view = self._view(yaw, pitch)
        t = check.weight("t", t)
        p, ws = self._subject(call, person, lambda p: _lerp(p.anchor_latent(check.anchor("a", a), "a"),
                                                            p.anchor_latent(check.anchor("b", b), "b"), t))
        return self._render_views(call, p, ws, [view])[0]

    def turntable(self, person: str | None, anchor: Anchor | None, frames: int = 8, yaw_range: float = 0.5,
                  pitch: float = 0.0, budget_ms: float | None = None) -> list[RenderResult]:
        """`frames` views at yaw = yaw_range * sin(2 pi k / frames): one synthesis (or none), `frames` renders.

        The budget covers the whole call; each frame's timings are its own (frame 0 carries the synthesis).
        """
        call = self._start(budget_ms)
        n = check.frames(frames, self.limits)
        yaw_range = check.number("yaw_range", yaw_range, -self.limits.max_abs_yaw, self.limits.max_abs_yaw,
                                 "radians")
        pitch = check.angle("pitch", pitch, self.limits)
        p, ws = self._subject(call, person, lambda p: self._latent(p, anchor, None))
        views = [(yaw_range * math.sin(2 * math.pi * k / n), pitch) for k in range(n)]
        return self._render_views(call, p, ws, views)

    def orbit(self, person: str | None, anchor: Anchor | None = None, latent: Any = None, frames: int = 16,
              orbit: Orbit = Orbit(), budget_ms: float | None = None) -> list[RenderResult]:
        """`frames` views along `orbit` (default: EG3D's gen_videos.py turntable, as `cli.py render --video
        turntable`) of an anchor or a latent: one synthesis (or none), `frames` renders. The budget covers the
        whole call; frame 0's timings carry the synthesis."""
        call = self._start(budget_ms)
        views = [self._view(yaw, pitch) for yaw, pitch in orbit.views(check.frames(frames, self.limits))]
        p, ws = self._subject(call, person, lambda p: self._latent(p, anchor, latent))
        return self._render_views(call, p, ws, views)

    def anchor_view(self, person: str | None, anchor: Anchor, budget_ms: float | None = None) -> RenderResult:
        """Anchor `anchor` (name or index) of `person` seen from its own photo's camera (not a look-at view)."""
        call = self._start(budget_ms)
        p, (ws, c) = self._subject(call, person, lambda p: self._anchor(p, anchor, "anchor"))
        return self._render_camera(call, p, ws, c)

    def camera_view(self, person: str | None, latent: Any, camera: Any, budget_ms: float | None = None
                    ) -> RenderResult:
        """Render a latent W [w_dim] / W+ [num_ws, w_dim] of `person` from a camera label [25] (a photo's camera, or
        one of media.camera_path's: a caller rendering an interpolation one frame at a time). The latent is given,
        so no 'mapping' stage is timed."""
        call = self._start(budget_ms)
        p = self._resolve(call, person)
        ws = check.latent(latent, self.w_dim, self.num_ws)
        return self._render_camera(call, p, ws, check.camera(camera))

    def interpolation(self, person: str | None, a: Anchor, b: Anchor, frames: int = 16,
                      budget_ms: float | None = None) -> list[RenderResult]:
        """The paper's synthesis (Figures 8-9) from anchor `a` to anchor `b`: frame k, at t = k / (frames - 1),
        renders (1 - t) w_a + t w_b from the camera a fraction t of the way from a's photo camera to b's
        (media.camera_path), so the first and last frames are `anchor_view(a)` and `anchor_view(b)`.

        Every frame is its own latent: a synthesis and a render each. The budget covers the whole call: it is
        checked against the stage estimates before anything runs, and before and after every frame.
        """
        call = self._start(budget_ms)
        ts = interpolation_weights(check.frames(frames, self.limits, lo=2))
        p, ((wa, ca), (wb, cb)) = self._subject(call, person,
                                                lambda p: (self._anchor(p, a, "a"), self._anchor(p, b, "b")))
        self.budget.check(call.budget, call.elapsed_ms(), {"synthesis": len(ts), "render": len(ts)},
                          f"{len(ts)} syntheses + {len(ts)} renders")
        results: list[RenderResult] = []
        for k, t in enumerate(ts):
            frame = call if k == 0 else call.rest()
            if frame.budget is not None and frame.budget <= 0:
                raise BudgetExceeded(f"budget_ms={call.budget:g} exceeded after {k} of {len(ts)} frames", call.budget,
                                     None, call.elapsed_ms(), False, result=results)
            results.append(self._render_camera(frame, p, _lerp(wa, wb, t), interpolate_camera(ca, cb, t)))
        return results

    def map(self, z: np.ndarray, c: np.ndarray | None = None, truncation_psi: float = 0.7) -> np.ndarray:
        """The mapping graph: z [z_dim] or [B, z_dim] (and conditioning cameras [B, 25], default frontal) -> W+."""
        z = np.asarray(z, dtype=np.float32)
        single = z.ndim == 1
        z = z[None] if single else z
        if z.ndim != 2 or z.shape[1] != self.z_dim or not np.isfinite(z).all():
            raise InvalidRequest("z", f"must be finite with shape [{self.z_dim}] or [B, {self.z_dim}], got {z.shape}")
        if c is None:
            c = np.repeat(self.backend.camera(0.0, 0.0), len(z), 0)
        try:
            c = np.asarray(c, dtype=np.float32).reshape(len(z), 25)
        except (TypeError, ValueError):
            raise InvalidRequest("c", f"must be {len(z)} camera label(s) of 25 numbers") from None
        if not np.isfinite(c).all():
            raise InvalidRequest("c", "has non-finite values")
        ws = self.backend.map(z, c, check.number("truncation_psi", truncation_psi))
        self._counters.add("mapping_runs")
        return ws[0] if single else ws

    def render_batch(self, requests: Sequence[ViewRequest]) -> list[RenderResult | RuntimeErrorBase]:
        """Render N queued novel-view requests (of any people) in as few graph runs as runtime.batching plans:
        one run per person, or the export's mixed-person graphs. Returns, in request order, each request's
        RenderResult or the RuntimeErrorBase that refused it (one bad request does not fail the others).
        Tri-planes of the batch are stacked and split per sample where the backend keeps them (Backend.batch_planes:
        host memory, or the torch backend's CUDA device). A batch has no budget; each result's 'total' counts from
        the start of the batch."""
        t0 = time.perf_counter()
        out: list[Any] = [None] * len(requests)
        items: list[BatchItem] = []
        for i, r in enumerate(requests):
            try:
                q = self._batch_item(i, r, t0)
            except RuntimeErrorBase as e:
                out[i] = e
                continue
            self._cached_planes(q)
            items.append(q)
        identity = lambda q: q.person.identity  # noqa: E731
        for run in plan_runs([q for q in items if q.planes is None], identity, self.backend.mixed_batch):
            self._synthesize_run(run)
        for run in plan_runs(items, identity, self.backend.mixed_batch):
            for q, result in zip(run.items, self._render_run(run, t0)):
                out[q.index] = result
        return out

    def warmup(self, person: str | None = None, latent: np.ndarray | None = None) -> RenderResult:
        """Run both graphs once (a fresh latent, so synthesis runs) to prime the stage-time estimates."""
        if latent is None:
            latent = np.random.default_rng(12345).standard_normal(self.w_dim).astype(np.float32) * 0.1
        if person is None:
            person = self.manifest.merged_person
        return self.novel_view(person, latent=latent)

    def estimates(self) -> dict[str, float]:
        """Running estimates (ms) of the stages, as used by the budget check."""
        return self.budget.estimates()

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "plane_cache": self.planes.stats(), "adapter_cache": self.people_store.cache_stats(),
                "estimates_ms": self.estimates(), "providers": self.graph_providers,
                "adapter_paths": self.backend.adapter_paths, "planes_on_device": self.backend.planes_on_device,
                "backend": {**self.backend.describe(), "why": self.backend_reason}}

    def clear_caches(self) -> None:
        self.planes.clear()
        self.people_store.clear()

    # ------------------------------------------------------------------ the request pipeline
    #
    # Every request method: _start (clock, then the budget argument), its own argument checks, _subject (the
    # person, timed 'adapter', and the latent, timed 'mapping'), then _render_views (one latent, its views) or, for
    # render_batch, _batch_item per request and the batch's runs. Results come from RenderResult.of_sample with
    # _timings.

    def _start(self, budget_ms: Any) -> _Call:
        """A request's call: its clock starts, then its `budget_ms` argument is checked (before any other)."""
        return _Call(time.perf_counter(), check.budget_ms(budget_ms))

    def _view(self, yaw: Any, pitch: Any) -> tuple[float, float]:
        """A checked (yaw, pitch) look-at view."""
        return check.angle("yaw", yaw, self.limits), check.angle("pitch", pitch, self.limits)

    def _resolve(self, call: _Call, person: str | None) -> Person:
        """The person to render (adapter loaded, or from the cache), timed as the call's 'adapter' stage."""
        with call.timed("adapter"):
            return self.people_store.get(None if person is None else check.name(person))

    def _subject(self, call: _Call, person: str | None, latent_of: Callable[[Person], L]) -> tuple[Person, L]:
        """The person, then what `latent_of(person)` gives (the latent(s) to render), timed as 'mapping'."""
        p = self._resolve(call, person)
        with call.timed("mapping"):
            return p, latent_of(p)

    def _latent(self, p: Person, anchor: Any, latent: Any) -> np.ndarray:
        if anchor is not None and latent is not None:
            raise InvalidRequest("latent", "give either 'anchor' or 'latent', not both")
        if latent is not None:
            return check.latent(latent, self.w_dim, self.num_ws)
        if anchor is None and p.anchor_ws is None:
            raise InvalidRequest("anchor", "give 'anchor' or 'latent' (this person has no anchors)")
        return p.anchor_latent(check.anchor("anchor", 0 if anchor is None else anchor))

    def _anchor(self, p: Person, ref: Any, field_name: str) -> tuple[np.ndarray, np.ndarray]:
        """W+ latent and photo camera label [25] of anchor `ref`."""
        i = p.anchor_index(check.anchor(field_name, ref), field_name)
        return p.anchor_ws[i], p.anchor_c[i].astype(np.float32)

    def _render_camera(self, call: _Call, p: Person, ws: np.ndarray, c: np.ndarray) -> RenderResult:
        """Render latent ws from camera label c [25] (its angles go in the result)."""
        return self._render_views(call, p, ws, [view_angles(c)], cameras=[c])[0]

    def _render_views(self, call: _Call, p: Person, ws: np.ndarray, views: list[tuple[float, float]],
                      cameras: list[np.ndarray] | None = None) -> list[RenderResult]:
        """Render latent ws from each (yaw, pitch) look-at view, or from the given camera labels [25] (then
        `views` holds their angles for the results): one synthesis unless the tri-planes are cached, one render
        per view. The budget is checked against the estimates before running and after every view; the first
        result carries the call's own stages, the synthesis and the call's total, the others their render only."""
        key = latent_key(ws)
        planes = self.planes.get(p.name, p.identity, key)
        hit = planes is not None
        self.budget.check(call.budget, call.elapsed_ms(), {"synthesis": 0 if hit else 1, "render": len(views)},
                          f"{'cached tri-planes' if hit else 'synthesis'} + {len(views)} render(s)")
        ws_b = ws[None]
        self._counters.add("plane_cache_hits" if hit else "plane_cache_misses")
        synthesis_ms = 0.0
        if not hit:
            ts = time.perf_counter()
            planes = self.backend.planes(ws_b, p)
            synthesis_ms = _ms(ts)
            self._counters.add("synthesis_runs")
            self.budget.observe("synthesis", synthesis_ms)
            self.planes.put(p.name, p.identity, key, planes)
        results = []
        for k, (yaw, pitch) in enumerate(views):
            tr = time.perf_counter()
            c = self.backend.camera(yaw, pitch) if cameras is None else cameras[k].reshape(1, 25)
            out = self.backend.render(planes, ws_b, c, p)
            render_ms = _ms(tr)
            self._counters.add("render_runs")
            self.budget.observe("render", render_ms)
            first = k == 0
            timings = _timings(call.timings, synthesis_ms, render_ms, call.elapsed_ms()) if first else \
                _timings({}, 0.0, render_ms, render_ms)
            results.append(RenderResult.of_sample(out, 0, timings=timings, cache_hit=hit or not first, person=p.name,
                                                  yaw=yaw, pitch=pitch, latent_key=key))
            self.budget.check_after(call.budget, call.elapsed_ms(), k + 1, len(views),
                                    results[0] if len(views) == 1 else results)
        return results

    def _batch_item(self, index: int, r: ViewRequest, t0: float) -> BatchItem:
        """Request `index` of a batch started at t0, checked and resolved (raises what refuses it)."""
        call = _Call(t0, None)
        yaw, pitch = self._view(r.yaw, r.pitch)
        p = self._resolve(call, r.person)
        ws = self._latent(p, r.anchor, r.latent)
        return BatchItem(index, p, ws, latent_key(ws), yaw, pitch, call.timings)

    def _cached_planes(self, q: BatchItem) -> None:
        """Give a batch item its tri-planes from the cache, if there (counted as a hit or a miss)."""
        cached = self.planes.get(q.person.name, q.person.identity, q.key)
        self._counters.add("plane_cache_misses" if cached is None else "plane_cache_hits")
        if cached is not None:
            q.planes, q.cache_hit = self.backend.batch_planes(cached), True

    def _synthesize_run(self, run: Run[BatchItem]) -> None:
        """One synthesis run: each item gets its tri-planes [1, ...] (also cached) and the run's time."""
        ts = time.perf_counter()
        out = self._batch_run(run, "synthesis", {"ws": self._stack(run, [q.ws[None] for q in run.items])})
        planes = self.backend.batch_planes(out["planes"])
        ms = _ms(ts)
        self._counters.add("synthesis_runs")
        for k, q in enumerate(run.items):
            q.planes, q.synthesis_ms = planes[k:k + 1], ms
            self.planes.put(q.person.name, q.person.identity, q.key, q.planes)

    def _render_run(self, run: Run[BatchItem], t0: float) -> list[RenderResult]:
        """One render run: the results of its items, in item order ('total' counted from t0)."""
        tr = time.perf_counter()
        cams = [self.backend.camera(q.yaw, q.pitch) for q in run.items]
        out = self._batch_run(run, "render", {"planes": self._stack(run, [q.planes for q in run.items]),
                                              "ws": self._stack(run, [q.ws[None] for q in run.items]),
                                              "c": np.concatenate(run.padded(cams))})
        ms = _ms(tr)
        self._counters.add("render_runs")
        return [RenderResult.of_sample(out, k, timings=_timings(q.timings, q.synthesis_ms, ms, _ms(t0)),
                                       cache_hit=q.cache_hit, person=q.person.name, yaw=q.yaw, pitch=q.pitch,
                                       latent_key=q.key) for k, q in enumerate(run.items)]

    def _stack(self, run: Run[BatchItem], parts: list) -> Any:
        """The run's samples (W+ latents or tri-planes, [1, ...] each) joined on the backend, padded to run.size."""
        return self.backend.concat(run.padded(parts))

    def _batch_run(self, run: Run[BatchItem], graph: str, feeds: dict[str, Any]) -> dict[str, Any]:
        """One run of `graph`: the person's own for a one-person run, one person per sample (padded) otherwise."""
        people = [q.person for q in run.items]
        if not run.mixed:
            if graph == "synthesis":
                return {"planes": self.backend.planes(feeds["ws"], people[0])}
            return self.backend.render(feeds["planes"], feeds["ws"], feeds["c"], people[0])
        people = run.padded(people)
        if graph == "synthesis":
            return {"planes": self.backend.planes_mixed(feeds["ws"], people)}
        return self.backend.render_mixed(feeds["planes"], feeds["ws"], feeds["c"], people)


__all__ = ["Runtime", "RenderResult", "RequestLimits", "RuntimeErrorBase", "UnknownPerson", "InvalidRequest",
           "BudgetExceeded", "AdapterInvalid", "ExportInvalid"]
