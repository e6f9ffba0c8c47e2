"""The runtime renders in a process where torch cannot be imported (export in this process, render in a child)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.conftest import REPO
from tests.test_export import TOL, TinyExports, eager_render, tiny_generator

CHILD = textwrap.dedent('''
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        """Make `import torch` (and the torch-side project packages) fail, as on a machine without PyTorch."""
        BLOCKED = ("torch", "torchvision", "generator", "export", "safetensors.torch")

        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in self.BLOCKED):
                raise ImportError(f"{name} is blocked in this process (no torch here)")
            return None

    sys.meta_path.insert(0, NoTorch())
    try:
        import torch  # noqa: F401
        raise SystemExit("the torch blocker does not work")
    except ImportError:
        pass

    import json
    import numpy as np
    from runtime import Runtime, UnknownPerson

    export_dir, people_dir, out = sys.argv[1:4]
    rt = Runtime(export_dir, people_dir, threads=2)
    res = rt.novel_view("alice", anchor="photo1", yaw=0.3, pitch=-0.1)
    again = rt.novel_view("alice", anchor="photo1", yaw=-0.2)
    try:
        rt.novel_view("nobody", anchor=0)
        unknown = False
    except UnknownPerson:
        unknown = True
    np.savez(out, image=res.image, image_raw=res.image_raw, depth=res.depth)
    blocked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "generator", "export")
                     or m == "safetensors.torch")
    print(json.dumps({"people": rt.people(), "cache_hit": again.cache_hit, "unknown_person": unknown,
                      "blocked_modules_loaded": blocked, "providers": rt.graph_providers}))
''')


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return TinyExports(tmp_path_factory, tiny_generator())


def test_runtime_renders_without_torch(exports, tmp_path):
    from generator.adapter_file import load_adapter
    from generator.views import camera_batch
    export_dir, people = exports["keep"], exports["people"]      # exported here, with torch
    out = tmp_path / "child.npz"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(export_dir), str(people), str(out)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["blocked_modules_loaded"] == [] and report["people"] == ["alice", "bob"]
    assert report["cache_hit"] and report["unknown_person"]
    got = dict(np.load(out))
    G = tiny_generator()
    path = people / "alice.safetensors"
    ws = load_adapter(path, G)[1].ws_plus(G.num_ws)[1:2]
    want = eager_render(G, ws, camera_batch(G, [(0.3, -0.1)]), path)
    for key in ("image", "image_raw", "depth"):
        assert float(np.abs(got[key] - want[key][0]).max()) <= TOL, key


def test_core_runtime_and_handler_import_with_torch_unimportable():
    """The issue's check, as written: torch set to None in sys.modules, then the torch-free packages import."""
    code = ("import sys; sys.modules['torch'] = None; import formats, runtime, serve.handler; "
            "import formats.adapter_file, formats.export_manifest, formats.cameras, formats.model_dir; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('generator', 'export', 'train') "
            "or m == 'safetensors.torch'); print(bad)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
