"""OpenMP's wait policy for the entry points (cli.py, `python -m runtime`, TorchServe workers, bench/): PASSIVE.

Why: PyTorch's CPU kernels run in OpenMP parallel regions (libgomp on Linux); between regions the default policy
spins its threads for a while, and when another process holds one of the cores a spinning or descheduled thread
stalls every region that waits for it: the chunked renderer runs thousands of small regions per frame. With
OMP_WAIT_POLICY=PASSIVE idle threads sleep at once. Measured side by side in one run on a 2-core AVX2 AMD EPYC
(ffhq512-128 full forward, 2 threads, jemalloc, medians of 3; bench/contention.py, docs/BENCHMARKS.md): quiet
6.5 s against 6.2-6.7 s with the default; with a competing process busy on one core 10.2-10.7 s against
12.7-13.7 s with the default, 12.2-12.5 s for onnxruntime and 14.8-15.6 s for the official formulation.

libgomp reads the variable once, when it is loaded (with torch): `thread_env()` is what a child process needs, and
`launch.allocator.preload()` sets it in its own process before torch is imported. A user who tunes OpenMP's waiting
(OMP_WAIT_POLICY or GOMP_SPINCOUNT set) keeps their settings: `GOMP_SPINCOUNT=300000` restores libgomp's default
spin (bench/contention.py's `torch-2t` side).
"""
from __future__ import annotations

import os

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"
SPIN_ENV = "GOMP_SPINCOUNT"
DEFAULT_WAIT_POLICY = "PASSIVE"


def thread_env(env=None) -> dict[str, str]:
    """The OpenMP variables a process should start with (empty when the user set their own)."""
    env = os.environ if env is None else env
    return {} if WAIT_POLICY_ENV in env or SPIN_ENV in env else {WAIT_POLICY_ENV: DEFAULT_WAIT_POLICY}
