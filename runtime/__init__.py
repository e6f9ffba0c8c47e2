"""my3dgen runtime: render personalized 3D faces from an export directory with numpy + onnxruntime, no torch.

    from runtime import Runtime
    rt = Runtime("export_dir", people_dir="people")
    res = rt.novel_view("alice", anchor=0, yaw=0.3)      # res.image float32 [3, S, S] in [-1, 1], res.timings

TensorRT engines built by `cli.py build-engine` are used where TensorRT is installed. Nothing here imports torch,
generator/ or export/ (tests check it in a process where importing torch fails); file formats come from the
torch-free `formats` package, which the runtime wheel and every `.mar` ship alongside. Names load on first use
(PEP 562), so importing one submodule (e.g. `runtime.backend`'s constants for a command's `--help`) stays cheap.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "Runtime": "runtime.runtime", "RenderResult": "runtime.result", "RequestLimits": "runtime.requests",
    "ViewRequest": "runtime.batching", "RuntimeErrorBase": "runtime.errors", "UnknownPerson": "runtime.errors",
    "InvalidRequest": "runtime.errors", "BudgetExceeded": "runtime.errors", "AdapterInvalid": "runtime.errors",
    "ExportInvalid": "runtime.errors",
}
__all__ = list(_LAZY)
__version__ = "0.1.0"


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
