"""Running one exported graph: an onnxruntime session (execution provider chosen automatically) or a TensorRT engine.

Providers. `providers="auto"` picks, in order, prebuilt TensorRT engines (when the export has them and `tensorrt` +
cuda-python import), then onnxruntime's TensorRT EP, CUDA EP and CPU EP as far as this onnxruntime build reports
them (`onnxruntime.get_available_providers()`). When auto ends on the CPU alone it says so once, in a log message
naming what to install; it never falls back silently. Names pick explicitly: 'cpu', 'gpu' / 'cuda' (CUDA EP, then
CPU), 'tensorrt' (TensorRT EP, CUDA EP, CPU), a list of onnxruntime provider names, or "TensorRTEngine" for the
prebuilt engines; asking for a provider this build lacks is an InvalidRequest that names the package to install.
The GPU providers come from onnxruntime-gpu (the runtime's `[gpu]` extra), the CPU one from onnxruntime (`[cpu]`).

Device-resident tensors. On the CUDA and TensorRT EPs a graph runs through onnxruntime's I/O binding: inputs are
bound as OrtValues (numpy arrays are copied to the device for the run; OrtValues already there, such as cached
tri-planes or a person's uploaded adapter values, are bound as they are), outputs named in `keep_on_device` stay
there as `onnxruntime.OrtValue`s (the runtime keeps the tri-planes of its plane cache that way), the rest come back
as numpy arrays. On the CPU EP the plain `session.run` path is used, unchanged. Two facts of onnxruntime 1.32
(checked on the CPU EP) shape this: `run_with_iobinding` ignores RunOptions' active LoRA adapters (it runs the
defaults), so a bound graph reports `native_adapters = False`; and `IOBinding.bind_cpu_input` refuses inputs that
have a default (overridable initializers) while `bind_ortvalue_input` takes them, so every input is bound as an
OrtValue.

Inputs are cast to the dtypes the manifest records, so callers may pass float32 everywhere; inputs the manifest marks
`default` (keep-LoRA adapter inputs whose base values the graph carries) may be left out.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Collection, Sequence

import numpy as np

from formats.errors import ManifestError
from formats.export_manifest import engine_is_fingerprinted, read_checked
from runtime.errors import ExportInvalid, InvalidRequest

ENGINE_PROVIDER = "TensorRTEngine"
CPU_EP, CUDA_EP, TRT_EP = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
ORT_PREFERENCE = (TRT_EP, CUDA_EP, CPU_EP)
DEVICE_PROVIDERS = (TRT_EP, CUDA_EP)
"""The execution providers whose tensors live on a CUDA device (I/O binding, device-resident tri-planes)."""
PROVIDER_ALIASES = {"cpu": [CPU_EP], "gpu": [CUDA_EP, CPU_EP], "cuda": [CUDA_EP, CPU_EP],
                    "tensorrt": [TRT_EP, CUDA_EP, CPU_EP]}
GPU_INSTALL_HINT = ("install onnxruntime-gpu in place of onnxruntime (`pip uninstall -y onnxruntime && pip install "
                    "'my3dgen-runtime[gpu]'`, or the project's `[gpu]` extra) on a machine with an NVIDIA driver "
                    "and CUDA 12")
ORT_INSTALL_HINT = ("onnxruntime is not installed: install the runtime with exactly one of its extras, "
                    "`pip install 'my3dgen-runtime[cpu]'` (onnxruntime) or `'my3dgen-runtime[gpu]'` (onnxruntime-gpu)")

log = logging.getLogger("my3dgen.runtime")
_fallback_lock = threading.Lock()
_fallback_said = False


def import_onnxruntime():
    """The onnxruntime module, or ImportError saying which extra installs it."""
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError(ORT_INSTALL_HINT) from e
    return onnxruntime


def ort_available_providers() -> list[str]:
    return list(import_onnxruntime().get_available_providers())


def tensorrt_usable() -> bool:
    """True when prebuilt engines can run here (tensorrt and cuda-python import)."""
    from runtime.trt import import_cudart, import_tensorrt
    try:
        import_tensorrt()
        import_cudart()
    except RuntimeError:
        return False
    return True


def _say_cpu_fallback(available: list[str]) -> None:
    """Log, once per process, that 'auto' found no GPU provider and runs on the CPU (never a silent fallback)."""
    global _fallback_said
    with _fallback_lock:
        if _fallback_said:
            return
        _fallback_said = True
    # A warning when onnxruntime-gpu is installed yet reports no GPU (driver or CUDA missing: a real fallback);
    # on the CPU build it is what the user installed, so it is said at INFO level.
    level = logging.WARNING if gpu_build_installed() else logging.INFO
    log.log(level, "providers='auto': this onnxruntime build reports no CUDA or TensorRT execution provider "
            "(available: %s), so the graphs run on the CPU. For the GPU, %s.", ", ".join(available),
            GPU_INSTALL_HINT)


def gpu_build_installed() -> bool:
    """True when the onnxruntime-gpu distribution is installed (whether or not it finds a GPU)."""
    from importlib import metadata
    try:
        metadata.distribution("onnxruntime-gpu")
    except metadata.PackageNotFoundError:
        return False
    return True


def _missing_message(what: str, missing: list[str], available: list[str]) -> str:
    hint = f"; {GPU_INSTALL_HINT}" if any(p in DEVICE_PROVIDERS for p in missing) else ""
    return (f"{what} needs {', '.join(missing)}, which this onnxruntime build does not have (available: "
            f"{available} and {ENGINE_PROVIDER!r} for prebuilt TensorRT engines){hint}")


def choose_providers(requested: str | Sequence[str] = "auto", engines_present: bool = False) -> list[str]:
    """The ordered provider list for `requested` ('auto', an alias of PROVIDER_ALIASES, or names); a provider this
    build lacks is refused with InvalidRequest naming what to install."""
    available = ort_available_providers()
    if isinstance(requested, str):
        if requested == "auto":
            chosen = [p for p in ORT_PREFERENCE if p in available]
            chosen = chosen if CPU_EP in chosen else chosen + [CPU_EP]
            engines = [ENGINE_PROVIDER] if engines_present and tensorrt_usable() else []
            if not engines and not any(p in DEVICE_PROVIDERS for p in chosen):
                _say_cpu_fallback(available)
            return engines + chosen
        alias = PROVIDER_ALIASES.get(requested.lower())
        if alias is not None:
            missing = [p for p in alias if p not in available]
            if missing:
                raise InvalidRequest("providers", _missing_message(f"{requested!r}", missing, available))
            return list(alias)
        requested = [requested]
    requested = list(requested)
    if not requested:
        raise InvalidRequest("providers", "empty list: give 'auto', 'cpu', 'gpu' or provider names")
    bad = [p for p in requested if p != ENGINE_PROVIDER and p not in available]
    if bad:
        raise InvalidRequest("providers", _missing_message(f"{requested}", bad, available))
    if ENGINE_PROVIDER in requested:
        if not engines_present:
            raise InvalidRequest("providers", f"{ENGINE_PROVIDER!r} asked for but the export has no TensorRT engines "
                                              f"(build them with `cli.py build-engine EXPORT_DIR`)")
        from runtime.trt import import_cudart, import_tensorrt
        import_tensorrt()
        import_cudart()
    return requested


def checked_bytes(directory: Path, file: str, sha256: Any, what: str) -> bytes:
    """The bytes of a graph or engine file, checked against the manifest's sha256 (formats.export_manifest
    .read_checked), as the runtime's ExportInvalid. Checked once, when a graph is opened: requests never pay it."""
    try:
        return read_checked(directory, file, sha256, what)
    except ManifestError as e:
        raise ExportInvalid.of(e) from None


def _np_dtype(name: str) -> np.dtype:
    return np.dtype({"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32,
                     "bool": np.bool_, "float64": np.float64}[name])


def is_ort_value(value: Any) -> bool:
    """True for an onnxruntime.OrtValue (a tensor that may live on a device); False without onnxruntime loaded."""
    ort = sys.modules.get("onnxruntime")
    return ort is not None and isinstance(value, ort.OrtValue)


def to_numpy(value: Any) -> np.ndarray:
    """A numpy array of `value` (an OrtValue on any device is copied to the host)."""
    return value.numpy() if is_ort_value(value) else np.asarray(value)


class Graph:
    """One graph: `run(feeds) -> {output name: array}`, with feeds cast to the recorded input dtypes.

    `native_adapters`: whether `run` accepts onnxruntime RunOptions with active LoRA adapters."""

    provider = "?"
    native_adapters = False

    def __init__(self, name: str, spec: dict[str, Any]):
        self.name = name
        self.input_dtypes = {i["name"]: _np_dtype(i["dtype"]) for i in spec["inputs"]}
        self.optional = {i["name"] for i in spec["inputs"] if i.get("default")}
        """Inputs with a default in the graph (base adapter values): feeds may leave them out."""
        self.output_names = [o["name"] for o in spec["outputs"]]

    def _cast(self, feeds: dict[str, Any]) -> dict[str, Any]:
        missing = sorted(set(self.input_dtypes) - set(feeds) - self.optional)
        if missing:
            raise ValueError(f"graph {self.name}: missing inputs {missing[:5]}")
        return self._cast_values(feeds)

    def _cast_values(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """The feeds this graph takes, arrays cast to their recorded dtypes (OrtValues as they are)."""
        return {k: v if is_ort_value(v) else np.ascontiguousarray(v, dtype=self.input_dtypes[k])
                for k, v in feeds.items() if k in self.input_dtypes}

    def run(self, feeds: dict[str, Any], keep_on_device: Collection[str] = (), run_options: Any = None
            ) -> dict[str, Any]:
        raise NotImplementedError


class OrtGraph(Graph):
    """An onnxruntime InferenceSession on the graph's ONNX file.

    `io_binding`: run through onnxruntime's I/O binding (default: when the session's first provider is a device
    provider). It also works on the CPU EP, where tests exercise it; outputs in `keep_on_device` are then OrtValues
    in host memory."""

    native_adapters = True

    def __init__(self, name: str, spec: dict[str, Any], path: Path, providers: list[str], threads: int | None,
                 trt_cache_dir: Path | None, io_binding: bool | None = None, device_id: int = 0):
        super().__init__(name, spec)
        ort = import_onnxruntime()
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.device_id = int(device_id)
        plist: list = []
        for p in providers:
            if p == ENGINE_PROVIDER:
                continue
            if p == TRT_EP:
                opts = {"device_id": self.device_id, "trt_fp16_enable": True}
                if trt_cache_dir is not None:
                    opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(trt_cache_dir))
                plist.append((p, opts))
            elif p == CUDA_EP:
                plist.append((p, {"device_id": self.device_id}))
            else:
                plist.append(p)
        model = checked_bytes(path.parent, path.name, spec.get("sha256"), "graph")
        try:
            self.session = ort.InferenceSession(model, so, providers=plist or [CPU_EP])
        except Exception as e:  # onnxruntime raises its own exception types for bad models
            raise ExportInvalid(str(path), f"onnxruntime cannot load it ({type(e).__name__}: {e})") from None
        required = {i.name for i in self.session.get_inputs()}
        overridable = {i.name for i in self.session.get_overridable_initializers()}
        wanted = set(self.input_dtypes)
        if not required <= wanted or not wanted <= required | overridable:
            raise ExportInvalid(str(path), f"graph inputs {sorted(required)[:5]}... differ from the manifest's "
                                           f"{list(self.input_dtypes)[:5]}...")
        self.optional &= overridable
        self.provider = self.session.get_providers()[0]
        self.device = "cuda" if self.provider in DEVICE_PROVIDERS else "cpu"
        self.io_binding = self.device != "cpu" if io_binding is None else bool(io_binding)
        self.native_adapters = not self.io_binding  # run_with_iobinding ignores RunOptions' active adapters

    def to_device(self, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        """`arrays` (cast to the input dtypes) as OrtValues on this graph's device, to bind again and again."""
        ort = import_onnxruntime()
        return {k: ort.OrtValue.ortvalue_from_numpy(v, self.device, self.device_id)
                for k, v in self._cast_values(arrays).items()}

    def run(self, feeds: dict[str, Any], keep_on_device: Collection[str] = (), run_options: Any = None
            ) -> dict[str, Any]:
        feeds = self._cast(feeds)
        if not self.io_binding:
            feeds = {k: to_numpy(v) for k, v in feeds.items()}
            return dict(zip(self.output_names, self.session.run(self.output_names, feeds, run_options)))
        return self._run_bound(feeds, set(keep_on_device), run_options)

    def _run_bound(self, feeds: dict[str, Any], keep: set[str], run_options: Any) -> dict[str, Any]:
        """One run through an IOBinding: host arrays are wrapped as OrtValues (copied to the device by the run),
        OrtValues (e.g. cached tri-planes already on the device) are bound as they are; outputs in `keep` stay on
        the device, the others are copied out."""
        ort = import_onnxruntime()
        binding = self.session.io_binding()
        for name, value in feeds.items():  # the arrays stay referenced by `feeds` until the run is over
            binding.bind_ortvalue_input(name, value if is_ort_value(value) else ort.OrtValue.ortvalue_from_numpy(value))
        for name in self.output_names:
            if name in keep:
                binding.bind_output(name, self.device, self.device_id)
            else:
                binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding, run_options)
        values = binding.get_outputs()
        return {n: v if n in keep else v.numpy() for n, v in zip(self.output_names, values)}


class EngineGraph(Graph):
    """A prebuilt TensorRT engine run with runtime.trt.TrtRunner (adapter tensors are engine inputs)."""

    provider = ENGINE_PROVIDER

    def __init__(self, name: str, spec: dict[str, Any], engine_path: Path, engine: dict[str, Any]):
        super().__init__(name, spec)
        self.optional = set()  # an engine has no defaults: every adapter input is fed
        if engine.get("graph_sha256") != spec.get("sha256"):
            raise ExportInvalid(str(engine_path), "this engine was not built from this export's graph (its "
                                                  "graph_sha256 differs from the graph's sha256, or is not "
                                                  "recorded): rebuild it with `cli.py build-engine`")
        data = checked_bytes(engine_path.parent, engine_path.name, engine.get("sha256"), "TensorRT engine")
        from runtime.trt import TrtRunner
        self.runner = TrtRunner(engine_path, data=data)

    def run(self, feeds: dict[str, Any], keep_on_device: Collection[str] = (), run_options: Any = None
            ) -> dict[str, Any]:
        if run_options is not None:
            raise ValueError(f"graph {self.name}: a TensorRT engine takes adapter tensors as inputs, not RunOptions")
        outs = self.runner({k: to_numpy(v) for k, v in self._cast(feeds).items()})
        return {k: outs[k] for k in self.output_names}


def open_graph(export_dir: Path, name: str, spec: dict[str, Any], providers: list[str], threads: int | None,
               engines: dict[str, Any] | None, io_binding: bool | None = None) -> Graph:
    """The Graph for manifest entry `spec`: an engine when ENGINE_PROVIDER leads `providers`, else onnxruntime."""
    if providers and providers[0] == ENGINE_PROVIDER and engines and name in engines:
        if engine_is_fingerprinted(engines[name]):
            return EngineGraph(name, spec, export_dir / engines[name]["file"], engines[name])
        log.warning("graph %s: its TensorRT engine %s records no fingerprints (built before manifest format 3), "
                    "so it cannot be checked against the graph; running the checked ONNX graph on onnxruntime "
                    "instead. Rebuild the engines with `cli.py build-engine %s` to use them.", name,
                    engines[name].get("file"), export_dir)
    cache = os.environ.get("MY3DGEN_TRT_CACHE")
    trt_cache = Path(cache) if cache else (export_dir / ".trt_ep_cache" if os.access(export_dir, os.W_OK) else None)
    return OrtGraph(name, spec, export_dir / spec["file"], providers, threads, trt_cache, io_binding)
