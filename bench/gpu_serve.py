"""The GPU check's `serve` section (issue 25): the serving path on the torch backend, measured against the targets.

    python -m bench.gpu_check --sections env,serve [--dry-run]

Setup (each step timed): the check's preset with random weights (ffhq512-128 on the GPU, tiny in a dry run),
`serve_people` people as adapter files with random non-zero LoRA B (so they differ; bench.serve_load.make_person),
and a keep-LoRA export with mixed_batch = `serve_batch` (verify off) in a temporary folder.

Path: where `java` and TorchServe (`import ts`) are present and this is not a dry run, the export is packaged per
precision (serve.package, backend torch, batchSize = serve_batch) and served on free loopback ports; the latency and
throughput rows are then also measured over HTTP (bench.serve_load.run_load). Everything is always measured in
this process too, through the handler the workers run (serve.handler.Service over a
`Runtime(backend="torch")`, `render_batched` + `handle_one` per batch as TorchServe's `handle` calls them), and
where TorchServe cannot start that is the path recorded, said so in the report.

Per precision (fp32; on CUDA also fp16 and bf16), with JPEG answers (a 512² PNG costs tens of ms to encode):
  latency      one client, novel views of a cached person (same anchor, so cached tri-planes; yaw varied): p50, p90
               and the handler's own render / encode times;
  same         batches of `serve_batch` novel views of one person (cached planes, varied yaws): views/s;
  mixed        batches of `serve_batch` different people (cached planes): views/s and mixed / same;
  swap         median novel view alternating two people minus the median with one person (the backend's adapter
               slot copies show the swaps happened);
  graphs       CUDA graphs captured (keys, capture seconds); VRAM per cached person (planes + adapter tensors:
               memory_allocated before/after caching people) and the graphs' private pool (memory reserved but not
               allocated after empty_cache);
  parity       Runtime (static path) against eager G (adapter attached by generator.lora.attach / attach_mixed,
               no_grad, deterministic sampling, const noise, fused_modconv off) for novel view, interpolate, orbit
               frames, render_batch of one person and a mixed render_batch: max |diff| of image, image_raw and
               depth against fp32 eager (PARITY_TOL) and, below fp32, against eager at the same precision;
  budget       a request whose budget_ms cannot be met gets the handler's 503 before anything runs.
Targets (SERVE_TARGETS) apply on CUDA only; a dry run marks them 'n/a (dry run)'.

CheckConfig settings: serve_people, serve_batch (TorchServe batchSize and the export's mixed_batch),
serve_precisions (CUDA; the CPU runs fp32 only), serve_repeats (timed requests or batches per measure, after
`warmup`), serve_frames (orbit frames compared with eager), serve_batch_delay_ms (TorchServe maxBatchDelay),
serve_budget_s (precisions after the first, and TorchServe, are skipped once the measures ran this long) and
serve_export (`--serve-export DIR`: serve that keep-LoRA export with mixed graphs, its generator and mixed_batch,
instead of exporting: the ONNX export is most of the section's time on a CPU).
"""
from __future__ import annotations

import gc
import importlib.util
import itertools
import json
import math
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.gpu_common import autocast, cell as _cell, generator_of, sync as _sync, times
from fixtures.torchserve_context import Context

SERVE_TARGETS = {"p50_ms": (25.0, "1-client p50 of a cached 512² novel view (ms)"),
                 "views_per_s": (150.0, "views/s at 8 clients, server-side batching"),
                 "mixed_over_same": (0.9, "mixed-people throughput / same-person"),
                 "swap_ms": (1.0, "person swap (ms)")}
"""name -> (bound, what): issue 25's targets; FLOORS are minimums, the others maximums."""
FLOORS = ("views_per_s", "mixed_over_same")
PARITY_TOL = {"fp32": 1e-5, "fp16": 1e-2, "bf16": 1e-2}
"""Max |diff| of image, image_raw and depth against fp32 eager (issue 25)."""
OUTPUTS = ("image", "image_raw", "depth")
NAME = "serve"
"""The model name the in-process handler serves (and the archive prefix over HTTP)."""


def _ms(seconds: list[float], q: float = 50) -> float:
    return round(float(np.percentile(np.asarray(seconds) * 1e3, q)), 3)


def _yaws():
    """An endless sequence of distinct yaws within the request limits (each view a new camera)."""
    for k in itertools.count():
        yield round(0.45 * math.sin(0.7 * k + 0.1), 6)


def _body(person: str, yaw: float, **extra) -> bytes:
    return json.dumps({"op": "novel_view", "person": person, "anchor": 0, "yaw": yaw, "pitch": 0.05,
                       "format": "jpeg", **extra}).encode()


def _handle(svc, raws: list[bytes], expect: int = 200) -> Context:
    """What serve.handler.handle does with one TorchServe batch (without its module-level service)."""
    ctx = Context()
    if len(raws) > 1:
        svc.render_batched(raws)
    bodies = [svc.handle_one(raw, i, ctx) for i, raw in enumerate(raws)]
    bad = {i: (s, bodies[i][:300] if isinstance(bodies[i], str) else "") for i, s in ctx.status.items() if s != expect}
    if bad:
        raise RuntimeError(f"handler answered {bad}")
    return ctx


def _server_timing(ctx: Context, key: str) -> float | None:
    m = re.search(rf"(?:^|,\s*){key};dur=([0-9.]+)", ctx.headers.get(0, {}).get("Server-Timing", ""))
    return float(m.group(1)) if m else None


def _meets(name: str, value) -> bool | None:
    if value is None:
        return None
    bound = SERVE_TARGETS[name][0]
    return value >= bound if name in FLOORS else value <= bound


# ------------------------------------------------------------------------------------------ setup

def _setup(cfg, work: Path) -> tuple[dict, dict]:
    """Generator, people and export (or cfg.serve_export's export, its generator and mixed_batch), each timed."""
    from fixtures.people import make_person
    from export.exporter import export_generator
    from export.options import ExportOptions
    from formats.export_manifest import ExportManifest
    from generator.model_dir import load_model_dir
    times: dict[str, float] = {}
    t = time.perf_counter()
    export, batch = None, cfg.serve_batch
    if cfg.serve_export:
        export = Path(cfg.serve_export)
        m = ExportManifest.read(export)
        if m.mode != "keep-lora" or not m.mixed_batch or m.torch_model is None:
            raise ValueError(f"serve_export={export}: needs a keep-LoRA export with mixed graphs and a torch model")
        G, batch = load_model_dir(m.torch_model[0]).eval().requires_grad_(False), m.mixed_batch
    else:
        G = generator_of(cfg.preset, cfg.seed, torch.device("cpu"))
    times["generator_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    people = work / "people"
    people.mkdir(parents=True)
    files = {f"person{k}": make_person(G, people / f"person{k}.safetensors", seed=cfg.seed + 101 + k)
             for k in range(cfg.serve_people)}
    times["people_s"] = round(time.perf_counter() - t, 2)
    if export is None:
        t = time.perf_counter()
        export = export_generator(G, work / "export", options=ExportOptions(mode="keep", mixed_batch=batch,
                                                                           verify=False))
        times["export_s"] = round(time.perf_counter() - t, 2)
    return times, {"G": G, "people": people, "files": files, "export": export, "batch": batch}


def _http_available(dry_run: bool) -> tuple[bool, str]:
    if dry_run:
        return False, "in-process handler (dry run: TorchServe not started)"
    if shutil.which("java") is None or importlib.util.find_spec("ts") is None:
        return False, "in-process handler (no Java/TorchServe here)"
    return True, "TorchServe over HTTP (loopback), and the in-process handler"


# ------------------------------------------------------------------------------------------ the section

def section_serve(cfg, device: torch.device, progress: Callable[[dict], None] | None = None,
                  dry_run: bool | None = None) -> dict:
    """The serve section (module docstring); `dry_run` None: a tiny preset or a CPU means one."""
    from generator.adapter_file import load_adapter
    dry = (cfg.preset == "tiny" or device.type != "cuda") if dry_run is None else dry_run
    precisions = tuple(p for p in cfg.serve_precisions if device.type == "cuda" or p == "fp32")
    out: dict[str, Any] = {"preset": cfg.preset, "people": cfg.serve_people, "precisions": list(precisions),
                           "answer_format": "jpeg", "java": shutil.which("java"),
                           "torchserve": importlib.util.find_spec("ts") is not None,
                           "export": cfg.serve_export or "made here (keep-LoRA, mixed graphs, verify off)"}
    with tempfile.TemporaryDirectory(prefix="gpu_serve_") as tmp:
        out["setup"], work = _setup(cfg, Path(tmp))
        G, out["batch"] = work["G"], work["batch"]
        if cfg.serve_export:
            out["preset"] = f"the given export's ({G.img_resolution}² output)"
        adapters = {n: load_adapter(f, G)[0].requires_grad_(False).to(device) for n, f in work["files"].items()}
        G.to(device)
        http, out["path"] = _http_available(dry)
        out["packaged_batching"] = _packaged_batching(work["batch"])
        rows, parity, budget = [], [], []
        t_start = time.perf_counter()
        for prec in precisions:
            if rows and time.perf_counter() - t_start > cfg.serve_budget_s:
                rows.append({"precision": prec, "skipped": f"serve_budget_s={cfg.serve_budget_s:g} spent"})
                continue
            try:
                row, par, bud = _precision(cfg, device, prec, work, adapters)
                rows.append(row)
                parity += par
                budget.append(bud)
            except Exception as e:  # noqa: BLE001 - one precision failing must not hide the others
                rows.append({"precision": prec, "error": f"{type(e).__name__}: {e}"[:600]})
            finally:
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            if progress is not None:
                progress({**out, "rows": rows, "parity": parity, "budget": budget})
        out.update(rows=rows, parity=parity, budget=budget)
        if http and time.perf_counter() - t_start > cfg.serve_budget_s:
            out["http"] = {"skipped": f"serve_budget_s={cfg.serve_budget_s:g} spent"}
            out["path"] = "in-process handler (TorchServe present, not started: the section's time budget was spent)"
        elif http:
            try:
                out["http"] = _http(cfg, work, [r["precision"] for r in rows if "error" not in r and "skipped"
                                                 not in r])
            except Exception as e:  # noqa: BLE001 - the in-process numbers stand
                out["http"] = {"error": f"{type(e).__name__}: {e}"[:600]}
                out["path"] = f"in-process handler (TorchServe failed to serve: {out['http']['error'][:200]})"
    out["targets"] = _targets(rows, out.get("http"), device, dry)
    out["parity_passed"] = bool(parity) and all(p["passed"] for p in parity)
    out["budget_passed"] = bool(budget) and all(b["passed"] for b in budget)
    return out


def _packaged_batching(batch: int) -> dict:
    """Whether a packaged model's handler batches novel views: `render_batched` takes only requests without a
    budget, and a packaged model-config gives every request a default budget."""
    from serve.handler import HandlerConfig
    from serve.package import PackageConfig
    raw = PackageConfig(name=NAME, backend="torch", batch_size=batch).model_config()["handler"]
    default = HandlerConfig.from_dict(raw, environ={}).default_budget_ms
    return {"default_budget_ms": default, "batches_novel_views": default is None,
            "note": None if default is None else "serve/handler.py render_batched batches only requests without "
            "budget_ms, and serve/package.py model_config sets default_budget_ms (80% of responseTimeout) for every "
            "request: over TorchServe no novel view is batched today; the in-process handler here has no default "
            "budget, so its batches are rendered together"}


def _precision(cfg, device: torch.device, prec: str, work: dict, adapters: dict) -> tuple[dict, list, dict]:
    from runtime import Runtime
    from serve.handler import HandlerConfig, Service
    cuda = device.type == "cuda"
    names = list(work["files"])
    B, yaws = work["batch"], _yaws()
    row: dict[str, Any] = {"precision": prec}
    if cuda:
        torch.cuda.empty_cache()
        base_alloc = torch.cuda.memory_allocated(device)
        base_free = torch.cuda.memory_reserved(device) - base_alloc
    t = time.perf_counter()
    rt = Runtime(work["export"], work["people"], backend="torch", device=str(device), precision=prec,
                 plane_cache_size=64, plane_cache_bytes=1 << 30)
    svc = Service(rt, NAME, HandlerConfig(backend="torch", precision=prec, warmup=False).check(), work["people"])
    row["runtime_s"] = round(time.perf_counter() - t, 2)
    try:
        if cuda:
            row["weights_mib"] = round((torch.cuda.memory_allocated(device) - base_alloc) / 2**20, 1)
            torch.cuda.reset_peak_memory_stats(device)
        # the first person's first view captures the one-person keys (planes/1, render/1), then VRAM per person
        rt.novel_view(names[0], anchor=0)
        _sync(device)
        before = torch.cuda.memory_allocated(device) if cuda else 0
        for name in names[1:]:
            rt.novel_view(name, anchor=0)
        _sync(device)
        cached = len(names) - 1
        planes = rt.planes.stats()
        row["plane_bytes_per_entry"] = planes["bytes"] // max(planes["size"], 1)
        if cuda and cached:
            per = (torch.cuda.memory_allocated(device) - before) / cached
            row["vram_per_cached_person_mib"] = round(per / 2**20, 3)
            row["adapter_mib_per_person"] = round((per - row["plane_bytes_per_entry"]) / 2**20, 3)

        w, r = cfg.warmup, cfg.serve_repeats
        one = [], []

        def one_client():
            ctx = _handle(svc, [_body(names[0], next(yaws))])
            one[0].append(_server_timing(ctx, "render"))
            one[1].append(_server_timing(ctx, "encode"))
        lat = times(one_client, device, w, r)
        row.update(p50_ms=_ms(lat), p90_ms=_ms(lat, 90), render_ms=_median(one[0][w:]),
                   encode_ms=_median(one[1][w:]))

        def batches(people: list[str]) -> dict:
            runs = rt.counters.get("render_runs", 0)
            s = times(lambda: _handle(svc, [_body(p, next(yaws)) for p in people]), device, w, r)
            per_batch = (rt.counters.get("render_runs", 0) - runs) / (w + r)
            return {"views_per_s": round(B / float(np.median(s)), 2), "batch_ms": _ms(s),
                    "render_runs_per_batch": round(per_batch, 2)}
        same = batches([names[0]] * B)
        mixed = batches([names[k % len(names)] for k in range(B)])
        row.update(same_views_per_s=same["views_per_s"], same_batch_ms=same["batch_ms"],
                   same_render_runs_per_batch=same["render_runs_per_batch"],
                   mixed_views_per_s=mixed["views_per_s"], mixed_batch_ms=mixed["batch_ms"],
                   mixed_render_runs_per_batch=mixed["render_runs_per_batch"],
                   mixed_over_same=round(mixed["views_per_s"] / same["views_per_s"], 3))
        row.update(_swap(rt, names, device, w, r, yaws))
        if cuda:  # before parity, whose eager runs are no part of serving
            row["peak_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        parity = _parity(cfg, rt, device, prec, work, adapters)
        budget = _budget(svc, names[0], prec)
        g = rt.stats()["backend"]["graphs"]
        row.update(graphs=g["graphs"], captures=g["captures"], capture_s=g["capture_s"], replays=g["replays"],
                   eager_runs=g["eager_runs"], graph_keys=[":".join(map(str, k)) for k in g["keys"]])
        if cuda:
            torch.cuda.empty_cache()
            free = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
            row["graph_pool_mib"] = round((free - base_free) / 2**20, 1)
        return row, parity, budget
    finally:
        rt.backend.close()  # its graphs, slots and device adapters; the rest goes with this frame


def _median(values: list) -> float | None:
    v = [x for x in values if x is not None]
    return round(float(np.median(v)), 3) if v else None


def _slot_copies(rt) -> int:
    return sum(s["copies"] for s in rt.stats()["backend"].get("adapter_slots", {}).values())


def _swap(rt, names: list[str], device, warmup: int, repeats: int, yaws) -> dict:
    """Median cached novel view alternating two people minus the median with one person."""
    a, b = names[0], names[1 % len(names)]
    same = times(lambda: rt.novel_view(a, anchor=0, yaw=next(yaws)), device, warmup, repeats)
    turn = itertools.cycle([b, a])
    copies = _slot_copies(rt)
    alt = times(lambda: rt.novel_view(next(turn), anchor=0, yaw=next(yaws)), device, warmup, repeats)
    same_ms, alt_ms = float(np.median(same)) * 1e3, float(np.median(alt)) * 1e3
    return {"view_same_person_ms": round(same_ms, 3), "view_alternating_ms": round(alt_ms, 3),
            "swap_ms": round(alt_ms - same_ms, 3), "swap_copies": _slot_copies(rt) - copies}


# ------------------------------------------------------------------------------------------ parity and budget

def _eager(G, ws: np.ndarray, c: np.ndarray, adapters: list, index: list[int] | None, device, prec: str) -> dict:
    """Eager G: the adapter attached (or one per sample), no_grad, the backend's rendering mode and precision."""
    from generator.lora import attach, attach_mixed, detach
    ws_t = torch.from_numpy(np.ascontiguousarray(ws, np.float32)).to(device)
    c_t = torch.from_numpy(np.ascontiguousarray(c, np.float32)).to(device)
    try:
        if index is None:
            attach(G, adapters[0])
        else:
            attach_mixed(G, adapters, torch.tensor(index, device=device))
        with torch.no_grad(), autocast(device, prec):
            planes = G.planes(ws_t, noise_mode="const", fused_modconv=False).float()
        with torch.no_grad(), autocast(device, prec):
            o = G.render_planes(planes, ws_t, c_t, sampling="deterministic", fused_modconv=False)
    finally:
        detach(G)
    return {"image": o["image"], "image_raw": o["image_raw"], "depth": o["image_depth"]}


def _parity(cfg, rt, device, prec: str, work: dict, adapters: dict) -> list[dict]:
    """Each operation through the Runtime against eager G: rows of max |diff| per output."""
    from runtime.batching import ViewRequest
    G, names, B = work["G"], list(work["files"]), work["batch"]
    P = len(names)
    gen = np.random.default_rng(cfg.seed + 5)
    with torch.no_grad():
        z = torch.from_numpy(gen.standard_normal((2 * B + 2, G.z_dim)).astype(np.float32)).to(device)
        cz = torch.from_numpy(np.repeat(rt.backend.camera(0.0, 0.0), len(z), 0).astype(np.float32)).to(device)
        ws = G.mapping(z, cz, truncation_psi=0.7).float().cpu().numpy()  # distinct latents: no plane shared by ops
    cam = lambda y, p: rt.backend.camera(y, p)  # noqa: E731
    ad = lambda n: adapters[n]  # noqa: E731
    cases = []  # (op, results, [(ws, c, adapters, index)] eager calls whose outputs concatenate to the results)
    r = rt.novel_view(names[0], latent=ws[0], yaw=0.3, pitch=0.05)
    cases.append(("novel_view", [r], [(ws[:1], cam(0.3, 0.05), [ad(names[0])], None)]))
    person = rt.people_store.get(names[1 % P])
    w = ((1.0 - 0.5) * person.anchor_latent(0) + 0.5 * person.anchor_latent(1)).astype(np.float32)
    r = rt.interpolate(names[1 % P], 0, 1, 0.5, yaw=-0.2)
    cases.append(("interpolate", [r], [(w[None], cam(-0.2, 0.0), [ad(names[1 % P])], None)]))
    rs = rt.orbit(names[0], latent=ws[1], frames=cfg.serve_frames)
    cases.append(("orbit", rs, [(ws[1:2], cam(x.yaw, x.pitch), [ad(names[0])], None) for x in rs]))
    yaws = [0.4 * (k / max(B - 1, 1)) - 0.2 for k in range(B)]
    rs = rt.render_batch([ViewRequest(names[0], latent=ws[2 + k], yaw=yaws[k]) for k in range(B)])
    cases.append(("render_batch", rs, [(ws[2:2 + B], np.concatenate([cam(y, 0.0) for y in yaws]), [ad(names[0])],
                                        None)]))
    who = [names[k % P] for k in range(B)]
    rs = rt.render_batch([ViewRequest(who[k], latent=ws[2 + B + k], yaw=yaws[k]) for k in range(B)])
    cases.append(("render_batch_mixed", rs, [(ws[2 + B:], np.concatenate([cam(y, 0.0) for y in yaws]),
                                              [ad(n) for n in names], [names.index(n) for n in who])]))
    rows = []
    for op, results, calls in cases:
        got = {k: np.concatenate([getattr(x, k)[None] for x in results]) for k in OUTPUTS}
        row = {"precision": prec, "op": op, "samples": len(results), "tolerance": PARITY_TOL[prec]}
        refs = {"fp32": prec} if prec == "fp32" else {"fp32": "fp32", "same": prec}
        for label, ref_prec in refs.items():
            want = [_eager(G, *call, device, ref_prec) for call in calls]
            diff = {k: float(np.abs(got[k] - torch.cat([x[k] for x in want]).float().cpu().numpy()).max())
                    for k in OUTPUTS}
            row["vs_eager_fp32" if label == "fp32" else "vs_eager_same_precision"] = diff
        row["passed"] = max(row["vs_eager_fp32"].values()) <= PARITY_TOL[prec]
        rows.append(row)
    return rows


def _budget(svc, person: str, prec: str) -> dict:
    """A budget the estimates cannot meet: the handler's 503 before anything runs (as on every backend)."""
    runs = dict(svc.rt.counters)
    ctx = Context()
    body = svc.handle_one(_body(person, 0.123, budget_ms=0.01), 0, ctx)
    after = svc.rt.counters
    ran = any(after.get(k, 0) != runs.get(k, 0) for k in ("render_runs", "synthesis_runs"))
    err = json.loads(body) if isinstance(body, str) else {}
    estimate = svc.rt.estimates().get("render")
    return {"precision": prec, "budget_ms": 0.01, "status": ctx.status.get(0), "type": err.get("type"),
            "ran": ran, "render_estimate_ms": None if estimate is None else round(estimate, 3),
            "passed": ctx.status.get(0) == 503 and err.get("type") == "budget_exceeded" and not ran}


# ------------------------------------------------------------------------------------------ over HTTP

def _http(cfg, work: dict, precisions: list[str]) -> dict:
    """Package one archive per precision, start TorchServe on free ports, load it: 1 client, then serve_batch
    clients of one person and of different people."""
    from bench.serve_load import run_load, serve_config
    from serve.package import PackageConfig, add_person, package_model
    from serve.server import start_server, stop_server
    store, names, B = work["people"].parent / "model_store", list(work["files"]), work["batch"]
    t = time.perf_counter()
    for prec in precisions:
        name = f"{NAME}_{prec}"
        package_model(work["export"], PackageConfig(
            name=name, model_store=store, backend="torch", precision=prec, batch_size=B,
            max_batch_delay_ms=cfg.serve_batch_delay_ms, device="gpu" if cfg.device.startswith("cuda") else "cpu",
            check=False, archive_format="no-archive"))
        for n, f in work["files"].items():
            add_person(store, name, n, f, check=False)
    out: dict[str, Any] = {"package_s": round(time.perf_counter() - t, 2), "rows": []}
    t = time.perf_counter()
    info = start_server(serve_config(store, work["people"].parent / "run"))
    out["start_s"] = round(time.perf_counter() - t, 2)
    try:
        for prec in precisions:
            if out["rows"] and time.perf_counter() - t > cfg.serve_budget_s:
                out["rows"].append({"precision": prec, "skipped": f"serve_budget_s={cfg.serve_budget_s:g} spent"})
                continue
            url, token = f"{info.inference_url}/predictions/{NAME}_{prec}", info.token()
            one = [json.loads(_body(names[0], y)) for y in itertools.islice(_yaws(), 32)]
            mixed = [json.loads(_body(names[k % len(names)], y)) for k, y in enumerate(itertools.islice(_yaws(), 32))]
            n = B * cfg.serve_repeats
            run_load(url, token, mixed, 2 * B, B, 60.0, 60.0)  # captures the keys, caches the planes
            single = run_load(url, token, one, cfg.serve_repeats, 1, 30.0)
            same = run_load(url, token, one, n, B, 30.0)
            mix = run_load(url, token, mixed, n, B, 30.0)
            p = single.percentiles()
            row = {"precision": prec, "p50_ms": p.get("p50"), "p90_ms": p.get("p90"),
                   "handler_p50_ms": single.percentiles(single.handler_ms).get("p50"),
                   "same_views_per_s": round(same.ok / same.wall_s, 2),
                   "mixed_views_per_s": round(mix.ok / mix.wall_s, 2),
                   "errors": sum(x.server_errors + x.client_errors for x in (single, same, mix))}
            row["mixed_over_same"] = round(row["mixed_views_per_s"] / max(row["same_views_per_s"], 1e-9), 3)
            out["rows"].append(row)
    finally:
        stop_server(info.run_dir)
    return out


# ------------------------------------------------------------------------------------------ targets and report

def _targets(rows: list[dict], http: dict | None, device, dry: bool) -> list[dict]:
    """Per target and precision: the value (over HTTP where measured, else in-process) and pass/fail."""
    over_http = {r["precision"]: r for r in (http or {}).get("rows", []) if "p50_ms" in r}
    out = []
    for name, (bound, what) in SERVE_TARGETS.items():
        t = {"target": name, "what": what, "bound": (">= " if name in FLOORS else "<= ") + f"{bound:g}"}
        for r in rows:
            key = "same_views_per_s" if name == "views_per_s" else name
            value = over_http.get(r["precision"], {}).get(key) if name != "swap_ms" else None
            value = r.get(key) if value is None else value
            if dry:
                verdict = "n/a (dry run)"
            elif device.type != "cuda":
                verdict = "n/a (CPU)"
            else:
                verdict = {True: "pass", False: "FAIL", None: "not measured"}[_meets(name, value)]
            t[r["precision"]] = {"value": value, "result": verdict}
        out.append(t)
    return out


def markdown_lines(sec: dict) -> list[str]:
    """The section in gpu_check.md."""
    lines = [f"**Path: {sec.get('path')}.** Preset {sec.get('preset')}, {sec.get('people')} people, batches of "
             f"{sec.get('batch')}, JPEG answers; setup " + ", ".join(f"{k} {v}" for k, v in
                                                                      sec.get("setup", {}).items()) + ".", ""]
    pb = sec.get("packaged_batching") or {}
    if pb.get("note"):
        lines += [f"Note: {pb['note']}.", ""]
    cols = [("precision", "precision"), ("p50_ms", "1-client p50 ms"), ("p90_ms", "p90 ms"),
            ("render_ms", "render ms"), ("encode_ms", "encode ms"), ("same_views_per_s", "same-person views/s"),
            ("mixed_views_per_s", "mixed views/s"), ("mixed_over_same", "mixed/same"), ("swap_ms", "swap ms"),
            ("swap_copies", "slot copies"), ("graphs", "graphs"), ("capture_s", "capture s"),
            ("vram_per_cached_person_mib", "VRAM/cached person MiB"), ("graph_pool_mib", "graph pool MiB"),
            ("peak_allocated_mib", "peak MiB"),
            ("error", "error"), ("skipped", "skipped")]
    rows = sec.get("rows", [])
    cols = [(k, h) for k, h in cols if any(k in r for r in rows)]
    lines += ["In-process handler:", "", "| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(k)) for k, _ in cols) + " |" for r in rows]
    http = sec.get("http")
    if http:
        lines += ["", "Over HTTP (TorchServe): " + (f"FAILED `{http['error']}`" if "error" in http else
                                                    http["skipped"] if "skipped" in http else
                                                    f"package {http['package_s']} s, start {http['start_s']} s"), ""]
        hr = http.get("rows", [])
        if hr:
            keys = list(dict.fromkeys(k for r in hr for k in r))
            lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(_cell(r.get(k)) for k in keys) + " |" for r in hr]
    targets = sec.get("targets", [])
    if targets:
        precs = [r["precision"] for r in rows if r["precision"] in targets[0]]
        lines += ["", "| target | bound | " + " | ".join(precs) + " |", "|---|---|" + "---|" * len(precs)]
        lines += [f"| {t.get('what', t['target'])} | {t.get('bound', '')} | " + " | ".join(
            f"{_cell(t[p]['value'])} ({t[p]['result']})" for p in precs) + " |" for t in targets]
    par = sec.get("parity", [])
    if par:
        lines += ["", "Parity, Runtime (torch backend, static path) vs eager G, max |diff| (image / image_raw / "
                      "depth):", "", "| precision | op | samples | vs fp32 eager | vs eager same precision | "
                      "tolerance | passed |", "|---|---|---|---|---|---|---|"]
        fmt = lambda d: "" if not d else " / ".join(f"{d[k]:.3g}" for k in OUTPUTS)  # noqa: E731
        lines += [f"| {p['precision']} | {p['op']} | {p['samples']} | {fmt(p.get('vs_eager_fp32'))} | "
                  f"{fmt(p.get('vs_eager_same_precision'))} | {p['tolerance']:g} | {p['passed']} |" for p in par]
    for b in sec.get("budget", []):
        lines.append(f"- Budget {b['precision']}: budget_ms={b['budget_ms']:g} -> HTTP {b['status']} {b['type']}, "
                     f"ran: {b['ran']} (render estimate {b['render_estimate_ms']} ms); passed: {b['passed']}.")
    lines.append(f"- parity passed: {sec.get('parity_passed')}; budget passed: {sec.get('budget_passed')}.")
    return lines


def summary_lines(sec: dict) -> list[str]:
    """The serve bullets of the BENCHMARKS.md GPU section (bench/gpu_record.py)."""
    if not sec.get("ok"):
        return []
    parts = []
    for r in sec.get("rows", []):
        if "p50_ms" not in r:
            continue
        vram = r.get("vram_per_cached_person_mib")
        parts.append(f"{r['precision']}: p50 {r['p50_ms']:.1f} ms at 1 client, {r['same_views_per_s']:.1f} views/s "
                     f"in batches of {sec['batch']} (mixed {r['mixed_over_same']:.2f}x), swap {r['swap_ms']:.2f} ms"
                     + ("" if vram is None else f", {vram:.1f} MiB per cached person"))
    verdicts = sorted({f"{t['target']} {v['result']}" for t in sec.get("targets", []) for k, v in t.items()
                       if isinstance(v, dict) and v.get("result") in ("pass", "FAIL")})
    return [f"- Serving, torch backend ({sec.get('path')}): " + "; ".join(parts) + f". Parity vs eager passed: "
            f"{sec.get('parity_passed')}; budget refusal: {sec.get('budget_passed')}."
            + (f" Targets: {', '.join(verdicts)}." if verdicts else "")]

