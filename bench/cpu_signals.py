"""The machine's CPU load as one process sees it, read from Linux /proc (no dependencies, nothing run).

The contention bench (bench/contention.py) records these signals per condition to find which of them tells a quiet
machine from a contended one (`idle_signals`: what a runtime could read at start-up, with nothing of ours running);
its workers (bench/contention_workers.py) read them over each timed call (`proc_stat_busy`, `thread_schedstat`),
and the 'share' thread policy sizes itself with `others_over` and `share_threads`.
"""
from __future__ import annotations

import os
import platform
import time

HZ = os.sysconf("SC_CLK_TCK")


def proc_stat_busy() -> float:
    """Seconds of CPU all cores have spent busy (user..softirq + steal) since boot (/proc/stat first line)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = v[:7]
    steal = v[7] if len(v) > 7 else 0
    return (user + nice + system + irq + softirq + steal) / HZ


def thread_schedstat() -> tuple[float, float]:
    """(run s, run-queue wait s) summed over this process's threads (/proc/self/task/*/schedstat)."""
    run = wait = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                r, w, _ = f.read().split()
        except (OSError, ValueError):
            continue
        run, wait = run + int(r), wait + int(w)
    return run / 1e9, wait / 1e9


def psi_some_avg10() -> float | None:
    """Share of the last 10 s in which some runnable task waited for a CPU, % (/proc/pressure/cpu); None without
    PSI (kernels before 4.20 or booted without it)."""
    try:
        with open("/proc/pressure/cpu") as f:
            for line in f:
                if line.startswith("some"):
                    return float(line.split()[1].split("=")[1])
    except OSError:
        return None
    return None


def running_count() -> int:
    """Tasks runnable right now, the reader included (/proc/loadavg's fourth field, before the slash)."""
    with open("/proc/loadavg") as f:
        return int(f.read().split()[3].split("/")[0])


def others_over(seconds: float) -> float:
    """Cores busy with other processes while this one sleeps for `seconds` (/proc/stat minus our own CPU)."""
    b0, c0, t0 = proc_stat_busy(), time.process_time(), time.perf_counter()
    time.sleep(seconds)
    b1, c1, t1 = proc_stat_busy(), time.process_time(), time.perf_counter()
    return max(0.0, ((b1 - b0) - (c1 - c0)) / (t1 - t0))


def share_threads(others_cores: float, ncpu: int) -> int:
    """Threads for a worker whose cores are shared: the cores other processes leave free, rounded, at least 1."""
    return max(1, min(ncpu, int(ncpu - others_cores + 0.5)))


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used so far; 0.0 once it is gone (/proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / HZ
    except OSError:
        return 0.0


def _all_proc_cpu() -> dict[int, tuple[str, float]]:
    """pid -> (command name, CPU seconds so far) of every process this one can read."""
    out = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    head, tail = f.read().rsplit(")", 1)
                fields = tail.split()
                out[int(pid)] = (head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) / HZ)
            except (OSError, IndexError, ValueError):
                pass
    return out


def busiest(seconds: float = 1.0, n: int = 3) -> str:
    """The processes that used the most CPU over `seconds` (for the log: what the other load is)."""
    a = _all_proc_cpu()
    time.sleep(seconds)
    b = _all_proc_cpu()
    use = sorted(((cpu - a[pid][1]) / seconds, pid, name) for pid, (name, cpu) in b.items() if pid in a)[::-1][:n]
    return ", ".join(f"{name}[{pid}] {u:.2f}" for u, pid, name in use if u > 0.05) or "none"


def idle_signals(window_s: float = 0.25) -> dict:
    """The signals a runtime could read at start-up without running anything (the bench's workers are idle)."""
    return {"loadavg1": os.getloadavg()[0], "running": running_count(), "psi_some_avg10": psi_some_avg10(),
            "others_idle": others_over(window_s)}


def cpu_flags() -> dict:
    """The CPU's model, the cores this process may use and the vector extensions that decide between backends."""
    flags, model = set(), platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
                elif line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"model": model, "cores": len(os.sched_getaffinity(0)),
            **{k: k in flags for k in ("avx2", "avx512f", "avx512_bf16", "amx_tile")}}
