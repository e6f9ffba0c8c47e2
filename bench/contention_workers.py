"""The processes the contention bench (bench/contention.py) drives: the load generator and the side workers.

  * `LoadGenerator`: `n` spinning processes pinned to the last cores, switched on and off by the bench, which
    count their iterations and CPU time so that the report proves the load ran;
  * `SIDES`: the candidates the bench compares, and `_Worker`, the sides of one process (a torch-backend and/or an
    onnxruntime Runtime of the export), which times one call and reads the contention signals over it;
  * `WorkerProc`: the bench's end of a worker process (`python -m bench.contention worker`, which runs
    `worker_main`), one per environment, since libgomp reads OMP_WAIT_POLICY and GOMP_SPINCOUNT only at start;
    they talk in JSON lines over stdin/stdout.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.cpu_signals import others_over, proc_cpu, proc_stat_busy, share_threads, thread_schedstat

REPO = Path(__file__).resolve().parents[1]
"""The workers' working directory, so that `python -m bench.contention worker` finds the package."""

# ---------------------------------------------------------------------------------------------------- load generator

def _spin(core: int | None, busy, stop, count) -> None:
    """The load: pure-Python and small-numpy arithmetic, one thread, while `busy` is set."""
    import numpy as np
    if core is not None:
        os.sched_setaffinity(0, {core})
    a, x = np.ones(32), 1.0
    while not stop.is_set():
        if not busy.wait(0.05):
            continue
        for _ in range(500):
            a = a * 1.0000001 + 1e-9
            x = x * 1.0000001 + 1e-9
        with count.get_lock():
            count.value += 500


class LoadGenerator:
    """`n` spinning processes pinned to the last `n` cores; `busy(k)` keeps the first k of them spinning, and
    `stats()` says how many iterations per second and what share of a core each got while busy."""

    def __init__(self, n: int, pin: bool = True):
        ctx = mp.get_context("spawn")
        cores = sorted(os.sched_getaffinity(0))
        self.stop = ctx.Event()
        self.procs, self.busy, self.counts = [], [], []
        for i in range(n):
            ev, cnt = ctx.Event(), ctx.Value("q", 0)
            core = cores[-1 - i % len(cores)] if pin else None
            p = ctx.Process(target=_spin, args=(core, ev, self.stop, cnt), daemon=True)
            p.start()
            self.procs.append((p, core))
            self.busy.append(ev)
            self.counts.append(cnt)
        self.busy_s = [0.0] * n
        self.iters = [0] * n
        self.cpu_s = [0.0] * n
        self._since: dict[int, tuple[float, int, float]] = {}

    def set_busy(self, k: int) -> None:
        now = time.perf_counter()
        for i, ev in enumerate(self.busy):
            if i < k and i not in self._since:
                self._since[i] = (now, self.counts[i].value, proc_cpu(self.procs[i][0].pid))
                ev.set()
            elif i >= k and i in self._since:
                ev.clear()
                t0, c0, cpu0 = self._since.pop(i)
                self.busy_s[i] += now - t0
                self.iters[i] += self.counts[i].value - c0
                self.cpu_s[i] += proc_cpu(self.procs[i][0].pid) - cpu0

    def cpu_now(self) -> float:
        """CPU seconds the generator processes have used so far."""
        return sum(proc_cpu(p.pid) for p, _ in self.procs)

    def stats(self) -> list[dict]:
        return [{"core": core, "busy_s": round(b, 2), "iterations": it,
                 "iterations_per_s": it / b if b else 0.0, "cpu_share": c / b if b else 0.0}
                for (_, core), b, it, c in zip(self.procs, self.busy_s, self.iters, self.cpu_s)]

    def close(self) -> None:
        self.set_busy(0)
        self.stop.set()
        for p, _ in self.procs:
            p.join(5)
            if p.is_alive():
                p.terminate()


# ---------------------------------------------------------------------------------------------------- sides

SIDES: dict[str, dict] = {
    "official": {"kind": "official", "threads": 2, "env": {"GOMP_SPINCOUNT": "300000"}},
    "onnxruntime": {"kind": "onnxruntime", "threads": 2},
    "torch-2t": {"kind": "torch", "threads": 2, "env": {"GOMP_SPINCOUNT": "300000"}},
    "torch-1t": {"kind": "torch", "threads": 1, "env": {"GOMP_SPINCOUNT": "300000"}},
    "torch-share": {"kind": "torch", "threads": "share"},
    "torch-2t-chunk4096": {"kind": "torch", "threads": 2, "ray_chunk": 4096, "env": {"GOMP_SPINCOUNT": "300000"}},
    "torch-2t-passive": {"kind": "torch", "threads": 2, "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
    "torch-2t-spin10k": {"kind": "torch", "threads": 2, "env": {"GOMP_SPINCOUNT": "10000"}},
    "torch-share-passive": {"kind": "torch", "threads": "share", "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
    "torch-2t-passive-chunk4096": {"kind": "torch", "threads": 2, "ray_chunk": 4096,
                                   "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
}
"""Candidates. The entry points start with OMP_WAIT_POLICY=PASSIVE (launch/threads.py, the product default since
this bench measured it): 'torch-2t' and 'torch-1t' run libgomp's default wait instead (GOMP_SPINCOUNT=300000, its
documented spin before sleeping, which the launcher leaves alone), and so do 'official' (run as the official code
would be) and 'torch-2t-chunk4096'; 'torch-2t-passive' is the product.
threads 'share': before each call, threads = the cores not busy with other processes, rounded (`share_threads`,
from a 50 ms /proc/stat window while this process is idle; its cost is in the timing).
ray_chunk: G.renderer.ray_chunk for the call (fewer, larger ops; the product default is 512)."""
SHARE_PROBE_S = 0.05
"""Seconds of /proc/stat the 'share' policy reads before each call."""


# ---------------------------------------------------------------------------------------------------- worker side

class _Worker:
    """The sides of one process: a torch-backend Runtime and/or an onnxruntime Runtime of the export."""

    def __init__(self, export: Path, sides: list[str], work: Path):
        import numpy as np
        import torch
        from runtime import Runtime
        self.np, self.torch = np, torch
        self.sides = {s: SIDES[s] for s in sides}
        kinds = {v["kind"] for v in self.sides.values()}
        self.rt_torch = Runtime(export, backend="torch", threads=2) if kinds & {"torch", "official"} else None
        self.rt_ort = Runtime(export, backend="onnxruntime", threads=2) if "onnxruntime" in kinds else None
        self.work = work
        self.ncpu = len(os.sched_getaffinity(0))
        self.inputs = {}
        for rt in (self.rt_torch, self.rt_ort):
            if rt is None:
                continue
            b = rt.backend
            z = np.random.RandomState(0).randn(1, rt.z_dim).astype(np.float32)
            c, c2 = b.camera(0.3, -0.1), b.camera(-0.4, 0.15)
            ws = b.map(z, c, 0.7)
            self.inputs[b.name] = (b, rt.people_store.base, z, c, c2, ws, b.planes(ws, rt.people_store.base))
        self.last_threads = None

    def info(self) -> dict:
        torch = self.torch
        maps = Path("/proc/self/maps").read_text()
        omp = sorted({lib for lib in ("libgomp", "libiomp5", "libomp") if lib + "." in maps or lib + "-" in maps})
        out = {"pid": os.getpid(), "allocator": _allocator(), "torch": torch.__version__,
               "openmp_runtime": omp, "parallel_backend": [ln.strip() for ln in
                                                           torch.__config__.parallel_info().splitlines()
                                                           if "parallel backend" in ln or "OpenMP" in ln],
               "env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}}
        if self.rt_ort is not None:
            import onnxruntime
            out["onnxruntime"] = onnxruntime.__version__
        return out

    def _threads(self, spec) -> int:
        if spec == "share":
            return share_threads(others_over(SHARE_PROBE_S), self.ncpu)
        return int(spec)

    def _fn(self, side: str, op: str):
        """(prepare, call, restore) of one op of one side."""
        spec, torch = self.sides[side], self.torch
        kind = spec["kind"]
        if kind == "onnxruntime":
            b, p, z, c, c2, ws, planes = self.inputs["onnxruntime"]
            return (lambda: 2), (lambda: self._call(b, p, z, c, c2, ws, planes, op)), (lambda: None)
        b, p, z, c, c2, ws, planes = self.inputs["torch"]
        G = b.G
        state = {}

        def prepare():
            n = self._threads(spec["threads"])
            torch.set_num_threads(n)
            state["chunk"] = G.renderer.ray_chunk
            if spec.get("ray_chunk"):
                G.renderer.ray_chunk = spec["ray_chunk"]
            return n

        def restore():
            G.renderer.ray_chunk = state["chunk"]

        if kind == "official":
            from bench.reference_renderer import previous_formulation

            def call():
                with previous_formulation(G):
                    return self._call(b, p, z, c, c2, ws, planes, op)
            return prepare, call, restore
        return prepare, (lambda: self._call(b, p, z, c, c2, ws, planes, op)), restore

    @staticmethod
    def _call(b, p, z, c, c2, ws, planes, op):
        if op == "full":
            w = b.map(z, c, 0.7)
            return b.render(b.planes(w, p), w, c, p)
        return b.render(planes, ws, c2, p)

    def measure(self, side: str, op: str, save: str | None = None) -> dict:
        import resource
        prepare, call, restore = self._fn(side, op)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        b0, c0, (run0, wait0) = proc_stat_busy(), time.process_time(), thread_schedstat()
        t0 = time.perf_counter()
        threads = prepare()  # inside the timing: the share policy's probe is part of its cost
        try:
            out = call()
        finally:
            restore()
        t1 = time.perf_counter()
        b1, c1, (run1, wait1) = proc_stat_busy(), time.process_time(), thread_schedstat()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        wall, cpu, run, wait = t1 - t0, c1 - c0, run1 - run0, wait1 - wait0
        if save:
            self.np.save(save, out["image"])
        return {"ms": wall * 1000, "cpu_ms": cpu * 1000, "threads": threads,
                "others_cores": max(0.0, ((b1 - b0) - cpu) / wall), "cpu_per_wall": cpu / wall,
                "wait_frac": wait / (run + wait) if run + wait > 0 else 0.0, "nivcsw": r1.ru_nivcsw - r0.ru_nivcsw}

    def probe(self) -> dict:
        """A 2-thread elementwise op's wall over the 1-thread one's (median of 5 pairs, ~10-40 ms each)."""
        torch = self.torch
        x = torch.randn(1 << 22)
        y = torch.empty_like(x)
        saved, ratios, t = torch.get_num_threads(), [], {}
        for _ in range(5):
            for n in (1, 2):
                torch.set_num_threads(n)
                t0 = time.perf_counter()
                for _ in range(4):
                    torch.exp(x, out=y)
                t[n] = time.perf_counter() - t0
            ratios.append(t[2] / t[1])
        torch.set_num_threads(saved)
        return {"probe_ratio": statistics.median(ratios), "probe_1t_ms": t[1] * 1000}


def _allocator() -> str:
    """The allocator this process runs under (jemalloc, tcmalloc or system: launch/allocator.py)."""
    from launch.allocator import active_allocator
    return active_allocator()


def worker_main(export: Path, sides: list[str], work: Path) -> int:
    """A worker process's loop (`python -m bench.contention worker`): load the sides, say ready with `info()`,
    then answer one JSON line per command (call, probe) on stdout until 'quit' or the end of stdin."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed goes to stderr; stdout carries the protocol only
    w = _Worker(export, sides, work)
    proto.write(json.dumps({"ready": True, "info": w.info()}) + "\n")
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        try:
            if cmd["cmd"] == "call":
                res = w.measure(cmd["side"], cmd["op"], cmd.get("save"))
            elif cmd["cmd"] == "probe":
                res = w.probe()
            else:
                res = {"error": f"unknown command {cmd['cmd']!r}"}
        except Exception as e:  # noqa: BLE001 - reported to the bench, which stops
            res = {"error": f"{type(e).__name__}: {e}"}
        proto.write(json.dumps(res) + "\n")
    return 0


class WorkerProc:
    """A worker process (its own environment) and the line protocol to it."""

    def __init__(self, export: Path, sides: list[str], env_extra: dict, allocator: str, work: Path):
        env = dict(os.environ, **env_extra)
        for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
            if k not in env_extra:
                env.pop(k, None)
        if allocator != "auto":
            env["MY3DGEN_ALLOCATOR"] = allocator
            env.pop("MY3DGEN_ALLOCATOR_ACTIVE", None)
            if allocator == "system":
                env.pop("LD_PRELOAD", None)
        self.sides, self.env_extra = sides, env_extra
        self.p = subprocess.Popen([sys.executable, "-m", "bench.contention", "worker", "--export", str(export),
                                   "--sides", ",".join(sides), "--work", str(work)],
                                  cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info: dict | None = None

    def wait_ready(self) -> dict:
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"worker for {self.sides} exited ({self.p.wait()}) before it was ready")
        self.info = json.loads(line)["info"]
        return self.info

    def ask(self, **cmd) -> dict:
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"worker for {self.sides} exited ({self.p.wait()})")
        res = json.loads(line)
        if "error" in res:
            raise RuntimeError(f"worker for {self.sides}: {res['error']}")
        return res

    def close(self) -> None:
        if self.p.poll() is None:
            try:
                self.p.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.p.stdin.flush()
                self.p.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                self.p.kill()
