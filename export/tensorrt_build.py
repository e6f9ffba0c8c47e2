"""TensorRT stage: build an engine from the exported ONNX, refit its weights, run it.

Written against the TensorRT 10.x Python API (``tensorrt.Builder``, ``OnnxParser``,
``Refitter``, ``IExecutionContext.execute_async_v3``). TensorRT cannot be installed on the
project's CPU machines (docs/environment.md), so ``tensorrt`` is imported lazily inside the
functions that need it and its absence raises a ``RuntimeError`` that says how to install
it; everything that can be decided without TensorRT (optimization-profile shapes, parser
error descriptions) is plain Python and tested everywhere.

API notes (TensorRT 10):

* networks are always explicit-batch; ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH`` is
  deprecated and ignored, so it is not passed. ``STRONGLY_TYPED`` is used when FP16 is off,
  making the engine follow the ONNX types exactly (precision flags such as
  ``BuilderFlag.FP16`` do not apply to a strongly typed network, so the two are exclusive);
* weights are refitted by ONNX initializer name (the ONNX parser names TensorRT weights
  after initializers), with ``Refitter.set_named_weights`` / ``get_missing_weights``;
* ``strip_weights`` builds a weight-stripped plan (``BuilderFlag.STRIP_PLAN``, TensorRT
  10.0+) that must be refitted before use: with ``REFIT`` when weights will change (LoRA
  adapters), ``REFIT_IDENTICAL`` otherwise.

``TrtRunner`` (defined in runtime/trt.py, re-exported here) moves data with cuda-python's runtime bindings (``cuda.bindings.runtime``,
falling back to the older ``cuda.cudart`` module), not torch: the deployed runtime package
must not import torch.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from runtime.trt import TRT_INSTALL_HELP, TrtRunner, deserialize_engine, import_cudart, import_tensorrt

__all__ = ["TRT_INSTALL_HELP", "TrtRunner", "import_cudart", "import_tensorrt", "TensorRTBuildError", "ProfileShape",
           "derive_profile_shapes", "ParserIssue", "describe_parser_errors", "EngineInfo", "build_engine", "refit_engine"]

log = logging.getLogger(__name__)

class TensorRTBuildError(RuntimeError):
    """The ONNX parser or the builder rejected the model."""


# ---------------------------------------------------------------------------------------
# Pure-Python helpers (no TensorRT needed)


@dataclass(frozen=True)
class ProfileShape:
    """min/opt/max shapes of one input for a TensorRT optimization profile."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def _load_graph(onnx_model_or_path: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(onnx_model_or_path, onnx.ModelProto):
        return onnx_model_or_path
    path = Path(onnx_model_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    return onnx.load(str(path), load_external_data=False)


def derive_profile_shapes(
    onnx_model_or_path: str | Path | onnx.ModelProto, *, min_batch: int = 1, opt_batch: int = 1, max_batch: int = 8
) -> dict[str, ProfileShape]:
    """Optimization-profile shapes for every graph input with a dynamic batch axis.

    Axis 0 of an input is the batch when it is symbolic (``dim_param``) or unset; it gets
    ``min_batch/opt_batch/max_batch``. Every other axis must be static: TensorRT needs a
    range for each dynamic axis and this project exports only the batch as dynamic, so a
    dynamic non-batch axis is reported as an error instead of guessed. Inputs that are fully
    static need no profile and are left out; initializers listed as inputs are skipped.
    """
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= min_batch <= opt_batch <= max_batch, got {min_batch}, {opt_batch}, {max_batch}")
    graph = _load_graph(onnx_model_or_path).graph
    initializers = {init.name for init in graph.initializer}
    profiles: dict[str, ProfileShape] = {}
    for info in graph.input:
        if info.name in initializers:
            continue
        if not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
            raise ValueError(f"input '{info.name}' has no shape in the ONNX graph; export it with a known rank")
        dims = info.type.tensor_type.shape.dim
        static = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        dynamic_rest = [axis for axis, value in enumerate(static) if axis > 0 and value is None]
        if dynamic_rest:
            names = [dims[axis].dim_param or "?" for axis in dynamic_rest]
            raise ValueError(
                f"input '{info.name}' has dynamic non-batch axes {dynamic_rest} ({names}); only axis 0 (batch) may "
                f"be dynamic: export with static spatial sizes"
            )
        if not static or static[0] is not None:
            continue
        rest = tuple(static[1:])
        profiles[info.name] = ProfileShape((min_batch, *rest), (opt_batch, *rest), (max_batch, *rest))
    return profiles


@dataclass(frozen=True)
class ParserIssue:
    """One ONNX-parser error, decoupled from TensorRT's ``ParserError`` object."""

    node_index: int
    node_name: str
    op_type: str
    code: str
    desc: str


def describe_parser_errors(issues: Sequence[ParserIssue], onnx_model_or_path: Any = None) -> str:
    """One line per parser error naming the node; names missing from TensorRT's error are looked up in the graph."""
    nodes = []
    if onnx_model_or_path is not None and any(not i.node_name and i.node_index >= 0 for i in issues):
        nodes = list(_load_graph(onnx_model_or_path).graph.node)
    lines = []
    for issue in issues:
        name, op_type = issue.node_name, issue.op_type
        if not name and 0 <= issue.node_index < len(nodes):
            name = nodes[issue.node_index].name
            op_type = op_type or nodes[issue.node_index].op_type
        where = f"node #{issue.node_index} '{name or '?'}' ({op_type or '?'})" if issue.node_index >= 0 else "model"
        lines.append(f"  - {where}: [{issue.code}] {issue.desc}")
    return "\n".join(lines)


def _atomic_write(path: Path, data) -> None:
    """Write ``data`` (bytes or a buffer) to ``path`` through a temporary file and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------
# Build


@dataclass
class EngineInfo:
    """What :func:`build_engine` produced."""

    engine_path: Path
    size_bytes: int
    tensorrt_version: str
    fp16: bool
    strongly_typed: bool
    refit: bool
    strip_weights: bool
    profiles: dict[str, ProfileShape]
    inputs: list[str]
    outputs: list[str]
    build_seconds: float
    timing_cache: Path | None = None
    notes: list[str] = field(default_factory=list)


def _parser_issues(parser) -> list[ParserIssue]:
    issues = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        issues.append(
            ParserIssue(
                node_index=int(error.node()),
                node_name=str(getattr(error, "node_name", lambda: "")() or ""),
                op_type=str(getattr(error, "node_operator", lambda: "")() or ""),
                code=str(error.code()).split(".")[-1],
                desc=str(error.desc()),
            )
        )
    return issues


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    fp16: bool = True,
    refit: bool = False,
    strip_weights: bool = False,
    min_batch: int = 1,
    opt_batch: int = 1,
    max_batch: int = 8,
    workspace_gb: float = 4,
    timing_cache: str | Path | None = None,
    strongly_typed: bool | None = None,
    verbose: bool = False,
) -> EngineInfo:
    """Parse ``onnx_path`` with TensorRT's ONNX parser and write a serialized engine to ``engine_path``.

    ``fp16`` lets TensorRT pick FP16 kernels (``BuilderFlag.FP16``); ``strongly_typed``
    (default: ``not fp16``) makes the network follow the ONNX types instead, and cannot be
    combined with ``fp16``. ``refit`` makes the engine refittable by ONNX initializer name;
    ``strip_weights`` writes a weight-stripped plan that :func:`refit_engine` (or
    ``OnnxParserRefitter``) must fill before use. ``timing_cache`` is read if it exists and
    written back after the build, which makes rebuilds on the same GPU much faster.
    The engine file is written atomically: readers never see a partial engine.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    strongly_typed = (not fp16) if strongly_typed is None else strongly_typed
    if strongly_typed and fp16:
        raise ValueError("fp16=True needs a weakly typed network; for a strongly typed FP16 engine export the ONNX "
                         "in float16 and pass fp16=False")
    if workspace_gb <= 0:
        raise ValueError(f"workspace_gb must be positive, got {workspace_gb}")
    profiles = derive_profile_shapes(onnx_path, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch)
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        details = describe_parser_errors(_parser_issues(parser), onnx_path)
        raise TensorRTBuildError(f"TensorRT's ONNX parser rejected {onnx_path}:\n{details}")

    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    for tensor in inputs:
        if any(d < 0 for d in tuple(tensor.shape)) and tensor.name not in profiles:
            raise TensorRTBuildError(
                f"network input '{tensor.name}' has dynamic shape {tuple(tensor.shape)} but no profile was derived"
            )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    notes = []
    if fp16:
        if not builder.platform_has_fast_fp16:
            notes.append("this GPU has no fast FP16; FP16 kernels may be slower than FP32")
        config.set_flag(trt.BuilderFlag.FP16)
    if refit:
        config.set_flag(trt.BuilderFlag.REFIT)
    if strip_weights:
        config.set_flag(trt.BuilderFlag.STRIP_PLAN)
        if not refit:
            config.set_flag(trt.BuilderFlag.REFIT_IDENTICAL)
    if profiles:
        profile = builder.create_optimization_profile()
        for name, shape in profiles.items():
            profile.set_shape(name, shape.min, shape.opt, shape.max)
        config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache is not None else None
    if cache_path is not None:
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)

    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_seconds = time.perf_counter() - started
    if serialized is None:
        raise TensorRTBuildError(f"TensorRT failed to build an engine from {onnx_path}; see the TensorRT log above")
    _atomic_write(engine_path, serialized)
    if cache_path is not None:
        _atomic_write(cache_path, config.get_timing_cache().serialize())
    for note in notes:
        log.warning(note)
    return EngineInfo(
        engine_path=engine_path,
        size_bytes=engine_path.stat().st_size,
        tensorrt_version=trt.__version__,
        fp16=fp16,
        strongly_typed=strongly_typed,
        refit=refit,
        strip_weights=strip_weights,
        profiles=profiles,
        inputs=[t.name for t in inputs],
        outputs=[network.get_output(i).name for i in range(network.num_outputs)],
        build_seconds=build_seconds,
        timing_cache=cache_path,
        notes=notes,
    )


# ---------------------------------------------------------------------------------------
# Refit


def _serialize_full(trt, engine):
    """Serialize ``engine`` with its (refitted) weights, staying refittable where TensorRT allows."""
    if not hasattr(engine, "create_serialization_config"):
        return engine.serialize()
    config = engine.create_serialization_config()
    config.clear_flag(trt.SerializationFlag.EXCLUDE_WEIGHTS)
    include_refit = getattr(trt.SerializationFlag, "INCLUDE_REFIT", None)
    if include_refit is not None:
        config.set_flag(include_refit)
    return engine.serialize_with_config(config)


def refit_engine(
    engine_path: str | Path,
    weights: Mapping[str, np.ndarray],
    *,
    onnx_path: str | Path | None = None,
    out_path: str | Path | None = None,
) -> None:
    """Replace weights of a refittable engine, by ONNX initializer name, and save it.

    ``onnx_path`` first loads every weight from that ONNX file (``OnnxParserRefitter``);
    ``weights`` then override some of them. That is how a weight-stripped engine is filled,
    or how a LoRA-merged layer is swapped in without supplying the whole model. The result
    goes to ``out_path`` (default: ``engine_path``, replaced atomically) with its weights
    included. Raises ValueError for unknown names, size mismatches or weights TensorRT still
    misses, and RuntimeError when the refit itself fails.
    """
    trt = import_tensorrt()
    engine_path = Path(engine_path)
    logger = trt.Logger(trt.Logger.WARNING)
    _runtime, engine = deserialize_engine(trt, logger, engine_path)
    if not engine.refittable:
        raise ValueError(f"{engine_path} is not refittable: build it with refit=True (or strip_weights=True)")
    refitter = trt.Refitter(engine, logger)
    refittable = set(refitter.get_all_weights())
    unknown = sorted(set(weights) - refittable)
    if unknown:
        raise ValueError(
            f"{len(unknown)} weight name(s) are not refittable in {engine_path}: {unknown[:10]}. Names are ONNX "
            f"initializer names; initializers TensorRT folded into constants cannot be refitted "
            f"({len(refittable)} refittable, e.g. {sorted(refittable)[:5]})"
        )
    if onnx_path is not None:
        parser_refitter = trt.OnnxParserRefitter(refitter, logger)
        if not parser_refitter.refit_from_file(str(onnx_path)):
            raise RuntimeError(f"OnnxParserRefitter could not load weights from {onnx_path}")
    keep_alive = []
    for name, value in weights.items():
        array = np.ascontiguousarray(value)
        if hasattr(refitter, "get_weights_prototype"):
            prototype = refitter.get_weights_prototype(name)
            if array.size != prototype.size:
                raise ValueError(f"weight '{name}' has {array.size} elements, the engine expects {prototype.size}")
            array = np.ascontiguousarray(array, dtype=trt.nptype(prototype.dtype))
        keep_alive.append(array)
        if not refitter.set_named_weights(name, trt.Weights(array)):
            raise ValueError(f"TensorRT rejected weight '{name}' (shape {array.shape}, dtype {array.dtype})")
    missing = sorted(refitter.get_missing_weights())
    if missing:
        raise ValueError(
            f"refit of {engine_path} needs {len(missing)} more weight(s) TensorRT fused with the given ones: "
            f"{missing[:10]}; pass them too, or onnx_path= to take the rest from the ONNX file"
        )
    if not refitter.refit_cuda_engine():
        raise RuntimeError(f"TensorRT refit of {engine_path} failed (missing: {sorted(refitter.get_missing_weights())})")
    _atomic_write(Path(out_path) if out_path is not None else engine_path, _serialize_full(trt, engine))
