"""TorchServe handler: novel views, interpolations and the list of people of one exported model, over HTTP.

Runs inside a TorchServe worker from the extracted `.mar`, which ships this file, `serve/requests.py`,
`serve/metrics.py` and the torch-free `runtime`, `formats` and `media` packages next to the exported graphs
(`export/`). It imports only the standard library, numpy, PIL, those modules and packages, and calls the typed
`Runtime` directly. Every request is counted in TorchServe's Prometheus metrics (serve/metrics.py).

Responses (see model_store/README.md):
- image ops, `"response": "image"` (default): the PNG/JPEG bytes with their Content-Type; per-stage timings in a
  standard `Server-Timing` header (`mapping;dur=0.41, synthesis;dur=12.3, ...`, milliseconds), the tri-plane cache
  outcome in `X-My3DGen-Cache`; an interpolation with `frames` returns one horizontal strip of `frames` square
  images side by side without gaps (`X-My3DGen-Frames`, `X-My3DGen-Frame-Size` say how to cut it).
- `"response": "json"`: `{"image": base64}` or `{"frames": [base64, ...]}` plus `timings`, `cache_hit`, sizes.
- `video` op: the mp4 (`video/mp4`) or GIF (`image/gif`; also where an mp4 was asked for and the server has no
  ffmpeg, then `X-My3DGen-Note` says so) with the same timing and cache headers, `X-My3DGen-Frames`,
  `X-My3DGen-Frame-Size` and `X-My3DGen-Fps`. Frames come from media.runtime_video (the runtime's orbit or
  anchor-to-anchor interpolation), encoded by media.video_writer.
- errors: a JSON object `{"error", "field", "status", "type"}` with a 4xx/5xx status. Every exception is caught
  and mapped here, so no request can take a worker down.

People are adapter files `<people_root>/<model name>/<person>.safetensors`; the runtime rescans that folder on
each listing, so people added or removed by `cli.py people add/remove` are served without a restart. The people
root comes from the environment variable MY3DGEN_PEOPLE_ROOT (set by `cli.py serve`) or the model config's
`handler.people_root`.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from formats.errors import without_paths
from formats.limits import current_limits
from formats.names import NAME_RULE, is_valid_name
from media.runtime_video import render_video, video_frames
from media.video_writer import encode_video
from runtime import (AdapterInvalid, BudgetExceeded, InvalidRequest, RenderResult, Runtime, RuntimeErrorBase,
                     UnknownPerson)
from runtime.backend import BACKENDS, PRECISIONS
from runtime.batching import ViewRequest
from serve.metrics import Outcome, ServeMetrics, cache_delta
from serve.worker_env import BACKEND_ENV, PEOPLE_ROOT_ENV, PRECISION_ENV
from serve.requests import (FIELDS, Interpolate, HttpLimits, NovelView, Output, People, PersonInfo, Request,
                            RequestError, Video, parse_request)

logger = logging.getLogger(__name__)



@dataclass
class HandlerConfig:
    """The `handler:` section of the packaged model-config.yaml."""

    export_subdir: str = "export"
    """Folder inside the extracted archive holding the exported graphs (what `runtime.Runtime` loads)."""
    people_root: Optional[str] = None
    """Absolute folder of people folders; the environment variable MY3DGEN_PEOPLE_ROOT wins over it."""
    default_budget_ms: Optional[float] = None
    """Deadline for requests that give no `budget_ms` (None: none)."""
    max_budget_ms: float = 50_000.0
    """Largest `budget_ms` a request may ask for; keep it under responseTimeout (a timed-out worker is killed)."""
    max_frames: int = 16
    """Most frames per interpolation request (the runtime's own limit applies too)."""
    max_video_frames: int = 64
    """Most frames per video request (the runtime's own limit applies too)."""
    backend: str = "auto"
    """What runs the model (runtime.backend.BACKENDS): 'auto' (torch or onnxruntime, whichever renders faster on
    this box at start-up: runtime/choose_backend.py), 'onnxruntime', 'torch' or 'tensorrt'. The environment
    variable MY3DGEN_BACKEND (set by `cli.py serve --backend`) wins over it."""
    precision: str = "fp32"
    """'fp32', 'bf16' (torch: CUDA, or a CPU with native bf16) or 'fp16' (torch on CUDA). MY3DGEN_PRECISION wins."""
    compile: bool = False
    """torch backend: torch.compile each stage at its first run (slow start-up; see docs/BENCHMARKS.md)."""
    providers: Any = "auto"
    """onnxruntime providers for the runtime: "auto" or a list of provider names."""
    plane_cache_size: int = 64
    """Tri-plane cache entries per worker."""
    plane_cache_mb: float = 1024.0
    """Tri-plane cache bytes per worker, in MiB (an ffhq512-128 latent's planes: 24 MiB), on the device where the
    backend keeps them."""
    adapter_cache_size: int = 16
    """Loaded adapters kept per worker."""
    threads: Optional[int] = None
    """Intra-op threads per worker (None: this machine's cores divided by the model's maxWorkers, at least 1, so
    that several workers on one box do not oversubscribe it)."""
    jpeg_quality: int = 90
    """JPEG quality when a request gives none."""
    warmup: bool = True
    """Render once at start-up, so the first request is not slowed by lazy initialization and the budget
    estimates are primed."""

    @classmethod
    def from_dict(cls, raw: Optional[dict], environ: Optional[dict] = None) -> "HandlerConfig":
        """The section as written by `cli.py package`, then MY3DGEN_BACKEND / MY3DGEN_PRECISION from `environ`
        (default os.environ); every value checked (ValueError naming the key)."""
        raw = dict(raw or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"model-config.yaml handler section: unknown key(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        env = os.environ if environ is None else environ
        for key, var in (("backend", BACKEND_ENV), ("precision", PRECISION_ENV)):
            if env.get(var):
                raw[key] = env[var]
        return cls(**raw).check()

    def check(self) -> "HandlerConfig":
        """Ranges and choices of every setting (a config file is input too)."""
        limits = current_limits()
        choices = {"backend": BACKENDS, "precision": PRECISIONS}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"handler.{key}={getattr(self, key)!r}: expected one of {', '.join(allowed)}")
        for key in ("compile", "warmup"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"handler.{key}={getattr(self, key)!r}: expected true or false")
        bounds = {"max_frames": (2, limits.max_video_frames), "max_video_frames": (2, limits.max_video_frames),
                  "plane_cache_size": (0, limits.max_cache_entries),
                  "adapter_cache_size": (0, limits.max_cache_entries),
                  "plane_cache_mb": (0, limits.max_plane_cache_mb), "threads": (1, limits.max_workers),
                  "jpeg_quality": (1, 100), "max_budget_ms": (1, 86_400_000), "default_budget_ms": (1, 86_400_000)}
        for key, (lo, hi) in bounds.items():
            v = getattr(self, key)
            if v is None and key in ("threads", "default_budget_ms"):
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
                raise ValueError(f"handler.{key}={v!r}: expected a number in [{lo}, {hi}]")
        return self


def worker_threads(max_workers: Any, cores: Optional[int] = None) -> int:
    """Intra-op threads of one worker when the config names none: the cores this process may use, shared by the
    model's maxWorkers (each worker is a process with its own onnxruntime thread pool)."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        workers = max(1, int(max_workers))
    except (TypeError, ValueError):
        workers = 1
    return max(1, cores // workers)


def encode(pixels: np.ndarray, output: Output, default_quality: int = 90) -> bytes:
    """HWC uint8 -> PNG or JPEG bytes (JPEG quality: the request's, else `default_quality`)."""
    img = Image.fromarray(pixels)
    buf = io.BytesIO()
    if output.format == "png":
        img.save(buf, format="PNG")
    else:
        img.save(buf, format="JPEG", quality=output.quality if output.quality is not None else default_quality)
    return buf.getvalue()


def strip(frames: list) -> np.ndarray:
    """Square HWC uint8 frames side by side, no gaps: frame i is columns [i*S, (i+1)*S)."""
    return np.concatenate(frames, axis=1)


def server_timing(timings: dict) -> str:
    """A `Server-Timing` header value: `name;dur=ms` items (stage names are plain tokens)."""
    return ", ".join(f"{k};dur={v:.3f}" for k, v in timings.items())


class Service:
    """One model's request handling: validation, runtime calls, encoding, error mapping."""

    def __init__(self, runtime: Runtime, model_name: str, cfg: HandlerConfig, people_dir: Optional[Path]):
        self.rt = runtime
        self.model_name = model_name
        self.cfg = cfg
        self.people_dir = people_dir
        self._folders = [people_dir] if people_dir is not None else []
        """Folders no message sent to a client may name (formats.errors.without_paths)."""
        lim = runtime.limits
        self.limits = HttpLimits(max_abs_yaw=lim.max_abs_yaw, max_abs_pitch=lim.max_abs_pitch,
                             max_frames=min(cfg.max_frames, lim.max_frames), image_size=runtime.image_size,
                             default_budget_ms=cfg.default_budget_ms, max_budget_ms=float(cfg.max_budget_ms),
                             max_video_frames=min(cfg.max_video_frames, lim.max_frames))
        self.metrics = ServeMetrics(model_name, runtime.backend.name)
        self._batched: dict[int, Any] = {}
        """Request index -> RenderResult or RuntimeErrorBase rendered ahead by `render_batched` (this batch)."""
        self._batched_cache: dict[int, dict] = {}

    @classmethod
    def from_context(cls, context: Any) -> "Service":
        """Build from TorchServe's context: the extracted archive folder, the model name and model-config."""
        props = context.system_properties
        model_dir = Path(props["model_dir"])
        yaml_cfg = getattr(context, "model_yaml_config", None) or {}
        cfg = HandlerConfig.from_dict(yaml_cfg.get("handler"))
        model_name = str(getattr(context, "model_name", "") or "")
        if not is_valid_name(model_name):
            raise ValueError(f"model name {model_name!r} is not a valid name ({NAME_RULE})")
        root = os.environ.get(PEOPLE_ROOT_ENV) or cfg.people_root
        people_dir = None
        if root:
            people_dir = Path(root).resolve() / model_name
            people_dir.mkdir(parents=True, exist_ok=True)
        else:
            logger.warning("no people folder (%s unset and no handler.people_root): serving the base model only",
                           PEOPLE_ROOT_ENV)
        export_dir = (model_dir / cfg.export_subdir).resolve()
        if not export_dir.is_dir():
            raise FileNotFoundError(f"{export_dir}: the archive has no exported model folder "
                                    f"'{cfg.export_subdir}' (package it with `cli.py package`)")
        threads = cfg.threads or worker_threads(yaml_cfg.get("maxWorkers"))
        gpu = props.get("gpu_id")
        device = f"cuda:{int(gpu)}" if gpu is not None and cfg.backend in ("auto", "torch") else None
        rt = Runtime(export_dir, people_dir=people_dir, providers=cfg.providers, backend=cfg.backend,
                     precision=cfg.precision, device=device, compile=cfg.compile,
                     plane_cache_size=cfg.plane_cache_size, plane_cache_bytes=int(cfg.plane_cache_mb * 2 ** 20),
                     adapter_cache_size=cfg.adapter_cache_size, threads=threads)
        size = rt.image_size
        if cfg.warmup:
            rt.warmup()
        logger.info("my3dgen handler ready: model %s, export %s, people %s, image %dx%d, %d threads, backend %s "
                    "(%s; %s)", model_name, export_dir, people_dir, size, size, threads, rt.backend.name,
                    rt.backend.precision, rt.backend_reason)
        return cls(rt, model_name, cfg, people_dir)

    # ---------------------------------------------------------------- request handling
    def handle_one(self, raw: Any, idx: int, context: Any) -> Any:
        """One request -> response body; sets status, content type and headers on `context` for index `idx`,
        and counts the request in the metrics (op, status, stage times, plane-cache lookups, budget refusals)."""
        outcome = Outcome()
        before = self.rt.counters
        body = self._respond(raw, idx, context, outcome)
        cache = self._batched_cache.pop(idx, None) or cache_delta(before, self.rt.counters)
        self.metrics.record(context, idx, outcome, cache, self.rt.planes.stats())
        return body

    def render_batched(self, raws: list) -> None:
        """TorchServe batching (batchSize > 1): render the batch's novel views together, in as few graph runs as
        `Runtime.render_batch` plans (one per person, or mixed-person graphs), before each request is answered on
        its own by `handle_one`. A view with a latency budget (every request has one when the model config sets
        `default_budget_ms`, as `cli.py package` does) joins when the budget covers the whole batch by the stage
        estimates (one synthesis and one render per sample: an upper bound); a joined view that finished late is
        answered 504, as alone. Anything else, or any failure here, is left to `handle_one`."""
        self._batched.clear()
        self._batched_cache.clear()
        views = []
        for idx, raw in enumerate(raws):
            try:
                req = parse_request(raw, self.limits)
                if isinstance(req, NovelView):
                    if req.person is not None:
                        self._check_person(req.person)
                    views.append((idx, req))
            except Exception:  # noqa: BLE001 - the request gets its error when handled on its own
                continue
        planned = len(views) * (self.rt.budget.estimate("synthesis") + self.rt.budget.estimate("render"))
        picked = [(idx, r) for idx, r in views if r.budget_ms is None or r.budget_ms >= planned]
        if len(picked) < 2:
            return
        try:
            done = self.rt.render_batch([ViewRequest(r.person, r.anchor, r.latent, r.yaw, r.pitch) for _, r in picked])
        except Exception as e:  # noqa: BLE001 - each request is then rendered on its own
            logger.warning("batched rendering failed (%s: %s); rendering the batch one by one", type(e).__name__, e)
            return
        for (idx, req), res in zip(picked, done):
            if isinstance(res, RenderResult):
                self._batched_cache[idx] = {"hit": int(res.cache_hit), "miss": int(not res.cache_hit)}
                try:
                    self.rt.budget.check_after(req.budget_ms, res.timings["total"], 1, 1, res)
                except BudgetExceeded as late:
                    res = late
            self._batched[idx] = res

    def _respond(self, raw: Any, idx: int, context: Any, outcome: Outcome) -> Any:
        t0 = time.perf_counter()
        try:
            req = parse_request(raw, self.limits)
            outcome.op = _OPS[type(req)]
            t_parse = (time.perf_counter() - t0) * 1000
            return self._dispatch(req, idx, context, t0, t_parse, outcome)
        except RequestError as e:
            return self._error(context, idx, e, outcome, raw)
        except RuntimeErrorBase as e:
            return self._error(context, idx, self._map_runtime_error(e, raw), outcome, raw)
        except MemoryError:
            logger.error("out of memory in request %d", idx, exc_info=True)
            return self._error(context, idx, RequestError(507, "body", "out of memory", "out_of_resources"), outcome,
                               raw)
        except Exception as e:  # noqa: BLE001 - the worker must survive any request
            ref = uuid.uuid4().hex[:12]
            logger.error("internal error %s in request %d: %s", ref, idx, e, exc_info=True)
            return self._error(context, idx, RequestError(500, "body", f"internal error (reference {ref}: "
                                                                       f"{type(e).__name__})", "internal"), outcome,
                               raw)

    def _dispatch(self, req: Request, idx: int, context: Any, t0: float, t_parse: float, outcome: Outcome) -> Any:
        if isinstance(req, People):
            return self._json(context, idx, {"model": self.model_name, "people": sorted(self.rt.people())})
        if isinstance(req, PersonInfo):
            self._check_person(req.person)
            info = self.rt.person_info(req.person)
            return self._json(context, idx, {"model": self.model_name, "person": req.person,
                                             "info": json.loads(json.dumps(info, default=str))})
        if req.person is not None:
            self._check_person(req.person)
        if isinstance(req, Video):
            return self._video(context, idx, req, t0, t_parse, outcome)
        if isinstance(req, NovelView):
            done = self._batched.pop(idx, None)
            if isinstance(done, RuntimeErrorBase):
                raise done
            results = [done] if done is not None else [
                self.rt.novel_view(req.person, anchor=req.anchor, latent=req.latent, yaw=req.yaw, pitch=req.pitch,
                                   budget_ms=req.budget_ms)]
        else:
            results = self._interpolate(req, t0)
        return self._images(context, idx, req, results, t0, t_parse, outcome)

    def _interpolate(self, req: Interpolate, t0: float) -> list[RenderResult]:
        results = []
        for t in req.ts:
            budget = None
            if req.budget_ms is not None:
                budget = req.budget_ms - (time.perf_counter() - t0) * 1000
                if budget <= 0:
                    raise RequestError(504, "budget_ms", f"budget_ms={req.budget_ms:g} exhausted after "
                                                         f"{len(results)} of {len(req.ts)} frames",
                                       "budget_exceeded")
            results.append(self.rt.interpolate(req.person, req.a, req.b, t, yaw=req.yaw, pitch=req.pitch,
                                               budget_ms=budget))
        return results

    def _check_person(self, person: str) -> None:
        """404 before the runtime touches anything when the person's adapter file does not exist (one stat call,
        not a folder listing, so the cost does not grow with the number of people)."""
        if self.people_dir is not None:
            known = (self.people_dir / f"{person}.safetensors").is_file()
        else:
            known = person in self.rt.people()
        if not known:
            raise RequestError(404, "person", f"unknown person {person!r} for model {self.model_name!r}",
                               "unknown_person")

    @staticmethod
    def _summary(results: list[RenderResult], t_parse: float) -> tuple[dict, int, str]:
        """Stage timings summed over the results (plus parsing), how many hit the plane cache, the cache header."""
        timings = {"parse": t_parse}
        for r in results:
            for k, v in r.timings.items():
                timings[k] = timings.get(k, 0.0) + float(v)
        hits = sum(r.cache_hit for r in results)
        cache = "hit" if hits == len(results) else "miss" if hits == 0 else f"partial-{hits}/{len(results)}"
        return timings, hits, cache

    def _video(self, context: Any, idx: int, req: Video, t0: float, t_parse: float, outcome: Outcome) -> bytes:
        results = render_video(self.rt, req.kind, req.person, anchor=req.anchor, latent=req.latent, a=req.a,
                               b=req.b, frames=req.frames, budget_ms=req.budget_ms)
        t_enc = time.perf_counter()
        video = encode_video(video_frames(results, req.size), req.format, req.fps)
        timings, _, cache = self._summary(results, t_parse)
        timings["encode"] = (time.perf_counter() - t_enc) * 1000
        timings["handler"] = (time.perf_counter() - t0) * 1000
        outcome.timings = timings
        context.set_response_status(200, "OK", idx=idx)
        context.set_response_content_type(idx, video.content_type)
        context.set_response_header(idx, "Server-Timing", server_timing(timings))
        context.set_response_header(idx, "X-My3DGen-Cache", cache)
        context.set_response_header(idx, "X-My3DGen-Frames", str(video.info.frames))
        context.set_response_header(idx, "X-My3DGen-Frame-Size", str(video.info.width))
        context.set_response_header(idx, "X-My3DGen-Fps", f"{video.info.fps:g}")
        if video.info.note:
            context.set_response_header(idx, "X-My3DGen-Note", video.info.note)
        return video.data

    def _images(self, context: Any, idx: int, req: NovelView | Interpolate, results: list[RenderResult], t0: float,
                t_parse: float, outcome: Outcome) -> Any:
        t_enc = time.perf_counter()
        out = req.output
        frames = video_frames(results, out.size)  # the runtime's own uint8 rounding, Lanczos resize
        size = frames[0].shape[0]
        timings, hits, cache = self._summary(results, t_parse)
        outcome.timings = timings
        if out.response == "json":
            encoded = [base64.b64encode(encode(f, out, self.cfg.jpeg_quality)).decode("ascii") for f in frames]
            timings["encode"] = (time.perf_counter() - t_enc) * 1000
            timings["handler"] = (time.perf_counter() - t0) * 1000
            body = {"model": self.model_name, "person": req.person, "format": out.format, "width": size,
                    "height": size, "timings": timings, "cache_hit": hits == len(results)}
            if isinstance(req, Interpolate) and req.frames:
                body.update(frames=encoded, ts=list(req.ts))
            else:
                body["image"] = encoded[0]
            return self._json(context, idx, body)
        data = encode(strip(frames) if len(frames) > 1 else frames[0], out, self.cfg.jpeg_quality)
        timings["encode"] = (time.perf_counter() - t_enc) * 1000
        timings["handler"] = (time.perf_counter() - t0) * 1000
        context.set_response_status(200, "OK", idx=idx)
        context.set_response_content_type(idx, out.content_type)
        context.set_response_header(idx, "Server-Timing", server_timing(timings))
        context.set_response_header(idx, "X-My3DGen-Cache", cache)
        context.set_response_header(idx, "X-My3DGen-Frames", str(len(frames)))
        context.set_response_header(idx, "X-My3DGen-Frame-Size", str(size))
        return data

    # ---------------------------------------------------------------- responses and errors
    @staticmethod
    def _json(context: Any, idx: int, body: dict, status: int = 200, phrase: str = "OK") -> str:
        context.set_response_status(status, phrase, idx=idx)
        context.set_response_content_type(idx, "application/json")
        return json.dumps(body)

    def _error(self, context: Any, idx: int, e: RequestError, outcome: Outcome, raw: Any) -> str:
        logger.info("request %d refused: %d %s (%s)", idx, e.status, e.field, e.message)
        outcome.status = e.status
        if outcome.op == "invalid":
            op = _field_of(raw, "op")
            outcome.op = op if isinstance(op, str) and op in FIELDS else "invalid"
        if e.kind == "budget_exceeded":
            outcome.budget_refusal = "before" if e.status == 503 else "after"
        body = {**e.to_dict(), "error": without_paths(e.message, self._folders)}
        return self._json(context, idx, body, e.status, _PHRASES.get(e.status, "Error"))

    def _map_runtime_error(self, e: RuntimeErrorBase, raw: Any) -> RequestError:
        msg = without_paths(str(e) or type(e).__name__, self._folders)
        if isinstance(e, UnknownPerson):
            return RequestError(404, "person", msg, "unknown_person")
        if isinstance(e, AdapterInvalid):
            person = _field_of(raw, "person")
            name = f"people/{self.model_name}/{person}.safetensors" if isinstance(person, str) else "adapter file"
            return RequestError(422, "person", f"{name}: {without_paths(e.reason, self._folders)}",
                                "adapter_invalid")
        if isinstance(e, BudgetExceeded):
            return RequestError(503 if e.before_running else 504, "budget_ms", msg, "budget_exceeded")
        if isinstance(e, InvalidRequest):
            return RequestError(400, e.field, msg)
        return RequestError(500, "body", msg, "runtime_error")


_OPS = {NovelView: "novel_view", Interpolate: "interpolate", Video: "video", People: "people",
        PersonInfo: "person"}
"""The op label of each parsed request type (serve/metrics.py)."""

_PHRASES = {400: "Bad Request", 404: "Not Found", 413: "Payload Too Large", 422: "Unprocessable Entity",
            500: "Internal Server Error", 503: "Service Unavailable", 504: "Gateway Timeout",
            507: "Insufficient Storage"}


def _field_of(raw: Any, name: str) -> Any:
    try:
        body = raw if isinstance(raw, dict) else json.loads(bytes(raw).decode("utf-8") if isinstance(
            raw, (bytes, bytearray)) else raw)
        return body.get(name) if isinstance(body, dict) else None
    except Exception:  # noqa: BLE001 - only used to word an error message
        return None


_SERVICE: Optional[Service] = None


def handle(data: Optional[list], context: Any) -> Optional[list]:
    """TorchServe entry point: `handle(None, context)` initializes; otherwise one response per request."""
    global _SERVICE
    if _SERVICE is None:
        _SERVICE = Service.from_context(context)
    if data is None:
        return None
    raws = [item.get("body") if isinstance(item, dict) and item.get("body") is not None else (
        item.get("data") if isinstance(item, dict) else None) for item in data]
    if len(raws) > 1:  # batchSize > 1: the batch's novel views share graph runs
        _SERVICE.render_batched(raws)
    return [_SERVICE.handle_one(raw, idx, context) for idx, raw in enumerate(raws)]
