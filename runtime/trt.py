"""Run serialized TensorRT engines on numpy arrays without torch: TrtRunner and TensorRT imports with install help.

Written against the TensorRT 10.x Python API (``IExecutionContext.execute_async_v3``, named I/O tensors) and
cuda-python's runtime bindings for device buffers. ``tensorrt`` and ``cuda`` are imported lazily, so this module
imports everywhere; their absence raises a RuntimeError that says how to install them. export.tensorrt_build
(engine building and refitting, on the torch side) re-exports these names.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

TRT_INSTALL_HELP = (
    "  * Jetson (JetPack 6.x): TensorRT ships with JetPack. Install it with `sudo apt install nvidia-jetpack` "
    "(the Python bindings are the `python3-libnvinfer` package) and create the virtual environment with "
    "`--system-site-packages` so that `import tensorrt` finds them.\n"
    "  * x86_64 or ARM SBSA with an NVIDIA GPU: `pip install tensorrt --extra-index-url https://pypi.nvidia.com` "
    "(the PyPI packages fetch their libraries from NVIDIA's index; `tensorrt-cu12`/`tensorrt-cu13` pin the CUDA "
    "major), plus `pip install cuda-python` for TrtRunner.\n"
    "  * The project's CPU CI machines cannot install TensorRT (docs/ENVIRONMENT.md); there, check a graph with "
    "export.trt_support.check_onnx_for_tensorrt instead."
)


class TensorRTUnavailable(RuntimeError):
    """TensorRT or cuda-python cannot be imported here; the message says how to install them."""


def import_tensorrt():
    """Import ``tensorrt`` or raise TensorRTUnavailable, which explains how to install it."""
    try:
        import tensorrt
    except (ImportError, OSError) as exc:  # OSError: bindings present but libnvinfer missing
        raise TensorRTUnavailable(
            f"TensorRT is not installed: `import tensorrt` failed ({type(exc).__name__}: {exc}).\n{TRT_INSTALL_HELP}"
        ) from exc
    return tensorrt


def import_cudart():
    """Import cuda-python's runtime bindings (new and old module layout)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as exc:
            raise TensorRTUnavailable(
                "cuda-python is not installed: TrtRunner needs it for device buffers. "
                "`pip install cuda-python` (12.x for CUDA 12, as on JetPack 6; 13.x for CUDA 13)."
            ) from exc
    return cudart


def deserialize_engine(trt, logger, engine_path: Path, data: bytes | None = None):
    """(trt.Runtime, ICudaEngine) of a serialized engine file (or of its bytes `data`, already read and checked
    by the caller); the runtime must outlive the engine."""
    if data is None and not engine_path.is_file():
        raise FileNotFoundError(f"TensorRT engine not found: {engine_path}")
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes() if data is None else data)
    if engine is None:
        raise RuntimeError(
            f"TensorRT could not deserialize {engine_path}: engines only load with the TensorRT version and GPU "
            f"they were built for; rebuild it on this machine"
        )
    return runtime, engine


class TrtRunner:
    """Run a serialized engine on numpy inputs: device buffers via cuda-python, ``execute_async_v3``.

    Buffers are allocated per tensor and grown when a larger batch arrives; host copies
    use pageable numpy memory (simple, not the fastest path). Outputs whose shape depends
    on data (e.g. NonZero) are not supported. Use as a context manager or call close().
    """

    def __init__(self, engine_path: str | Path, *, device: int = 0, data: bytes | None = None):
        self._trt = import_tensorrt()
        self._cudart = import_cudart()
        self._check(self._cudart.cudaSetDevice(device))
        self._logger = self._trt.Logger(self._trt.Logger.WARNING)
        self._runtime, self.engine = deserialize_engine(self._trt, self._logger, Path(engine_path), data)
        self.context = self.engine.create_execution_context()
        self._stream = self._check(self._cudart.cudaStreamCreate())
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == self._trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self._buffers: dict[str, tuple[int, int]] = {}

    def _check(self, result):
        status, *values = result
        if status != self._cudart.cudaError_t.cudaSuccess:
            raise RuntimeError(f"CUDA call failed: {status}")
        return values[0] if len(values) == 1 else (tuple(values) or None)

    def _device_buffer(self, name: str, nbytes: int) -> int:
        pointer, capacity = self._buffers.get(name, (0, 0))
        if nbytes > capacity:
            if pointer:
                self._check(self._cudart.cudaFree(pointer))
            pointer = self._check(self._cudart.cudaMalloc(max(nbytes, 1)))
            self._buffers[name] = (int(pointer), nbytes)
        return self._buffers[name][0]

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart, trt = self._cudart, self._trt
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise KeyError(f"missing engine inputs {missing}; expected {self.input_names}")
        host_to_device = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        staged = []
        for name in self.input_names:
            array = np.ascontiguousarray(feeds[name], dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
            if not self.context.set_input_shape(name, array.shape):
                bounds = self.engine.get_tensor_profile_shape(name, 0)
                raise ValueError(f"input '{name}' shape {array.shape} is outside the engine profile {bounds}")
            pointer = self._device_buffer(name, array.nbytes)
            self._check(cudart.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, host_to_device, self._stream))
            self.context.set_tensor_address(name, pointer)
            staged.append(array)
        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"output '{name}' has a data-dependent shape {shape}; TrtRunner cannot size it")
            host = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
            self.context.set_tensor_address(name, self._device_buffer(name, host.nbytes))
            outputs[name] = host
        if not self.context.execute_async_v3(int(self._stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed; see the TensorRT log")
        device_to_host = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, host in outputs.items():
            pointer = self._buffers[name][0]
            self._check(cudart.cudaMemcpyAsync(host.ctypes.data, pointer, host.nbytes, device_to_host, self._stream))
        self._check(cudart.cudaStreamSynchronize(self._stream))
        return outputs

    def close(self) -> None:
        for pointer, _ in self._buffers.values():
            self._check(self._cudart.cudaFree(pointer))
        self._buffers.clear()
        if self._stream is not None:
            self._check(self._cudart.cudaStreamDestroy(self._stream))
            self._stream = None

    def __enter__(self) -> "TrtRunner":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
