"""The model side of the web page: people (adapter files in a folder), views, interpolations, videos, meshes.

Everything returns bytes (PNG, mp4/GIF, PLY/OBJ) for the HTTP layer. One generator serves every request, so a
lock serialises them (attaching a person's adapter changes the model's routing). Tri-planes of the last few
latents are kept, so dragging a slider over one latent runs only the renderer.

People: every `NAME.safetensors` in the people folder whose name is valid (formats.names) and that stores
anchors; their anchors are the latents to show. A person's file is read (and checked against the base model)
each time they are chosen after another. `BASE` is the base model itself, with seeds 0-3's latents as anchors.
"""
from __future__ import annotations

import io
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from formats.names import check_name, is_valid_name
from generator.adapter_file import Anchors, load_adapter, read_adapter_meta
from generator.cameras import lookat_label
from generator.imaging import to_uint8
from generator.lora import attach
from generator.triplane import TriPlaneGenerator
from generator.views import anchor_latent, camera_batch, latent_from_seed

BASE = "base"
BASE_SEEDS = (0, 1, 2, 3)
MAX_ANGLE = 1.0
"""Largest |yaw| and |pitch| the page may ask for, radians."""


@dataclass(frozen=True)
class WebLimits:
    """What one request may cost: video frames, mesh grid side, video frame side."""

    max_frames: int = 120
    max_mesh_resolution: int = 192
    video_size: int | None = None


def _number(value, what: str, lo: float, hi: float) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not lo <= x <= hi:
        raise ValueError(f"{what} must be within [{lo:g}, {hi:g}], got {x:g}")
    return x


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


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
        self._lock = threading.Lock()
        self._planes: OrderedDict = OrderedDict()
        self._plane_cache = plane_cache
        self._current: str | None = None
        self._anchors: dict[str, Anchors] = {}

    # ---------------------------------------------------------------- people

    def people(self) -> dict[str, list[str]]:
        """{person: [anchor names]}: BASE first, then the valid adapter files of the folder, sorted."""
        out = {BASE: [f"seed{s}" for s in BASE_SEEDS]}
        if self.people_dir is not None:
            for path in sorted(self.people_dir.glob("*.safetensors")):
                if is_valid_name(path.stem) and path.stem != BASE:
                    try:
                        names = read_adapter_meta(path)["anchor_names"]
                    except (ValueError, OSError, KeyError):
                        continue  # an unreadable adapter file is not offered (choosing it would say why)
                    if names:
                        out[path.stem] = list(names)
        return out

    def _select(self, person: str) -> None:
        """Attach `person`'s adapter (or none for BASE); caller holds the lock."""
        check_name(person)
        if person == self._current:
            return
        if person == BASE:
            attach(self.G, None)
            if BASE not in self._anchors:
                with torch.no_grad():
                    z = torch.cat([latent_from_seed(self.G, s) for s in BASE_SEEDS])
                    c = camera_batch(self.G, [(0.0, 0.0)] * len(BASE_SEEDS))
                    ws = self.G.mapping(z, c, truncation_psi=self.truncation)
                self._anchors[BASE] = Anchors(ws, c, [f"seed{s}" for s in BASE_SEEDS])
        else:
            path = self.people_dir / f"{person}.safetensors" if self.people_dir is not None else None
            if path is None or not path.is_file():
                raise ValueError(f"unknown person {person!r}")
            adapter, anchors, _ = load_adapter(path, self.G)
            if anchors is None:
                raise ValueError(f"person {person!r}: the adapter file stores no anchors")
            attach(self.G, adapter)
            self._anchors[person] = anchors
            for key in [k for k in self._planes if k[0] == person]:  # the file is re-read: so are its planes
                del self._planes[key]
        self._current = person

    def _anchor(self, person: str, anchor: str, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        return anchor_latent(self.G, self._anchors[person], anchor, what)

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

    # ---------------------------------------------------------------- requests

    def view(self, person: str, anchor: str, yaw=0.0, pitch=0.0) -> bytes:
        """PNG of an anchor of `person` at (yaw, pitch)."""
        yaw = _number(yaw, "yaw", -MAX_ANGLE, MAX_ANGLE)
        pitch = _number(pitch, "pitch", -MAX_ANGLE, MAX_ANGLE)
        with self._lock:
            self._select(person)
            ws, _ = self._anchor(person, anchor, "anchor")
            return self._render((person, "anchor", anchor), ws, yaw, pitch)

    def interpolate(self, person: str, a: str, b: str, t=0.5, yaw=0.0, pitch=0.0) -> bytes:
        """PNG of the W lerp (1 - t) w_a + t w_b of two anchors at (yaw, pitch)."""
        t = _number(t, "t", 0.0, 1.0)
        yaw = _number(yaw, "yaw", -MAX_ANGLE, MAX_ANGLE)
        pitch = _number(pitch, "pitch", -MAX_ANGLE, MAX_ANGLE)
        with self._lock:
            self._select(person)
            wa, _ = self._anchor(person, a, "a")
            wb, _ = self._anchor(person, b, "b")
            return self._render((person, "lerp", a, b, round(t, 4)), torch.lerp(wa, wb, t), yaw, pitch)

    def video(self, person: str, kind: str, a: str, b: str | None = None, frames=48, fps=24.0,
              fmt: str = "mp4") -> tuple[bytes, str]:
        """A turntable of anchor a, or an interpolation from a to b: (file bytes, suffix: .mp4, or .gif)."""
        from generator.video import VideoOptions, write_interpolation, write_turntable
        frames = int(_number(frames, "frames", 2, self.limits.max_frames))
        opts = VideoOptions(frames=frames, fps=_number(fps, "fps", 1, 60), size=self.limits.video_size)
        if fmt not in ("mp4", "gif"):
            raise ValueError(f"format must be mp4 or gif, got {fmt!r}")
        with self._lock, tempfile.TemporaryDirectory() as tmp:
            self._select(person)
            out = Path(tmp) / f"video.{fmt}"
            if kind == "turntable":
                info = write_turntable(self.G, self._anchor(person, a, "a")[0], out, opts, progress=False)
            elif kind == "interpolate":
                if b is None:
                    raise ValueError("an interpolation needs anchors a and b")
                info = write_interpolation(self.G, self._anchor(person, a, "a"), self._anchor(person, b, "b"),
                                           out, opts, progress=False)
            else:
                raise ValueError(f"video kind must be turntable or interpolate, got {kind!r}")
            return info.path.read_bytes(), info.path.suffix

    def mesh(self, person: str, anchor: str, fmt: str = "ply", resolution=96, level=10.0) -> bytes:
        """The mesh of an anchor of `person` as PLY or OBJ bytes (see generator/mesh.py)."""
        from generator.mesh import MeshConfig, mesh_of_latent
        from media.mesh_io import write_mesh
        if fmt not in ("ply", "obj"):
            raise ValueError(f"format must be ply or obj, got {fmt!r}")
        cfg = MeshConfig(resolution=int(_number(resolution, "resolution", 16, self.limits.max_mesh_resolution)),
                         level=_number(level, "level", -1e4, 1e4))
        with self._lock, tempfile.TemporaryDirectory() as tmp:
            self._select(person)
            mesh, _ = mesh_of_latent(self.G, self._anchor(person, anchor, "anchor")[0], cfg)
            return write_mesh(mesh, Path(tmp) / f"mesh.{fmt}").read_bytes()
