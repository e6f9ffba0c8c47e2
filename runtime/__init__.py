"""my3dgen runtime: render personalized 3D faces from an export directory with numpy + onnxruntime, no torch.

    from runtime import Runtime
    rt = Runtime("export_dir", people_dir="people")
    res = rt.novel_view("alice", anchor=0, yaw=0.3)      # res.image float32 [3, S, S] in [-1, 1], res.timings

TensorRT engines built by `cli.py build-engine` are used where TensorRT is installed. Nothing here imports torch,
generator/ or export/ (tests check it in a process where importing torch fails); file formats come from the
torch-free `formats` package, which the runtime wheel and every `.mar` ship alongside.
"""
from runtime.errors import (AdapterInvalid, BudgetExceeded, ExportInvalid, InvalidRequest, RuntimeErrorBase,
                            UnknownPerson)
from runtime.batching import ViewRequest
from runtime.requests import RequestLimits
from runtime.result import RenderResult
from runtime.runtime import Runtime

__all__ = ["Runtime", "RenderResult", "RequestLimits", "RuntimeErrorBase", "UnknownPerson", "InvalidRequest",
           "BudgetExceeded", "AdapterInvalid", "ExportInvalid", "ViewRequest"]
__version__ = "0.1.0"
