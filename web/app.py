"""The web page's side of the model: people (the base model, adapter files in a folder), views, interpolations,
videos, meshes, with time budgets, cancellation and one model lock shared fairly.

Everything returns bytes (PNG, mp4/GIF, PLY/OBJ) for the HTTP layer (web/server.py). What renders is a *source*
(web/sources.py): `EagerSource`, the generator of a model directory or preset (`WebApp(G, people_dir)`, `cli.py
web --model | --preset`), or `RuntimeSource`, a runtime.Runtime over an export directory on any of its backends
(`WebApp(RuntimeSource(Runtime(export, people, backend=...)))`, `cli.py web --export`). This module is the same for
both: it never asks which source or backend it has; the listing says (`backend()`).

People: `BASE` is the base model itself, with seeds 0-3's latents as anchors (an export with a person merged into
its weights lists that person instead). Then every `NAME.safetensors` in the people folder whose name is valid
(formats.names) and whose file passes the checks it gets when used (the source's: format, fields, shapes, finite
tensors, the base model's fingerprint; for an export also its adapter policy) and stores anchors; their anchors are
the latents to show. The others are left out of the listing and reported in `skipped` with a reason (no paths). A
listed file is checked again when it changes (its size, times or inode). A person is resolved again for every
request, so a replaced file shows its new face (its tri-planes with it).

Time budgets (`WebLimits`): every request has one, by kind: a view or interpolation `view_budget_s` (default
30 s), a video `video_budget_s` (300 s), a mesh `mesh_budget_s` (180 s). A request whose running estimate (the
measured seconds per view, frame or mesh chunk of earlier requests, as runtime/budget.py keeps them) cannot fit
its budget is refused before anything runs (`BudgetExceeded`, before_running: HTTP 503); work that runs out of
time midway is stopped between two chunks (HTTP 504). Nothing is left running after the answer.

Cancellation: each request carries a `Work` token (web/jobs.py) (its deadline, a `client_gone` probe from the HTTP
layer, the app's closing flag), checked before every chunk of work: a view, one video frame (the eager turntable
renders up to 4 per chunk), one chunk of `MESH_CHUNK` density samples, the mesh's extraction. A client that went
away stops the work at the next chunk (`Cancelled`).

Concurrency: one model serves every request, and a person's adapter changes its routing, so the model is used
under one lock, granted in arrival order (`FairLock`). Videos and meshes ("long jobs") take it per chunk and route
through their own person each time, so views interleave with them: a view waits for at most the chunk in progress
and the views queued before it. At most `max_jobs` long jobs run at once; another is refused with `Busy` (HTTP 503
and Retry-After: the soonest expected end of a running job). Tri-planes of recent latents are kept (the eager
source's small LRU, or the runtime's tri-plane cache), so dragging a slider over one latent runs only the renderer.

Meshes come from a torch generator (the eager one, or the export's model directory); an export without one is
refused with the reason (HTTP 400) before anything runs.
"""
from __future__ import annotations

import io
import math
import re
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from formats.errors import without_paths
from formats.limits import MAX_ABS_PITCH, MAX_ABS_YAW
from formats.names import NAME_RULE, check_name, is_valid_name
from generator.mesh import MeshConfig
from generator.video import VideoOptions
from runtime.budget import LatencyBudget
from web.jobs import Busy, FairLock, Work
from web.settings import WebLimits
from web.sources import BASE, BASE_SEEDS, EagerSource, Latent, PersonInvalid, Source  # noqa: F401 - re-exported

LEVEL_RANGE = (-1e4, 1e4)
"""Allowed mesh density levels (raw sigma)."""
FPS_RANGE = (1.0, 60.0)
"""Allowed video frame rates."""
MESH_CHUNK = 1 << 16
"""Density samples per chunk of a web mesh: the model lock is released and the Work token checked between chunks
(192^3 is 108 chunks)."""
LOCK_POLL_S = 0.25
"""How often a request waiting for the model lock checks its Work token (client gone, budget spent)."""
KINDS = ("view", "video", "mesh")
"""The kinds of request, each with its own time budget (WebLimits.<kind>_budget_s)."""
_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)
MAX_NUMBER_CHARS = 32
"""Longest text accepted as a number (anything longer is refused before it is parsed)."""


def _shown(value) -> str:
    """repr of a client's value, cut to 40 characters (an error message echoes it, not a megabyte of it)."""
    return f"{value!r:.40}"


def _number(value, what: str, lo: float, hi: float) -> float:
    """`value` (a float, or the text of a plain decimal number) as a finite float within [lo, hi]; else
    ValueError naming `what`. Text is ASCII digits with an optional sign, point and exponent: no 'nan', 'inf',
    hex, underscores, spaces or other scripts' digits, which float() would take. -0 is 0."""
    if isinstance(value, str) and len(value) <= MAX_NUMBER_CHARS and _DECIMAL.fullmatch(value):
        x = float(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        x = float(value)
    else:
        raise ValueError(f"{what} must be a decimal number, got {_shown(value)}")
    if not math.isfinite(x):
        raise ValueError(f"{what} must be finite, got {_shown(value)}")
    if not lo <= x <= hi:
        raise ValueError(f"{what} must be within [{lo:g}, {hi:g}], got {x:g}")
    return x + 0.0


def _integer(value, what: str, lo: int, hi: int) -> int:
    """`value` (an int, or the text of one in ASCII digits) within [lo, hi]; else ValueError naming `what`."""
    if isinstance(value, str) and len(value) <= MAX_NUMBER_CHARS and _INTEGER.fullmatch(value):
        n = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        raise ValueError(f"{what} must be an integer, got {_shown(value)}")
    if not lo <= n <= hi:
        raise ValueError(f"{what} must be within [{lo}, {hi}], got {n}")
    return n


def _choice(value, what: str, allowed: tuple[str, ...]) -> str:
    """`value` when it is one of `allowed`, else ValueError naming `what`."""
    if value not in allowed:
        raise ValueError(f"{what} must be {' or '.join(allowed)}, got {_shown(value)}")
    return value


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


class WebApp:
    """The page's people over one source (see the module docstring).

    `WebApp(G, people_dir, ...)` serves a generator G (an EagerSource with `truncation` and `plane_cache`);
    `WebApp(source)` serves any web.sources.Source (its own people folder; people_dir stays None)."""

    def __init__(self, source: Source | object, people_dir: str | Path | None = None,
                 limits: WebLimits = WebLimits(), truncation: float = 0.7, plane_cache: int = 8):
        if not isinstance(source, Source):
            source = EagerSource(source, people_dir, truncation, plane_cache)
        elif people_dir is not None:
            raise ValueError("a source brings its own people folder: give people_dir to the source, not to WebApp")
        self.source = source
        self.limits = limits
        self._lock = FairLock()
        self._estimates = LatencyBudget()
        self._jobs_lock = threading.Lock()
        self._running: set[Work] = set()
        self._closing = threading.Event()
        self._listing_lock = threading.Lock()
        self._listing: dict[str, tuple[tuple, list[str] | None, str | None]] = {}

    @property
    def people_dir(self) -> Path | None:
        return self.source.people_dir

    # ---------------------------------------------------------------- people

    def people(self) -> dict[str, list[str]]:
        """{person: [anchor names]}: BASE (or an export's merged person) first, then the usable adapter files of
        the folder, sorted."""
        return self.people_listing()[0]

    def people_listing(self) -> tuple[dict[str, list[str]], dict[str, str]]:
        """({person: [anchor names]}, {left-out file stem: why}): a file is listed only if it passes the checks it
        gets when used; a listed file is checked again only when its stat changes."""
        people, skipped = self.source.fixed_people()
        people, skipped = dict(people), {k: self.scrub(v) for k, v in skipped.items()}
        if self.people_dir is None:
            return people, skipped
        for path in sorted(self.people_dir.glob("*.safetensors")):
            name = path.stem
            if not is_valid_name(name):
                skipped[name] = f"not a valid person name (use {NAME_RULE})"
            elif name in people:
                skipped[name] = f"the name {name!r} is the {'base model' if name == BASE else 'merged person'}'s"
            else:
                anchors, reason = self._listed(name, path)
                if anchors is None:
                    skipped[name] = reason
                else:
                    people[name] = anchors
        return people, skipped

    def _listed(self, name: str, path: Path) -> tuple[list[str] | None, str | None]:
        """(anchor names, None) for a usable file, else (None, why); cached by the file's stat."""
        try:
            st = path.stat()
            key = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        except OSError as e:
            return None, f"cannot be read ({e.strerror or type(e).__name__})"
        with self._listing_lock:
            cached = self._listing.get(name)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        try:
            result = (list(self.source.check(name, path)), None)
        except PersonInvalid as e:
            result = (None, self.scrub(e.reason))
        with self._listing_lock:
            self._listing[name] = (key,) + result
        return result

    def backend(self) -> dict[str, str]:
        """What renders ('name', 'precision') and why ('why'): the runtime's backend and the reason it was chosen,
        or 'eager' for a model directory's generator."""
        return {k: self.scrub(str(v)) for k, v in self.source.describe().items()}

    def scrub(self, text: str) -> str:
        """`text` without absolute paths (the source's folders first): what an HTTP client may read."""
        return without_paths(text, self.source.folders() + [Path(tempfile.gettempdir())])

    def _select(self, person: str):
        """The source's `person` (a valid name); caller holds the lock."""
        return self.source.select(check_name(person))

    # ---------------------------------------------------------------- budgets, chunks, jobs

    def close(self) -> None:
        """Stop running work at its next chunk and refuse new work (the server is stopping)."""
        self._closing.set()

    def _work(self, kind: str, total: int, unit: str, stage: str, client_gone) -> Work:
        """A Work token for `total` chunks of `stage` with `kind`'s budget, refused (503) if the estimate of the
        stage's earlier chunks cannot fit it."""
        work = Work(kind, self.limits.budget_s(kind), total, unit, client_gone, self._closing,
                    self._estimates.estimate(stage) / 1000)
        work.check()
        work.check_estimate()
        return work

    def _chunk(self, work: Work, fn: Callable[[], object], units: int = 0, stage: str | None = None):
        """Run fn() as one chunk of `work`: the token checked, the model lock taken (checking the token while
        waiting); counts `units` of the work done and `stage`'s time (per unit). fn routes the model through its
        own person (the source's methods do)."""
        work.check()
        while not self._lock.acquire(work.remaining_s(), LOCK_POLL_S, work.check):
            work.check()
        try:
            work.check()
            start = time.perf_counter()
            out = fn()
            seconds = time.perf_counter() - start
        finally:
            self._lock.release()
        work.busy_s += seconds
        work.done += units
        if stage is not None and units:
            self._estimates.observe(stage, seconds / units * 1000)
        return out

    @contextmanager
    def _job(self, work: Work):
        """Hold one of `max_jobs` long-job slots while the block runs; Busy (503, Retry-After) when none is free."""
        with self._jobs_lock:
            if len(self._running) >= self.limits.max_jobs:
                wait = self._retry_after_locked()
                raise Busy(f"{len(self._running)} video/mesh job(s) already running (max_jobs="
                           f"{self.limits.max_jobs}); try again in {wait} s", wait)
            self._running.add(work)
        try:
            yield work
        finally:
            with self._jobs_lock:
                self._running.discard(work)

    def retry_after_s(self) -> int:
        """Whole seconds after which a refused request may get through: the soonest expected end of a running
        long job (at least 1)."""
        with self._jobs_lock:
            return self._retry_after_locked()

    def _retry_after_locked(self) -> int:
        """retry_after_s; caller holds the jobs lock."""
        ends = [w.expected_remaining_s() for w in self._running]
        return max(1, math.ceil(min(ends))) if ends else 1

    def running_jobs(self) -> int:
        """How many videos and meshes are being made now."""
        with self._jobs_lock:
            return len(self._running)

    def _frames(self, work: Work, frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """The `work.total` frames of `frames`, each taken as one chunk of `work` under the model lock; the source
        is closed when the work stops."""
        try:
            for _ in range(work.total):
                yield self._chunk(work, lambda: next(frames), units=1)
        finally:
            frames.close()

    # ---------------------------------------------------------------- requests

    def view(self, person: str, anchor: str, yaw=0.0, pitch=0.0, client_gone=None) -> bytes:
        """PNG of an anchor of `person` at (yaw, pitch)."""
        return self._view(person, lambda who: self.source.latent(who, anchor, "anchor"), yaw, pitch, client_gone)

    def interpolate(self, person: str, a: str, b: str, t=0.5, yaw=0.0, pitch=0.0, client_gone=None) -> bytes:
        """PNG of the W lerp (1 - t) w_a + t w_b of two anchors at (yaw, pitch)."""
        t = _number(t, "t", 0.0, 1.0)
        return self._view(person, lambda who: self.source.lerp(who, a, b, t), yaw, pitch, client_gone)

    def _view(self, person: str, latent: Callable[[object], Latent], yaw, pitch, client_gone) -> bytes:
        """PNG of `person` at (yaw, pitch) of the latent `latent(person)` gives: one chunk of work within a view's
        budget (the PNG is encoded outside the model lock)."""
        yaw = _number(yaw, "yaw", -MAX_ABS_YAW, MAX_ABS_YAW)
        pitch = _number(pitch, "pitch", -MAX_ABS_PITCH, MAX_ABS_PITCH)
        work = self._work("view", 1, "view(s)", "view", client_gone)

        def render() -> np.ndarray:
            who = self._select(person)
            return self.source.render(who, latent(who), yaw, pitch)
        return _png(self._chunk(work, render, units=1, stage="view"))

    def video(self, person: str, kind: str, a: str, b: str | None = None, frames=48, fps=24.0,
              fmt: str = "mp4", client_gone=None) -> tuple[bytes, str]:
        """A turntable of anchor a, or an interpolation from a to b: (file bytes, suffix: .mp4, or .gif).

        Each frame is a chunk (see the module docstring); the frames are encoded outside the model lock."""
        from media.video_writer import encode_video
        frames = _integer(frames, "frames", 2, self.limits.max_frames)
        opts = VideoOptions(frames=frames, fps=_number(fps, "fps", *FPS_RANGE), size=self.limits.video_size)
        fmt = _choice(fmt, "format", ("mp4", "gif"))
        kind = _choice(kind, "kind", ("turntable", "interpolate"))
        if kind == "interpolate" and b is None:
            raise ValueError("missing field 'b' (an interpolation needs anchors a and b)")
        work = self._work("video", frames, "frame(s)", f"video:{kind}", client_gone)
        with self._job(work):
            source = self._chunk(work, lambda: self.source.frames(
                self._select(person), kind, a, b if kind == "interpolate" else None, frames, opts.orbit, opts.size))
            choosing_s = work.busy_s
            try:
                video = encode_video(self._frames(work, source), fmt, opts.fps)
            finally:
                if work.done:  # seconds per frame, for the next video's estimate (a turntable renders 4 at once)
                    self._estimates.observe(f"video:{kind}", (work.busy_s - choosing_s) / work.done * 1000)
            return video.data, video.info.path.suffix

    def mesh(self, person: str, anchor: str, fmt: str = "ply", resolution=96, level=10.0, client_gone=None) -> bytes:
        """The mesh of an anchor of `person` as PLY or OBJ bytes (as generator/mesh.py's mesh_of_latent), the
        density volume sampled in chunks of MESH_CHUNK points (see the module docstring); ValueError (400) naming
        why when the source makes no meshes."""
        from media.mesh_io import write_mesh
        fmt = _choice(fmt, "format", ("ply", "obj"))
        cfg = MeshConfig(resolution=_integer(resolution, "resolution", 16, self.limits.max_mesh_resolution),
                         level=_number(level, "level", *LEVEL_RANGE)).validate()
        why_not = self.source.mesh_unavailable()
        if why_not is not None:
            raise ValueError(why_not)
        n = cfg.resolution
        chunks = math.ceil(n ** 3 / MESH_CHUNK)
        work = self._work("mesh", chunks, "mesh chunk(s)", "mesh", client_gone)
        with self._job(work):
            mesher, who, latent = self._chunk(work, lambda: self._mesh_latent(person, anchor))
            planes = self._chunk(work, lambda: mesher.planes(who, latent))
            axis = mesher.grid_axis(n)
            volume = np.empty(n ** 3, np.float32)
            for start in range(0, n ** 3, MESH_CHUNK):
                stop = min(start + MESH_CHUNK, n ** 3)
                volume[start:stop] = self._chunk(work, lambda: mesher.densities(who, planes, axis, n, start, stop),
                                                 units=1, stage="mesh")
            mesh = self._chunk(work, lambda: mesher.extract(who, planes, volume.reshape(n, n, n), cfg))
        with tempfile.TemporaryDirectory(prefix="my3dgen-web-") as tmp:
            return write_mesh(mesh, Path(tmp) / f"mesh.{fmt}").read_bytes()

    def _mesh_latent(self, person: str, anchor: str) -> tuple[EagerSource, object, Latent]:
        """What makes the mesh, its person, and the latent of `person`'s anchor; caller holds the lock."""
        who = self._select(person)
        latent = self.source.latent(who, anchor, "anchor")
        mesher = self.source.mesher()
        return mesher, mesher.person(who), latent
