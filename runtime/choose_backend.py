"""Which backend serves an export: the one named, or for `auto` the one this rule picks (`open_backend`).

`auto` decides by this rule, and logs the choice and why (Runtime.backend_reason, stats()['backend']['why']):

    1. precision 'bf16' or 'fp16', or `compile` -> torch (the only backend with those; a refusal says why where it
       cannot run); a `device` only says where torch runs if it is chosen;
    2. an onnxruntime option (`providers` other than 'auto', `io_binding`), torch not importable, or an export
       without a model directory (made before manifest 'torch') -> onnxruntime;
    3. otherwise both are opened and a cached-plane render of the base model (what most requests cost: a new view
       of known tri-planes) is timed on each, alternately, best of AUTO_REPEATS each: the box decides, as it is
       loaded at start-up, not a table. torch is chosen when it takes at most AUTO_MARGIN of onnxruntime's time
       (near-ties go to onnxruntime: the export-verified, torch-free path); the backend not chosen is closed.

A backend never falls back on its own: a backend named explicitly that cannot be had raises InvalidRequest /
ExportInvalid saying what to install or re-export.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time

import numpy as np

from formats.export_manifest import ExportManifest
from runtime.backend import BACKENDS, PRECISIONS, Backend, BackendOptions
from runtime.errors import InvalidRequest

AUTO_MARGIN = 0.95
"""`auto` picks torch only when its render takes at most this fraction of onnxruntime's: what it leaves on the
table is under 5% of the faster backend's time."""
AUTO_REPEATS = 3

log = logging.getLogger("my3dgen.runtime")


def open_backend(manifest: ExportManifest, options: BackendOptions, probe) -> tuple[Backend, str]:
    """The backend `options.backend` names (see the module docstring for `auto`) and why it was chosen. `probe`
    is the Person whose cached-plane render `auto` times (the export's base model or merged person)."""
    name, precision = options.backend, options.precision
    if name not in BACKENDS:
        raise InvalidRequest("backend", f"{name!r}: expected one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise InvalidRequest("precision", f"{precision!r}: expected one of {', '.join(PRECISIONS)}")
    ort_options, torch_options = options.onnxruntime_options(), options.torch_options()
    if name in ("onnxruntime", "tensorrt") and torch_options:
        what = torch_options[0]
        reason = (f"computes in the export's own precision ({manifest.raw.get('precision', 'fp32')!r}; "
                  f"`cli.py export --fp16` makes fp16 graphs)" if what == "precision" else "does not take it")
        raise InvalidRequest(what, f"{what}={getattr(options, what)!r} is the torch backend's; backend={name!r} "
                                   f"{reason}: use backend='torch' (or 'auto'), or leave {what} unset")
    why = "asked for by name"
    forcing = [o for o in torch_options if o != "device"]  # under auto, a device is where torch runs if chosen
    if name == "auto" and forcing:
        name, why = "torch", f"{', '.join(forcing)} given (the torch backend's)"
    if name == "torch" and ort_options:
        raise InvalidRequest(ort_options[0], f"{ort_options[0]} is an onnxruntime option, and the torch backend was "
                                             f"chosen ({why}): leave it unset, or use backend='onnxruntime'")
    if name != "auto":
        return _open(name, manifest, options), why
    if ort_options:
        return _open("onnxruntime", manifest, options), f"onnxruntime options given ({', '.join(ort_options)})"
    why_not = torch_unavailable(manifest)
    if why_not is not None:
        return _open("onnxruntime", manifest, options), why_not
    ort = _open("onnxruntime", manifest, options)
    try:
        tb = _open("torch", manifest, options)
    except InvalidRequest as e:  # e.g. a device torch cannot see (a CPU-only torch on a GPU box)
        return ort, f"torch cannot run here ({e}); onnxruntime can"
    t_ort, t_torch = time_renders([ort, tb], probe)
    timing = f"one cached-plane render: onnxruntime {t_ort:.1f} ms, torch {t_torch:.1f} ms"
    chosen, other = (tb, ort) if t_torch <= AUTO_MARGIN * t_ort else (ort, tb)
    other.close()
    chosen.reset_counts()
    return chosen, f"{timing}; torch is {'' if chosen is tb else 'not '}faster by at least {1 - AUTO_MARGIN:.0%}"


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


def _passive_wait_before_torch() -> None:
    """OpenMP's PASSIVE wait for a program that uses the runtime as a library (the entry points set it at
    launch, launch/threads.py): libgomp reads it once, when torch loads it, so it is set here when torch is not
    loaded yet; a program that imported torch first keeps the spinning default, which is slower when other
    processes share the cores, and is told once. A user's own OMP_WAIT_POLICY / GOMP_SPINCOUNT is kept."""
    try:
        from launch.threads import thread_env
    except ImportError:  # inside a .mar: the server (serve/server.py) started the worker with the policy set
        return
    wanted = thread_env()
    if not wanted:
        return
    if "torch" not in sys.modules:
        os.environ.update(wanted)
    elif not _WARNED_WAIT:
        _WARNED_WAIT.append(True)
        log.warning("torch was imported before the runtime opened the torch backend, so OpenMP keeps its spinning "
                    "wait (slower when other processes share the cores): set %s before importing torch "
                    "(launch/threads.py)", " ".join(f"{k}={v}" for k, v in wanted.items()))


_WARNED_WAIT: list[bool] = []


def _open(name: str, manifest: ExportManifest, options: BackendOptions) -> Backend:
    if name == "torch":
        why_not = torch_unavailable(manifest)
        if why_not is not None:
            raise InvalidRequest("backend", f"'torch' cannot serve this export: {why_not}")
        _passive_wait_before_torch()
        from runtime.torch_backend import TorchBackend
        return TorchBackend(manifest, options.precision, options.threads, options.device, options.compile)
    from runtime.renderer import Renderer
    providers = options.providers
    if name == "tensorrt":
        if providers != "auto":
            raise InvalidRequest("providers", f"{providers!r} with backend='tensorrt', which chooses its own "
                                              f"providers: leave providers='auto', or use backend='onnxruntime'")
        from runtime.session import ENGINE_PROVIDER, ORT_PREFERENCE, ort_available_providers
        available = ort_available_providers()  # engines first; graphs without one run on the best EP here
        providers = [ENGINE_PROVIDER] + [p for p in ORT_PREFERENCE if p in available] if manifest.engines \
            else "tensorrt"
        renderer = Renderer(manifest, providers, options.threads, options.io_binding)
        renderer.name = "tensorrt"
        return renderer
    return Renderer(manifest, providers, options.threads, options.io_binding)


def time_renders(backends: list[Backend], person) -> list[float]:
    """Best of AUTO_REPEATS cached-plane renders (ms) of `person` at a frontal view of a fixed latent on each
    backend, the backends called in turn (so that a change of load hits each alike), after one untimed render
    each (a CUDA graph is captured there)."""
    ws = np.full((1, backends[0].manifest.num_ws, backends[0].manifest.w_dim), 0.05, np.float32)
    runs = []
    for b in backends:
        planes, c = b.planes(ws, person), b.camera(0.0, 0.0)
        b.render(planes, ws, c, person)
        runs.append(lambda b=b, planes=planes, c=c: b.render(planes, ws, c, person))
    best = [float("inf")] * len(backends)
    for _ in range(AUTO_REPEATS):
        for k, run in enumerate(runs):
            t = time.perf_counter()
            run()
            best[k] = min(best[k], (time.perf_counter() - t) * 1000.0)
    return best


def time_render(backend: Backend, person) -> float:
    """Best of AUTO_REPEATS cached-plane renders (ms) of `person` on one backend (see time_renders)."""
    return time_renders([backend], person)[0]


__all__ = ["AUTO_MARGIN", "BACKENDS", "PRECISIONS", "Backend", "BackendOptions", "open_backend", "time_render",
           "time_renders", "torch_unavailable"]
