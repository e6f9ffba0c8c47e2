"""The one interface every runtime backend implements (`Backend`), and the names of the backends and precisions.

Backends (`Runtime(backend=...)`, `python -m runtime --backend`; chosen by runtime.choose_backend):

    onnxruntime   runtime.renderer.Renderer: the export's ONNX graphs on onnxruntime (CPU, CUDA or the TensorRT
                  EP; prebuilt TensorRT engines where `providers='auto'` finds them usable). Torch-free.
    tensorrt      the same Renderer, made to run the export's prebuilt TensorRT engines (or, without engines,
                  onnxruntime's TensorRT EP); refused when neither can run here.
    torch         runtime.torch_backend.TorchBackend: the product's generator, built from the model directory the
                  export carries (manifest 'torch'), on the CPU (eager) or CUDA (a CUDA graph per operation, batch
                  and precision), at precision fp32, bf16 or fp16 (CUDA).

Shapes: ws [B, num_ws, w_dim] float32, c [B, 25] camera labels, planes [B, 3, C, H, W] (a numpy array, an
onnxruntime OrtValue on the device, or a CUDA tensor of the torch backend), outputs image [B, 3, S, S], image_raw
[B, 3, R, R], depth [B, 1, R, R].
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from formats.cameras import lookat_label
from formats.export_manifest import ExportManifest

BACKENDS = ("auto", "onnxruntime", "torch", "tensorrt")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class BackendOptions:
    """Which backend serves an export and how (Runtime's backend keywords; runtime.choose_backend reads them)."""

    backend: str = "onnxruntime"
    """One of BACKENDS: 'onnxruntime' (the default, torch-free), 'torch', 'tensorrt', or 'auto' (the rule in
    runtime/choose_backend.py, which measures at start-up and logs its choice)."""
    precision: str = "fp32"
    """One of PRECISIONS. 'bf16' and 'fp16' are the torch backend's (fp16 on CUDA; bf16 on a CPU only with native
    bf16 kernels); onnxruntime computes in the export's own precision (`cli.py export --fp16`)."""
    threads: int | None = None
    """Intra-op threads (onnxruntime's per session; torch's process-wide). None: the library's default."""
    providers: str | Sequence[str] = "auto"
    """onnxruntime: 'auto' or provider names in order of preference."""
    io_binding: bool | None = None
    """onnxruntime: keep values on the device between graphs (None: where the provider has a device)."""
    device: str | None = None
    """torch: 'cpu', 'cuda' or 'cuda:N' (None: CUDA where torch sees a GPU, else the CPU)."""
    compile: bool = False
    """torch: pass each stage through torch.compile before its first run (minutes of compile time; reported in
    stats)."""

    def onnxruntime_options(self) -> list[str]:
        """The onnxruntime-only options set here (they mean backend onnxruntime)."""
        return [k for k, v in (("providers", self.providers != "auto"), ("io_binding", self.io_binding is not None))
                if v]

    def torch_options(self) -> list[str]:
        """The torch-only options set here (they mean backend torch)."""
        return [k for k, v in (("device", self.device is not None), ("compile", self.compile),
                               ("precision", self.precision != "fp32")) if v]


class Backend(ABC):
    """What `Runtime` calls to run a request: tri-planes of latents, images of tri-planes, both for one person or
    one person per sample, the mapping network, and the look-at camera. A person reaches a backend as a
    runtime.people.Person (its `identity` and its adapter per graph, `feeds[graph]`: runtime.native_adapters
    .GraphFeeds)."""

    name = "?"

    def __init__(self, manifest: ExportManifest):
        self.manifest = manifest
        self.providers: list[str] = []
        """What runs the stages, in order of preference (onnxruntime's providers, or the torch device)."""

    def camera(self, yaw: float, pitch: float) -> np.ndarray:
        """[1, 25] label of the export's look-at camera at (yaw, pitch) (formats.cameras.lookat_label)."""
        radius, pivot, focal = self.manifest.camera
        return lookat_label(yaw, pitch, radius=radius, focal=focal, pivot=pivot)[None]

    @property
    def mixed_batch(self) -> int | None:
        """Samples per mixed-person run (runtime.batching pads to it), or None: one run per person."""
        return self.manifest.mixed_batch

    @abstractmethod
    def planes(self, ws: np.ndarray, person) -> Any:
        """Tri-planes [B, 3, C, H, W] of W+ latents ws [B, num_ws, w_dim] for `person`."""

    @abstractmethod
    def render(self, planes: Any, ws: np.ndarray, c: np.ndarray, person) -> dict[str, np.ndarray]:
        """image, image_raw, depth of tri-planes seen from cameras c [B, 25], super-resolution styled by ws."""

    @abstractmethod
    def planes_mixed(self, ws: np.ndarray, people: Sequence) -> np.ndarray:
        """Tri-planes of exactly `mixed_batch` samples, sample k as people[k]."""

    @abstractmethod
    def render_mixed(self, planes: np.ndarray, ws: np.ndarray, c: np.ndarray, people: Sequence
                     ) -> dict[str, np.ndarray]:
        """image, image_raw, depth of exactly `mixed_batch` samples, sample k as people[k]."""

    @abstractmethod
    def map(self, z: np.ndarray, c: np.ndarray, psi: float) -> np.ndarray:
        """W+ [B, num_ws, w_dim] of z [B, z_dim] with conditioning cameras c [B, 25] and truncation psi."""

    @property
    @abstractmethod
    def graph_providers(self) -> dict[str, str]:
        """What each stage runs on ('synthesis', 'render', ...: an execution provider, or 'torch-cpu-fp32')."""

    @property
    @abstractmethod
    def adapter_paths(self) -> dict[str, int]:
        """How many runs with a person's adapter took each path (backend-specific names)."""

    @property
    def planes_on_device(self) -> bool:
        """Whether tri-planes stay on a device between synthesis and render."""
        return False

    @property
    def precision(self) -> str:
        """What the backend computes in: the export's precision (onnxruntime), or 'fp32' / 'bf16' / 'fp16' (torch)."""
        return self.manifest.raw.get("precision", "fp32")

    def batch_planes(self, planes: Any) -> Any:
        """Tri-planes as Runtime.render_batch stacks and splits them: host arrays here (an OrtValue is copied to
        the host); a backend whose planes stay on its device keeps them there."""
        from runtime.session import to_numpy
        return to_numpy(planes)

    def concat(self, parts: Sequence) -> Any:
        """`parts` (as batch_planes returns them, or arrays) joined along the batch axis."""
        return np.concatenate(parts)

    def describe(self) -> dict[str, Any]:
        """What Runtime.stats() reports of the backend."""
        return {"name": self.name, "precision": self.precision, "providers": self.graph_providers}

    def reset_counts(self) -> None:
        """Zero `adapter_paths` (after `auto`'s timing runs, so stats count requests only)."""

    def close(self) -> None:
        """Release what the backend holds (nothing by default)."""
