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
                                             export's mixed-person graphs (one person per sample)
    runtime.requests                         validation of every argument (InvalidRequest names the field)

Export modes (manifest 'adapter.mode'): 'none' serves only the base model (person=None); 'merged' serves only the
person baked into the weights; 'keep-lora' serves the base model and every adapter file in `people_dir` whose
policy and base model match the export.
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from formats.errors import ManifestError
from formats.export_manifest import ExportManifest
from formats.limits import Limits
from media.camera_path import interpolate_camera, interpolation_weights, view_angles
from media.orbit import Orbit
from runtime import requests as check
from runtime.backend import Backend, BackendOptions
from runtime.choose_backend import open_backend
from runtime.batching import Run, ViewRequest, plan_runs
from runtime.budget import LatencyBudget
from runtime.errors import (AdapterInvalid, BudgetExceeded, ExportInvalid, InvalidRequest, RuntimeErrorBase,
                            UnknownPerson)
from runtime.people import Person, PeopleStore
from runtime.planes import PlaneCache, latent_key
from runtime.requests import Anchor, RequestLimits
from runtime.result import RenderResult
from runtime.stats import Counters


log = logging.getLogger("my3dgen.runtime")


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


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
        t0 = time.perf_counter()
        budget = check.budget_ms(budget_ms)
        yaw, pitch = check.angle("yaw", yaw, self.limits), check.angle("pitch", pitch, self.limits)
        p, timings = self._resolve(person)
        t_map = time.perf_counter()
        ws = self._latent(p, anchor, latent)
        timings["mapping"] = _ms(t_map)
        return self._render_views(p, ws, [(yaw, pitch)], budget, t0, timings)[0]

    def interpolate(self, person: str | None, a: Anchor, b: Anchor, t: float, yaw: float = 0.0, pitch: float = 0.0,
                    budget_ms: float | None = None) -> RenderResult:
        """Render the W-space lerp (1 - t) * w_a + t * w_b of two anchors at (yaw, pitch)."""
        t0 = time.perf_counter()
        budget = check.budget_ms(budget_ms)
        yaw, pitch = check.angle("yaw", yaw, self.limits), check.angle("pitch", pitch, self.limits)
        t = check.weight("t", t)
        p, timings = self._resolve(person)
        t_map = time.perf_counter()
        wa = p.anchor_latent(check.anchor("a", a), "a")
        wb = p.anchor_latent(check.anchor("b", b), "b")
        ws = ((1.0 - t) * wa + t * wb).astype(np.float32)
        timings["mapping"] = _ms(t_map)
        return self._render_views(p, ws, [(yaw, pitch)], budget, t0, timings)[0]

    def turntable(self, person: str | None, anchor: Anchor | None, frames: int = 8, yaw_range: float = 0.5,
                  pitch: float = 0.0, budget_ms: float | None = None) -> list[RenderResult]:
        """`frames` views at yaw = yaw_range * sin(2 pi k / frames): one synthesis (or none), `frames` renders.

        The budget covers the whole call; each frame's timings are its own (frame 0 carries the synthesis).
        """
        t0 = time.perf_counter()
        budget = check.budget_ms(budget_ms)
        n = check.frames(frames, self.limits)
        yaw_range = check.number("yaw_range", yaw_range, -self.limits.max_abs_yaw, self.limits.max_abs_yaw,
                                 "radians")
        pitch = check.angle("pitch", pitch, self.limits)
        p, timings = self._resolve(person)
        t_map = time.perf_counter()
        ws = self._latent(p, anchor, None)
        timings["mapping"] = _ms(t_map)
        views = [(yaw_range * math.sin(2 * math.pi * k / n), pitch) for k in range(n)]
        return self._render_views(p, ws, views, budget, t0, timings)

    def orbit(self, person: str | None, anchor: Anchor | None = None, latent: Any = None, frames: int = 16,
              orbit: Orbit = Orbit(), budget_ms: float | None = None) -> list[RenderResult]:
        """`frames` views along `orbit` (default: EG3D's gen_videos.py turntable, as `cli.py render --video
        turntable`) of an anchor or a latent: one synthesis (or none), `frames` renders. The budget covers the
        whole call; frame 0's timings carry the synthesis."""
        t0 = time.perf_counter()
        budget = check.budget_ms(budget_ms)
        views = [(check.angle("yaw", yaw, self.limits), check.angle("pitch", pitch, self.limits))
                 for yaw, pitch in orbit.views(check.frames(frames, self.limits))]
        p, timings = self._resolve(person)
        t_map = time.perf_counter()
        ws = self._latent(p, anchor, latent)
        timings["mapping"] = _ms(t_map)
        return self._render_views(p, ws, views, budget, t0, timings)

    def anchor_view(self, person: str | None, anchor: Anchor, budget_ms: float | None = None) -> RenderResult:
        """Anchor `anchor` (name or index) of `person` seen from its own photo's camera (not a look-at view)."""
        t0 = time.perf_counter()
        budget = check.budget_ms(budget_ms)
        p, timings = self._resolve(person)
        t_map = time.perf_counter()
        ws, c = self._anchor(p, anchor, "anchor")
        timings["mapping"] = _ms(t_map)
        return self._render_views(p, ws, [view_angles(c)], budget, t0, timings, cameras=[c])[0]

    def camera_view(self, person: str | None, latent: Any, camera: Any, budget_ms: float | None = None
                    ) -> RenderResult:
        """Render a latent W [w_dim] / W+ [num_ws, w_dim] of `person` from a camera label [25] (a photo's camera, or
        one of media.camera_path's: a caller rendering an interpolation one frame at a time)."""
        t0 = time.perf_counter()
        budget = check.budget_ms(budget_ms)
        p, timings = self._resolve(person)
        ws = check.latent(latent, self.w_dim, self.num_ws)
        c = check.camera(camera)
        return self._render_views(p, ws, [view_angles(c)], budget, t0, timings, cameras=[c])[0]

    def interpolation(self, person: str | None, a: Anchor, b: Anchor, frames: int = 16,
                      budget_ms: float | None = None) -> list[RenderResult]:
        """The paper's synthesis (Figures 8-9) from anchor `a` to anchor `b`: frame k, at t = k / (frames - 1),
        renders (1 - t) w_a + t w_b from the camera a fraction t of the way from a's photo camera to b's
        (media.camera_path), so the first and last frames are `anchor_view(a)` and `anchor_view(b)`.

        Every frame is its own latent: a synthesis and a render each. The budget covers the whole call: it is
        checked against the stage estimates before anything runs, and before and after every frame.
        """
        t0 = time.perf_counter()
        budget = check.budget_ms(budget_ms)
        ts = interpolation_weights(check.frames(frames, self.limits, lo=2))
        p, timings = self._resolve(person)
        t_map = time.perf_counter()
        (wa, ca), (wb, cb) = self._anchor(p, a, "a"), self._anchor(p, b, "b")
        timings["mapping"] = _ms(t_map)
        self.budget.check(budget, _ms(t0), {"synthesis": len(ts), "render": len(ts)},
                          f"{len(ts)} syntheses + {len(ts)} renders")
        results: list[RenderResult] = []
        for k, t in enumerate(ts):
            start = t0 if k == 0 else time.perf_counter()
            left = None if budget is None else budget - (start - t0) * 1000.0
            if left is not None and left <= 0:
                raise BudgetExceeded(f"budget_ms={budget:g} exceeded after {k} of {len(ts)} frames", budget, None,
                                     _ms(t0), False, result=results)
            ws = ((1.0 - t) * wa + t * wb).astype(np.float32)   # exact at both ends: 0 * w + 1 * w'
            c = interpolate_camera(ca, cb, t)
            results += self._render_views(p, ws, [view_angles(c)], left, start, timings if k == 0 else {},
                                          cameras=[c])
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
        host memory, or the torch backend's CUDA device)."""
        t0 = time.perf_counter()
        out: list[Any] = [None] * len(requests)
        todo = []
        for i, r in enumerate(requests):
            try:
                yaw, pitch = check.angle("yaw", r.yaw, self.limits), check.angle("pitch", r.pitch, self.limits)
                p, timings = self._resolve(r.person)
                ws = self._latent(p, r.anchor, r.latent)
            except RuntimeErrorBase as e:
                out[i] = e
                continue
            key = latent_key(ws)
            cached = self.planes.get(p.name, p.identity, key)
            self._counters.add("plane_cache_misses" if cached is None else "plane_cache_hits")
            todo.append({"i": i, "p": p, "ws": ws, "key": key, "yaw": yaw, "pitch": pitch, "adapter_ms":
                         timings["adapter"], "planes": None if cached is None else self.backend.batch_planes(cached),
                         "hit": cached is not None, "synthesis_ms": 0.0})
        identity = lambda q: q["p"].identity  # noqa: E731
        for run in plan_runs([q for q in todo if q["planes"] is None], identity, self.backend.mixed_batch):
            ts = time.perf_counter()
            planes = self._batch_run(run, "synthesis", {"ws": self._stack(run, "ws")})["planes"]
            planes = self.backend.batch_planes(planes)
            ms = _ms(ts)
            self._counters.add("synthesis_runs")
            for k, q in enumerate(run.items):
                q["planes"], q["synthesis_ms"] = planes[k:k + 1], ms
                self.planes.put(q["p"].name, q["p"].identity, q["key"], q["planes"])
        for run in plan_runs(todo, identity, self.backend.mixed_batch):
            tr = time.perf_counter()
            cams = [self.backend.camera(q["yaw"], q["pitch"]) for q in run.items]
            res = self._batch_run(run, "render", {"planes": self._stack(run, "planes"), "ws": self._stack(run, "ws"),
                                                  "c": np.concatenate(cams + cams[-1:] * run.padding)})
            ms = _ms(tr)
            self._counters.add("render_runs")
            for k, q in enumerate(run.items):
                t = {"mapping": 0.0, "adapter": q["adapter_ms"], "synthesis": q["synthesis_ms"], "render": ms,
                     "total": _ms(t0)}
                out[q["i"]] = RenderResult(image=res["image"][k].astype(np.float32),
                                           image_raw=res["image_raw"][k].astype(np.float32),
                                           depth=res["depth"][k].astype(np.float32), timings=t, cache_hit=q["hit"],
                                           person=q["p"].name, yaw=q["yaw"], pitch=q["pitch"], latent_key=q["key"])
        return out

    def _stack(self, run: Run, name: str) -> Any:
        """The run's samples of `name` (W+ latents, or tri-planes [1, ...] each) stacked, padded to run.size."""
        parts = [q[name] if name == "planes" else q[name][None] for q in run.items]
        return self.backend.concat(parts + parts[-1:] * run.padding)

    def _batch_run(self, run: Run, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
        """One run of `graph`: the person's own for a one-person run, one person per sample (padded) otherwise."""
        people = [q["p"] for q in run.items]
        if not run.mixed:
            if graph == "synthesis":
                return {"planes": self.backend.planes(feeds["ws"], people[0])}
            return self.backend.render(feeds["planes"], feeds["ws"], feeds["c"], people[0])
        people += people[-1:] * run.padding
        if graph == "synthesis":
            return {"planes": self.backend.planes_mixed(feeds["ws"], people)}
        return self.backend.render_mixed(feeds["planes"], feeds["ws"], feeds["c"], people)

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

    # ------------------------------------------------------------------ internals

    def _resolve(self, person: str | None) -> tuple[Person, dict[str, float]]:
        t = time.perf_counter()
        p = self.people_store.get(None if person is None else check.name(person))
        return p, {"adapter": _ms(t)}

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

    def _render_views(self, p: Person, ws: np.ndarray, views: list[tuple[float, float]], budget: float | None,
                      t0: float, timings: dict[str, float], cameras: list[np.ndarray] | None = None
                      ) -> list[RenderResult]:
        """Render latent ws from each (yaw, pitch) look-at view, or from the given camera labels [25] (then
        `views` holds their angles for the results)."""
        key = latent_key(ws)
        planes = self.planes.get(p.name, p.identity, key)
        hit = planes is not None
        self.budget.check(budget, _ms(t0), {"synthesis": 0 if hit else 1, "render": len(views)},
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
            t = {"mapping": timings.get("mapping", 0.0) if first else 0.0,
                 "adapter": timings.get("adapter", 0.0) if first else 0.0,
                 "synthesis": synthesis_ms if first else 0.0, "render": render_ms}
            t["total"] = _ms(t0) if first else render_ms
            results.append(RenderResult(image=out["image"][0].astype(np.float32),
                                        image_raw=out["image_raw"][0].astype(np.float32),
                                        depth=out["depth"][0].astype(np.float32), timings=t,
                                        cache_hit=hit or not first, person=p.name, yaw=yaw, pitch=pitch,
                                        latent_key=key))
            self.budget.check_after(budget, _ms(t0), k + 1, len(views), results[0] if len(views) == 1 else results)
        return results


__all__ = ["Runtime", "RenderResult", "RequestLimits", "RuntimeErrorBase", "UnknownPerson", "InvalidRequest",
           "BudgetExceeded", "AdapterInvalid", "ExportInvalid"]
