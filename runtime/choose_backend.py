"""Which backend serves an export: the one named, or for `auto` the one this rule picks (`open_backend`).

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
"""
from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Sequence

import numpy as np

from formats.export_manifest import ExportManifest
from runtime.backend import BACKENDS, PRECISIONS, Backend
from runtime.errors import InvalidRequest

AUTO_MARGIN = 0.8
"""`auto` picks torch only when its render takes at most this fraction of onnxruntime's."""
AUTO_REPEATS = 3

log = logging.getLogger("my3dgen.runtime")


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
