"""CPU speed matrix of issue 16: allocator x threads x formulation (original/previous/fast/fast bf16/onnxruntime).

    python -m bench.speed --model ffhq512-128 --reps 3          # prints the table (markdown)
    python -m bench.run --speed-only                              # writes it into docs/BENCHMARKS.md

Each cell runs in its own process (`python -m bench.speed worker ...`): the allocator is chosen when a process
starts (launch/allocator.py: MY3DGEN_ALLOCATOR=system|jemalloc), and peak memory (ru_maxrss) is only per process.
Cells are run in an interleaved order so that machine-load drift hits every column alike. Every cell times, at
batch 1 and median of `reps` after one warm-up each: the full forward (mapping + tri-planes + render + SR) and a
novel view from cached tri-planes, called alternately so that both see the same process state, then per stage the
backbone (tri-planes), the renderer and the super-resolution. The max image difference is against the previous
formulation's fp32 image of the same process configuration.

The *original* cells run the generator package as it was before issue 16 (ORIGINAL_COMMIT, taken from this
repository's history with `git archive`): the code the issue measured, as opposed to *previous*, today's code
with only the renderer formulation put back.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

FORMULATIONS = ("original", "previous", "fast", "fast-bf16", "onnxruntime")
"""original: the generator package at ORIGINAL_COMMIT; previous: bench/reference_renderer.py (all rays at once,
colours gathered and marched twice) with NCHW activations; fast: the product path (fp32); fast-bf16: the product
path under --precision bf16; onnxruntime: the exported graphs ('base' export of the same weights,
CPUExecutionProvider)."""
ALLOCATORS = ("system", "jemalloc")
ORIGINAL_COMMIT = "f4bd311"
"""The last commit before issue 16's work (2026-11-25): whole-batch renderer, grid_sample lookup, NCHW activations."""


@dataclass
class Cell:
    model: str
    allocator: str
    threads: int
    formulation: str
    full_ms: float
    view_ms: float
    backbone_ms: float | None
    render_ms: float | None
    sr_ms: float | None
    peak_mib: float
    image: str
    max_image_diff: float | None = None


def _median_ms(fn, reps: int) -> float:
    return _alternating_medians_ms((fn,), reps)[0]


def _alternating_medians_ms(fns, reps: int) -> list[float]:
    """Median ms of each function over `reps` rounds, the functions called in turn within a round (one warm-up)."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(reps):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t) * 1000)
    return [statistics.median(ts) for ts in times]


def worker(model: str, formulation: str, threads: int, reps: int, export_dir: Path | None, out: Path) -> Cell:
    """One cell of the matrix, in this process (the allocator is whatever this process was started with)."""
    import torch
    try:
        from formats.cameras import lookat_label
    except ImportError:  # the 'original' formulation runs the pre-issue-16 tree, where cameras lived in generator/
        from generator.cameras import lookat_label
    from generator.model_dir import build_generator
    from generator.rendering import sample_rays
    from launch.allocator import active_allocator

    torch.set_num_threads(threads)
    G = build_generator(preset_name=model).eval()
    z = torch.from_numpy(np.random.RandomState(0).randn(1, G.z_dim).astype(np.float32))
    c = torch.from_numpy(lookat_label(0.3, -0.1)[None])
    stages: dict[str, float | None] = {"backbone": None, "render": None, "sr": None}
    if formulation == "onnxruntime":
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
        s = {g: ort.InferenceSession(str(export_dir / f"{g}.onnx"), so, providers=["CPUExecutionProvider"])
             for g in ("mapping", "synthesis", "render")}
        psi = np.array([0.7], np.float32)
        ws = s["mapping"].run(None, {"z": z.numpy(), "c": c.numpy(), "truncation_psi": psi})[0]
        planes = s["synthesis"].run(None, {"ws": ws})[0]

        def full():
            w = s["mapping"].run(None, {"z": z.numpy(), "c": c.numpy(), "truncation_psi": psi})[0]
            p = s["synthesis"].run(None, {"ws": w})[0]
            return s["render"].run(None, {"planes": p, "ws": w, "c": c.numpy()})[0]

        def view():
            return s["render"].run(None, {"planes": planes, "ws": ws, "c": c.numpy()})[0]

        full_ms, view_ms = _alternating_medians_ms((full, view), reps)
        stages["backbone"] = _median_ms(lambda: s["synthesis"].run(None, {"ws": ws}), reps)
        image = view()[0]
    else:
        with _formulation(G, formulation), torch.no_grad():
            ws = G.mapping(z, c, truncation_psi=0.7)
            planes = G.planes(ws)
            full_ms, view_ms = _alternating_medians_ms(
                (lambda: G.synthesis(G.mapping(z, c, truncation_psi=0.7), c), lambda: G.render_planes(planes, ws, c)),
                reps)
            stages["backbone"] = _median_ms(lambda: G.planes(ws), reps)
            res = G.neural_rendering_resolution
            cam2world, intrinsics = c[:, :16].reshape(-1, 4, 4), c[:, 16:25].reshape(-1, 3, 3)
            origins, dirs = sample_rays(cam2world, intrinsics, res)
            stages["render"] = _median_ms(lambda: G.renderer(planes, G.decoder, origins, dirs), reps)
            feats = G.render_planes(planes, ws, c, return_internals=True)["feature_image"]
            stages["sr"] = _median_ms(lambda: G.superresolution(feats[:, :3], feats, ws), reps)
            image = G.render_planes(planes, ws, c)["image"][0].float().numpy()
    np.save(out.with_suffix(".npy"), image)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cell = Cell(model, active_allocator(), threads, formulation, full_ms, view_ms, stages["backbone"],
                stages["render"], stages["sr"], peak, str(out.with_suffix(".npy")))
    out.write_text(json.dumps(asdict(cell)))
    return cell


def _formulation(G, formulation: str):
    """The context a formulation's eager cells run in (the original code needs none: it is another package)."""
    if formulation == "previous":
        from bench.reference_renderer import previous_formulation
        return previous_formulation(G)
    if formulation == "fast-bf16":
        from generator.precision import inference_precision
        return inference_precision("bf16")
    return contextlib.nullcontext(G)


def original_tree(work: Path) -> Path:
    """The generator package at ORIGINAL_COMMIT, unpacked under `work` (needs this repository's git history)."""
    root = work / f"original-{ORIGINAL_COMMIT}"
    repo = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "archive", ORIGINAL_COMMIT, "generator"], cwd=repo, capture_output=True)
    if archive.returncode != 0:
        raise RuntimeError(f"cannot take generator/ at commit {ORIGINAL_COMMIT} from {repo} (a shallow clone? "
                           f"`git fetch --unshallow`): {archive.stderr.decode().strip()}")
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    return root


def export_base(model: str, work: Path) -> Path:
    """The 'base' export (no adapter) of the same random weights the workers build."""
    from export.exporter import export_generator
    from export.options import ExportOptions
    from generator.model_dir import build_generator
    return export_generator(build_generator(preset_name=model), work / f"{model}-base",
                            None, ExportOptions(mode="base", verify=False))


def _find(cells: list[Cell], allocator: str, threads: int, formulation: str) -> Cell | None:
    return next((x for x in cells if x.allocator == allocator and x.threads == threads
                 and x.formulation == formulation), None)


def run_matrix(model: str, reps: int, threads: tuple[int, ...], allocators: tuple[str, ...],
               formulations: tuple[str, ...], work: Path, log=print) -> list[Cell]:
    export_dir = export_base(model, work) if "onnxruntime" in formulations else None
    original = original_tree(work) if "original" in formulations else None
    cells = []
    order = [(a, t, f) for t in threads for f in formulations for a in allocators]
    for i, (alloc, t, f) in enumerate(order):
        out = work / f"{model}-{alloc}-{t}-{f}.json"
        env = dict(os.environ, MY3DGEN_ALLOCATOR=alloc)
        env.pop("MY3DGEN_ALLOCATOR_ACTIVE", None)
        if alloc == "system":
            env.pop("LD_PRELOAD", None)
        cmd = [sys.executable, "-m", "bench.speed", "worker", "--model", model, "--formulation", f, "--threads",
               str(t), "--reps", str(reps), "--out", str(out)] + (["--export", str(export_dir)] if export_dir else [])
        if f == "original":
            cmd += ["--code-root", str(original)]
        log(f"[speed {i + 1}/{len(order)}] {model} {alloc} {t} thread(s) {f} ...")
        subprocess.run(cmd, check=True, env=env, cwd=Path(__file__).resolve().parents[1])
        cells.append(Cell(**json.loads(out.read_text())))
    for cell in cells:
        ref = _find(cells, cell.allocator, cell.threads, "previous")
        cell.max_image_diff = float(np.abs(np.load(cell.image) - np.load(ref.image)).max())
    return cells


def _ms(v: float | None) -> str:
    return "-" if v is None else (f"{v:,.1f}" if v < 1000 else f"{v:,.0f}")


def markdown(cells: list[Cell]) -> list[str]:
    """The table: one row per cell, with speed-ups against the previous formulation under the same allocator and
    threads, and against the original code under the system allocator (how it ran before issue 16)."""
    out = ["| model | allocator | threads | formulation | full (ms) | view (ms) | backbone | render | SR | "
           "full speed-up (same alloc) | view speed-up (same alloc) | full / view vs original+glibc | "
           "max image diff | peak RSS (MiB) |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        same = _find(cells, c.allocator, c.threads, "previous")
        base = _find(cells, "system", c.threads, "original")
        vs_base = "-" if base is None else f"{base.full_ms / c.full_ms:.2f}x / {base.view_ms / c.view_ms:.2f}x"
        vs_same = "- | -" if same is None else f"{same.full_ms / c.full_ms:.2f}x | {same.view_ms / c.view_ms:.2f}x"
        out.append(f"| {c.model} | {c.allocator} | {c.threads} | {c.formulation} | {_ms(c.full_ms)} | "
                   f"{_ms(c.view_ms)} | {_ms(c.backbone_ms)} | {_ms(c.render_ms)} | {_ms(c.sr_ms)} | "
                   f"{vs_same} | {vs_base} | "
                   f"{c.max_image_diff:.1e} | {c.peak_mib:,.0f} |")
    return out


TARGETS_MS = {"fast": (1900, 1200), "fast-bf16": (1000, 600)}
"""Issue 16's targets at 2 threads on the 2-core reference machine: (full forward, cached-plane view) in ms."""


def target_lines(cells: list[Cell], threads: int = 2) -> list[str]:
    """Each targeted row against issue 16's targets, computed from this run's cells (best allocator per row)."""
    out = []
    base = _find(cells, "system", threads, "original")
    for formulation, (full_t, view_t) in TARGETS_MS.items():
        rows = [c for c in cells if c.threads == threads and c.formulation == formulation]
        if not rows:
            continue
        full, view = min(rows, key=lambda c: c.full_ms), min(rows, key=lambda c: c.view_ms)
        line = (f"- *{formulation}* at {threads} threads: full {full.full_ms / 1000:.2f} s ({full.allocator}; "
                f"target <= {full_t / 1000:.1f} s: {'met' if full.full_ms <= full_t else 'not met'}), view "
                f"{view.view_ms / 1000:.2f} s ({view.allocator}; target <= {view_t / 1000:.1f} s: "
                f"{'met' if view.view_ms <= view_t else 'not met'})")
        if base is not None:
            fx, vx = base.full_ms / full.full_ms, base.view_ms / view.view_ms
            line += (f"; {fx:.2f}x / {vx:.2f}x the original code with glibc (target >= 3x: "
                     f"{'met' if min(fx, vx) >= 3 else 'not met'})")
        out.append(line + ".")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd")
    w = sub.add_parser("worker", help="one cell (internal)")
    w.add_argument("--model", required=True)
    w.add_argument("--formulation", choices=FORMULATIONS, required=True)
    w.add_argument("--threads", type=int, required=True)
    w.add_argument("--reps", type=int, required=True)
    w.add_argument("--out", type=Path, required=True)
    w.add_argument("--export", type=Path, default=None)
    w.add_argument("--code-root", type=Path, default=None, help="import the generator package from here")
    ap.add_argument("--model", default="ffhq512-128")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    args = ap.parse_args(argv)
    if args.cmd == "worker":
        from launch.allocator import preload
        preload()
        if args.code_root is not None:
            sys.path.insert(0, str(args.code_root))
        worker(args.model, args.formulation, args.threads, args.reps, args.export, args.out)
        return 0
    with tempfile.TemporaryDirectory(prefix="my3dgen-speed-") as work:
        cells = run_matrix(args.model, args.reps, tuple(int(t) for t in args.threads.split(",")), ALLOCATORS,
                           FORMULATIONS, Path(work), log=lambda m: print(m, file=sys.stderr, flush=True))
    print("\n".join(markdown(cells) + [""] + target_lines(cells)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
