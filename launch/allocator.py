"""Run the entry points (cli.py, `python -m runtime`, TorchServe workers, bench/) under jemalloc or tcmalloc.

Why: with glibc malloc every large intermediate of a forward pass (hundreds of MB at 512^2) is freshly mapped and
page-faulted; jemalloc keeps freed memory between ops (DEFAULT_MALLOC_CONF says how and why), which roughly
halves a CPU forward's time with bit-identical outputs (docs/BENCHMARKS.md; also the advice of PyTorch's CPU
performance guides). An allocator can only replace malloc if it is
loaded before anything else, so `preload()` sets LD_PRELOAD and re-executes the interpreter once:

    from launch.allocator import preload
    preload()          # first thing in main(); returns at once when there is nothing to do

Environment:
  MY3DGEN_ALLOCATOR=system      keep glibc malloc (opt out); `jemalloc` / `tcmalloc` pick one (default: auto,
                                jemalloc first)
  MY3DGEN_ALLOCATOR_LIB=PATH    use this shared library instead of searching for one
  MALLOC_CONF                   jemalloc's settings; when unset, DEFAULT_MALLOC_CONF is used (see there)
  MY3DGEN_ALLOCATOR_ACTIVE      set by preload() in the re-executed process: the guard that stops a second exec

The same call sets OpenMP's wait policy (launch/threads.py: PASSIVE unless set), for this process and its children.

Install: Debian/Ubuntu `apt-get install -y libjemalloc2` (or `libtcmalloc-minimal4`); macOS and Windows are
skipped (one line is printed when no library is found). Outputs are bit-identical with and without: the allocator
changes where tensors live, not what is computed.
"""
from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

from launch.threads import thread_env

MODE_ENV = "MY3DGEN_ALLOCATOR"
LIB_ENV = "MY3DGEN_ALLOCATOR_LIB"
GUARD_ENV = "MY3DGEN_ALLOCATOR_ACTIVE"
MODES = ("auto", "jemalloc", "tcmalloc", "system")

DEFAULT_MALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
"""jemalloc settings used when MALLOC_CONF is unset: freed memory is kept for reuse and never handed back to the
kernel, so the next forward pass finds its intermediates already mapped (RSS stays at the process's high-water mark,
as with onnxruntime's CPU arena or CUDA's caching allocator). Why not jemalloc's defaults: any time-based decay
keeps purging pages that the next pass faults back in, and allocations over 8 MiB (every 512^2 activation) go to an
arena that purges at once. Measured on the 2-core reference machine (ffhq512-128, 2 threads, medians of 8 in one
process): 1.30 s full / 1.03 s view with these settings, 1.59 s / 1.17 s with background-thread decay of 10 s plus
transparent huge pages (the previous default, with 0.4 s of kernel time per pass), 1.68 s / 1.34 s under glibc.
Huge pages (`thp:always`) measured no faster once nothing is purged, so they are left to the kernel's policy."""

LIBRARY_NAMES = {"jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
                 "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so",
                              "libtcmalloc.so")}
SEARCH_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
               "/usr/local/lib", "/opt/homebrew/lib")


def _mode(env) -> str:
    mode = env.get(MODE_ENV, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"{MODE_ENV}={mode!r}: expected one of {MODES}")
    return mode


def find_library(mode: str = "auto", env=None) -> str | None:
    """Path of the allocator library for `mode` (auto: jemalloc, then tcmalloc), or None when there is none."""
    env = os.environ if env is None else env
    explicit = env.get(LIB_ENV)
    if explicit:
        if not Path(explicit).is_file():
            raise FileNotFoundError(f"{LIB_ENV}={explicit!r}: no such file")
        return explicit
    if mode == "system":
        return None
    kinds = ("jemalloc", "tcmalloc") if mode == "auto" else (mode,)
    prefix = Path(sys.prefix) / "lib"
    for kind in kinds:
        for name in LIBRARY_NAMES[kind]:
            for d in (str(prefix),) + SEARCH_DIRS:
                hits = glob.glob(os.path.join(d, name))
                if hits:
                    return hits[0]
    return None


def _already_loaded(lib: str, env) -> bool:
    return any(Path(p).name == Path(lib).name for p in env.get("LD_PRELOAD", "").replace(":", " ").split())


def allocator_env(env=None) -> dict[str, str]:
    """The variables a child process (e.g. TorchServe and its Python workers) needs to run under the allocator.

    Empty when opted out, not on Linux, or no library is installed; never changes `env`.
    """
    env = os.environ if env is None else env
    if not sys.platform.startswith("linux"):
        return {}
    lib = find_library(_mode(env), env)
    if lib is None:
        return {}
    out: dict[str, str] = {}
    if not _already_loaded(lib, env):
        out["LD_PRELOAD"] = " ".join(p for p in (lib, env.get("LD_PRELOAD", "")) if p)
    if "jemalloc" in Path(lib).name and "MALLOC_CONF" not in env:
        out["MALLOC_CONF"] = DEFAULT_MALLOC_CONF
    return out


def active_allocator() -> str:
    """'jemalloc', 'tcmalloc' or 'system': what this process's LD_PRELOAD names (for logs and benchmark rows)."""
    preload_ = os.environ.get("LD_PRELOAD", "")
    for kind in ("jemalloc", "tcmalloc"):
        if kind in preload_:
            return kind
    return "system"


def preload(argv: list[str] | None = None) -> None:
    """Re-execute this interpreter once with the allocator preloaded; return when nothing needs doing.

    Nothing to do: opted out (MY3DGEN_ALLOCATOR=system), already re-executed (the guard variable), the library
    already preloaded, not Linux, or no library installed (then one line on stderr says how to get one).
    `argv` is the full command line to re-run (default: sys.orig_argv, interpreter flags included).
    """
    env = os.environ
    env.update(thread_env(env))  # before torch loads libgomp here, and inherited by a re-executed process
    if env.get(GUARD_ENV) or not sys.platform.startswith("linux") or _mode(env) == "system":
        return
    extra = allocator_env(env)
    if not extra:
        if find_library(_mode(env), env) is None:
            env[GUARD_ENV] = "unavailable"  # children (workers, subprocesses) do not repeat the message
            print("note: jemalloc/tcmalloc not found, using the system allocator (apt-get install libjemalloc2 "
                  f"makes CPU inference ~2x faster; {MODE_ENV}=system hides this)", file=sys.stderr)
        return
    if "LD_PRELOAD" not in extra:  # the library is preloaded by the caller already: only fill in settings
        env.update(extra)
        return
    new_env = dict(env, **extra)
    new_env[GUARD_ENV] = "1"
    args = list(sys.orig_argv if argv is None else argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable] + args[1:], new_env)
