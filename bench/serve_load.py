"""Bounded concurrent load on a TorchServe model; latency percentiles into docs/BENCHMARKS.md.

    .venv/bin/python bench/serve_load.py --tiny                 # self-contained: export the tiny preset (keep-LoRA),
                                                                # two people, package, start TorchServe on free
                                                                # loopback ports, load it, stop it, write the section
    .venv/bin/python bench/serve_load.py --run-dir logs/torchserve --model NAME   # a server from `cli.py serve`

The load is limited in count and in time (default 300 requests, 4 client threads, 60 s): a mix of novel views
(anchor x yaw grid, so the tri-plane cache is exercised) and single-frame interpolations. Only the section
`## Serving latency (TorchServe)` of the output file is replaced; the rest of the file is kept.
`tests/test_serve_integration.py` calls `run_load` and `write_section` on its own server.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import random
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from formats.atomic import write_text

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SECTION = "## Serving latency (TorchServe)"


@dataclass
class LoadResult:
    """What a load run measured."""

    requests: int
    """Requests sent."""
    threads: int
    wall_s: float
    statuses: dict
    """HTTP status -> count (0: connection error)."""
    latencies_ms: list
    """Client-observed latency of every 2xx response."""
    handler_ms: list = field(default_factory=list)
    """Handler time from the Server-Timing header of every image response."""
    cache_hits: int = 0
    """Image responses whose tri-planes came from the cache."""
    stopped_by_time: bool = False
    """True when the time limit ended the run before all requests were sent."""
    load_avg: float = 0.0
    """1-minute load average of the machine when the run started (other work inflates latencies)."""

    @property
    def ok(self) -> int:
        return sum(v for k, v in self.statuses.items() if 200 <= k < 300)

    @property
    def server_errors(self) -> int:
        return sum(v for k, v in self.statuses.items() if k >= 500 or k == 0)

    @property
    def client_errors(self) -> int:
        return sum(v for k, v in self.statuses.items() if 400 <= k < 500)

    def percentiles(self, values: Optional[list] = None) -> dict:
        v = np.asarray(self.latencies_ms if values is None else values, dtype=np.float64)
        if v.size == 0:
            return {}
        return {f"p{q}": float(np.percentile(v, q)) for q in (50, 90, 99)} | {"max": float(v.max()),
                                                                             "mean": float(v.mean())}


def default_bodies(people: list, anchors: int = 2, seed: int = 0, n: int = 64) -> list:
    """A fixed, seeded mix of request bodies: 75% novel views on an anchor x yaw grid, 25% interpolations."""
    rng = random.Random(seed)
    yaws = [-0.6, -0.3, 0.0, 0.3, 0.6]
    bodies = []
    for _ in range(n):
        person = rng.choice(people)
        if rng.random() < 0.75:
            bodies.append({"op": "novel_view", "person": person, "anchor": rng.randrange(anchors),
                           "yaw": rng.choice(yaws), "pitch": rng.choice([0.0, 0.1])})
        else:
            bodies.append({"op": "interpolate", "person": person, "a": 0, "b": anchors - 1,
                           "t": rng.choice([0.25, 0.5, 0.75]), "yaw": rng.choice(yaws)})
    return bodies


def _handler_ms(header: Optional[str]) -> Optional[float]:
    m = re.search(r"(?:^|,\s*)handler;dur=([0-9.]+)", header or "")
    return float(m.group(1)) if m else None


def run_load(url: str, token: str, bodies: list, requests: int = 300, threads: int = 4,
             time_limit_s: float = 60.0, timeout_s: float = 30.0) -> LoadResult:
    """POST `bodies` (cycled) to `url` from `threads` threads until `requests` are sent or `time_limit_s` passes."""
    from serve.server import http_request
    counter = itertools.count()
    lock = threading.Lock()
    statuses: dict = {}
    latencies, handler, hits = [], [], [0]
    deadline = time.monotonic() + time_limit_s
    stopped = [False]

    def worker():
        while True:
            with lock:
                i = next(counter)
            if i >= requests:
                return
            if time.monotonic() > deadline:
                stopped[0] = True
                return
            t0 = time.perf_counter()
            try:
                status, headers, _ = http_request(url, bodies[i % len(bodies)], token=token, timeout=timeout_s)
            except OSError:
                status, headers = 0, {}
            dt = (time.perf_counter() - t0) * 1000
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if 200 <= status < 300:
                    latencies.append(dt)
                    h = _handler_ms(headers.get("server-timing"))
                    if h is not None:
                        handler.append(h)
                    hits[0] += headers.get("x-my3dgen-cache") == "hit"

    load_avg = os.getloadavg()[0]
    t0 = time.perf_counter()
    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(time_limit_s + timeout_s + 5)
    wall = time.perf_counter() - t0
    sent = sum(statuses.values())
    return LoadResult(requests=sent, threads=threads, wall_s=wall, statuses=dict(sorted(statuses.items())),
                      latencies_ms=latencies, handler_ms=handler, cache_hits=hits[0], stopped_by_time=stopped[0],
                      load_avg=load_avg)


def section_text(runs: list, setup: str, command: str) -> str:
    """The markdown section (heading included) for load runs given as [(label, LoadResult), ...]."""
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")

    def row(name, p):
        if not p:
            return f"| {name} | - | - | - | - | - |"
        return f"| {name} | {p['p50']:.1f} | {p['p90']:.1f} | {p['p99']:.1f} | {p['max']:.1f} | {p['mean']:.1f} |"

    lines = [SECTION, "",
             f"Measured {now} on {platform.machine()} with {os.cpu_count()} CPU cores ({platform.system()}), "
             f"Python {platform.python_version()}. Re-run: `{command}`.", "", setup, ""]
    for label, r in runs:
        lines.append(f"- {label}: {r.requests} requests from {r.threads} client thread(s) in {r.wall_s:.1f} s "
                     f"({r.requests / max(r.wall_s, 1e-9):.1f} req/s); statuses {r.statuses}; {r.server_errors} "
                     f"server errors; tri-plane cache hits {r.cache_hits}/{len(r.handler_ms)} image responses; "
                     f"machine load average {r.load_avg:.1f} at the start (other work inflates latencies)"
                     + (" (stopped by the time limit)" if r.stopped_by_time else "") + ".")
    lines += ["", "| latency (ms) | p50 | p90 | p99 | max | mean |", "|---|---|---|---|---|---|"]
    for label, r in runs:
        lines.append(row(f"{label}: end to end (client, incl. queueing)", r.percentiles()))
        lines.append(row(f"{label}: handler (Server-Timing `handler`)", r.percentiles(r.handler_ms)))
    lines += ["", "End to end includes the HTTP round trip, TorchServe's queue (one worker renders one request at a "
                  "time, so with N concurrent clients a request waits for up to N-1 others) and PNG encoding; the "
                  "handler time is parsing + rendering + encoding inside the worker.", ""]
    return "\n".join(lines)


def write_section(path: str | os.PathLike, text: str) -> Path:
    """Replace (or append) the SECTION of the markdown file at `path`, keeping everything else; atomic write."""
    path = Path(path)
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = old.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == SECTION), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    else:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
        tail = "".join(lines[end:])
        new = "".join(lines[:start]) + text.rstrip("\n") + "\n" + ("\n" + tail if tail else "")
    return write_text(path, new)


# ---------------------------------------------------------------- a self-contained tiny model store
def export_tiny(out: Path, verify: bool = True):
    """The tiny preset (seed 0) exported with LoRA inputs kept -> (G, export dir)."""
    import torch
    from export.exporter import export_generator
    from export.options import ExportOptions
    from generator.model_dir import build_generator
    torch.manual_seed(0)
    G = build_generator(preset_name="tiny", seed=0).eval()
    return G, export_generator(G, out, options=ExportOptions(mode="keep", verify=verify))




def tiny_store(workdir: Path, people: tuple = ("alice", "bob"), name: str = "tiny") -> tuple:
    """Export + people + package under `workdir` -> (model_store, export_dir, G, {person: adapter path})."""
    from fixtures.people import make_person
    from serve.package import PackageConfig, add_person, package_model
    workdir.mkdir(parents=True, exist_ok=True)
    G, export_dir = export_tiny(workdir / "export")
    store = workdir / "model_store"
    package_model(export_dir, PackageConfig(name=name, model_store=store))
    files = {p: make_person(G, workdir / f"{p}.safetensors", seed=i + 1, anchors=2, b_std=0.05, full_std=0.0,
                            views=[(-0.1, 0.0), (0.1, 0.0)]) for i, p in enumerate(people)}
    for p, f in files.items():
        add_person(store, name, p, f)
    return store, export_dir, G, files


def free_ports(n: int) -> list:
    """`n` distinct TCP ports free on 127.0.0.1 right now."""
    import socket
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def serve_config(store: Path, run_dir: Path):
    """A ServeConfig for `store` on free loopback ports."""
    from serve.server import DEFAULT_PORTS, ServeConfig
    return ServeConfig(model_store=store, run_dir=run_dir, ports=dict(zip(DEFAULT_PORTS, free_ports(
        len(DEFAULT_PORTS)), strict=True)))


def load_runs(url: str, token: str, bodies: list, args) -> list:
    """`--serial` requests from one client (service time), then the bounded concurrent run (queueing included)."""
    runs = []
    if args.serial > 0:
        runs.append(("1 client", run_load(url, token, bodies, args.serial, 1, args.time_limit)))
    runs.append((f"{args.threads} clients", run_load(url, token, bodies, args.requests, args.threads,
                                                       args.time_limit)))
    return runs


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="build and serve the tiny preset in a temp folder")
    ap.add_argument("--run-dir", type=Path, help="run folder of a server started by `cli.py serve`")
    ap.add_argument("--model", help="model name (with --run-dir)")
    ap.add_argument("--people", help="comma-separated people to request (with --run-dir; default: all)")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--serial", type=int, default=50, help="requests from a single client first (0: none)")
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    args = ap.parse_args(argv)
    from serve.server import http_request, server_info, start_server, stop_server
    if args.tiny == (args.run_dir is not None):
        ap.error("give exactly one of --tiny or --run-dir")
    if args.tiny:
        import tempfile
        with tempfile.TemporaryDirectory(prefix="my3dgen-bench-") as tmp:
            tmp = Path(tmp)
            store, _, _, files = tiny_store(tmp / "work")
            cfg = serve_config(store, tmp / "run")
            info = start_server(cfg)
            try:
                url = f"{info.inference_url}/predictions/tiny"
                runs = load_runs(url, info.token(), default_bodies(sorted(files)), args)
            finally:
                stop_server(info.run_dir)
        setup = ("Model: the `tiny` preset (random weights, 128x128 output, 32x32 rays), exported keep-LoRA "
                 "(adapters as graph inputs), onnxruntime CPU, one TorchServe 0.12 worker (batchSize 1), "
                 f"{len(files)} people, token auth on, server and client on the same machine.")
        command = ".venv/bin/python bench/serve_load.py --tiny"
    else:
        info = server_info(args.run_dir)
        if info is None:
            ap.error(f"no server running from {args.run_dir}")
        model = args.model or info.models[0]
        url = f"{info.inference_url}/predictions/{model}"
        people = args.people.split(",") if args.people else None
        if people is None:
            import json
            status, _, body = http_request(url, {"op": "people"}, token=info.token())
            people = json.loads(body)["people"] if status == 200 else []
        if not people:
            ap.error(f"model {model} has no people to request")
        runs = load_runs(url, info.token(), default_bodies(people), args)
        setup = f"Model `{model}` served from {args.run_dir} ({len(people)} people)."
        command = f".venv/bin/python bench/serve_load.py --run-dir {args.run_dir} --model {model}"
    text = section_text(runs, setup, command)
    print(text)
    write_section(args.out, text)
    print(f"wrote section to {args.out}")
    return 1 if any(r.server_errors for _, r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
