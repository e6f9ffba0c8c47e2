"""Benchmark: eager PyTorch vs onnxruntime (and the torch-free runtime) on `tiny` and `ffhq512-128`.

    python -m bench.run            # both models, writes docs/BENCHMARKS.md
    python -m bench.run --quick    # tiny only, prints the tables (writes only with --out)

Per model (random-init weights: timing does not depend on their values): export keep-LoRA and merged graphs for a
synthetic person, then time at batch 1 with the same thread count for torch and onnxruntime:
  * the full generator (mapping + tri-plane synthesis + render/super-resolution) and a novel view from cached
    tri-planes (render only): eager with the adapter merged into the weights, eager with LoRA routed (the training
    path), onnxruntime merged graph, onnxruntime keep-LoRA graph (the person's tensors as inputs);
  * the runtime's own numbers (novel view with and without a tri-plane cache hit);
  * adapter swap cost: keep-LoRA calls alternating two people vs one person, the first-use cost of parsing an
    adapter file, and what a merged export costs per person (export time, session load, bytes);
  * bytes per person: the adapter file in fp32 and fp16.
All medians and ratios come from this one run. The section '## Serving latency (TorchServe)' of an existing
docs/BENCHMARKS.md (written by another benchmark) is kept as it is.

    python -m bench.run --backends-only   # every backend side by side through TorchServe (bench/serve_backends.py)
                                          # and under a competing load (bench/contention.py): their section only
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.timing import paired_ms
from formats.atomic import write_text

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "BENCHMARKS.md"
SERVING_HEADING = "## Serving latency (TorchServe)"
GPU_HEADING = "## GPU (scripts/gpu_check.sh)"  # written by bench/gpu_record.py
STARTUP_HEADING = "## Command-line start-up (issue 28)"  # written by bench/startup.py
BACKENDS_HEADING = "## Backends through TorchServe (issue 25)"  # written by --backends-only
TRAIN_STEP_HEADING = "## Training step: memory and time on the CPU (issue 29)"  # written by bench/train_step.py


@dataclass
class ModelReport:
    """Everything measured for one model."""

    name: str
    reps: int
    rows: list[tuple[str, float | None, float | None, str]] = field(default_factory=list)
    """(what, eager ms, onnxruntime ms, note)."""
    runtime: dict[str, float] = field(default_factory=dict)
    swap: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, float] = field(default_factory=dict)
    parity: dict[str, float] = field(default_factory=dict)
    export_seconds: dict[str, float] = field(default_factory=dict)
    shapes: str = ""




def _dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.iterdir() if f.is_file() and f.suffix in (".onnx", ".safetensors"))


def bench_model(name: str, reps: int, threads: int, work: Path, log) -> ModelReport:
    import onnxruntime as ort
    import torch
    from export.exporter import export_generator
    from export.options import ExportOptions
    from export.manifest import read_manifest
    from fixtures.people import make_person
    from generator.adapter_file import load_adapter
    from generator.lora import attach, detach, merged_state_dict
    from generator.model_dir import build_generator
    from generator.views import camera_batch
    from runtime import Runtime
    from formats.adapter_file import read_adapter

    torch.set_num_threads(threads)
    rep = ModelReport(name, reps)
    G = build_generator(preset_name=name)
    rep.shapes = (f"{G.img_resolution}x{G.img_resolution} output, {G.neural_rendering_resolution}^2 rays x "
                  f"({G.cfg.rendering.depth_resolution}+{G.cfg.rendering.depth_resolution_importance}) samples, "
                  f"{sum(p.numel() for p in G.parameters()) / 1e6:.2f}M parameters")
    people = work / name / "people"
    people.mkdir(parents=True)
    synthetic = dict(anchors=4, b_std=0.02, full_std=0.01, views=[(0.0, 0.0)] * 4)
    make_person(G, people / "alice.safetensors", 1, **synthetic)
    make_person(G, people / "bob.safetensors", 2, **synthetic)
    make_person(G, work / name / "alice_fp16.safetensors", 1, dtype=torch.float16, **synthetic)
    alice = load_adapter(people / "alice.safetensors", G)[0]

    log(f"[{name}] exporting keep-LoRA graphs (with verification against eager) ...")
    t = time.perf_counter()
    keep_dir = export_generator(G, work / name / "keep", people / "alice.safetensors", ExportOptions(mode="keep"))
    rep.export_seconds["keep-LoRA (once for everyone)"] = time.perf_counter() - t
    log(f"[{name}] exporting merged graphs for one person ...")
    t = time.perf_counter()
    merged_dir = export_generator(G, work / name / "merged", people / "alice.safetensors",
                                  ExportOptions(mode="merge", verify=False))
    rep.export_seconds["merged (per person)"] = time.perf_counter() - t
    rep.parity.update({f"export check {k}": v
                       for k, v in read_manifest(keep_dir)["verification"]["max_abs_diff"].items()})

    Gm = copy.deepcopy(G)
    Gm.load_state_dict(merged_state_dict(G, alice))
    z = torch.from_numpy(np.random.RandomState(0).randn(1, G.z_dim).astype(np.float32))
    c = camera_batch(G, [(0.3, -0.1)])
    with torch.no_grad():
        ws = Gm.mapping(z, c, truncation_psi=0.7)
        planes = Gm.planes(ws)

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3

    def sessions(d: Path):
        t0 = time.perf_counter()
        s = {g: ort.InferenceSession(str(d / f"{g}.onnx"), so, providers=["CPUExecutionProvider"])
             for g in ("mapping", "synthesis", "render")}
        return s, (time.perf_counter() - t0) * 1000

    merged_s, merged_load_ms = sessions(merged_dir)
    keep_s, _ = sessions(keep_dir)
    keep_m = read_manifest(keep_dir)
    feeds = {}
    for person in ("alice", "bob"):
        data = read_adapter(people / f"{person}.safetensors")
        feeds[person] = {g: {i["input"]: data.tensors[i["tensor"]] for i in keep_m["adapter"]["inputs"]
                             if i["graph"] == g} for g in ("synthesis", "render")}
    zn, cn, psi = z.numpy(), c.numpy(), np.array([0.7], np.float32)
    wsn, planes_n = ws.numpy(), planes.numpy()

    def ort_full(s, person=None):
        f = feeds[person] if person else {"synthesis": {}, "render": {}}
        w = s["mapping"].run(None, {"z": zn, "c": cn, "truncation_psi": psi})[0]
        p = s["synthesis"].run(None, {"ws": w, **f["synthesis"]})[0]
        return s["render"].run(None, {"planes": p, "ws": w, "c": cn, **f["render"]})

    def ort_view(s, person=None):
        f = feeds[person] if person else {"render": {}}
        return s["render"].run(None, {"planes": planes_n, "ws": wsn, "c": cn, **f["render"]})

    def eager_full(model):
        with torch.no_grad():
            w = model.mapping(z, c, truncation_psi=0.7)
            return model.synthesis(w, c)

    def eager_view(model):
        with torch.no_grad():
            return model.render_planes(planes, ws, c)

    log(f"[{name}] timing ({reps} reps each, {threads} threads) ...")
    e_full, o_full = paired_ms(lambda: eager_full(Gm), lambda: ort_full(merged_s), reps)
    rep.rows.append(("full generator, adapter merged into the weights", e_full, o_full,
                     "eager: fused modconv (its inference default); ONNX: non-fused (dynamic batch)"))
    e_view, o_view = paired_ms(lambda: eager_view(Gm), lambda: ort_view(merged_s), reps)
    attach(G, alice)
    e_full_lora, o_full_keep = paired_ms(lambda: eager_full(G), lambda: ort_full(keep_s, "alice"), reps)
    e_view_lora, o_view_keep = paired_ms(lambda: eager_view(G), lambda: ort_view(keep_s, "alice"), reps)
    detach(G)
    rep.rows.append(("full generator, LoRA unmerged (eager: routed; ONNX: keep-LoRA inputs)", e_full_lora,
                     o_full_keep, "W0 + B@A computed every call in both"))
    rep.rows.append(("novel view from cached tri-planes (render + SR), merged", e_view, o_view, ""))
    rep.rows.append(("novel view from cached tri-planes, LoRA unmerged / keep-LoRA", e_view_lora, o_view_keep, ""))

    # parity of the runtime against eager (merged weights, same latent and camera)
    rt = Runtime(keep_dir, people, threads=threads, backend="onnxruntime")
    w_alice = np.repeat(read_adapter(people / "alice.safetensors").anchor_ws[:1], G.num_ws, axis=0)  # W+
    res = rt.novel_view("alice", latent=w_alice, yaw=0.3, pitch=-0.1)
    with torch.no_grad():
        ref = Gm.synthesis(torch.from_numpy(w_alice)[None], c)
    rep.parity["runtime novel view vs eager, image"] = float(np.abs(res.image - ref["image"][0].numpy()).max())
    rep.parity["runtime novel view vs eager, depth"] = float(np.abs(res.depth - ref["image_depth"][0].numpy()).max())

    # the runtime itself: cache misses (new latents) and hits (new views of a known latent)
    rng = np.random.default_rng(0)
    misses = [rt.novel_view("alice", latent=w_alice + rng.standard_normal(w_alice.shape).astype(np.float32) * 0.01,
                            yaw=0.1) for _ in range(reps)]
    hits = [rt.novel_view("alice", latent=w_alice, yaw=-0.6 + 1.2 * k / max(reps - 1, 1)) for k in range(reps)]
    for label, results in (("miss", misses), ("hit", hits)):
        for stage in ("synthesis", "render", "total"):
            rep.runtime[f"{label} {stage}"] = statistics.median(r.timings[stage] for r in results)
    rep.runtime["providers"] = ", ".join(sorted(set(rt.graph_providers.values())))

    # adapter swap: the same person every call vs alternating two people through the one keep-LoRA graph
    # blocks in the order same, alternating, alternating, same (so load drift hits both alike)
    blocks: dict[str, list[float]] = {"same": [], "alternating": []}
    ort_view(keep_s, "bob")
    for kind in ("same", "alternating", "alternating", "same"):
        for k in range(max(2, (reps + 1) // 2)):
            person = "bob" if kind == "alternating" and k % 2 else "alice"
            t0 = time.perf_counter()
            ort_view(keep_s, person)
            blocks[kind].append((time.perf_counter() - t0) * 1000)
    same, alternating = statistics.median(blocks["same"]), statistics.median(blocks["alternating"])
    rep.swap["keep-LoRA render, same person (ms)"] = same
    rep.swap["keep-LoRA render, alternating two people (ms)"] = alternating
    t0 = time.perf_counter()
    for _ in range(reps):
        read_adapter(people / "bob.safetensors")
    rep.swap["first use of a person: parse + check adapter file fp32 (ms)"] = (time.perf_counter() - t0) * 1000 / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        read_adapter(work / name / "alice_fp16.safetensors")
    rep.swap["first use of a person: parse + check adapter file fp16 (ms)"] = (time.perf_counter() - t0) * 1000 / reps
    rep.swap["merged: export one person (s)"] = rep.export_seconds["merged (per person)"]
    rep.swap["merged: load that person's 3 sessions (ms)"] = merged_load_ms
    from bench.deploy import measure as deploy_rows  # native adapters, mixed-person batches (issue 15)
    rep.swap.update(deploy_rows(G, work / name / "deploy", reps, threads, log))

    rep.sizes["adapter file fp32 (bytes)"] = (people / "alice.safetensors").stat().st_size
    rep.sizes["adapter file fp16 (bytes)"] = (work / name / "alice_fp16.safetensors").stat().st_size
    rep.sizes["adapter parameters"] = sum(p.numel() for p in alice.parameters())
    rep.sizes["merged export per person (bytes)"] = _dir_bytes(merged_dir)
    rep.sizes["keep-LoRA export, shared by all (bytes)"] = _dir_bytes(keep_dir)
    rep.sizes["cached tri-planes per (person, latent) (bytes)"] = planes.numel() * 4
    return rep


def _fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.1f}" if v < 1000 else f"{v:,.0f}"


def _fmt_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def machine_info(threads: int) -> list[str]:
    import onnx
    import onnxruntime
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
        mem_s = f", {mem:.0f} GiB RAM"
    except (ValueError, OSError, AttributeError):
        mem_s = ""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return [f"- Machine: {cpu}, {cores} CPU cores available{mem_s}, {platform.system()} {platform.machine()}; "
            f"load average {load:.1f} at the start (other work on the machine inflates timings).",
            f"- Threads: torch.set_num_threads({threads}) and onnxruntime intra_op_num_threads={threads} "
            f"(inter_op 1), CPUExecutionProvider; batch 1. One thread is the default because the CI machines are "
            f"shared: with 2 threads and other jobs running, torch's OpenMP threads were seen to slow the tiny eager "
            f"forward 20x (24 ms -> 550 ms), which would say nothing about either runtime.",
            f"- Versions: Python {platform.python_version()}, torch {torch.__version__}, onnxruntime "
            f"{onnxruntime.__version__}, onnx {onnx.__version__}, numpy {np.__version__}.",
            "- Weights: random initialisation (the calibrated presets of generator.model_dir.build_generator, seed 0) "
            "and synthetic adapters: the timings do not depend on the values; a converted ffhq512-128.pkl has the "
            "same shapes.",
            "- Mode: deterministic inference (const noise, deterministic sampling), fp32."]


def render_markdown(reports: list[ModelReport], threads: int, command: str, started: str, duration: float) -> str:
    out = ["# Benchmarks", "",
           f"Generated by `{command}` on {started} (took {duration / 60:.1f} min). Every number below comes from "
           f"that one run; medians of the stated repetitions after one warm-up call, the two sides of a comparison "
           f"called alternately so that both see the same machine load. Reproduce with "
           f"`.venv/bin/python -m bench.run` (`--quick` runs `tiny` only).", ""]
    out += ["## Setup", ""] + machine_info(threads) + [""]
    out += ["## Eager PyTorch vs onnxruntime (ms, median)", "",
            "Ratio = eager / onnxruntime (> 1: onnxruntime is faster).", ""]
    for r in reports:
        out += [f"### {r.name} ({r.shapes}; {r.reps} repetitions)", "",
                "| what | eager PyTorch | onnxruntime | ratio | note |", "|---|---|---|---|---|"]
        for what, e, o, note in r.rows:
            ratio = f"{e / o:.2f}x" if e and o else "-"
            out.append(f"| {what} | {_fmt_ms(e)} | {_fmt_ms(o)} | {ratio} | {note} |")
        out.append("")
    out += ["## The runtime (torch-free): tri-plane cache (ms, median of its own per-stage timings)", "",
            "| model | miss: synthesis | miss: render | miss: total | hit: synthesis | hit: render | hit: total | "
            "hit speed-up |", "|---|---|---|---|---|---|---|---|"]
    for r in reports:
        t = r.runtime
        out.append(f"| {r.name} | {_fmt_ms(t['miss synthesis'])} | {_fmt_ms(t['miss render'])} | "
                   f"{_fmt_ms(t['miss total'])} | {_fmt_ms(t['hit synthesis'])} | {_fmt_ms(t['hit render'])} | "
                   f"{_fmt_ms(t['hit total'])} | {t['miss total'] / t['hit total']:.2f}x |")
    out += ["", "A hit is a new camera for a (person, latent) whose tri-planes are cached: the synthesis graph "
                "(StyleGAN2 backbone) does not run.", ""]
    out += ["## Adapter swap cost", "", "| model | " + " | ".join(reports[0].swap) + " |",
            "|---|" + "---|" * len(reports[0].swap)]
    for r in reports:
        out.append(f"| {r.name} | " + " | ".join(_fmt_ms(v) if "(ms)" in k else f"{v:.2g}" if "difference" in k
                                                 else f"{v:.1f}" for k, v in r.swap.items()) + " |")
    out += ["", "With keep-LoRA exports a person is a set of graph inputs: swapping people changes the inputs of the "
                "next call and nothing else (no rebuild, no session reload); the first request of a person also "
                "parses their adapter file (then cached). A merged export bakes one person into the weights: every "
                "new person needs an export and their own sessions.", ""]
    out += ["## Bytes per person", "", "| model | adapter parameters | adapter file fp32 | adapter file fp16 | "
                                       "merged export per person | keep-LoRA export (shared) | tri-planes per cache "
                                       "entry (fp32) |", "|---|---|---|---|---|---|---|"]
    for r in reports:
        s = r.sizes
        out.append(f"| {r.name} | {int(s['adapter parameters']):,} | {_fmt_bytes(s['adapter file fp32 (bytes)'])} | "
                   f"{_fmt_bytes(s['adapter file fp16 (bytes)'])} | "
                   f"{_fmt_bytes(s['merged export per person (bytes)'])} | "
                   f"{_fmt_bytes(s['keep-LoRA export, shared by all (bytes)'])} | "
                   f"{_fmt_bytes(s['cached tri-planes per (person, latent) (bytes)'])} |")
    out += ["", "Adapter files include the person's anchors (4 W latents and cameras here).", ""]
    out += ["## Parity measured in this run (max abs difference)", "",
            "| model | " + " | ".join(reports[0].parity) + " |", "|---|" + "---|" * len(reports[0].parity)]
    for r in reports:
        out.append(f"| {r.name} | " + " | ".join(f"{v:.1e}" for v in r.parity.values()) + " |")
    out += ["", "Export check: eager PyTorch (adapter routed, not merged) vs onnxruntime on the export's example batch "
                "(keep-LoRA graphs); runtime: `Runtime.novel_view` vs eager with the adapter merged. Tolerance 1e-3 "
                "(images in [-1, 1], depth in scene units).", ""]
    out += ["## Export time (s)", "", "| model | " + " | ".join(reports[0].export_seconds) + " |",
            "|---|" + "---|" * len(reports[0].export_seconds)]
    for r in reports:
        out.append(f"| {r.name} | " + " | ".join(f"{v:.0f}" for v in r.export_seconds.values()) + " |")
    out.append("")
    return "\n".join(out)


SPEED_HEADING = "## CPU speed: allocator, formulation, precision (issue 16)"


def speed_section(model: str, reps: int, threads: str, work: Path, log) -> str:
    """The bench.speed matrix as a markdown section, with the machine load before and after it."""
    from bench.speed import ALLOCATORS, FORMULATIONS, ORIGINAL_COMMIT, markdown, run_matrix, target_lines
    from generator.rendering import DEFAULT_RAY_CHUNK
    from launch.allocator import DEFAULT_MALLOC_CONF
    load0 = os.getloadavg()[0]
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cells = run_matrix(model, reps, tuple(int(t) for t in threads.split(",")), ALLOCATORS, FORMULATIONS, work, log)
    load1 = os.getloadavg()[0]
    lines = [SPEED_HEADING, "",
             f"`python -m bench.run --speed-only --speed-model {model} --reps {reps}` on {started}; load average "
             f"{load0:.1f} before and {load1:.1f} after (2-core machine: above ~2.5 other work inflates every "
             f"number). Median of {reps} after one warm-up, full and view called alternately, batch 1, one process "
             "per row (bench/speed.py), rows interleaved. *original*: the generator package at commit "
             f"{ORIGINAL_COMMIT}, the code before issue 16 (taken with `git archive`); *previous*: "
             "bench/reference_renderer.py (all rays at once, coarse colours marched, "
             "colours gathered after the depth sort) with NCHW activations; *fast*: the product path (rays in "
             f"chunks of {DEFAULT_RAY_CHUNK}, tri-plane lookup as one weighted gather of the 12 corner texels, "
             "densities-only coarse march, colour as one matmul, channels_last kept after every transposed conv); "
             "*fast-bf16*: the product path under `--precision bf16` (super-resolution in bf16; mapping, "
             "backbone, decoder and march fp32); *onnxruntime*: the 'base' export, CPUExecutionProvider. All "
             "eager formulations but *original* share the in-place bias/activation, contiguous conv-transpose "
             "weights, torch's fused softplus and the backbone's transposed-conv upsampling. Stage columns: "
             "backbone = tri-planes, render = rays to features, SR = super-resolution (ms). Max image diff: against "
             "*previous* under the same allocator and threads. Peak RSS: the process's maximum resident set.", "",
             "Settings (launch/allocator.py): `cli.py`, `python -m runtime`, the TorchServe workers and `bench/` "
             "re-execute themselves once with jemalloc preloaded when `libjemalloc.so.2` is installed (Debian: "
             "`apt-get install -y libjemalloc2`; tcmalloc is the fallback), with `MALLOC_CONF=" + DEFAULT_MALLOC_CONF
             + "` unless MALLOC_CONF is set; `MY3DGEN_ALLOCATOR=system` opts out. Outputs are bit-identical "
             "(tests/test_allocator.py). `cli.py render --precision bf16` is fast where oneDNN has native "
             "bf16 (AVX512-BF16, as on this machine, or AMX; elsewhere it is emulated and slower than fp32). "
             "The torch-free "
             "runtime and the TorchServe endpoint have no bf16 mode: in ONNX (opset 20) Conv and GridSample do not "
             "accept bfloat16, and onnxruntime 1.32's CPU provider has no bfloat16 MatMul kernel (checked by building "
             "one-node sessions); their fast CPU path is fp32 under jemalloc. "
             "`cli.py render --compile` (TriPlaneGenerator.compile_for_inference) compiles the per-chunk renderer "
             "and the super-resolution with inductor: its first call took ~2 min for `tiny` on this 2-core "
             "machine under load (then 3-4x faster views for tiny), cached in $TORCHINDUCTOR_CACHE_DIR "
             "(default /tmp/torchinductor_$USER); off by default.", ""]
    targets = ["", "Issue 16's targets, computed from the rows above:"] + target_lines(cells)
    return "\n".join(lines + markdown(cells) + targets) + "\n"


def replace_section(text: str, heading: str, section: str) -> str:
    """`text` with the section under `heading` (up to the next '## ') replaced by `section` (appended if absent)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == heading:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
            return "\n".join(lines[:i]) + "\n" + section + ("\n" + "\n".join(lines[end:]) if end < len(lines)
                                                             else "")
    return text.rstrip() + "\n\n" + section


def section_of(doc: Path, heading: str) -> str | None:
    """The section of `doc` under `heading` (up to the next '## ' heading), or None."""
    if doc.is_file():
        lines = doc.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip() == heading:
                end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
                return "\n".join(lines[i:end]).rstrip() + "\n"
    return None


def backends_section(model: str, reps: int, threads: int, log) -> str:
    """The backends section: bench/serve_backends.py's table (every backend through TorchServe and bare), then
    bench/contention.py's (quiet against a competing load), both measured now."""
    from bench import contention, serve_backends
    served = serve_backends.run(model, reps, threads, None, log)
    sides = ["official", "onnxruntime", "torch-2t", "torch-2t-passive", "torch-2t-passive-chunk4096"]
    with tempfile.TemporaryDirectory(prefix="my3dgen-contention-") as tmp:
        export = contention.build_export(model, Path(tmp))
        loaded = contention.run(export, sides, ["quiet", "load1", "load2"], 3, ["full", "view"], Path(tmp), log=log)
    return "\n".join([BACKENDS_HEADING, "", serve_backends.markdown(served), "", *contention.markdown(loaded), ""])


def serving_section(doc: Path) -> str:
    """The existing '## Serving latency (TorchServe)' section of `doc`, or a stub."""
    return section_of(doc, SERVING_HEADING) or f"{SERVING_HEADING}\n\n(Filled by the serving benchmark.)\n"


def print_tables(reports: list[ModelReport]) -> None:
    for r in reports:
        print(f"\n{r.name}: {r.shapes}")
        print(f"  {'what':<72} {'eager ms':>10} {'ort ms':>10} {'ratio':>7}")
        for what, e, o, _ in r.rows:
            print(f"  {what:<72} {_fmt_ms(e):>10} {_fmt_ms(o):>10} {e / o:>6.2f}x")
        print("  runtime: " + ", ".join(f"{k} {v if isinstance(v, str) else _fmt_ms(v)}" for k, v in r.runtime.items()))
        print("  swap: " + ", ".join(f"{k} {v:.1f}" for k, v in r.swap.items()))
        print("  sizes: " + ", ".join(f"{k} {v:,.0f}" for k, v in r.sizes.items()))
        print("  parity: " + ", ".join(f"{k} {v:.1e}" for k, v in r.parity.items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny only; print, write only with --out")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default: tiny 20, ffhq512-128 3)")
    ap.add_argument("--threads", type=int, default=1, help="threads for torch and onnxruntime (default 1: reproducible on shared CI machines)")
    ap.add_argument("--out", type=Path, default=None, help=f"markdown to write (default {DOC.relative_to(REPO)})")
    ap.add_argument("--keep-work", type=Path, default=None, help="keep the exports in this folder")
    ap.add_argument("--speed", action="store_true", help="also run the CPU speed matrix (bench/speed.py)")
    ap.add_argument("--speed-only", action="store_true",
                    help="run only the CPU speed matrix and replace its section of the markdown")
    ap.add_argument("--speed-model", default="ffhq512-128", help="model of the speed matrix (default ffhq512-128)")
    ap.add_argument("--speed-threads", default="1,2", help="thread counts of the speed matrix (default 1,2)")
    ap.add_argument("--backends-only", action="store_true",
                    help="run only the backends benchmarks (through TorchServe, and under contention) and replace "
                         "their section of the markdown")
    args = ap.parse_args(argv)
    from launch.allocator import preload
    preload()  # the product's allocator (jemalloc when installed); the speed matrix picks its own per row
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if args.speed_only:
        out = args.out or DOC
        with tempfile.TemporaryDirectory(prefix="my3dgen-speed-") as work:
            section = speed_section(args.speed_model, args.reps or 3, args.speed_threads, Path(work), log)
        print(section)
        write_text(out, replace_section(out.read_text() if out.is_file() else "# Benchmarks\n", SPEED_HEADING,
                                        section))
        print(f"wrote {out}")
        return 0
    if args.backends_only:
        out = args.out or DOC
        section = backends_section(args.speed_model, args.reps or 9, args.threads if args.threads != 1 else 2, log)
        print(section)
        write_text(out, replace_section(out.read_text() if out.is_file() else "# Benchmarks\n", BACKENDS_HEADING,
                                        section))
        print(f"wrote {out}")
        return 0
    models = [("tiny", args.reps or 20)] + ([] if args.quick else [("ffhq512-128", args.reps or 3)])
    out = args.out if args.out is not None else (None if args.quick else DOC)
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="my3dgen-bench-")) if args.keep_work is None else args.keep_work
    work.mkdir(parents=True, exist_ok=True)
    speed = None
    try:
        reports = [bench_model(name, reps, args.threads, work, log) for name, reps in models]
        if args.speed:
            speed = speed_section(args.speed_model, args.reps or 3, args.speed_threads, work / "speed", log)
    finally:
        if args.keep_work is None:
            shutil.rmtree(work, ignore_errors=True)
    print_tables(reports)
    if out is not None:
        command = "python -m bench.run" + (" --quick" if args.quick else "") + (
            f" --reps {args.reps}" if args.reps else "") + (f" --threads {args.threads}" if args.threads != 1 else "")
        text = render_markdown(reports, args.threads, command, started, time.perf_counter() - t0)
        previous = out if out.is_file() else DOC
        speed = speed or section_of(previous, SPEED_HEADING)  # without --speed the last measured matrix is kept
        if speed is not None:
            text += "\n" + speed
        text += "\n" + serving_section(previous)
        backends = section_of(previous, BACKENDS_HEADING)  # without --backends-only the last measurement is kept
        if backends is not None:
            text += "\n" + backends
        startup = section_of(previous, STARTUP_HEADING)  # written by bench/startup.py; kept as it is
        if startup is not None:
            text += "\n" + startup
        gpu = section_of(previous, GPU_HEADING)  # measured on a lent GPU by bench.gpu_record; kept as it is
        if gpu is not None:
            text += "\n" + gpu
        write_text(out, text)
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
