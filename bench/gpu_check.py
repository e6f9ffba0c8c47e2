"""The GPU check: everything the project wants to know from one short run on one NVIDIA GPU.

    python -m bench.gpu_check [--out DIR] [--dry-run] [--budget-s S]     (scripts/gpu_check.sh wraps it)

Sections, each recorded on its own (a failure is written down with its error, never fatal), in priority order:
  env        versions, device name, capability, memory;
  parity     CUDA eager against CPU fp32 (TF32 off) on the official EG3D fixture, and both against the official
             outputs; tolerance PARITY_TOL (images in [-1, 1], depth in scene units, tri-planes, ws);
  serve      the handler on the torch backend (over TorchServe where Java is present): latency, batched and
             mixed-people throughput, person swaps, CUDA graphs, VRAM per cached person, parity of every operation
             against eager, the budget refusal; against issue 25's targets (bench/gpu_serve.py);
  forward    ffhq512-128 (random weights): full forward (mapping + tri-planes + render + SR) and the cached-plane
             novel view (render + SR from stored tri-planes), batch 1 and 8, fp32 / fp16 / bf16 autocast, eager;
  lora_train one LoRA personalization step at 512 (train.Trainer: LPIPS-Alex + L2 at both resolutions, the
             ArcFace symmetry term every 4th step; random LPIPS trunk and IR-SE50, which cost what trained ones
             cost), step time and peak memory next to the memory plan, fp32 / checkpointing / bf16 / fp16
             (issue 29), and the largest batch the plan fits in 8 / 16 / 24 GiB, run to confirm;
  mixed      a batch of 8 different people (generator.lora.attach_mixed) against 8 of one person (attach):
             throughput, and each mixed sample against its own single-person run;
  plane_lookup the novel view with grid_sample + mean against the weighted-gather tri-plane lookup;
  cudagraph  the forward cases replayed from CUDA graphs;
  compile    the forward cases through torch.compile (inductor), compile time recorded; skipped once the time
             budget is spent;
  tensorrt   only where `tensorrt` imports: engines of an fp32 export, parity against eager, latency.

Timing: time.perf_counter around the call with torch.cuda.synchronize before and after, warm-up runs excluded,
the median over repeats reported (min too). Results go to OUT/gpu_check.json and OUT/gpu_check.md, rewritten
atomically after every section, so a run cut short still leaves what it measured.

`--dry-run` runs the same code on the CPU with the tiny preset, small batches, 1 warm-up and 2 repeats, and
torch.compile's 'eager' backend (Dynamo tracing without code generation): seconds, for CI.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from bench.gpu_common import autocast, generator_of, guarded, inputs, row, timed
from bench.gpu_mixed import section_mixed
from bench.gpu_train import section_lora_train
from bench.gpu_common import cell as _cell
from bench.gpu_common import max_diff as _max_diff
from bench.gpu_common import sync as _sync
from formats.atomic import write_text
from fixtures.official_fixture import (FIXTURE_ENV, FIXTURE_NAME, official_fixture_dir,
                                           official_fixture_generator)

REPO = Path(__file__).resolve().parents[1]
PARITY_TOL = {"ws": 1e-5, "planes": 1e-4, "image_raw": 1e-4, "image_depth": 1e-4, "image": 1e-4}
"""CUDA eager (TF32 off) against CPU fp32 and against the official outputs: the official-parity test's atol."""


@dataclass
class CheckConfig:
    """What to measure and how hard."""

    preset: str = "ffhq512-128"
    device: str = "cuda"
    batches: tuple[int, ...] = (1, 8)
    dtypes: tuple[str, ...] = ("fp32", "fp16", "bf16")
    warmup: int = 3
    repeats: int = 10
    train_batches: tuple[int, ...] = (1, 4)
    """Batch sizes of the LoRA step timed (peak memory per batch says which cards can train)."""
    train_warmup: int = 2
    train_steps: int = 8
    people: int = 8
    compile_backend: str = "inductor"
    compile_dtypes: tuple[str, ...] = ("bf16", "fp32", "fp16")
    compile_ops: tuple[str, ...] = ("full", "novel")
    budget_s: float = 360.0
    """Wall-clock budget of the whole check: torch.compile cases and TensorRT are skipped (recorded) once it is
    spent; one compile already started may run ~1-2 min past it, inside scripts/gpu_check.sh's 470 s limit."""
    trt_max_batch: int = 8
    parity_samples: int = 2
    """Fixture samples compared (the fixture holds 2)."""
    seed: int = 0
    serve_people: int = 8
    serve_batch: int = 8
    serve_precisions: tuple[str, ...] = ("fp32", "fp16", "bf16")
    serve_repeats: int = 20
    serve_frames: int = 3
    serve_batch_delay_ms: int = 5
    serve_budget_s: float = 120.0
    serve_export: str | None = None
    """The serve section's settings: bench/gpu_serve.py (its docstring says what each one does)."""

    @classmethod
    def dry_run(cls) -> "CheckConfig":
        # fp16 autocast is left out: on a CPU it is ~30x slower than fp32 and is the same code path as bf16;
        # budget_s leaves room for the serve section's ONNX export (~40-70 s on 2 cores) before compile
        return cls(preset="tiny", device="cpu", batches=(1, 2), dtypes=("fp32", "bf16"), warmup=1, repeats=2,
                   train_batches=(2,), train_warmup=1, train_steps=2, people=2, compile_backend="eager",
                   compile_dtypes=("fp32",), compile_ops=("novel",), budget_s=300.0, trt_max_batch=2,
                   parity_samples=1, serve_people=2, serve_batch=2, serve_precisions=("fp32",), serve_repeats=3,
                   serve_frames=2, serve_budget_s=60.0)


class Budget:
    """Seconds left of the check's wall-clock budget."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


SECTIONS = ("env", "parity", "serve", "forward", "lora_train", "mixed", "plane_lookup", "cudagraph", "compile",
            "tensorrt")


@dataclass
class Report:
    """Results by section, written to OUT after each section."""

    out: Path
    dry_run: bool
    config: dict
    only: tuple[str, ...] | None = None
    """The sections to run (`--sections`; None: all); the others are not run and not reported."""
    sections: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def record(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run one section; its result or its error (type, message, traceback tail) is recorded, then saved."""
        if self.only is not None and name not in self.only:
            return None
        t0 = time.perf_counter()
        try:
            result = {"ok": True, **fn()}
        except Exception as e:  # noqa: BLE001 - one failing section must not stop the others
            result = {"ok": False, "error": f"{type(e).__name__}: {e}"[:2000],
                      "traceback": traceback.format_exc()[-3000:]}
        result["seconds"] = round(time.perf_counter() - t0, 2)
        self.sections[name] = result
        self.save()
        print(f"[gpu_check] {name}: {'ok' if result['ok'] else 'FAILED ' + result['error'][:200]} "
              f"({result['seconds']} s)", flush=True)
        return result

    def progress(self, name: str) -> Callable[[dict], None]:
        """A callback that saves a section's partial result while it runs (a killed run keeps finished cases)."""
        def save(partial: dict) -> None:
            self.sections[name] = {"ok": False, "error": "unfinished (the run stopped inside this section)",
                                   **partial}
            self.save()
        return save

    def to_dict(self) -> dict:
        return {"dry_run": self.dry_run, "config": self.config, "elapsed_s": round(time.time() - self.started, 1),
                "sections": self.sections}

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        write_text(self.out / "gpu_check.json", json.dumps(self.to_dict(), indent=2, default=_jsonable))
        write_text(self.out / "gpu_check.md", markdown(self.to_dict()))


def _jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, (tuple, set)):
        return list(x)
    return str(x)


# ------------------------------------------------------------------------------------------ sections

def section_env(device: torch.device) -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
           "cuda_available": torch.cuda.is_available(), "device": str(device),
           "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available()
           else None}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        out.update(gpu=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                   multiprocessors=p.multi_processor_count)
    for mod in ("onnx", "onnxruntime", "tensorrt", "safetensors", "scipy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - absent or broken: recorded as such
            out[mod] = "not importable"
    return out


def _fixture_outputs(G, z, c) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        ws = G.mapping(z, c, truncation_psi=0.7)
        out = G.synthesis(ws, c, noise_mode="const")
        planes = G.backbone.synthesis(ws, noise_mode="const")
    return {"ws": ws, "planes": planes, **{k: out[k] for k in ("image_raw", "image_depth", "image")}}


def section_parity(device: torch.device, samples: int = 2) -> dict:
    d = official_fixture_dir()
    if d is None:
        raise FileNotFoundError(f"official fixture not found: set {FIXTURE_ENV} or run scripts/gpu_wheels.sh "
                                f"(it copies ../shared/fixtures/{FIXTURE_NAME} into gpu_wheels/fixtures)")
    io = {k: v[:samples] for k, v in np.load(d / "small_io.npz").items()}
    z, c = torch.from_numpy(io["z"]), torch.from_numpy(io["c"])
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        G = official_fixture_generator(d)
        cpu = _fixture_outputs(G, z, c)
        dev = cpu if device.type == "cpu" else _fixture_outputs(copy.deepcopy(G).to(device), z.to(device),
                                                                  c.to(device))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    vs_cpu = {k: _max_diff(dev[k], cpu[k]) for k in PARITY_TOL}
    official = {"ws": io["ws"], "image_raw": io["image_raw"], "image_depth": io["image_depth"], "image": io["image"],
                "planes": io["planes_sub4"]}
    vs_official = {k: _max_diff(dev[k][:, :, ::4, ::4] if k == "planes" else dev[k], v) for k, v in official.items()}
    passed = all(vs_cpu[k] <= PARITY_TOL[k] for k in vs_cpu) and \
        all(vs_official[k] <= PARITY_TOL[k] for k in vs_official)
    return {"fixture": str(d), "samples": int(z.shape[0]), "tf32": False, "tolerance": PARITY_TOL,
            "max_abs_diff_vs_cpu_fp32": vs_cpu, "max_abs_diff_vs_official": vs_official, "passed": passed}


class ForwardCases:
    """The benchmarked callables: 'full' (z, c -> images) and 'novel' (cached tri-planes, new camera -> images)."""

    def __init__(self, G, cfg: CheckConfig, device: torch.device):
        self.G, self.cfg, self.device = G, cfg, device

    def make(self, op: str, batch: int, dtype: str) -> tuple[Callable, tuple]:
        """(fn, args): fn(*args) runs the case under `dtype` autocast and returns the final image."""
        G, dev = self.G, self.device
        z, c = inputs(G, batch, dev, self.cfg.seed)
        if op == "full":
            def full(z, c):
                with torch.no_grad(), autocast(dev, dtype):
                    ws = G.mapping(z, c, truncation_psi=0.7)
                    return G.synthesis(ws, c, noise_mode="const")["image"]
            return full, (z, c)
        with torch.no_grad(), autocast(dev, dtype):
            ws = G.mapping(z, c, truncation_psi=0.7)
            planes = G.planes(ws, noise_mode="const")
        c_new = inputs(G, batch, dev, self.cfg.seed + 1)[1]

        def novel(planes, ws, c):
            with torch.no_grad(), autocast(dev, dtype):
                return G.render_planes(planes, ws, c)["image"]
        return novel, (planes, ws, c_new)

    def cases(self, dtypes: tuple[str, ...] | None = None, ops: tuple[str, ...] = ("full", "novel")):
        """(op, dtype, batch) in priority order: dtype first, so a budget cut drops whole precisions last."""
        for dtype in dtypes or self.cfg.dtypes:
            for op in ops:
                for batch in self.cfg.batches:
                    yield op, dtype, batch


def section_forward(cases: ForwardCases, reference: dict) -> dict:
    """Eager timings; `reference` is filled with each case's fp32 output for the other modes' accuracy."""
    cfg, dev = cases.cfg, cases.device
    rows: list[dict] = []
    outputs = {}
    for op, dtype, batch in cases.cases():
        def run(op=op, dtype=dtype, batch=batch):
            fn, args = cases.make(op, batch, dtype)
            t = timed(lambda: fn(*args), dev, cfg.warmup, cfg.repeats)
            img = fn(*args).float()
            outputs[(op, dtype, batch)] = img
            ref = outputs.get((op, "fp32", batch))
            diff = None if ref is None else _max_diff(img, ref)
            if dtype == "fp32":
                reference[(op, batch)] = img
            return row(op, dtype, batch, t, max_abs_diff_vs_fp32=diff)
        guarded(rows, op, dtype, batch, run)
    return {"preset": cfg.preset, "tf32": torch.backends.cuda.matmul.allow_tf32, "rows": rows}


def section_plane_lookup(cases: ForwardCases) -> dict:
    """The novel view (fp32) with each tri-plane lookup of generator/rendering.py: grid_sample + mean (the CUDA
    default) and the weighted gather (the CPU default), and their largest image difference."""
    from generator import rendering
    cfg, dev = cases.cfg, cases.device
    lookups = {"grid_sample": rendering.grid_plane_mean, "gather": rendering.gather_plane_mean}
    rows: list[dict] = []
    original = rendering.plane_features
    try:
        for batch in cfg.batches:
            images = {}
            for name, lookup in lookups.items():
                def run(name=name, lookup=lookup, batch=batch):
                    rendering.plane_features = lookup
                    fn, args = cases.make("novel", batch, "fp32")
                    t = timed(lambda: fn(*args), dev, cfg.warmup, cfg.repeats)
                    images[name] = fn(*args).float()
                    diff = _max_diff(images[name], images["grid_sample"]) if "grid_sample" in images else None
                    return row(f"novel/{name}", "fp32", batch, t, max_abs_diff_vs_fp32=diff)
                guarded(rows, f"novel/{name}", "fp32", batch, run)
    finally:
        rendering.plane_features = original
    return {"rows": rows, "note": "max_abs_diff_vs_fp32: against the grid_sample row of the same batch"}


def section_cudagraph(cases: ForwardCases, reference: dict) -> dict:
    cfg, dev = cases.cfg, cases.device
    if dev.type != "cuda":
        return {"skipped": "CUDA graphs need a CUDA device"}
    rows: list[dict] = []
    for op, dtype, batch in cases.cases():
        def run(op=op, dtype=dtype, batch=batch):
            fn, args = cases.make(op, batch, dtype)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    fn(*args)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            t0 = time.perf_counter()
            with torch.cuda.graph(graph):
                out = fn(*args)
            capture = time.perf_counter() - t0
            t = timed(graph.replay, dev, cfg.warmup, cfg.repeats)
            ref = reference.get((op, batch))
            return row(op, dtype, batch, t, capture_s=round(capture, 3),
                        max_abs_diff_vs_fp32_eager=None if ref is None else _max_diff(out.float(), ref))
        guarded(rows, op, dtype, batch, run)
    return {"rows": rows}


def section_compile(cases: ForwardCases, reference: dict, budget: Budget,
                    progress: Callable[[dict], None] | None = None) -> dict:
    cfg, dev = cases.cfg, cases.device
    import torch._dynamo
    rows: list[dict] = []
    for op, dtype, batch in cases.cases(cfg.compile_dtypes, cfg.compile_ops):
        if budget.left() <= 0:
            rows.append({"op": op, "dtype": dtype, "batch": batch, "skipped": "time budget spent"})
            continue

        def run(op=op, dtype=dtype, batch=batch):
            torch._dynamo.reset()
            fn, args = cases.make(op, batch, dtype)
            compiled = torch.compile(fn, backend=cfg.compile_backend, dynamic=False)
            t0 = time.perf_counter()
            out = compiled(*args)
            _sync(dev)
            compile_s = time.perf_counter() - t0
            t = timed(lambda: compiled(*args), dev, cfg.warmup, cfg.repeats)
            ref = reference.get((op, batch))
            return row(op, dtype, batch, t, backend=cfg.compile_backend, compile_s=round(compile_s, 2),
                        max_abs_diff_vs_fp32_eager=None if ref is None else _max_diff(out.float(), ref))
        guarded(rows, op, dtype, batch, run, progress)
    torch._dynamo.reset()
    return {"backend": cfg.compile_backend, "rows": rows}


def section_tensorrt(cfg: CheckConfig, device: torch.device, reference_G=None) -> dict:
    try:
        import tensorrt  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return {"skipped": f"tensorrt not importable ({type(e).__name__}: {e})"}
    from export.exporter import export_generator
    from export.options import ExportOptions
    from export.tensorrt_build import build_engine
    from formats.export_manifest import GRAPH_FILES
    from runtime.trt import TrtRunner
    G = generator_of(cfg.preset, cfg.seed, torch.device("cpu"))
    batch = max(cfg.batches)
    z, c = inputs(G, batch, torch.device("cpu"), cfg.seed)
    with torch.no_grad():
        ws = G.mapping(z, c, truncation_psi=0.7)
        planes = G.planes(ws, noise_mode="const", fused_modconv=False)
        ref = G.render_planes(planes, ws, c, fused_modconv=False)
    out: dict[str, Any] = {"batch": batch}
    with tempfile.TemporaryDirectory() as tmp:
        export = export_generator(G, Path(tmp) / "export", options=ExportOptions(verify=False))
        feeds = {"synthesis": {"ws": ws.numpy()},
                 "render": {"planes": planes.numpy(), "ws": ws.numpy(), "c": c.numpy()}}
        for name in ("synthesis", "render"):
            info = build_engine(export / GRAPH_FILES[name], Path(tmp) / f"{name}.engine", fp16=True,
                                max_batch=cfg.trt_max_batch, opt_batch=batch)
            with TrtRunner(Path(tmp) / f"{name}.engine") as runner:
                t = timed(lambda: runner(feeds[name]), device, cfg.warmup, cfg.repeats)
                res = runner(feeds[name])
            if name == "synthesis":
                diff = {"planes": float(np.abs(res["planes"] - planes.numpy()).max())}
            else:
                diff = {"image": float(np.abs(res["image"] - ref["image"].numpy()).max()),
                        "depth": float(np.abs(res["depth"] - ref["image_depth"].numpy()).max())}
            out[name] = {"build_s": round(info.build_seconds, 1), "fp16": info.fp16,
                         "tensorrt_version": info.tensorrt_version, "ms_including_copies": t["median_s"] * 1e3,
                         "max_abs_diff_vs_cpu_fp32_eager": diff}
    return out


# ------------------------------------------------------------------------------------------ report

def markdown(report: dict) -> str:
    """The human summary of a report dict."""
    s = report["sections"]
    env = s.get("env", {})
    lines = [f"# GPU check{' (dry run: CPU, tiny preset)' if report['dry_run'] else ''}", "",
             f"Device: {env.get('gpu', env.get('device', '?'))}; torch {env.get('torch')}, "
             f"CUDA {env.get('torch_cuda')}, Python {env.get('python')}. Total {report['elapsed_s']} s.", ""]
    for name, sec in s.items():
        if name == "env":
            continue
        head = f"## {name} ({sec.get('seconds')} s)"
        if not sec.get("ok"):
            lines += [head, "", f"FAILED: `{sec.get('error')}`", ""]
            continue
        lines += [head, ""]
        if name == "serve":
            from bench.gpu_serve import markdown_lines
            lines += markdown_lines(sec) + [""]
            continue
        rows = sec.get("rows")
        if rows:
            keys = [k for k in ("op", "dtype", "batch", "ms", "min_ms", "images_per_s", "compile_s", "capture_s",
                                "max_abs_diff_vs_fp32", "max_abs_diff_vs_fp32_eager", "step_median_s",
                                "step_median_s_without_sym", "step_median_s_with_sym", "peak_memory_gib",
                                "error", "skipped")
                    if any(k in r for r in rows)]
            lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(_cell(r.get(k)) for k in keys) + " |" for r in rows]
        others = {k: v for k, v in sec.items() if k not in ("rows", "ok", "seconds", "traceback")}
        lines += [f"- {k}: {_cell(v)}" for k, v in others.items()]
        lines.append("")
    return "\n".join(lines)


def run_check(cfg: CheckConfig, out: Path, dry_run: bool = False, only: tuple[str, ...] = SECTIONS) -> dict:
    """Run the sections in `only` in priority order and return the report dict (also written to `out`).

    cudagraph and compile reuse the forward section's generator and fp32 references, so they need "forward"."""
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"error: unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device (torch.cuda.is_available() is False); use --dry-run for the CPU")
    budget = Budget(cfg.budget_s)
    report = Report(out, dry_run, asdict(cfg), only=only)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    report.record("env", lambda: section_env(device))
    report.record("parity", lambda: section_parity(device, cfg.parity_samples))
    from bench.gpu_serve import section_serve
    report.record("serve", lambda: section_serve(cfg, device, report.progress("serve"), dry_run))
    reference: dict = {}
    holder: dict = {}

    def forward():
        holder["cases"] = ForwardCases(generator_of(cfg.preset, cfg.seed, device), cfg, device)
        return section_forward(holder["cases"], reference)
    report.record("forward", forward)
    report.record("lora_train", lambda: section_lora_train(cfg, device))
    report.record("mixed", lambda: section_mixed(cfg, device))
    if "cases" in holder:
        report.record("plane_lookup", lambda: section_plane_lookup(holder["cases"]))
        report.record("cudagraph", lambda: section_cudagraph(holder["cases"], reference))
        report.record("compile", lambda: section_compile(holder["cases"], reference, budget,
                                                             report.progress("compile")))
    report.record("tensorrt", lambda: section_tensorrt(cfg, device) if budget.left() > 0 else
                  {"skipped": "time budget spent"})
    return report.to_dict()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu_out", help="output folder (default $OUT or "
                    "gpu_out/)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny preset, seconds: the same code paths")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated sections to run "
                    f"(default all: {','.join(SECTIONS)})")
    ap.add_argument("--train-batches", default=None, help="comma-separated LoRA step batch sizes "
                    "(default 1,4)")
    ap.add_argument("--budget-s", type=float, default=None, help="wall-clock budget; torch.compile cases and "
                    "TensorRT are skipped once it is spent")
    ap.add_argument("--serve-export", default=None, help="serve section: reuse this keep-LoRA export (with mixed "
                    "graphs) instead of exporting one")
    args = ap.parse_args(argv)
    cfg = CheckConfig.dry_run() if args.dry_run else CheckConfig()
    cfg.serve_export = args.serve_export
    if args.train_batches:
        cfg.train_batches = tuple(int(b) for b in args.train_batches.split(","))
    if args.budget_s is not None:
        cfg.budget_s = args.budget_s
    torch.manual_seed(cfg.seed)
    only = tuple(x.strip() for x in args.sections.split(",") if x.strip())
    report = run_check(cfg, Path(args.out), dry_run=args.dry_run, only=only)
    failed = [k for k, v in report["sections"].items() if not v.get("ok")]
    print(f"[gpu_check] wrote {Path(args.out) / 'gpu_check.json'} and gpu_check.md in {report['elapsed_s']} s; "
          f"failed sections: {failed or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
