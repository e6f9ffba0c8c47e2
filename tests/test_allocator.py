"""launch/allocator.py: re-exec once under jemalloc, opt-out, the one-line notice, and bit-identical outputs."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from launch.allocator import DEFAULT_MALLOC_CONF, GUARD_ENV, MODE_ENV, allocator_env, find_library

REPO = Path(__file__).resolve().parents[1]
PROBE = """
import os, sys
from launch.allocator import preload, active_allocator
print("start", flush=True)
preload()
import numpy as np, torch
from generator.model_dir import build_generator
from formats.cameras import lookat_label
torch.set_num_threads(1)
G = build_generator(preset_name="tiny").eval()
z = torch.from_numpy(np.random.RandomState(0).randn(1, G.z_dim).astype(np.float32))
c = torch.from_numpy(lookat_label(0.3, -0.1)[None])
with torch.no_grad():
    np.save(sys.argv[1], G(z, c)["image"].numpy())
print("allocator", active_allocator(), os.environ.get("MALLOC_CONF", ""))
"""


def _run(tmp_path, name, **env):
    full = {k: v for k, v in os.environ.items() if k not in (GUARD_ENV, MODE_ENV, "LD_PRELOAD", "MALLOC_CONF")}
    full.update(env)
    out = tmp_path / f"{name}.npy"
    r = subprocess.run([sys.executable, "-c", PROBE, str(out)], cwd=REPO, env=full, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return r, np.load(out)


@pytest.mark.skipif(find_library("jemalloc") is None, reason="jemalloc not installed (apt-get install libjemalloc2)")
def test_jemalloc_reexec_once_and_bit_identical(tmp_path):
    r_sys, img_sys = _run(tmp_path, "system", **{MODE_ENV: "system"})
    r_je, img_je = _run(tmp_path, "jemalloc")
    assert "allocator system" in r_sys.stdout
    assert f"allocator jemalloc {DEFAULT_MALLOC_CONF}" in r_je.stdout
    assert r_je.stdout.count("start") == 2  # the original process and its one re-exec, no loop
    assert img_sys.tobytes() == img_je.tobytes()


FAULTS = """
import resource, sys
from launch.allocator import preload
preload()
import torch
def one_pass():
    acts = [torch.empty(64 << 18).fill_(1.0) for _ in range(4)]  # four 64 MiB activations, written through
    return sum(float(a[::4096].sum()) for a in acts)
one_pass()
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    one_pass()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print("faults", max(faults))
"""


@pytest.mark.skipif(find_library("jemalloc") is None, reason="jemalloc not installed (apt-get install libjemalloc2)")
def test_default_jemalloc_settings_reuse_large_buffers_without_page_faults():
    """The reason for DEFAULT_MALLOC_CONF: a second pass over the same 64 MiB intermediates must not fault them back
    in (jemalloc's own defaults purge allocations over 8 MiB at once: ~16k faults per buffer, as under glibc)."""
    env = {k: v for k, v in os.environ.items() if k not in (GUARD_ENV, MODE_ENV, "LD_PRELOAD", "MALLOC_CONF")}
    counts = {}
    for name, extra in (("default", {}), ("jemalloc's own", {"MALLOC_CONF": "abort_conf:true"}),
                        ("system", {MODE_ENV: "system"})):
        r = subprocess.run([sys.executable, "-c", FAULTS], cwd=REPO, env=dict(env, **extra), capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        counts[name] = int(r.stdout.split("faults")[-1])
    huge_pages = 4 * (64 << 20) // (2 << 20)  # 128: a full refault counts at least this many, even with 2 MiB pages
    assert counts["default"] < 16, counts  # fewer than one buffer's worth even of 2 MiB huge-page faults
    assert min(counts["jemalloc's own"], counts["system"]) > huge_pages // 2, counts  # what the setting avoids


def test_missing_library_prints_one_line_and_runs_on(tmp_path):
    r, _ = _run(tmp_path, "none", **{MODE_ENV: "tcmalloc"}) if find_library("tcmalloc") is None else (None, None)
    if r is None:
        pytest.skip("tcmalloc is installed: nothing is missing")
    assert "allocator system" in r.stdout and r.stdout.count("start") == 1
    assert len([line for line in r.stderr.splitlines() if "not found" in line]) == 1


def test_child_environment_and_errors(tmp_path):
    assert allocator_env({MODE_ENV: "system"}) == {}
    with pytest.raises(ValueError, match=MODE_ENV):
        allocator_env({MODE_ENV: "glibc"})
    with pytest.raises(FileNotFoundError, match="MY3DGEN_ALLOCATOR_LIB"):
        allocator_env({"MY3DGEN_ALLOCATOR_LIB": str(tmp_path / "missing.so")})
    lib = find_library("auto")
    if lib is not None:
        env = allocator_env({})
        assert env["LD_PRELOAD"] == lib
        assert allocator_env({"LD_PRELOAD": lib}).get("LD_PRELOAD") is None  # already preloaded: not twice


def test_entry_points_start_with_the_passive_openmp_wait_policy():
    """launch/threads.py: preload() gives its process (and a re-executed one) OMP_WAIT_POLICY=PASSIVE before torch
    loads libgomp, unless the user set one; thread_env() is what a child needs."""
    import subprocess
    import sys
    from launch.threads import thread_env
    assert thread_env({}) == {"OMP_WAIT_POLICY": "PASSIVE"} and thread_env({"OMP_WAIT_POLICY": "ACTIVE"}) == {}
    assert thread_env({"GOMP_SPINCOUNT": "300000"}) == {}
    code = ("from launch.allocator import preload; preload(); import os, torch; "
            "print(os.environ.get('OMP_WAIT_POLICY'))")
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    for extra, want in (({}, "PASSIVE"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE")):
        out = subprocess.run([sys.executable, "-c", code], env={**base, **extra}, capture_output=True, text=True,
                             check=True, cwd=Path(__file__).resolve().parents[1])
        assert out.stdout.split()[-1] == want, out
