"""The model side of the web page: people (adapter files in a folder), views, interpolations, videos, meshes.

Everything returns bytes (PNG, mp4/GIF, PLY/OBJ) for the HTTP layer (web/server.py).

People: every `NAME.safetensors` in the people folder whose name is valid (formats.names) and whose file passes
the checks it gets when used (`generator.adapter_file.load_adapter`: format, fields, shapes, finite tensors, the
base model's fingerprint) and stores anchors; their anchors are the latents to show. The others are left out of
the listing and reported in `skipped` with a reason (no paths). A listed file is checked again when it changes
(its size, times or inode). A person's file is read again each time they are chosen after another, and when it
changed while they stayed chosen (their planes with it). `BASE` is the base model itself, with seeds 0-3's
latents as anchors.

Time budgets (`WebLimits`): every request has one, by kind: a view or interpolation `view_budget_s` (default
30 s), a video `video_budget_s` (300 s), a mesh `mesh_budget_s` (180 s). A request whose running estimate (the
measured seconds per view, frame or mesh chunk of earlier requests, as runtime/budget.py keeps them) cannot fit
its budget is refused before anything runs (`BudgetExceeded`, before_running: HTTP 503); work that runs out of
time midway is stopped between two chunks (HTTP 504). Nothing is left running after the answer.

Cancellation: each request carries a `Work` token (web/jobs.py) (its deadline, a `client_gone` probe from the HTTP layer, the
app's closing flag), checked before every chunk of work: a view, one video frame (a turntable renders up to 4 per
chunk), one chunk of `MESH_CHUNK` density samples, the mesh's extraction. A client that went away stops the work
at the next chunk (`Cancelled`).

Concurrency: one generator serves every request, and attaching a person's adapter changes its routing, so the
model is used under one lock, granted in arrival order (`FairLock`). Videos and meshes ("long jobs") take it per
chunk and re-attach their own person each time, so views interleave with them: a view waits for at most the chunk
in progress and the views queued before it. At most `max_jobs` long jobs run at once; another is refused with
`Busy` (HTTP 503 and Retry-After: the soonest expected end of a running job). Tri-planes of the last few latents
are kept, so dragging a slider over one latent runs only the renderer.
"""
from __future__ import annotations

import io
import math
import re
import tempfile
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from formats.errors import FormatError, without_paths
from formats.limits import MAX_ABS_PITCH, MAX_ABS_YAW
from formats.names import NAME_RULE, check_name, is_valid_name
from generator.adapter_file import Anchors, load_adapter
from generator.cameras import lookat_label
from generator.imaging import to_uint8
from generator.lora import PersonAdapter, attach
from generator.mesh import MeshConfig, decode_points, extract_mesh, grid_axis, trimmed
from generator.triplane import TriPlaneGenerator
from generator.video import VideoOptions, interpolation_frames, turntable_frames
from generator.views import anchor_latent, camera_batch, latent_from_seed
from runtime.budget import LatencyBudget
from web.jobs import Busy, FairLock, Work
from web.settings import WebLimits

BASE = "base"
BASE_SEEDS = (0, 1, 2, 3)
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


class PersonInvalid(ValueError):
    """A person whose adapter file fails its checks (HTTP 422); the message names the person and file, no folder,
    `reason` says what is wrong (for the listing's `skipped`)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


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


@dataclass(frozen=True, eq=False)
class _Person:
    """A loaded person: name, adapter (None for BASE), anchors, and the version of the file they were read from.
    Compared by identity: a re-read file is a new one."""

    name: str
    adapter: PersonAdapter | None
    anchors: Anchors
    stamp: tuple | None = None
    """(inode, size, mtime, ctime) of the adapter file when it was read; None for BASE."""


class WebApp:
    """People of a people folder over one base generator; see the module docstring."""

    def __init__(self, G: TriPlaneGenerator, people_dir: str | Path | None, limits: WebLimits = WebLimits(),
                 truncation: float = 0.7, plane_cache: int = 8):
        self.G = G.eval()
        self.people_dir = Path(people_dir) if people_dir is not None else None
        if self.people_dir is not None and not self.people_dir.is_dir():
            raise ValueError(f"people folder {self.people_dir} does not exist")
        self.limits = limits
        self.truncation = truncation
        self._lock = FairLock()
        self._planes: OrderedDict = OrderedDict()
        self._plane_cache = plane_cache
        self._chosen: _Person | None = None     # the person the last request chose (re-read when another is)
        self._attached: _Person | None = None   # whose adapter G routes through now
        self._base: _Person | None = None
        self._estimates = LatencyBudget()
        self._jobs_lock = threading.Lock()
        self._running: set[Work] = set()
        self._closing = threading.Event()
        self._listing_lock = threading.Lock()
        self._listing: dict[str, tuple[tuple, list[str] | None, str | None]] = {}

    # ---------------------------------------------------------------- people

    def people(self) -> dict[str, list[str]]:
        """{person: [anchor names]}: BASE first, then the usable adapter files of the folder, sorted."""
        return self.people_listing()[0]

    def people_listing(self) -> tuple[dict[str, list[str]], dict[str, str]]:
        """({person: [anchor names]}, {left-out file stem: why}): a file is listed only if it passes the checks it
        gets when used; a listed file is checked again only when its stat changes."""
        people, skipped = {BASE: [f"seed{s}" for s in BASE_SEEDS]}, {}
        if self.people_dir is None:
            return people, skipped
        for path in sorted(self.people_dir.glob("*.safetensors")):
            name = path.stem
            if not is_valid_name(name):
                skipped[name] = f"not a valid person name (use {NAME_RULE})"
            elif name == BASE:
                skipped[name] = f"the name {BASE!r} is the base model's"
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
            anchors = self._read_person(name, path)[1].names
            result = (list(anchors), None)
        except PersonInvalid as e:
            result = (None, e.reason)
        with self._listing_lock:
            self._listing[name] = (key,) + result
        return result

    def _read_person(self, name: str, path: Path) -> tuple[PersonAdapter, Anchors]:
        """`name`'s adapter and anchors, with the checks of `load_adapter` (finite tensors included) and anchors
        required; PersonInvalid(message, reason) naming the person and file name otherwise."""
        try:
            adapter, anchors, _ = load_adapter(path, self.G)
        except FormatError as e:
            reason = e.reason
        except OSError as e:
            reason = f"cannot be read ({e.strerror or type(e).__name__})"
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            reason = str(e)
        else:
            if anchors is not None:
                return adapter, anchors
            reason = "the adapter file stores no anchors"
        reason = without_paths(reason, self._folders())
        raise PersonInvalid(f"person {name!r}: {path.name} is not a usable adapter file: {reason}", reason)

    def _folders(self) -> list[Path]:
        """Folders no message may name."""
        return [self.people_dir] if self.people_dir is not None else []

    def scrub(self, text: str) -> str:
        """`text` without absolute paths (the people folder first): what an HTTP client may read."""
        return without_paths(text, self._folders() + [Path(tempfile.gettempdir())])

    # ---------------------------------------------------------------- the model (caller holds the lock)

    def _select(self, person: str) -> _Person:
        """Attach `person`'s adapter (none for BASE) as the chosen person, reading their file if another person
        was chosen since; caller holds the lock."""
        check_name(person)
        if self._chosen is None or self._chosen.name != person or self._chosen.stamp != self._stamp(person):
            self._chosen = self._load(person)
        self._use(self._chosen)
        return self._chosen

    def _load(self, person: str) -> _Person:
        """Read `person` (BASE: the base model's seed latents, computed once); caller holds the lock."""
        if person == BASE:
            if self._base is None:
                attach(self.G, None)
                self._attached = None
                with torch.no_grad():
                    z = torch.cat([latent_from_seed(self.G, s) for s in BASE_SEEDS])
                    c = camera_batch(self.G, [(0.0, 0.0)] * len(BASE_SEEDS))
                    ws = self.G.mapping(z, c, truncation_psi=self.truncation)
                self._base = _Person(BASE, None, Anchors(ws, c, [f"seed{s}" for s in BASE_SEEDS]))
            return self._base
        path = self.people_dir / f"{person}.safetensors" if self.people_dir is not None else None
        if path is None or not path.is_file():
            raise ValueError(f"unknown person {person!r}")
        stamp = self._stamp(person)
        adapter, anchors = self._read_person(person, path)
        for key in [k for k in self._planes if k[0] == person]:  # the file is re-read: so are its planes
            del self._planes[key]
        return _Person(person, adapter, anchors, stamp)

    def _stamp(self, person: str) -> tuple | None:
        """The version of `person`'s adapter file (None for BASE or a missing file): a file replaced while its
        person stays chosen is read again, and its planes with it, so a name never shows an older face."""
        if person == BASE or self.people_dir is None:
            return None
        try:
            st = (self.people_dir / f"{person}.safetensors").stat()
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns

    def _use(self, who: _Person) -> None:
        """Route G through `who`'s adapter unless it already is (a long job re-attaches its person per chunk)."""
        if self._attached is not who:
            attach(self.G, who.adapter)
            self._attached = who

    def _planes_of(self, key: tuple, ws: torch.Tensor) -> torch.Tensor:
        if key in self._planes:
            self._planes.move_to_end(key)
            return self._planes[key]
        with torch.no_grad():
            planes = self.G.planes(ws)
        self._planes[key] = planes
        while len(self._planes) > self._plane_cache:
            self._planes.popitem(last=False)
        return planes

    def _render(self, key: tuple, ws: torch.Tensor, yaw: float, pitch: float) -> bytes:
        c = torch.from_numpy(lookat_label(yaw, pitch, radius=self.G.cfg.rendering.avg_camera_radius,
                                          pivot=self.G.cfg.rendering.avg_camera_pivot)).unsqueeze(0)
        with torch.no_grad():
            out = self.G.render_planes(self._planes_of(key, ws), ws, c)
        return _png(to_uint8(out["image"][0]))

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

    def _chunk(self, work: Work, fn: Callable[[], object], who: _Person | None = None, units: int = 0,
               stage: str | None = None):
        """Run fn() as one chunk of `work`: the token checked, the model lock taken (checking the token while
        waiting), `who`'s adapter attached; counts `units` of the work done and `stage`'s time (per unit)."""
        work.check()
        while not self._lock.acquire(work.remaining_s(), LOCK_POLL_S, work.check):
            work.check()
        try:
            work.check()
            if who is not None:
                self._use(who)
            start = time.perf_counter()
            with torch.no_grad():
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

    def _frames(self, work: Work, who: _Person, frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """The `work.total` frames of `frames`, each taken as one chunk of `work` under the model lock with `who`
        attached; the source is closed when the work stops."""
        try:
            for _ in range(work.total):
                yield self._chunk(work, lambda: next(frames), who, units=1)
        finally:
            frames.close()

    # ---------------------------------------------------------------- requests

    def view(self, person: str, anchor: str, yaw=0.0, pitch=0.0, client_gone=None) -> bytes:
        """PNG of an anchor of `person` at (yaw, pitch)."""
        return self._view(person, (person, "anchor", anchor),
                          lambda who: anchor_latent(self.G, who.anchors, anchor, "anchor")[0], yaw, pitch, client_gone)

    def interpolate(self, person: str, a: str, b: str, t=0.5, yaw=0.0, pitch=0.0, client_gone=None) -> bytes:
        """PNG of the W lerp (1 - t) w_a + t w_b of two anchors at (yaw, pitch)."""
        t = _number(t, "t", 0.0, 1.0)

        def latent(who: _Person) -> torch.Tensor:
            wa, _ = anchor_latent(self.G, who.anchors, a, "a")
            wb, _ = anchor_latent(self.G, who.anchors, b, "b")
            return torch.lerp(wa, wb, t)
        return self._view(person, (person, "lerp", a, b, round(t, 4)), latent, yaw, pitch, client_gone)

    def _view(self, person: str, key: tuple, latent: Callable[[_Person], torch.Tensor], yaw, pitch,
              client_gone) -> bytes:
        """PNG of `person` at (yaw, pitch) of the latent `latent(person)` gives (planes cached under `key`): one
        chunk of work within a view's budget."""
        yaw = _number(yaw, "yaw", -MAX_ABS_YAW, MAX_ABS_YAW)
        pitch = _number(pitch, "pitch", -MAX_ABS_PITCH, MAX_ABS_PITCH)
        work = self._work("view", 1, "view(s)", "view", client_gone)

        def render() -> bytes:
            return self._render(key, latent(self._select(person)), yaw, pitch)
        return self._chunk(work, render, units=1, stage="view")

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
            who, ends = self._chunk(work, lambda: self._video_anchors(person, a, b if kind == "interpolate" else None))
            if kind == "turntable":
                source = turntable_frames(self.G, ends[0][0], frames, opts.orbit, opts.size)
            else:
                source = interpolation_frames(self.G, *ends[0], *ends[1], frames, opts.size)
            choosing_s = work.busy_s
            try:
                video = encode_video(self._frames(work, who, source), fmt, opts.fps)
            finally:
                if work.done:  # seconds per frame, for the next video's estimate (a turntable renders 4 at once)
                    self._estimates.observe(f"video:{kind}", (work.busy_s - choosing_s) / work.done * 1000)
            return video.data, video.info.path.suffix

    def _video_anchors(self, person: str, a: str, b: str | None) -> tuple[_Person, list]:
        """The chosen person and the (ws, camera) of anchors a (and b); caller holds the lock."""
        who = self._select(person)
        ends = [anchor_latent(self.G, who.anchors, a, "a")]
        if b is not None:
            ends.append(anchor_latent(self.G, who.anchors, b, "b"))
        return who, ends

    def mesh(self, person: str, anchor: str, fmt: str = "ply", resolution=96, level=10.0, client_gone=None) -> bytes:
        """The mesh of an anchor of `person` as PLY or OBJ bytes (as generator/mesh.py's mesh_of_latent), the
        density volume sampled in chunks of MESH_CHUNK points (see the module docstring)."""
        from media.mesh_io import write_mesh
        fmt = _choice(fmt, "format", ("ply", "obj"))
        cfg = MeshConfig(resolution=_integer(resolution, "resolution", 16, self.limits.max_mesh_resolution),
                         level=_number(level, "level", *LEVEL_RANGE)).validate()
        n = cfg.resolution
        chunks = math.ceil(n ** 3 / MESH_CHUNK)
        work = self._work("mesh", chunks, "mesh chunk(s)", "mesh", client_gone)
        with self._job(work):
            who, ws = self._chunk(work, lambda: self._mesh_latent(person, anchor))
            planes = self._chunk(work, lambda: self.G.planes(ws), who)
            axis = torch.from_numpy(grid_axis(self.G, n)).float()
            volume = np.empty(n ** 3, np.float32)
            for start in range(0, n ** 3, MESH_CHUNK):
                stop = min(start + MESH_CHUNK, n ** 3)
                volume[start:stop] = self._chunk(work, lambda: self._densities(planes, axis, n, start, stop), who,
                                                 units=1, stage="mesh")
            volume = trimmed(volume.reshape(n, n, n), cfg.trim)
            mesh = self._chunk(work, lambda: extract_mesh(self.G, planes, volume, cfg.level, cfg.chunk), who)
        with tempfile.TemporaryDirectory(prefix="my3dgen-web-") as tmp:
            return write_mesh(mesh, Path(tmp) / f"mesh.{fmt}").read_bytes()

    def _mesh_latent(self, person: str, anchor: str) -> tuple[_Person, torch.Tensor]:
        """The chosen person and the latent of their anchor; caller holds the lock."""
        who = self._select(person)
        return who, anchor_latent(self.G, who.anchors, anchor, "anchor")[0]

    def _densities(self, planes: torch.Tensor, axis: torch.Tensor, n: int, start: int, stop: int) -> np.ndarray:
        """Raw density at grid samples start..stop of the N^3 grid (x-major), as generator.mesh.density_volume
        computes them; caller holds the lock."""
        idx = torch.arange(start, stop)
        points = torch.stack([axis[idx // (n * n)], axis[(idx // n) % n], axis[idx % n]], dim=-1)
        return decode_points(self.G, planes, points)[1].numpy()
