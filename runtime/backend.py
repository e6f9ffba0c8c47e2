"""The one interface every runtime backend implements, and the choice of a backend (`open_backend`).

Backends (`Runtime(backend=...)`, `python -m runtime --backend`):

    onnxruntime   runtime.renderer.Renderer: the export's ONNX graphs on onnxruntime (CPU, CUDA or the TensorRT
                  EP; prebuilt TensorRT engines where `providers='auto'` finds them usable). Torch-free.
    tensorrt      the same Renderer, made to run the export's prebuilt TensorRT engines (or, without engines,
                  onnxruntime's TensorRT EP); refused when neither can run here.
    torch         runtime.torch_backend.TorchBackend: the product's eager generator, built from the model
                  directory the export carries (manifest 'torch'), at precision fp32 or bf16.

`auto` (asked for by name; the default backend is onnxruntime) decides by this rule, and logs the choice and why:

    1. precision 'bf16' -> torch (the only backend with a bf16 path; refused with the reason where it cannot run);
    2. onnxruntime options given (`providers` other than 'auto', or `io_binding`), torch not importable, or the
       export carries no model directory (made before manifest 'torch') -> onnxruntime;
    3. otherwise both are opened and one cached-plane render of the base model (what most requests cost: a new
       view of known tri-planes) is timed on each, best of AUTO_REPEATS; torch is chosen only when it is faster
       than onnxruntime by AUTO_MARGIN (onnxruntime is the export-verified, torch-free path with native adapters
       and device-resident values, so near-ties go to it); the torch backend not chosen is closed.

A backend never falls back on its own: a backend named explicitly that cannot be had raises InvalidRequest /
ExportInvalid saying what to install or re-export.

Shapes: ws [B, num_ws, w_dim] float32, c [B, 25] camera labels, planes [B, 3, C, H, W] (a numpy array, or an
onnxruntime OrtValue on the device), outputs image [B, 3, S, S], image_raw [B, 3, R, R], depth [B, 1, R, R].
"""
from __future__ import annotations

import importlib.util
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from formats.cameras import lookat_label
from formats.export_manifest import ExportManifest
from runtime.errors import InvalidRequest

BACKENDS = ("auto", "onnxruntime", "torch", "tensorrt")
PRECISIONS = ("fp32", "bf16")
AUTO_MARGIN = 0.8
"""`auto` picks torch only when its render takes at most this fraction of onnxruntime's."""
AUTO_REPEATS = 3

log = logging.getLogger("my3dgen.runtime")


class Backend(ABC):
    """What `Runtime` calls to run a request: tri-planes of latents, images of tri-planes, both for one person or
    one person per sample, the mapping network, and the look-at camera. A person reaches a backend as a
    runtime.people.Person (its `identity` and its adapter per graph, `feeds[graph]`: runtime.native_adapters
    .GraphFeeds)."""

    name = "?"

    def __init__(self, manifest: ExportManifest):
        self.manifest = manifest
        self.providers: list[str] = []
        """What runs the stages, in order of preference (onnxruntime's providers, or the torch device)."""

    def camera(self, yaw: float, pitch: float) -> np.ndarray:
        """[1, 25] label of the export's look-at camera at (yaw, pitch) (formats.cameras.lookat_label)."""
        radius, pivot, focal = self.manifest.camera
        return lookat_label(yaw, pitch, radius=radius, focal=focal, pivot=pivot)[None]

    @property
    def mixed_batch(self) -> int | None:
        """Samples per mixed-person run (runtime.batching pads to it), or None: one run per person."""
        return self.manifest.mixed_batch

    @abstractmethod
    def planes(self, ws: np.ndarray, person) -> Any:
        """Tri-planes [B, 3, C, H, W] of W+ latents ws [B, num_ws, w_dim] for `person`."""

    @abstractmethod
    def render(self, planes: Any, ws: np.ndarray, c: np.ndarray, person) -> dict[str, np.ndarray]:
        """image, image_raw, depth of tri-planes seen from cameras c [B, 25], super-resolution styled by ws."""

    @abstractmethod
    def planes_mixed(self, ws: np.ndarray, people: Sequence) -> np.ndarray:
        """Tri-planes of exactly `mixed_batch` samples, sample k as people[k]."""

    @abstractmethod
    def render_mixed(self, planes: np.ndarray, ws: np.ndarray, c: np.ndarray, people: Sequence
                     ) -> dict[str, np.ndarray]:
        """image, image_raw, depth of exactly `mixed_batch` samples, sample k as people[k]."""

    @abstractmethod
    def map(self, z: np.ndarray, c: np.ndarray, psi: float) -> np.ndarray:
        """W+ [B, num_ws, w_dim] of z [B, z_dim] with conditioning cameras c [B, 25] and truncation psi."""

    @property
    @abstractmethod
    def graph_providers(self) -> dict[str, str]:
        """What each stage runs on ('synthesis', 'render', ...: an execution provider, or 'torch-cpu-fp32')."""

    @property
    @abstractmethod
    def adapter_paths(self) -> dict[str, int]:
        """How many runs with a person's adapter took each path (backend-specific names)."""

    @property
    def planes_on_device(self) -> bool:
        """Whether tri-planes stay on a device between synthesis and render."""
        return False

    @property
    def precision(self) -> str:
        """What the backend computes in: the export's precision (onnxruntime), or 'fp32' / 'bf16' (torch)."""
        return self.manifest.raw.get("precision", "fp32")

    def describe(self) -> dict[str, Any]:
        """What Runtime.stats() reports of the backend."""
        return {"name": self.name, "precision": self.precision, "providers": self.graph_providers}

    def reset_counts(self) -> None:
        """Zero `adapter_paths` (after `auto`'s timing runs, so stats count requests only)."""

    def close(self) -> None:
        """Release what the backend holds (nothing by default)."""


def open_backend(manifest: ExportManifest, backend: str, precision: str, probe, providers: str | Sequence[str],
                 threads: int | None, io_binding: bool | None) -> tuple[Backend, str]:
    """The backend `backend` names (see the module docstring for `auto`) and why it was chosen. `probe` is the
    Person whose cached-plane render `auto` times (the export's base model or merged person)."""
    if backend not in BACKENDS:
        raise InvalidRequest("backend", f"{backend!r}: expected one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise InvalidRequest("precision", f"{precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and backend in ("onnxruntime", "tensorrt"):
        raise InvalidRequest("precision", f"'bf16' runs on the torch backend only; backend={backend!r} computes in "
                                          f"the export's own precision ({manifest.raw.get('precision', 'fp32')!r}): "
                                          f"use backend='torch' (or 'auto'), or precision='fp32'")
    why = "asked for by name"
    if backend == "auto" and precision == "bf16":
        backend, why = "torch", "precision 'bf16' runs on the torch backend only"
    ort_options = [k for k, v in (("providers", providers != "auto"), ("io_binding", io_binding is not None)) if v]
    if backend == "torch" and ort_options:
        raise InvalidRequest(ort_options[0], f"{ort_options[0]} is an onnxruntime option, and the torch backend was "
                                             f"chosen ({why}): leave it unset, or use backend='onnxruntime'")
    if backend != "auto":
        return _open(backend, manifest, precision, providers, threads, io_binding), why
    if ort_options:
        return _open("onnxruntime", manifest, precision, providers, threads, io_binding), \
            f"onnxruntime options given ({', '.join(ort_options)})"
    why_not = torch_unavailable(manifest)
    if why_not is not None:
        return _open("onnxruntime", manifest, precision, providers, threads, io_binding), why_not
    ort = _open("onnxruntime", manifest, precision, providers, threads, io_binding)
    tb = _open("torch", manifest, precision, providers, threads, io_binding)
    t_ort, t_torch = time_render(ort, probe), time_render(tb, probe)
    timing = f"one cached-plane render: onnxruntime {t_ort:.1f} ms, torch {t_torch:.1f} ms"
    chosen, other = (tb, ort) if t_torch <= AUTO_MARGIN * t_ort else (ort, tb)
    other.close()
    chosen.reset_counts()
    return chosen, f"{timing}; torch is {'' if chosen is tb else 'not '}faster by more than {1 - AUTO_MARGIN:.0%}"


def torch_unavailable(manifest: ExportManifest) -> str | None:
    """Why the torch backend cannot serve this export here, or None when it can be tried."""
    if manifest.torch_model is None:
        return ("this export's manifest.json has no 'torch' field (exported before the torch backend): re-export "
                "with `cli.py export` to carry the model directory the torch backend needs")
    for module, what in (("torch", "torch is not installed"),
                         ("generator", ("the project's generator package is not installed (the runtime wheel ships "
                                        "without it)"))):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a blocked import, or sys.modules[module] = None
            found = False
        if not found:
            return f"{what}: the torch backend needs torch and the project's `generator` package (a full install)"
    return None


def _open(name: str, manifest: ExportManifest, precision: str, providers, threads, io_binding) -> Backend:
    if name == "torch":
        why_not = torch_unavailable(manifest)
        if why_not is not None:
            raise InvalidRequest("backend", f"'torch' cannot serve this export: {why_not}")
        from runtime.torch_backend import TorchBackend
        return TorchBackend(manifest, precision, threads)
    from runtime.renderer import Renderer
    if name == "tensorrt":
        if providers != "auto":
            raise InvalidRequest("providers", f"{providers!r} with backend='tensorrt', which chooses its own "
                                              f"providers: leave providers='auto', or use backend='onnxruntime'")
        from runtime.session import ENGINE_PROVIDER, ORT_PREFERENCE, ort_available_providers
        available = ort_available_providers()  # engines first; graphs without one run on the best EP here
        providers = [ENGINE_PROVIDER] + [p for p in ORT_PREFERENCE if p in available] if manifest.engines \
            else "tensorrt"
        renderer = Renderer(manifest, providers, threads, io_binding)
        renderer.name = "tensorrt"
        return renderer
    return Renderer(manifest, providers, threads, io_binding)


def time_render(backend: Backend, person) -> float:
    """Best of AUTO_REPEATS cached-plane renders (ms) of `person` at a frontal view of a fixed latent."""
    ws = np.full((1, backend.manifest.num_ws, backend.manifest.w_dim), 0.05, np.float32)
    planes = backend.planes(ws, person)
    c = backend.camera(0.0, 0.0)
    best = float("inf")
    for _ in range(AUTO_REPEATS):
        t = time.perf_counter()
        backend.render(planes, ws, c, person)
        best = min(best, (time.perf_counter() - t) * 1000.0)
    return best


__all__ = ["AUTO_MARGIN", "BACKENDS", "PRECISIONS", "Backend", "open_backend", "time_render", "torch_unavailable"]
