"""my3dgen runtime: render personalized 3D faces from an export directory with numpy + onnxruntime, no torch.

    from runtime import Runtime
    rt = Runtime("export_dir", people_dir="people")
    res = rt.novel_view("alice", anchor=0, yaw=0.3)      # res.image float32 [3, S, S] in [-1, 1], res.timings

TensorRT engines built by `cli.py build-engine` are used where TensorRT is installed. Nothing here imports torch,
generator/ or export/ (tests check it in a process where importing torch fails).
"""
from runtime.errors import (AdapterInvalid, BudgetExceeded, ExportInvalid, InvalidRequest, RuntimeErrorBase,
                            UnknownPerson)
from runtime.runtime import RenderResult, Runtime

__all__ = ["Runtime", "RenderResult", "RuntimeErrorBase", "UnknownPerson", "InvalidRequest", "BudgetExceeded",
           "AdapterInvalid", "ExportInvalid"]
__version__ = "0.1.0"
