"""Running one exported graph: an onnxruntime session (execution provider chosen automatically) or a TensorRT engine.

`providers="auto"` picks, in order, prebuilt TensorRT engines (when the export has them and `tensorrt` +
cuda-python import), then onnxruntime's TensorRT EP, CUDA EP and CPU EP as far as this onnxruntime build has them.
A list overrides the choice: onnxruntime provider names, or "TensorRTEngine" for the prebuilt engines.
Inputs are cast to the dtypes the manifest records, so callers may pass float32 everywhere.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from runtime.errors import ExportInvalid, InvalidRequest

ENGINE_PROVIDER = "TensorRTEngine"
ORT_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def ort_available_providers() -> list[str]:
    import onnxruntime as ort
    return list(ort.get_available_providers())


def tensorrt_usable() -> bool:
    """True when prebuilt engines can run here (tensorrt and cuda-python import)."""
    from runtime.trt import import_cudart, import_tensorrt
    try:
        import_tensorrt()
        import_cudart()
    except RuntimeError:
        return False
    return True


def choose_providers(requested: str | Sequence[str] = "auto", engines_present: bool = False) -> list[str]:
    """The ordered provider list for `requested` ('auto' or names); unknown or unavailable names are refused."""
    available = ort_available_providers()
    if isinstance(requested, str):
        if requested != "auto":
            requested = [requested]
        else:
            chosen = [p for p in ORT_PREFERENCE if p in available] or ["CPUExecutionProvider"]
            return ([ENGINE_PROVIDER] if engines_present and tensorrt_usable() else []) + chosen
    requested = list(requested)
    if not requested:
        raise InvalidRequest("providers", "empty list: give 'auto' or provider names")
    bad = [p for p in requested if p != ENGINE_PROVIDER and p not in available]
    if bad:
        raise InvalidRequest("providers", f"{bad} not available in this onnxruntime build (available: {available}"
                                          f" and {ENGINE_PROVIDER!r} for prebuilt TensorRT engines)")
    if ENGINE_PROVIDER in requested:
        if not engines_present:
            raise InvalidRequest("providers", f"{ENGINE_PROVIDER!r} asked for but the export has no TensorRT engines "
                                              f"(build them with `cli.py build-engine EXPORT_DIR`)")
        from runtime.trt import import_cudart, import_tensorrt
        import_tensorrt()
        import_cudart()
    return requested


def _np_dtype(name: str) -> np.dtype:
    return np.dtype({"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32,
                     "bool": np.bool_, "float64": np.float64}[name])


class Graph:
    """One graph: `run(feeds) -> {output name: array}`, with feeds cast to the recorded input dtypes."""

    provider = "?"

    def __init__(self, name: str, spec: dict[str, Any]):
        self.name = name
        self.input_dtypes = {i["name"]: _np_dtype(i["dtype"]) for i in spec["inputs"]}
        self.output_names = [o["name"] for o in spec["outputs"]]

    def _cast(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = sorted(set(self.input_dtypes) - set(feeds))
        if missing:
            raise ValueError(f"graph {self.name}: missing inputs {missing[:5]}")
        return {k: np.ascontiguousarray(feeds[k], dtype=self.input_dtypes[k]) for k in self.input_dtypes}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError


class OrtGraph(Graph):
    """An onnxruntime InferenceSession on the graph's ONNX file."""

    def __init__(self, name: str, spec: dict[str, Any], path: Path, providers: list[str], threads: int | None,
                 trt_cache_dir: Path | None):
        super().__init__(name, spec)
        import onnxruntime as ort
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        so.log_severity_level = 3
        plist: list = []
        for p in providers:
            if p == ENGINE_PROVIDER:
                continue
            if p == "TensorrtExecutionProvider":
                opts = {"trt_fp16_enable": True}
                if trt_cache_dir is not None:
                    opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(trt_cache_dir))
                plist.append((p, opts))
            else:
                plist.append(p)
        try:
            self.session = ort.InferenceSession(str(path), so, providers=plist or ["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad models
            raise ExportInvalid(f"{path}: onnxruntime cannot load it ({type(e).__name__}: {e})") from None
        names = [i.name for i in self.session.get_inputs()]
        if sorted(names) != sorted(self.input_dtypes):
            raise ExportInvalid(f"{path}: graph inputs {names[:5]}... differ from the manifest's "
                                f"{list(self.input_dtypes)[:5]}...")
        self.provider = self.session.get_providers()[0]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, self._cast(feeds))
        return dict(zip(self.output_names, outs))


class EngineGraph(Graph):
    """A prebuilt TensorRT engine run with runtime.trt.TrtRunner (adapter tensors are engine inputs)."""

    provider = ENGINE_PROVIDER

    def __init__(self, name: str, spec: dict[str, Any], engine_path: Path):
        super().__init__(name, spec)
        from runtime.trt import TrtRunner
        self.runner = TrtRunner(engine_path)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.runner(self._cast(feeds))
        return {k: outs[k] for k in self.output_names}


def open_graph(export_dir: Path, name: str, spec: dict[str, Any], providers: list[str], threads: int | None,
               engines: dict[str, Any] | None) -> Graph:
    """The Graph for manifest entry `spec`: an engine when ENGINE_PROVIDER leads `providers`, else onnxruntime."""
    if providers and providers[0] == ENGINE_PROVIDER and engines and name in engines:
        return EngineGraph(name, spec, export_dir / engines[name]["file"])
    cache = os.environ.get("MY3DGEN_TRT_CACHE")
    trt_cache = Path(cache) if cache else (export_dir / ".trt_ep_cache" if os.access(export_dir, os.W_OK) else None)
    return OrtGraph(name, spec, export_dir / spec["file"], providers, threads, trt_cache)
