"""TensorRT stage: build an engine from an exported ONNX graph, refit its weights, run it (TensorRT 10.x and 11.x).

TensorRT cannot be installed on the project's CPU machines (docs/ENVIRONMENT.md), so ``tensorrt`` is imported
lazily inside the functions that need it and its absence raises a RuntimeError that says how to install it.
Everything that can be decided without TensorRT is plain Python and tested everywhere: optimization-profile
shapes, parser error descriptions, and `plan_build`, which decides from the installed version how an engine is
built (tests run `build_engine` against stand-ins of both versions' ``tensorrt`` module).

The two versions (NVIDIA's TensorRT 10.x -> 11.x migration guide):

* 10.x (and JetPack, which stays on 10.x): weakly typed networks, where ``BuilderFlag.FP16`` lets the builder pick
  FP16 kernels for an FP32 graph, or strongly typed ones (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``) that
  follow the ONNX types; the two are exclusive.
* 11.x: strongly typed only; ``BuilderFlag.FP16`` and ``Builder.platform_has_fast_fp16`` are removed and never
  touched. An FP16 engine needs a graph that computes in FP16 (a mixed-precision export); an FP32 graph builds an
  FP32 engine.
* Both: networks are explicit-batch (the deprecated ``EXPLICIT_BATCH`` flag is not passed); weights are refitted
  by ONNX initializer name (``Refitter.set_named_weights``, ``OnnxParserRefitter``); ``strip_weights`` writes a
  weight-stripped plan (``BuilderFlag.STRIP_PLAN``) that must be refitted before use.

Refit is how a merged-weight export changes person without a rebuild: build the engine once with ``refit=True``,
then for each new person export its merged graph and refit the engines from it (`refit_engines_from`,
`cli.py build-engine NEW_EXPORT --refit-from OLD_EXPORT`), which takes every weight from the new graph (seconds,
against minutes for a build).

``TrtRunner`` (runtime/trt.py, re-exported here) runs engines on numpy arrays with cuda-python, not torch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from export.trt_support import graph_computes_in_fp16
from formats.atomic import write_bytes
from formats.export_manifest import engine_fingerprints
from runtime.trt import TRT_INSTALL_HELP, TrtRunner, deserialize_engine, import_cudart, import_tensorrt

__all__ = ["TRT_INSTALL_HELP", "TrtRunner", "import_cudart", "import_tensorrt", "TensorRTBuildError", "ProfileShape",
           "derive_profile_shapes", "ParserIssue", "describe_parser_errors", "BuildPlan", "plan_build", "EngineInfo",
           "build_engine", "refit_engine", "refit_engines_from"]

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


# ---------------------------------------------------------------------------------------
# Build


@dataclass(frozen=True)
class BuildPlan:
    """How one engine is built on the installed TensorRT: decided by `plan_build` before TensorRT is touched."""

    major: int
    strongly_typed: bool
    builder_flags: tuple[str, ...]
    """Names of ``tensorrt.BuilderFlag`` members to set (FP16 only on 10.x weak typing; REFIT, STRIP_PLAN, ...)."""
    fp16: bool
    """The engine runs FP16 kernels: from the builder flag (10.x weak typing) or from the graph's own types."""
    precision: str


def tensorrt_major(version: str) -> int:
    """10 for "10.3.0", 11 for "11.4.1"; versions before 10 are refused (their Python API differs)."""
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        raise ValueError(f"cannot read a TensorRT version from {version!r}") from None
    if major < 10:
        raise ValueError(f"TensorRT {version} is older than 10: install TensorRT 10.x or 11.x\n{TRT_INSTALL_HELP}")
    return major


def plan_build(version: str, *, fp16: bool, graph_fp16: bool, strongly_typed: bool | None = None,
               refit: bool = False, strip_weights: bool = False) -> BuildPlan:
    """The network typing, builder flags and resulting precision for TensorRT `version`.

    `fp16`: an FP16 engine is wanted. `graph_fp16`: the ONNX graph itself computes in FP16. `strongly_typed`:
    None chooses (10.x: strongly typed unless FP16 must come from the builder flag; 11.x: always). Impossible
    requests raise ValueError naming the way out, e.g. FP16 from an FP32 graph on 11.x.
    """
    major = tensorrt_major(version)
    if major >= 11:
        if strongly_typed is False:
            raise ValueError(f"TensorRT {version} builds strongly typed networks only (weak typing was removed in "
                             f"11.0); leave strongly_typed unset")
        if fp16 and not graph_fp16:
            raise ValueError(f"TensorRT {version} builds strongly typed networks only, so an FP16 engine needs a "
                             f"graph that computes in FP16, and this one computes in FP32: build with fp16=False "
                             f"(`build-engine --no-fp16`) for an FP32 engine, or export a mixed-precision graph")
        typed, flags = True, []
    else:
        typed = (graph_fp16 or not fp16) if strongly_typed is None else strongly_typed
        if typed and fp16 and not graph_fp16:
            raise ValueError("a strongly typed network follows the graph's types, and this graph computes in FP32: "
                             "for an FP16 engine from it use weak typing (strongly_typed=False or unset)")
        flags = ["FP16"] if fp16 and not typed else []
    if refit:
        flags.append("REFIT")
    if strip_weights:
        flags += ["STRIP_PLAN"] + ([] if refit else ["REFIT_IDENTICAL"])
    if "FP16" in flags:
        precision = "fp16 kernels allowed (weakly typed, BuilderFlag.FP16)"
    else:
        precision = f"as the graph: {'fp16' if graph_fp16 else 'fp32'} (strongly typed)"
    return BuildPlan(major=major, strongly_typed=typed, builder_flags=tuple(flags),
                     fp16="FP16" in flags or (typed and graph_fp16), precision=precision)


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
    precision: str
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

    How the installed TensorRT builds it (typing, flags, precision) is `plan_build`'s decision: ``fp16`` asks
    for an FP16 engine, ``strongly_typed`` forces the typing where the version allows a choice (10.x).
    ``refit`` makes the engine refittable by ONNX initializer name; ``strip_weights`` writes a weight-stripped
    plan that :func:`refit_engine` must fill before use. ``timing_cache`` is read if it exists and written back
    after the build, which makes rebuilds on the same GPU much faster. The engine file is written atomically.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if workspace_gb <= 0:
        raise ValueError(f"workspace_gb must be positive, got {workspace_gb}")
    profiles = derive_profile_shapes(onnx_path, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch)
    trt = import_tensorrt()
    plan = plan_build(trt.__version__, fp16=fp16, graph_fp16=graph_computes_in_fp16(onnx_path),
                      strongly_typed=strongly_typed, refit=refit, strip_weights=strip_weights)
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # 11.x networks are always strongly typed; 10.x needs the creation flag for it.
    typed_flag = plan.strongly_typed and plan.major == 10
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if typed_flag else 0)
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
    if "FP16" in plan.builder_flags and not builder.platform_has_fast_fp16:
        notes.append("this GPU has no fast FP16; FP16 kernels may be slower than FP32")
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
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
    write_bytes(engine_path, serialized)
    if cache_path is not None:
        write_bytes(cache_path, config.get_timing_cache().serialize())
    for note in notes:
        log.warning(note)
    return EngineInfo(
        engine_path=engine_path,
        size_bytes=engine_path.stat().st_size,
        tensorrt_version=trt.__version__,
        fp16=plan.fp16,
        strongly_typed=plan.strongly_typed,
        refit=refit,
        strip_weights=strip_weights,
        precision=plan.precision,
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
    write_bytes(Path(out_path) if out_path is not None else engine_path, _serialize_full(trt, engine))


def refit_engines_from(source_dir: str | Path, source_engines: Mapping[str, Mapping[str, Any]],
                       target_dir: str | Path, target_graphs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
    """Engines for the export in `target_dir`, made by refitting the refittable engines of `source_dir`.

    A merged-weight export bakes one person into its graphs; another person's export has the same graphs with
    other weights. Refitting each engine of the first from the second's graph (`refit_engine` with `onnx_path`)
    gives the second person's engines in seconds instead of a build. `source_engines` and `target_graphs` are the
    two manifests' `tensorrt.engines` and `graphs` entries; the returned entries go into the target's manifest.
    TensorRT refuses (ValueError) graphs whose weights do not match the engine's.
    """
    source_dir, target_dir = Path(source_dir), Path(target_dir)
    missing = sorted(set(source_engines) - set(target_graphs))
    if missing:
        raise ValueError(f"{target_dir} has no graph(s) {missing} for the engines of {source_dir}")
    not_refittable = sorted(name for name, entry in source_engines.items() if not entry.get("refit"))
    if not_refittable:
        raise ValueError(f"{source_dir}: engine(s) {not_refittable} were not built refittable; rebuild them with "
                         f"`cli.py build-engine {source_dir} --refittable`")
    engines = {}
    for name, entry in source_engines.items():
        out_path = target_dir / entry["file"]
        started = time.perf_counter()
        refit_engine(source_dir / entry["file"], {}, onnx_path=target_dir / target_graphs[name]["file"],
                     out_path=out_path)
        engines[name] = {**entry, "size_bytes": out_path.stat().st_size,
                         "build_seconds": round(time.perf_counter() - started, 2),
                         "refitted_from": str(source_dir / entry["file"]),
                         **engine_fingerprints(out_path, target_graphs[name]["sha256"])}
    return engines
