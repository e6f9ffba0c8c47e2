"""Every backend side by side through TorchServe, next to the bare Runtime call (issue 25's CPU target).

    python -m bench.serve_backends [--model ffhq512-128] [--reps 9] [--threads 2] [--export DIR] [--out F.json]

One keep-LoRA export of `--model` (random weights, made here unless `--export` names one) and one person, packaged
once. One TorchServe per backend (onnxruntime, torch, auto: `cli.py serve --backend`), all started before the
measurement so that the requests can alternate: each repetition sends, to every server in turn (order rotated),
the same novel view of the person's anchor at a new yaw (its tri-planes are cached after the warm-up, so each
request costs the render stage: what a slider costs), and times the whole HTTP round trip. In the same run, and
alternating with them, the bare `Runtime.novel_view` of each backend in this process (no HTTP, no encoding). Medians.

The targets it checks: with `--backend auto`, a cached-person novel view through TorchServe within 5% of the fastest
backend through TorchServe, and within 10% of the bare Runtime call of the backend auto chose. It prints the CPU's
flags and the load average before and after (a shared box changes which backend wins; `auto` decides at start-up).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

BACKENDS = ("onnxruntime", "torch", "auto")
YAWS = (-0.4, -0.2, 0.0, 0.2, 0.4)


def cpu_flags() -> dict:
    """What decides between backends on a CPU: the vector extensions oneDNN and onnxruntime use."""
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), "?") if Path("/proc/cpuinfo").exists() else "?"
    return {"cpu": model, "cores": len(os.sched_getaffinity(0)),
            **{f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")}}


def build(model: str, work: Path, export: Path | None) -> tuple[Path, Path]:
    """(export dir, person adapter file): `export` if given, else a keep-LoRA export of `model` made here."""
    import torch
    from fixtures.people import make_person
    from export.exporter import export_generator
    from export.options import ExportOptions
    from generator.model_dir import build_generator
    torch.manual_seed(0)
    G = build_generator(preset_name=model, seed=0).eval()
    person = make_person(G, work / "alice.safetensors", seed=1)
    if export is None:
        export = export_generator(G, work / "export", options=ExportOptions(mode="keep", verify=False))
    return Path(export), person


def start(store: Path, work: Path, backend: str):
    from bench.serve_load import serve_config
    from dataclasses import replace
    from serve.server import start_server
    return start_server(replace(serve_config(store, work / f"run-{backend}"), backend=backend), timeout_s=900)


def post(info, body: dict) -> float:
    """Milliseconds of one request (status 200 required)."""
    from serve.server import http_request
    t = time.perf_counter()
    status, _, data = http_request(f"{info.inference_url}/predictions/m", body, token=info.token(), timeout=600)
    ms = (time.perf_counter() - t) * 1000
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {data[:300]!r}")
    return ms


def chosen_backend(info) -> tuple[str, str]:
    """(backend name, why) of the model's worker, from its log line 'my3dgen handler ready: ... backend X (...)'."""
    log = (info.run_dir / "logs" / "model_log.log")
    text = log.read_text(errors="replace") if log.exists() else ""
    line = next((ln for ln in reversed(text.splitlines()) if "my3dgen handler ready" in ln), "")
    name = line.split(" backend ", 1)[1].split(" ", 1)[0] if " backend " in line else "?"
    why = line.split(" backend ", 1)[1] if " backend " in line else ""
    return name, why


def run(model: str, reps: int, threads: int, export: Path | None, log=print) -> dict:
    from runtime import Runtime
    from serve.package import PackageConfig, add_person, package_model
    from serve.server import stop_server
    started = time.time()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="my3dgen-serve-backends-") as tmp:
        work = Path(tmp)
        log(f"[serve_backends] building {model} export and person ...")
        export_dir, person = build(model, work, export)
        store = work / "store"
        package_model(export_dir, PackageConfig(name="m", model_store=store, threads=threads, check=False,
                                                response_timeout_s=600, startup_timeout_s=900))
        add_person(store, "m", "alice", person, check=False)
        servers = {}
        try:
            for b in BACKENDS:
                log(f"[serve_backends] starting TorchServe with --backend {b} ...")
                servers[b] = start(store, work, b)
            people = store / "people" / "m"
            bare = {b: Runtime(export_dir, people, threads=threads, backend=b) for b in ("onnxruntime", "torch")}
            body = {"op": "novel_view", "person": "alice", "anchor": 0}
            for b, info in servers.items():  # warm-up: synthesis once, so every timed request is a cached view
                post(info, {**body, "yaw": 0.1})
            for rt in bare.values():
                rt.novel_view("alice", anchor=0, yaw=0.1)
            times: dict[str, list[float]] = {k: [] for k in [*(f"serve:{b}" for b in BACKENDS),
                                                            *(f"bare:{b}" for b in bare)]}
            sides = [(f"serve:{b}", lambda b=b, y=0.0: post(servers[b], {**body, "yaw": y})) for b in BACKENDS]
            sides += [(f"bare:{b}", lambda b=b, y=0.0: _bare_ms(bare[b], y)) for b in bare]
            for k in range(reps):
                yaw = YAWS[k % len(YAWS)]
                order = sides[k % len(sides):] + sides[:k % len(sides)]
                for name, fn in order:
                    times[name].append(fn(y=yaw))
                log(f"[serve_backends] rep {k + 1}/{reps}: " + ", ".join(f"{n} {v[-1]:.0f}" for n, v in times.items()))
            auto_name, auto_why = chosen_backend(servers["auto"])
        finally:
            for b in servers:
                stop_server(work / f"run-{b}")
    med = {k: statistics.median(v) for k, v in times.items()}
    fastest = min(med[f"serve:{b}"] for b in ("onnxruntime", "torch"))
    report = {"model": model, "reps": reps, "threads": threads, "machine": cpu_flags(),
              "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
              "median_ms": {k: round(v, 1) for k, v in med.items()},
              "auto_chose": auto_name, "auto_why": auto_why,
              "auto_vs_fastest_served": round(med["serve:auto"] / fastest, 3),
              "auto_vs_bare_of_its_choice": (round(med["serve:auto"] / med[f"bare:{auto_name}"], 3)
                                             if f"bare:{auto_name}" in med else None),
              "seconds": round(time.time() - started, 1)}
    report["targets"] = {"auto within 5% of the fastest backend through TorchServe":
                         report["auto_vs_fastest_served"] <= 1.05,
                         "auto within 10% of the bare Runtime call":
                         report["auto_vs_bare_of_its_choice"] is not None
                         and report["auto_vs_bare_of_its_choice"] <= 1.10}
    return report


def _bare_ms(rt, yaw: float) -> float:
    t = time.perf_counter()
    rt.novel_view("alice", anchor=0, yaw=yaw)
    return (time.perf_counter() - t) * 1000


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"`python -m bench.serve_backends --model {r['model']} --reps {r['reps']} --threads {r['threads']}` "
             f"({r['seconds']} s): {m['cpu']}, {m['cores']} cores, avx2 {m['avx2']}, avx512f {m['avx512f']}, "
             f"avx512_bf16 {m['avx512_bf16']}, amx {m['amx_bf16']}; load average {r['load_before'][0]} before, "
             f"{r['load_after'][0]} after. Novel view of a cached person (render stage + PNG), median of "
             f"{r['reps']}, every side alternating in one run.", "",
             "| path | onnxruntime | torch | auto |", "|---|---|---|---|",
             "| through TorchServe (HTTP round trip, ms) | " + " | ".join(
                 f"{r['median_ms'][f'serve:{b}']:.0f}" for b in BACKENDS) + " |",
             "| bare `Runtime.novel_view` (ms) | " + " | ".join(
                 f"{r['median_ms'][f'bare:{b}']:.0f}" if f"bare:{b}" in r["median_ms"] else "—" for b in BACKENDS)
             + " |", "",
             f"auto chose **{r['auto_chose']}** ({r['auto_why']}); auto / fastest served = "
             f"{r['auto_vs_fastest_served']}, auto / bare call of its choice = {r['auto_vs_bare_of_its_choice']}.",
             "Targets: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in r["targets"].items()) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ffhq512-128", choices=("tiny", "ffhq512-128"))
    ap.add_argument("--reps", type=int, default=9, choices=range(1, 1001), metavar="[1-1000]")
    ap.add_argument("--threads", type=int, default=2, choices=range(1, 257), metavar="[1-256]")
    ap.add_argument("--export", type=Path, help="a keep-LoRA export of --model to use instead of making one")
    ap.add_argument("--out", type=Path, help="write the report as JSON here")
    args = ap.parse_args(argv)
    from launch.allocator import preload
    preload()  # the bare calls run under the launcher's allocator and OpenMP settings, as the workers do
    report = run(args.model, args.reps, args.threads, args.export)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
