"""Runtime: novel views, interpolations and turntables of personalized generators from an export directory.

No torch: numpy + onnxruntime (TensorRT engines where present). An export directory (cli.py export) holds three
graphs; a request runs at most two of them:

    latent (anchor W, or given W / W+)  --synthesis graph-->  tri-planes  --render graph(camera)-->  images

Tri-planes are cached per (person's adapter identity, latent hash) in an LRU, so a new view of a known latent runs
only the render graph (timings['synthesis'] is 0.0 and `cache_hit` is True). Adapters are parsed once per file
version and kept in an LRU. Each call may carry `budget_ms`: before running, the time already spent plus the
running estimate (exponential moving average) of the stages still to run must fit, else BudgetExceeded is raised
without running; a call that finishes over budget raises BudgetExceeded with the result attached.

Export modes (manifest 'adapter.mode'): 'none' serves only the base model (person=None); 'merged' serves only the
person baked into the weights; 'keep-lora' serves the base model and every adapter file in `people_dir` whose
policy and base model match the export.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from runtime import cameras
from runtime.adapters import AdapterData, file_stamp, parse_safetensors, read_adapter
from runtime.cache import LRUCache
from runtime.errors import (AdapterInvalid, BudgetExceeded, ExportInvalid, InvalidRequest, RuntimeErrorBase,
                            UnknownPerson)
from runtime.session import choose_providers, open_graph

EXPORT_FORMAT = "my3dgen-export"
EXPORT_FORMAT_VERSION = 1
PERSON_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DEFAULT_LIMITS = {"max_abs_yaw": 0.8, "max_abs_pitch": 0.5, "max_frames": 64}
EMA_WEIGHT = 0.3
"""Weight of the newest measurement in the running estimate of a stage's time."""


@dataclass
class RenderResult:
    """One rendered view."""

    image: np.ndarray
    """float32 [3, S, S] in [-1, 1] (S = 512 for ffhq512-128)."""
    image_raw: np.ndarray
    """float32 [3, R, R]: the neural render before super-resolution."""
    depth: np.ndarray
    """float32 [1, R, R]: expected depth along each ray (scene units)."""
    timings: dict[str, float]
    """Milliseconds per stage: mapping, adapter, synthesis (0.0 on a cache hit), render, total."""
    cache_hit: bool
    """True when the tri-planes came from the cache (the synthesis graph did not run)."""
    person: str | None = None
    """Who was rendered (None: the base model)."""
    yaw: float = 0.0
    """Camera yaw (radians from frontal)."""
    pitch: float = 0.0
    """Camera pitch (radians from frontal)."""
    latent_key: str = ""
    """Hash of the W+ latent (the plane-cache key together with the adapter identity)."""

    def to_uint8(self) -> np.ndarray:
        """The image as HWC uint8, as generator.imaging.to_uint8 maps [-1, 1]."""
        x = np.clip(np.rint((self.image.transpose(1, 2, 0) + 1) * 127.5), 0, 255)
        return x.astype(np.uint8)

    def png_bytes(self) -> bytes:
        """The image as PNG bytes (Pillow)."""
        import io
        from PIL import Image
        buf = io.BytesIO()
        Image.fromarray(self.to_uint8()).save(buf, format="PNG")
        return buf.getvalue()


@dataclass
class _Person:
    """A resolved person: graph feeds of their adapter, anchors, and the identity that keys the plane cache."""

    name: str | None
    identity: str
    feeds: dict[str, dict[str, np.ndarray]]
    anchor_ws: np.ndarray | None = None
    anchor_c: np.ndarray | None = None
    anchor_names: list[str] = field(default_factory=list)


def _ms(t0: float, t1: float | None = None) -> float:
    return ((time.perf_counter() if t1 is None else t1) - t0) * 1000.0


def _finite_number(field_name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidRequest(field_name, f"must be a number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise InvalidRequest(field_name, f"must be finite, got {v}")
    return v


def load_manifest(export_dir: Path) -> dict[str, Any]:
    """The export's manifest with the fields the runtime relies on checked (ExportInvalid names the field)."""
    path = export_dir / "manifest.json"
    if not path.is_file():
        raise ExportInvalid(f"{path}: missing (is {export_dir} an export directory made by `cli.py export`?)")
    try:
        m = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ExportInvalid(f"{path}: not readable JSON ({e})") from None
    if m.get("format") != EXPORT_FORMAT or m.get("format_version") != EXPORT_FORMAT_VERSION:
        raise ExportInvalid(f"{path}: field 'format'/'format_version' is {m.get('format')!r}/"
                            f"{m.get('format_version')!r}, expected {EXPORT_FORMAT!r}/{EXPORT_FORMAT_VERSION}")
    for key in ("graphs", "model", "camera", "adapter", "base_fingerprint"):
        if key not in m:
            raise ExportInvalid(f"{path}: field '{key}' is missing")
    for g in ("synthesis", "render"):
        if g not in m["graphs"] or not (export_dir / m["graphs"][g]["file"]).is_file():
            raise ExportInvalid(f"{path}: graph '{g}' is missing from the manifest or the directory")
    if m["adapter"].get("mode") not in ("none", "merged", "keep-lora"):
        raise ExportInvalid(f"{path}: field 'adapter.mode' is {m['adapter'].get('mode')!r}")
    return m


class Runtime:
    """Serve an export directory (+ a directory of adapter files) without torch. See the module docstring."""

    def __init__(self, export_dir: str | os.PathLike, people_dir: str | os.PathLike | None = None,
                 providers: str | Sequence[str] = "auto", plane_cache_size: int = 64, adapter_cache_size: int = 16,
                 threads: int | None = None, limits: dict[str, float] | None = None):
        self.export_dir = Path(export_dir)
        self.manifest = load_manifest(self.export_dir)
        self.people_dir = Path(people_dir) if people_dir is not None else None
        if self.people_dir is not None and not self.people_dir.is_dir():
            raise InvalidRequest("people_dir", f"{self.people_dir} is not a directory")
        m = self.manifest
        self.mode = m["adapter"]["mode"]
        self.num_ws, self.w_dim = int(m["model"]["num_ws"]), int(m["model"]["w_dim"])
        self.z_dim = int(m["model"]["z_dim"])
        self._camera = m["camera"]
        engines = (m.get("tensorrt") or {}).get("engines") or None
        self.providers = choose_providers(providers, engines_present=bool(engines))
        self.threads = threads
        self._graphs = {g: open_graph(self.export_dir, g, m["graphs"][g], self.providers, threads, engines)
                        for g in ("synthesis", "render")}
        self._engines = engines
        self._mapping = None
        self._limits = dict(DEFAULT_LIMITS, **(limits or {}))
        self._planes = LRUCache(plane_cache_size)
        self._adapters = LRUCache(adapter_cache_size)
        self._estimates: dict[str, float] = {}
        self._lock = threading.Lock()
        self.counters = {"synthesis_runs": 0, "render_runs": 0, "mapping_runs": 0, "adapter_loads": 0,
                         "plane_cache_hits": 0, "plane_cache_misses": 0}
        self._inputs = {g: [i for i in m["adapter"].get("inputs", []) if i["graph"] == g]
                        for g in ("synthesis", "render")}
        self._base_person = self._load_base_person()

    # ------------------------------------------------------------------ people

    @property
    def limits(self) -> dict[str, float]:
        return dict(self._limits)

    @property
    def image_size(self) -> int:
        """Side of the final image (512 for ffhq512-128)."""
        return int(self.manifest["model"]["img_resolution"])

    @property
    def graph_providers(self) -> dict[str, str]:
        """The provider each loaded graph actually runs on."""
        return {g: s.provider for g, s in self._graphs.items()}

    def people(self) -> list[str]:
        """Servable people: adapter files <name>.safetensors in people_dir (keep-lora), the merged person, or []."""
        if self.mode == "merged":
            return [self.manifest["adapter"]["person"]]
        if self.mode == "none" or self.people_dir is None:
            return []
        return sorted(p.stem for p in self.people_dir.glob("*.safetensors")
                      if PERSON_NAME.match(p.stem) and p.is_file())

    def person_info(self, name: str) -> dict[str, Any]:
        """Anchors (names), rank, alpha, layout, fingerprint (sha256 of the adapter file), base fingerprint."""
        p = self._person(name)
        if self.mode == "merged":
            a = self.manifest["adapter"]
            pol = a.get("policy", {})
            return {"name": name, "anchors": list(p.anchor_names), "rank": pol.get("rank"), "alpha": pol.get("alpha"),
                    "layout": pol.get("layout"), "fingerprint": a["adapter_sha256"],
                    "base_fingerprint": self.manifest["base_fingerprint"], "mode": "merged"}
        data = self._adapter_data(name)
        return {"name": name, "anchors": list(data.anchor_names), "rank": data.meta["rank"],
                "alpha": data.meta["alpha"], "layout": data.meta["layout"], "fingerprint": data.sha256,
                "base_fingerprint": data.meta["base_fingerprint"], "dtype": data.meta.get("dtype"),
                "parameters": data.num_parameters, "file_bytes": data.file_bytes, "mode": "keep-lora"}

    def add_person(self, name: str, adapter_path: str | os.PathLike) -> None:
        """Check an adapter file against this export, then copy it to people_dir/<name>.safetensors atomically."""
        self._check_name(name)
        if self.mode != "keep-lora":
            raise InvalidRequest("name", f"this export is {self.mode!r}: people can only be added to a keep-LoRA "
                                         f"export (re-export with --keep-lora)")
        if self.people_dir is None:
            raise InvalidRequest("people_dir", "this runtime was created without a people_dir")
        data = read_adapter(adapter_path, self.w_dim, self.num_ws)
        self._check_compatible(data)
        target = self.people_dir / f"{name}.safetensors"
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.people_dir)
        os.close(fd)
        try:
            shutil.copyfile(adapter_path, tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._forget(name)

    def remove_person(self, name: str) -> None:
        """Delete people_dir/<name>.safetensors and drop the person's cached adapter and tri-planes."""
        self._check_name(name)
        if self.people_dir is None or not (self.people_dir / f"{name}.safetensors").is_file():
            raise UnknownPerson(name, f"unknown person {name!r}: no {name}.safetensors in the people directory")
        (self.people_dir / f"{name}.safetensors").unlink()
        self._forget(name)

    # ------------------------------------------------------------------ requests

    def novel_view(self, person: str | None = None, anchor: str | int | None = None,
                   latent: np.ndarray | None = None, yaw: float = 0.0, pitch: float = 0.0,
                   budget_ms: float | None = None) -> RenderResult:
        """Render `person` at (yaw, pitch) from an anchor (name or index) or a latent W [w_dim] / W+ [num_ws, w_dim]."""
        t0 = time.perf_counter()
        budget = self._budget(budget_ms)
        yaw, pitch = self._angle("yaw", yaw), self._angle("pitch", pitch)
        p, timings = self._resolve(person)
        t_map = time.perf_counter()
        ws = self._latent(p, anchor, latent)
        timings["mapping"] = _ms(t_map)
        return self._render_views(p, ws, [(yaw, pitch)], budget, t0, timings)[0]

    def interpolate(self, person: str | None, a: str | int, b: str | int, t: float, yaw: float = 0.0,
                    pitch: float = 0.0, budget_ms: float | None = None) -> RenderResult:
        """Render the W-space lerp (1 - t) * w_a + t * w_b of two anchors at (yaw, pitch)."""
        t0 = time.perf_counter()
        budget = self._budget(budget_ms)
        yaw, pitch = self._angle("yaw", yaw), self._angle("pitch", pitch)
        t = _finite_number("t", t)
        if not 0.0 <= t <= 1.0:
            raise InvalidRequest("t", f"must be in [0, 1], got {t}")
        p, timings = self._resolve(person)
        t_map = time.perf_counter()
        wa = self._anchor_ws(p, a, "a")
        wb = self._anchor_ws(p, b, "b")
        ws = ((1.0 - t) * wa + t * wb).astype(np.float32)
        timings["mapping"] = _ms(t_map)
        return self._render_views(p, ws, [(yaw, pitch)], budget, t0, timings)[0]

    def turntable(self, person: str | None, anchor: str | int | None, frames: int = 8, yaw_range: float = 0.5,
                  pitch: float = 0.0, budget_ms: float | None = None) -> list[RenderResult]:
        """`frames` views at yaw = yaw_range * sin(2 pi k / frames): one synthesis (or none), `frames` renders.

        The budget covers the whole call; each frame's timings are its own (frame 0 carries the synthesis).
        """
        t0 = time.perf_counter()
        budget = self._budget(budget_ms)
        if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)):
            raise InvalidRequest("frames", f"must be an integer, got {frames!r}")
        if not 1 <= int(frames) <= self._limits["max_frames"]:
            raise InvalidRequest("frames", f"must be in 1..{self._limits['max_frames']}, got {frames}")
        yaw_range = _finite_number("yaw_range", yaw_range)
        if abs(yaw_range) > self._limits["max_abs_yaw"]:
            raise InvalidRequest("yaw_range", f"|yaw_range| must be <= {self._limits['max_abs_yaw']}, got {yaw_range}")
        pitch = self._angle("pitch", pitch)
        p, timings = self._resolve(person)
        t_map = time.perf_counter()
        ws = self._latent(p, anchor, None)
        timings["mapping"] = _ms(t_map)
        views = [(yaw_range * math.sin(2 * math.pi * k / int(frames)), pitch) for k in range(int(frames))]
        return self._render_views(p, ws, views, budget, t0, timings)

    def map(self, z: np.ndarray, c: np.ndarray | None = None, truncation_psi: float = 0.7) -> np.ndarray:
        """The mapping graph: z [z_dim] or [B, z_dim] (and conditioning cameras [B, 25], default frontal) -> W+."""
        z = np.asarray(z, dtype=np.float32)
        single = z.ndim == 1
        z = z[None] if single else z
        if z.ndim != 2 or z.shape[1] != self.z_dim or not np.isfinite(z).all():
            raise InvalidRequest("z", f"must be finite with shape [{self.z_dim}] or [B, {self.z_dim}], got {z.shape}")
        if c is None:
            c = np.repeat(self._label(0.0, 0.0)[None], len(z), 0)
        c = np.asarray(c, dtype=np.float32).reshape(len(z), 25)
        psi = _finite_number("truncation_psi", truncation_psi)
        if self._mapping is None:
            if "mapping" not in self.manifest["graphs"]:
                raise ExportInvalid(f"{self.export_dir}: this export has no mapping graph")
            self._mapping = open_graph(self.export_dir, "mapping", self.manifest["graphs"]["mapping"],
                                       self.providers, self.threads, self._engines)
        ws = self._mapping.run({"z": z, "c": c, "truncation_psi": np.array([psi], np.float32)})["ws"]
        self.counters["mapping_runs"] += 1
        return ws[0] if single else ws

    def warmup(self, person: str | None = None, latent: np.ndarray | None = None) -> RenderResult:
        """Run both graphs once (a fresh latent, so synthesis runs) to prime the stage-time estimates."""
        if latent is None:
            latent = np.random.default_rng(12345).standard_normal(self.w_dim).astype(np.float32) * 0.1
        if self.mode == "merged" and person is None:
            person = self.manifest["adapter"]["person"]
        return self.novel_view(person, latent=latent)

    def estimates(self) -> dict[str, float]:
        """Running estimates (ms) of the stages, as used by the budget check."""
        return dict(self._estimates)

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "plane_cache": self._planes.stats(), "adapter_cache": self._adapters.stats(),
                "estimates_ms": self.estimates(), "providers": self.graph_providers}

    def clear_caches(self) -> None:
        self._planes.clear()
        self._adapters.clear()

    # ------------------------------------------------------------------ internals

    def _check_name(self, name: Any) -> None:
        if not isinstance(name, str) or not PERSON_NAME.match(name):
            raise InvalidRequest("name", f"{name!r} must match {PERSON_NAME.pattern}")

    def _budget(self, budget_ms: Any) -> float | None:
        if budget_ms is None:
            return None
        v = _finite_number("budget_ms", budget_ms)
        if v <= 0:
            raise InvalidRequest("budget_ms", f"must be > 0, got {v}")
        return v

    def _angle(self, name: str, value: Any) -> float:
        v = _finite_number(name, value)
        limit = self._limits[f"max_abs_{name}"]
        if abs(v) > limit:
            raise InvalidRequest(name, f"|{name}| must be <= {limit} radians, got {v}")
        return v

    def _label(self, yaw: float, pitch: float) -> np.ndarray:
        cam = self._camera
        return cameras.lookat_label(yaw, pitch, radius=float(cam["radius"]), focal=float(cam["focal"]),
                                    pivot=tuple(float(x) for x in cam["pivot"]))

    def _resolve(self, person: str | None) -> tuple[_Person, dict[str, float]]:
        t = time.perf_counter()
        p = self._person(person)
        return p, {"adapter": _ms(t)}

    def _person(self, person: str | None) -> _Person:
        if person is None:
            if self.mode == "merged":
                name = self.manifest["adapter"]["person"]
                raise UnknownPerson(None, f"this export has {name!r} merged into its weights: only {name!r} can be "
                                          f"rendered, not the base model")
            return self._base_person
        if not isinstance(person, str) or not PERSON_NAME.match(person):
            raise InvalidRequest("person", f"{person!r} must match {PERSON_NAME.pattern}")
        if self.mode == "none":
            raise UnknownPerson(person, f"unknown person {person!r}: this export has no adapters (only the base "
                                        f"model, person=None); export with --keep-lora to serve people")
        if self.mode == "merged":
            if person != self.manifest["adapter"]["person"]:
                raise UnknownPerson(person, f"unknown person {person!r}: this export serves only "
                                            f"{self.manifest['adapter']['person']!r} (merged into its weights)")
            return self._base_person
        return self._adapter_entry(person)[1]

    def _adapter_data(self, name: str) -> AdapterData:
        return self._adapter_entry(name)[0]

    def _adapter_entry(self, name: str) -> tuple[AdapterData, _Person]:
        """The parsed adapter file of `name` and its graph feeds: one LRU entry per file version (path, inode,
        size, mtime), so a replaced file is read again."""
        if self.mode != "keep-lora":
            raise UnknownPerson(name, f"unknown person {name!r}")
        if self.people_dir is None:
            raise UnknownPerson(name, f"unknown person {name!r}: this runtime has no people directory")
        path = self.people_dir / f"{name}.safetensors"
        try:
            stamp = file_stamp(path)
        except FileNotFoundError:
            raise UnknownPerson(name, f"unknown person {name!r}: no {name}.safetensors in {self.people_dir}") from None
        entry = self._adapters.get(stamp)
        if entry is None:
            data = read_adapter(path, self.w_dim, self.num_ws)
            self._check_compatible(data)
            self.counters["adapter_loads"] += 1
            feeds = {g: {i["input"]: data.tensors[i["tensor"]] for i in self._inputs[g]} for g in self._inputs}
            person = _Person(name, f"adapter:{data.sha256}", feeds,
                             self._w_plus(data.anchor_ws) if data.anchor_ws is not None else None, data.anchor_c,
                             list(data.anchor_names))
            entry = (data, person)
            self._adapters.put(stamp, entry)
        return entry

    def _check_compatible(self, data: AdapterData) -> None:
        """A keep-LoRA export serves adapters of its base model and its exact policy (hence tensor set and shapes)."""
        where = str(data.path)
        if data.meta["base_fingerprint"] != self.manifest["base_fingerprint"]:
            raise AdapterInvalid(where, f"made for a different base model (adapter base "
                                        f"{data.meta['base_fingerprint'][:19]}..., export base "
                                        f"{self.manifest['base_fingerprint'][:19]}...)")
        exp = self.manifest["adapter"]
        if self.mode != "keep-lora":
            return
        mine, theirs = exp["policy"], data.meta["policy"]
        diffs = [f"{k}={theirs.get(k)!r} (export: {mine.get(k)!r})" for k in sorted(set(mine) | set(theirs))
                 if theirs.get(k) != mine.get(k)]
        if diffs:
            raise AdapterInvalid(where, "its adapter policy differs from this keep-LoRA export's: " + ", ".join(diffs)
                                 + "; re-export with --keep-lora --adapter <a file of this policy>")
        if [list(t) for t in data.meta["targets"]] != exp["targets"]:
            raise AdapterInvalid(where, f"its target list ({len(data.meta['targets'])} tensors) differs from this "
                                        f"export's ({len(exp['targets'])})")
        for i in exp["inputs"]:
            t = data.tensors.get(i["tensor"])
            if t is None or list(t.shape) != i["shape"]:
                raise AdapterInvalid(where, f"tensor '{i['tensor']}' has shape "
                                            f"{None if t is None else list(t.shape)}, the export expects {i['shape']}")

    def _load_base_person(self) -> _Person:
        a = self.manifest["adapter"]
        if self.mode == "none":
            return _Person(None, "base", {"synthesis": {}, "render": {}})
        if self.mode == "merged":
            ws = c = None
            names: list[str] = []
            if a.get("anchors_file"):
                path = self.export_dir / a["anchors_file"]
                try:
                    meta, t = parse_safetensors(path.read_bytes(), str(path))
                    ws, c = t["anchors.ws"].astype(np.float32), t["anchors.c"].astype(np.float32)
                    names = json.loads(meta.get("names", "[]"))
                except (OSError, KeyError, json.JSONDecodeError, AdapterInvalid) as e:
                    raise ExportInvalid(f"{path}: the merged person's anchors cannot be read ({e})") from None
            return _Person(a["person"], f"merged:{a['adapter_sha256']}", {"synthesis": {}, "render": {}},
                           self._w_plus(ws) if ws is not None else None, c, names)
        path = self.export_dir / a["base_values_file"]
        try:
            _, t = parse_safetensors(path.read_bytes(), str(path))
        except (OSError, AdapterInvalid) as e:
            raise ExportInvalid(f"{path}: the base values of the adapter inputs cannot be read ({e})") from None
        missing = [i["input"] for i in a["inputs"] if i["input"] not in t]
        if missing:
            raise ExportInvalid(f"{path}: missing base values for {missing[:5]}")
        return _Person(None, "base", {g: {i["input"]: t[i["input"]] for i in self._inputs[g]} for g in self._inputs})

    def _forget(self, name: str) -> None:
        if self.people_dir is not None:
            path = str(self.people_dir / f"{name}.safetensors")
            self._adapters.discard(lambda k: k[0] == path)
        self._planes.discard(lambda k: k[0] == name)

    def _w_plus(self, ws: np.ndarray) -> np.ndarray:
        """Anchors [K, w_dim] -> [K, num_ws, w_dim]; W+ anchors are returned as they are."""
        ws = np.asarray(ws, dtype=np.float32)
        return np.repeat(ws[:, None, :], self.num_ws, axis=1) if ws.ndim == 2 else ws

    def _anchor_ws(self, p: _Person, anchor: Any, field_name: str) -> np.ndarray:
        if p.anchor_ws is None:
            who = "the base model" if p.name is None else f"{p.name!r}"
            raise InvalidRequest(field_name, f"{who} has no anchors: pass a latent instead")
        if isinstance(anchor, (bool, np.bool_)) or not isinstance(anchor, (str, int, np.integer)):
            raise InvalidRequest(field_name, f"must be an anchor name or index, got {anchor!r}")
        if isinstance(anchor, (int, np.integer)) or anchor.isdigit():
            i = int(anchor)
            if not 0 <= i < len(p.anchor_names):
                raise InvalidRequest(field_name, f"anchor index {i} out of range 0..{len(p.anchor_names) - 1}")
        else:
            if anchor not in p.anchor_names:
                raise InvalidRequest(field_name, f"unknown anchor {anchor!r}; {p.name!r} has: "
                                                 f"{', '.join(p.anchor_names[:20])}")
            i = p.anchor_names.index(anchor)
        return p.anchor_ws[i]

    def _latent(self, p: _Person, anchor: Any, latent: Any) -> np.ndarray:
        if anchor is not None and latent is not None:
            raise InvalidRequest("latent", "give either 'anchor' or 'latent', not both")
        if latent is None:
            if anchor is None:
                if p.anchor_ws is None:
                    raise InvalidRequest("anchor", "give 'anchor' or 'latent' (this person has no anchors)")
                anchor = 0
            return self._anchor_ws(p, anchor, "anchor")
        try:
            w = np.asarray(latent, dtype=np.float32)
        except (TypeError, ValueError):
            raise InvalidRequest("latent", f"must be a float array, got {type(latent).__name__}") from None
        if w.shape == (self.w_dim,):
            w = np.repeat(w[None], self.num_ws, axis=0)
        elif w.shape != (self.num_ws, self.w_dim):
            raise InvalidRequest("latent", f"shape {list(w.shape)}: expected W [{self.w_dim}] or W+ "
                                           f"[{self.num_ws}, {self.w_dim}]")
        if not np.isfinite(w).all():
            raise InvalidRequest("latent", "has non-finite values")
        return w

    def _estimate(self, stage: str) -> float:
        return self._estimates.get(stage, 0.0)

    def _observe(self, stage: str, ms: float) -> None:
        with self._lock:
            old = self._estimates.get(stage)
            self._estimates[stage] = ms if old is None else (1 - EMA_WEIGHT) * old + EMA_WEIGHT * ms

    def _render_views(self, p: _Person, ws: np.ndarray, views: list[tuple[float, float]], budget: float | None,
                      t0: float, timings: dict[str, float]) -> list[RenderResult]:
        latent_key = hashlib.sha1(np.ascontiguousarray(ws, np.float32).tobytes()).hexdigest()
        key = (p.name, p.identity, latent_key)
        planes = self._planes.get(key)
        hit = planes is not None
        if budget is not None:
            estimate = _ms(t0) + (0.0 if hit else self._estimate("synthesis")) + len(views) * self._estimate("render")
            if estimate > budget:
                raise BudgetExceeded(f"budget_ms={budget:g} cannot be met: estimated {estimate:.1f} ms "
                                     f"({'cached tri-planes' if hit else 'synthesis'} + {len(views)} render(s)); "
                                     f"nothing was run", budget, estimate, _ms(t0), True)
        ws_b = ws[None]
        if hit:
            self.counters["plane_cache_hits"] += 1
            synthesis_ms = 0.0
        else:
            self.counters["plane_cache_misses"] += 1
            ts = time.perf_counter()
            planes = self._graphs["synthesis"].run({"ws": ws_b, **p.feeds["synthesis"]})["planes"]
            synthesis_ms = _ms(ts)
            self.counters["synthesis_runs"] += 1
            self._observe("synthesis", synthesis_ms)
            self._planes.put(key, planes)
        results = []
        for k, (yaw, pitch) in enumerate(views):
            tr = time.perf_counter()
            out = self._graphs["render"].run({"planes": planes, "ws": ws_b, "c": self._label(yaw, pitch)[None],
                                              **p.feeds["render"]})
            render_ms = _ms(tr)
            self.counters["render_runs"] += 1
            self._observe("render", render_ms)
            first = k == 0
            t = {"mapping": timings.get("mapping", 0.0) if first else 0.0,
                 "adapter": timings.get("adapter", 0.0) if first else 0.0,
                 "synthesis": synthesis_ms if first else 0.0, "render": render_ms}
            t["total"] = _ms(t0) if first else render_ms
            results.append(RenderResult(image=out["image"][0].astype(np.float32),
                                        image_raw=out["image_raw"][0].astype(np.float32),
                                        depth=out["depth"][0].astype(np.float32), timings=t,
                                        cache_hit=hit or not first, person=p.name, yaw=yaw, pitch=pitch,
                                        latent_key=latent_key))
            elapsed = _ms(t0)
            if budget is not None and elapsed > budget:
                raise BudgetExceeded(f"budget_ms={budget:g} exceeded: took {elapsed:.1f} ms "
                                     f"({k + 1}/{len(views)} view(s) done)", budget, None, elapsed, False,
                                     result=results[0] if len(views) == 1 else results)
        return results


__all__ = ["Runtime", "RenderResult", "RuntimeErrorBase", "UnknownPerson", "InvalidRequest", "BudgetExceeded",
           "AdapterInvalid", "ExportInvalid"]
