"""What renders the web page's people: a *source*, whose one job is to turn a person, an anchor (or a lerp of two)
and a camera into pixels, video frames or a mesh. web/app.py (the listing, budgets, cancellation, the model lock,
long-job slots, error scrubbing) and web/server.py are the same code whichever source renders.

    EagerSource     the product's generator `G` (`cli.py web --model | --preset`): a person's adapter attached to
                    G (generator.lora.attach), a small LRU of tri-planes, video frames from generator.video, meshes
                    from generator.mesh.
    RuntimeSource   a `runtime.Runtime` over an export directory (`cli.py web --export [--backend] [--precision]`):
                    views through Runtime.novel_view (the runtime's tri-plane cache), video frames one at a time as
                    Runtime.orbit and Runtime.interpolation make them, meshes from the generator of the export's
                    model directory (manifest 'torch', since manifest format 3) with the person's adapter file
                    loaded by generator.adapter_file.load_adapter (an export without it: meshes are refused, saying
                    why).

People: `fixed_people` are those that are not files of the people folder (BASE, the base model, with the latents of
seeds 0-3 as anchors; or an export's merged person); `check` says whether a file of the folder is a usable person
(its anchor names) or why not (PersonInvalid); `select` resolves a person for a request.

Every method that runs the model is called by web/app.py with its model lock held, one chunk of work at a time; a
method given a person `who` makes the model route through `who` first, so a long job's chunks interleave with
views of other people. A client's mistake is a ValueError (HTTP 400) naming the field, a person whose file fails
its checks a PersonInvalid (HTTP 422).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from formats.errors import FormatError, without_paths
from generator import mesh as mesh_ops
from generator import video as video_ops
from generator.adapter_file import Anchors, load_adapter
from formats.cameras import lookat_label
from generator.imaging import to_uint8
from generator.lora import PersonAdapter, attach
from generator.triplane import TriPlaneGenerator
from generator.views import anchor_latent, camera_batch, latent_from_seed
from media.camera_path import interpolate_camera, interpolation_weights
from media.orbit import Orbit
from media.frames import resize_frame
from runtime.cache import LRUCache

BASE = "base"
BASE_SEEDS = (0, 1, 2, 3)
BASE_ANCHORS = [f"seed{s}" for s in BASE_SEEDS]
"""The base model's anchors: the latents of seeds 0-3 (z as official gen_samples.py draws it, frontal camera)."""
EAGER_WHY = "a model directory or preset (cli.py web --model | --preset): its generator runs eagerly in torch"


class PersonInvalid(ValueError):
    """A person whose adapter file fails its checks (HTTP 422); the message names the person and file, no folder,
    `reason` says what is wrong (for the listing's `skipped`)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason

    @classmethod
    def of(cls, name: str, reason: str) -> "PersonInvalid":
        return cls(f"person {name!r}: {name}.safetensors is not a usable adapter file: {reason}", reason)


def read_error(e: OSError) -> str:
    """Why a file cannot be read, without its path."""
    return f"cannot be read ({e.strerror or type(e).__name__})"


@dataclass(frozen=True)
class Latent:
    """What a view renders: W+ `ws` (a torch tensor [1, num_ws, w_dim] for EagerSource, a numpy array [num_ws,
    w_dim] for RuntimeSource) and what it is (`key`: ('anchor', name) or ('lerp', a, b, t)), which keys the
    eager source's tri-plane cache."""

    ws: Any
    key: tuple


class Source(ABC):
    """One way of rendering the page's people (see the module docstring)."""

    people_dir: Path | None
    """The folder of adapter files NAME.safetensors (None: no people beyond the fixed ones)."""

    @abstractmethod
    def folders(self) -> list[Path]:
        """Folders no message may name."""

    @abstractmethod
    def describe(self) -> dict[str, str]:
        """What renders ('name', 'precision') and why ('why'), for the listing."""

    @abstractmethod
    def fixed_people(self) -> tuple[dict[str, list[str]], dict[str, str]]:
        """({person: anchor names}, {person: why left out}) of the people that are not files of the folder."""

    @abstractmethod
    def check(self, name: str, path: Path) -> list[str]:
        """The anchor names of the folder's file `path` of person `name`, or PersonInvalid saying why not."""

    @abstractmethod
    def select(self, person: str) -> Any:
        """The person to render (a valid name): ValueError when there is none, PersonInvalid for a bad file."""

    @abstractmethod
    def latent(self, who: Any, anchor: str, field: str = "anchor") -> Latent:
        """The latent of `who`'s anchor (name or index); ValueError naming `field` when there is none."""

    @abstractmethod
    def lerp(self, who: Any, a: str, b: str, t: float) -> Latent:
        """The W lerp (1 - t) w_a + t w_b of two anchors of `who`."""

    @abstractmethod
    def render(self, who: Any, latent: Latent, yaw: float, pitch: float) -> np.ndarray:
        """HWC uint8 image of `who` at `latent` from the look-at camera at (yaw, pitch)."""

    @abstractmethod
    def frames(self, who: Any, kind: str, a: str, b: str | None, count: int, orbit: Orbit,
               size: int | None) -> Iterator[np.ndarray]:
        """The `count` frames (HWC uint8, side `size` or the model's) of a turntable of anchor a along `orbit`, or
        of the interpolation from anchor a to b (latent and camera); anchors are resolved now, each frame is
        rendered when it is asked for (one chunk of work each)."""

    def mesh_unavailable(self) -> str | None:
        """Why this source cannot make meshes, or None."""
        return None

    @abstractmethod
    def mesher(self) -> "EagerSource":
        """What makes meshes: an EagerSource, whose `person(who)` maps this source's person to its own."""


def anchor_index(names: list[str], ref: str | int, field: str) -> int:
    """Index of anchor `ref` (a name, an index, or a string of ASCII digits) among `names`, as
    generator.adapter_file.Anchors.index finds it; ValueError naming `field` otherwise."""
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isascii() and ref.isdecimal()):
        i = int(ref)
        if not 0 <= i < len(names):
            raise ValueError(f"{field}: anchor index {i} out of range (0..{len(names) - 1})")
        return i
    if ref not in names:
        raise ValueError(f"{field}: unknown anchor {ref!r}; known: {', '.join(names)}")
    return names.index(ref)


# ---------------------------------------------------------------------------------------------- eager

@dataclass(frozen=True, eq=False)
class _Person:
    """A person of EagerSource: name, adapter (None for BASE), anchors, and the version of the file they were read
    from. Compared by identity: a re-read file is a new one."""

    name: str
    adapter: PersonAdapter | None
    anchors: Anchors
    stamp: tuple | None = None
    """(inode, size, mtime, ctime) of the adapter file when it was read; None for BASE."""


class EagerSource(Source):
    """People of a folder over one generator G (see the module docstring).

    One generator serves every person: attaching a person's adapter changes G's routing, so every method that
    takes a person attaches theirs first unless it already is. A person's file is read again each time they are
    chosen after another, and when it changed while they stayed chosen (their tri-planes with it). The tri-planes
    of the last `plane_cache` latents are kept, so dragging a slider over one latent runs only the renderer."""

    def __init__(self, G: TriPlaneGenerator, people_dir: str | Path | None, truncation: float = 0.7,
                 plane_cache: int = 8, why: str = EAGER_WHY):
        self.G = G.eval()
        self.people_dir = Path(people_dir) if people_dir is not None else None
        if self.people_dir is not None and not self.people_dir.is_dir():
            raise ValueError(f"people folder {self.people_dir} does not exist")
        self.truncation = truncation
        self.why = why
        self._planes = LRUCache(plane_cache)
        self._chosen: _Person | None = None     # the person the last request chose (re-read when another is)
        self._attached: _Person | None = None   # whose adapter G routes through now
        self._base: _Person | None = None

    def folders(self) -> list[Path]:
        return [self.people_dir] if self.people_dir is not None else []

    def describe(self) -> dict[str, str]:
        return {"name": "eager", "precision": "fp32", "why": self.why}

    def fixed_people(self) -> tuple[dict[str, list[str]], dict[str, str]]:
        return {BASE: list(BASE_ANCHORS)}, {}

    def check(self, name: str, path: Path) -> list[str]:
        return list(self._read_person(name, path)[1].names)

    def _read_person(self, name: str, path: Path) -> tuple[PersonAdapter, Anchors]:
        """`name`'s adapter and anchors, with the checks of `load_adapter` (finite tensors included) and anchors
        required; PersonInvalid(message, reason) naming the person and file name otherwise."""
        try:
            adapter, anchors, _ = load_adapter(path, self.G)
        except FormatError as e:
            reason = e.reason
        except OSError as e:
            reason = read_error(e)
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            reason = str(e)
        else:
            if anchors is not None:
                return adapter, anchors
            reason = "the adapter file stores no anchors"
        raise PersonInvalid.of(name, without_paths(reason, self.folders()))

    # ---------------------------------------------------------------- people (caller holds the model lock)

    def select(self, person: str) -> _Person:
        """`person` as the chosen person, reading their file if another person was chosen since (or it changed)."""
        if self._chosen is None or self._chosen.name != person or self._chosen.stamp != self._stamp(person):
            self._chosen = self._load(person)
        return self._chosen

    def _load(self, person: str) -> _Person:
        """Read `person` (BASE: the base model's seed latents, computed once)."""
        if person == BASE:
            if self._base is None:
                attach(self.G, None)
                self._attached = None
                with torch.no_grad():
                    z = torch.cat([latent_from_seed(self.G, s) for s in BASE_SEEDS])
                    c = camera_batch(self.G, [(0.0, 0.0)] * len(BASE_SEEDS))
                    ws = self.G.mapping(z, c, truncation_psi=self.truncation)
                self._base = _Person(BASE, None, Anchors(ws, c, list(BASE_ANCHORS)))
            return self._base
        path = self.people_dir / f"{person}.safetensors" if self.people_dir is not None else None
        if path is None or not path.is_file():
            raise ValueError(f"unknown person {person!r}")
        stamp = self._stamp(person)
        adapter, anchors = self._read_person(person, path)
        self._planes.discard(lambda key: key[0] == person)  # the file is re-read: so are its planes
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

    # ---------------------------------------------------------------- latents and views

    def _anchor(self, who: _Person, anchor: str, field: str) -> tuple[torch.Tensor, torch.Tensor]:
        return anchor_latent(self.G, who.anchors, anchor, field)

    def latent(self, who: _Person, anchor: str, field: str = "anchor") -> Latent:
        return Latent(self._anchor(who, anchor, field)[0], ("anchor", anchor))

    def lerp(self, who: _Person, a: str, b: str, t: float) -> Latent:
        wa, wb = self._anchor(who, a, "a")[0], self._anchor(who, b, "b")[0]
        return Latent(torch.lerp(wa, wb, t), ("lerp", a, b, round(t, 4)))

    def _planes_of(self, key: tuple, ws: torch.Tensor) -> torch.Tensor:
        planes = self._planes.get(key)
        if planes is None:
            planes = self.G.planes(ws)
            self._planes.put(key, planes)
        return planes

    def render(self, who: _Person, latent: Latent, yaw: float, pitch: float) -> np.ndarray:
        self._use(who)
        r = self.G.cfg.rendering
        c = torch.from_numpy(lookat_label(yaw, pitch, radius=r.avg_camera_radius, pivot=r.avg_camera_pivot))
        with torch.no_grad():
            out = self.G.render_planes(self._planes_of((who.name,) + latent.key, latent.ws), latent.ws,
                                       c.unsqueeze(0))
        return to_uint8(out["image"][0])

    def frames(self, who: _Person, kind: str, a: str, b: str | None, count: int, orbit: Orbit,
               size: int | None) -> Iterator[np.ndarray]:
        wa, ca = self._anchor(who, a, "a")
        if kind == "turntable":  # looked up at call time (generator.video's function, 4 views per render)
            frames = video_ops.turntable_frames(self.G, wa, count, orbit, size)
        else:
            wb, cb = self._anchor(who, b, "b")
            frames = video_ops.interpolation_frames(self.G, wa, ca, wb, cb, count, size)
        return self._routed(who, frames)

    def _routed(self, who: _Person, frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """`frames`, each made with G routed through `who` (views of others may run between two frames)."""
        try:
            while True:
                self._use(who)
                with torch.no_grad():
                    frame = next(frames, None)
                if frame is None:
                    return
                yield frame
        finally:
            frames.close()

    # ---------------------------------------------------------------- meshes (web/app.py samples in chunks)

    def mesher(self) -> "EagerSource":
        return self

    def person(self, who: _Person) -> _Person:
        """The person of this source that `who` (a person of the source whose mesher this is) means."""
        return who

    def planes(self, who: _Person, latent: Latent) -> torch.Tensor:
        """Tri-planes of `latent` for `who`."""
        self._use(who)
        with torch.no_grad():
            return self.G.planes(latent.ws)

    def grid_axis(self, n: int) -> torch.Tensor:
        """World coordinates of the n grid samples along each axis (generator.mesh.grid_axis)."""
        return torch.from_numpy(mesh_ops.grid_axis(self.G, n)).float()

    def densities(self, who: _Person, planes: torch.Tensor, axis: torch.Tensor, n: int, start: int,
                  stop: int) -> np.ndarray:
        """Raw density at grid samples start..stop of the n^3 grid (x-major), as generator.mesh.density_volume
        computes them."""
        self._use(who)
        idx = torch.arange(start, stop)
        points = torch.stack([axis[idx // (n * n)], axis[(idx // n) % n], axis[idx % n]], dim=-1)
        with torch.no_grad():
            return mesh_ops.decode_points(self.G, planes, points)[1].numpy()

    def extract(self, who: _Person, planes: torch.Tensor, volume: np.ndarray, cfg: mesh_ops.MeshConfig):
        """The mesh of the raw density volume [n, n, n] (trimmed here) at cfg.level, coloured by the decoder."""
        self._use(who)
        with torch.no_grad():
            return mesh_ops.extract_mesh(self.G, planes, mesh_ops.trimmed(volume, cfg.trim), cfg.level, cfg.chunk)


# ---------------------------------------------------------------------------------------------- runtime

@dataclass(frozen=True, eq=False)
class _Served:
    """A person of RuntimeSource: the page's name, the runtime's (None: the base model) and their anchors."""

    name: str
    person: str | None
    anchor_names: list[str]
    anchor_ws: np.ndarray
    """[K, num_ws, w_dim] float32."""
    anchor_c: np.ndarray
    """[K, 25] camera labels."""

    def anchor(self, ref: str, field: str) -> tuple[np.ndarray, np.ndarray]:
        i = anchor_index(self.anchor_names, ref, field)
        return self.anchor_ws[i], np.asarray(self.anchor_c[i], np.float32)


class RuntimeSource(Source):
    """The people of a `runtime.Runtime` (its export, its people folder, its backend; see the module docstring).

    BASE is the runtime's base model (person=None), its anchors the latents `Runtime.map` gives seeds 0-3 (as
    EagerSource's); a merged export has no base model and lists its merged person instead. A person is resolved by
    the runtime for every request (its adapter cache re-reads a changed file; its tri-plane cache is keyed by the
    file's hash)."""

    def __init__(self, rt, truncation: float = 0.7):
        self.rt = rt
        self.people_dir = rt.people_dir
        self.truncation = truncation
        self._base: _Served | None = None
        self._mesher: ExportMesher | None = None

    def folders(self) -> list[Path]:
        return [f for f in (self.people_dir, self.rt.export_dir) if f is not None]

    def describe(self) -> dict[str, str]:
        b = self.rt.backend
        return {"name": b.name, "precision": b.precision, "why": self.rt.backend_reason}

    def fixed_people(self) -> tuple[dict[str, list[str]], dict[str, str]]:
        merged = self.rt.manifest.merged_person
        if merged is None:
            return {BASE: list(BASE_ANCHORS)}, {}
        try:
            return {merged: list(self._served(merged).anchor_names)}, {}
        except PersonInvalid as e:
            return {}, {merged: e.reason}

    def check(self, name: str, path: Path) -> list[str]:
        return list(self._served(name).anchor_names)

    @contextmanager
    def _errors(self, name: str | None):
        """The runtime's refusals as the page's: a bad adapter file is PersonInvalid, a bad or unknown field or
        person a ValueError (the message names it)."""
        from runtime.errors import AdapterInvalid, InvalidRequest, UnknownPerson
        try:
            yield
        except AdapterInvalid as e:
            raise PersonInvalid.of(name, without_paths(e.reason, self.folders())) from None
        except UnknownPerson as e:
            file = self.people_dir / f"{name}.safetensors" if self.people_dir is not None and name else None
            if file is not None and file.exists():  # a file this export cannot serve (a base-only export ...)
                raise PersonInvalid.of(name, without_paths(str(e), self.folders())) from None
            raise ValueError(str(e)) from None
        except InvalidRequest as e:
            raise ValueError(str(e)) from None
        except OSError as e:
            raise PersonInvalid.of(name, read_error(e)) from None

    def _served(self, name: str) -> _Served:
        """Person `name` as the runtime resolves them, with anchors (PersonInvalid when they have none)."""
        with self._errors(name):
            p = self.rt.people_store.get(name)
        if p.anchor_ws is None:
            raise PersonInvalid.of(name, "the adapter file stores no anchors")
        return _Served(name, p.name, list(p.anchor_names), p.anchor_ws, p.anchor_c)

    def select(self, person: str) -> _Served:
        if person == BASE and self.rt.manifest.merged_person is None:
            return self._base_person()
        return self._served(person)

    def _base_person(self) -> _Served:
        """The base model with the latents of seeds 0-3 (z as generator.views.latent_from_seed draws it, frontal
        camera, the page's truncation) as anchors; computed once."""
        if self._base is None:
            rt = self.rt
            z = np.concatenate([np.random.RandomState(s).randn(1, rt.z_dim).astype(np.float32) for s in BASE_SEEDS])
            c = np.repeat(rt.backend.camera(0.0, 0.0), len(BASE_SEEDS), 0).astype(np.float32)
            with self._errors(None):
                ws = rt.map(z, c, truncation_psi=self.truncation)
            self._base = _Served(BASE, None, list(BASE_ANCHORS), ws, c)
        return self._base

    def latent(self, who: _Served, anchor: str, field: str = "anchor") -> Latent:
        return Latent(who.anchor(anchor, field)[0], ("anchor", anchor))

    def lerp(self, who: _Served, a: str, b: str, t: float) -> Latent:
        wa, wb = who.anchor(a, "a")[0], who.anchor(b, "b")[0]
        return Latent(((1.0 - t) * wa + t * wb).astype(np.float32), ("lerp", a, b, round(t, 4)))  # as rt.interpolate

    def render(self, who: _Served, latent: Latent, yaw: float, pitch: float) -> np.ndarray:
        with self._errors(who.name):
            return self.rt.novel_view(who.person, latent=latent.ws, yaw=yaw, pitch=pitch).to_uint8()

    def frames(self, who: _Served, kind: str, a: str, b: str | None, count: int, orbit: Orbit,
               size: int | None) -> Iterator[np.ndarray]:
        wa, ca = who.anchor(a, "a")
        if kind == "turntable":
            views = orbit.views(count)
            return (resize_frame(self.render(who, Latent(wa, ("anchor", a)), yaw, pitch), size)
                    for yaw, pitch in views)
        wb, cb = who.anchor(b, "b")
        return (resize_frame(self._interpolation_frame(who, wa, ca, wb, cb, t), size)
                for t in interpolation_weights(count))

    def _interpolation_frame(self, who: _Served, wa: np.ndarray, ca: np.ndarray, wb: np.ndarray, cb: np.ndarray,
                             t: float) -> np.ndarray:
        """Frame t of Runtime.interpolation (the paper's synthesis): (1 - t) w_a + t w_b from the camera a fraction
        t of the way from a's camera to b's, through Runtime.camera_view (Runtime.interpolation renders every frame
        in one call; the page renders one frame per chunk of work, and the base model's anchors are seed latents).
        """
        ws = ((1.0 - t) * wa + t * wb).astype(np.float32)
        with self._errors(who.name):
            return self.rt.camera_view(who.person, ws, interpolate_camera(ca, cb, t)).to_uint8()

    def mesh_unavailable(self) -> str | None:
        from runtime.choose_backend import torch_unavailable
        why = torch_unavailable(self.rt.manifest)
        if why is None:
            return None
        return f"meshes are made by the generator of the export's model directory, which this export cannot give: {why}"

    def mesher(self) -> "ExportMesher":
        """The generator of the export's model directory (loaded on the first mesh, its weights checked against the
        manifest), over the same people folder."""
        if self._mesher is None:
            why = self.mesh_unavailable()
            if why is not None:
                raise ValueError(why)
            from generator.model_dir import load_model_dir, weights_fingerprint
            folder, want = self.rt.manifest.torch_model
            G = load_model_dir(folder)
            got = weights_fingerprint(G.state_dict())
            if got != want:
                raise ValueError(f"the export's model directory holds other weights (fingerprint {got[7:23]}...) "
                                 f"than its manifest records ({want[7:23]}...): replaced or corrupted; re-export")
            self._mesher = ExportMesher(G.requires_grad_(False), self.people_dir, self.rt.manifest.merged_person,
                                        self.truncation)
        return self._mesher


class ExportMesher(EagerSource):
    """Meshes of a RuntimeSource's people: the generator of the export's model directory, a person's adapter file
    loaded with generator.adapter_file.load_adapter (BASE and a merged person: the generator as it is), the latents
    the runtime source gives."""

    def __init__(self, G: TriPlaneGenerator, people_dir: Path | None, merged: str | None, truncation: float):
        super().__init__(G, people_dir, truncation, plane_cache=0, why="the export's model directory")
        self.merged = merged

    def person(self, who: _Served) -> _Person:
        return self.select(BASE if who.person is None or who.person == self.merged else who.person)

    def planes(self, who: _Person, latent: Latent) -> torch.Tensor:
        ws = torch.from_numpy(np.ascontiguousarray(latent.ws, np.float32)).unsqueeze(0)
        return super().planes(who, Latent(ws, latent.key))


__all__ = ["BASE", "BASE_ANCHORS", "BASE_SEEDS", "EagerSource", "ExportMesher", "Latent", "PersonInvalid",
           "RuntimeSource", "Source", "anchor_index"]
