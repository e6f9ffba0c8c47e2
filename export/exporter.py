"""Export a generator, optionally with a person's adapter, to an export directory of three ONNX graphs.

Modes (formats.export_manifest documents the directory):
  * base       the base model only;
  * merge      one person's adapter merged into G's weights while tracing (restored after): only they are served;
  * keep       every LoRA A/B and personal full tensor of an adapter policy is an input of the synthesis and
               render graphs, W = W0 + scale * B @ A computed in the graph: one graph serves every person whose
               adapter has the same policy. The mapping network stays frozen (no adapter inputs). The base
               values (LoRA A = B = 0, the base full tensors) are the inputs' defaults (overridable initializers):
               with no adapter feed the graphs render the base model, and onnxruntime's native LoRA adapters
               (`.onnx_adapter`, runtime.native_adapters) replace them. `mixed_batch` N adds static-batch-N
               copies of both graphs whose adapter inputs carry one person per sample (mixed-person batches).

Graphs are exported with torch.onnx's dynamo exporter (opset >= 18: its only target; the TorchScript exporter
cannot export the FIR filter of generator/ops.py with a dynamic batch), in the deterministic inference mode with
the non-fused modulated conv, so the batch axis is dynamic. Every export is checked against eager PyTorch on an
example batch (the manifest records the max abs differences; an fp32 export that misses 1e-3 is refused) and
against TensorRT's ONNX operator support. The directory appears atomically, complete or not at all.

This module is the orchestration: `export_generator` is an `ExportJob`: `ExportJob.prepare` checks the options
(export.options), loads the adapter, names the keep-LoRA inputs (export.adapter_inputs) and runs the example batch
(export.verification.Example) through eager PyTorch; `ExportJob.write` fills a temporary directory (`ExportFiles`)
step by step, each step reading the job: trace the graphs, convert them to fp16 (export.fp16_graph and
export.graph_edits), give the keep-LoRA inputs their defaults (export.graph_edits), verify (export.verification),
build the manifest. `build_engines` builds TensorRT engines of an export directory (export.tensorrt_build).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import io
import json
import logging
import os
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from export.adapter_inputs import adapter_inputs_for, base_adapter_values
from export.graph_edits import add_input_defaults, convert_weights_fp16, name_batch_axis, without_input_defaults
from export.manifest import io_spec, trt_check_summary
from export.onnx_graphs import AdapterInput, MappingGraph, RenderGraph, SynthesisGraph
from export.options import ExportError, ExportOptions
from export.verification import (EXAMPLE_PSI, Example, mixed_example, verification_adapter, verify_graphs,
                                 verify_mixed)
from formats.adapter_file import FORMAT_VERSION as ADAPTER_FORMAT_VERSION
from formats.atomic import atomic_dir
from formats.cameras import FFHQ_FOCAL
from formats.export_manifest import (ANCHORS_FILE, BASE_ADAPTER_FILE, GRAPH_FILES, MIXED_GRAPH_FILES, TORCH_MODEL_DIR,
                                     build_manifest, engine_fingerprints, graph_entry, keep_lora_adapter_section,
                                     merged_adapter_section, torch_section, write_manifest)
from formats.fingerprint import sha256_file
from formats.names import NAME_RULE, is_valid_name
from formats.tensors import save_safetensors
from generator.lora import AdapterPolicy, AdapterTensors, PersonAdapter, attach, attachment_of
from generator.triplane import TriPlaneGenerator


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress prints and warnings; re-raise with its output on failure."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield
    except Exception as e:
        raise ExportError(f"torch.onnx.export failed: {type(e).__name__}: {e}\n{buf.getvalue()[-2000:]}") from e
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__}
    for mod in ("onnxruntime", "onnxscript"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = "not installed"
    return out


@contextlib.contextmanager
def _graph_state(G: TriPlaneGenerator, mode: str, adapter: PersonAdapter | None):
    """G as the graphs are traced from: unchanged ('base'), the adapter merged into its weights ('merge'), or an
    AdapterTensors attached that the keep-LoRA graphs fill from their inputs ('keep', yielded). G's own tensors are
    restored bit for bit afterwards."""
    if mode == "base":
        yield None
        return
    live = AdapterTensors(adapter.targets, adapter.policy, fc_after_gain=adapter.fc_after_gain) if mode == "keep" \
        else None
    handle = attach(G, live if mode == "keep" else adapter)
    try:
        if mode == "merge":
            handle.merge()
        yield live
    finally:
        handle.detach()


GRAPH_IO = {
    "mapping": (["z", "c", "truncation_psi"], ["ws"]),
    "synthesis": (["ws"], ["planes"]),
    "render": (["planes", "ws", "c"], ["image", "image_raw", "depth"]),
}
"""Each graph's own inputs and its outputs; a graph's keep-LoRA inputs follow its own inputs (mapping has none)."""
UNBATCHED_INPUTS = {"truncation_psi"}
"""Own inputs without a batch axis."""


@dataclass
class ExportFiles:
    """Where an export's files go: its (temporary) directory and the graph files in it."""

    dir: Path
    graphs: dict[str, Path]
    """'mapping', 'synthesis', 'render' -> file."""
    mixed: dict[str, Path]
    """'synthesis', 'render' -> file of the static mixed-batch form (empty without a mixed batch)."""

    @classmethod
    def under(cls, d: Path, mixed_batch: int) -> ExportFiles:
        return cls(d, {g: d / f for g, f in GRAPH_FILES.items()},
                   {g: d / f for g, f in MIXED_GRAPH_FILES.items()} if mixed_batch else {})

    def manifest_graphs(self) -> list[tuple[str, Path]]:
        """(manifest graph name, file) of every graph: the served ones, then '<graph>_mixed'."""
        return [*self.graphs.items(), *((f"{g}_mixed", p) for g, p in self.mixed.items())]


@dataclass
class ExportJob:
    """One export: the generator, the options, the adapter as the mode uses it and the example batch. `prepare`
    does everything that can fail before a file exists; `write` runs the steps that fill the export directory:
    trace the graphs, halve them (fp16), give the keep-LoRA inputs their defaults, verify, write the manifest."""

    G: TriPlaneGenerator
    opts: ExportOptions
    source: dict[str, Any]
    """What the weights came from (the manifest's 'source')."""
    fingerprint: str
    """The base model's fingerprint (generator.adapter_file.base_fingerprint)."""
    adapter_path: str | os.PathLike | None
    adapter: PersonAdapter | None
    """The adapter file's ('merge', 'keep'), or the policy's zero adapter (a 'keep' export without a file)."""
    anchors: Any
    """The adapter file's anchors (generator.adapter_file.Anchors), or None."""
    meta: dict[str, Any] | None
    """The adapter file's metadata, or None."""
    person: str | None
    """The merged person's name ('merge')."""
    inputs: list[AdapterInput]
    """The keep-LoRA graph inputs ([] in the other modes)."""
    verify_adapter: PersonAdapter | None
    """What the example is rendered with: the adapter, or for a 'keep' export without a file a perturbed copy, so
    verification exercises every input."""
    example: Example

    @classmethod
    def prepare(cls, G: TriPlaneGenerator, adapter_path: str | os.PathLike | None, options: ExportOptions | None,
                source: dict[str, Any] | None) -> ExportJob:
        """Check the options and G, load the adapter, name the merged person and run the example through eager
        PyTorch: every refusal comes before the export directory is made."""
        from generator.adapter_file import base_fingerprint

        opts = (options or ExportOptions()).validate(adapter_path is not None)
        if opts.trt:
            from export.tensorrt_build import import_tensorrt
            import_tensorrt()  # fail before any work: "TensorRT is not installed ..." with install steps
        G = G.eval()
        if attachment_of(G) is not None:
            raise ExportError("the generator has an adapter attached: detach it first (export takes the adapter as "
                              "a file, per mode)")
        fingerprint = base_fingerprint(G)
        adapter, anchors, meta = _load_adapter(G, adapter_path)
        if opts.mode == "keep" and adapter is None:
            adapter = PersonAdapter.create(G, opts.policy or AdapterPolicy())
        person = _merged_person(opts, adapter_path) if opts.mode == "merge" else None
        inputs = adapter_inputs_for(adapter) if opts.mode == "keep" else []
        verify_adapter = verification_adapter(adapter, opts.seed) if opts.mode == "keep" and adapter_path is None \
            else adapter
        return cls(G=G, opts=opts, source=source or {}, fingerprint=fingerprint, adapter_path=adapter_path,
                   adapter=adapter, anchors=anchors, meta=meta, person=person, inputs=inputs,
                   verify_adapter=verify_adapter, example=Example.make(G, opts, verify_adapter))

    # ------------------------------------------------------------------ what the steps read

    @property
    def planes_dtype(self) -> torch.dtype:
        return torch.float16 if self.opts.fp16 else torch.float32

    def graph_inputs(self, graph: str) -> list[AdapterInput]:
        """The keep-LoRA inputs of `graph`, in input order."""
        return [i for i in self.inputs if i.graph == graph]

    @functools.cached_property
    def file_tensors(self) -> dict[str, torch.Tensor]:
        """The verification adapter's tensors by adapter-file name (what the keep-LoRA inputs are fed)."""
        return {k: v.detach() for k, v in (self.verify_adapter or self.adapter).file_tensors().items()} \
            if self.inputs else {}

    def tensors(self, graph: str) -> list[torch.Tensor]:
        """The example's keep-LoRA tensors of `graph`, in input order."""
        return [self.file_tensors[i.tensor_name] for i in self.graph_inputs(graph)]

    def feeds(self, graph: str) -> dict[str, np.ndarray]:
        """The same as onnxruntime feeds, by input name."""
        return {i.input_name: self.file_tensors[i.tensor_name].numpy() for i in self.graph_inputs(graph)}

    @functools.cached_property
    def base_values(self) -> dict[str, np.ndarray]:
        """base_adapter_values of the keep-LoRA inputs."""
        return base_adapter_values(self.G, self.inputs)

    def base_feeds(self, graph: str) -> dict[str, np.ndarray]:
        """The base model's values of `graph`'s keep-LoRA inputs, by input name."""
        return {i.input_name: self.base_values[i.input_name] for i in self.graph_inputs(graph)}

    # ------------------------------------------------------------------ the steps

    def write(self, d: Path) -> None:
        """Every file of the export into the directory `d` (the temporary directory export_generator renames)."""
        files = ExportFiles.under(d, self.opts.mixed_batch)
        self.export_graphs(files)
        mixed_precision = self.convert_fp16(files) if self.opts.fp16 else None
        self.add_input_defaults(files)
        verification = self.verify(files) if self.opts.verify else None
        manifest = self.manifest(files, verification, mixed_precision)
        if self.opts.trt:
            manifest["tensorrt"]["engines"] = build_engines(d, max_batch=self.opts.max_batch)
        write_manifest(d, manifest)
        for f in d.rglob("*"):  # temp files are created private; an export is meant to be read by servers
            os.chmod(f, 0o755 if f.is_dir() else 0o644)
        os.chmod(d, 0o755)

    def export_graphs(self, files: ExportFiles) -> None:
        """Trace the three graphs (dynamic batch) and the mixed ones (static batch) from G in the mode's state."""
        batch = torch.export.Dim("batch", min=1, max=1024)
        with _graph_state(self.G, self.opts.mode, self.adapter) as live:
            for graph, path in files.graphs.items():
                self._export_graph(graph, live, self._example_args(graph), path, batch)
            for graph, path in files.mixed.items():
                self._export_graph(graph, live, self._example_args(graph, self.opts.mixed_batch), path, None)

    def _export_graph(self, graph: str, live: AdapterTensors | None, args: tuple, path: Path, batch: Any) -> None:
        """Trace `graph` from `args` to the ONNX file `path`, its inputs named as GRAPH_IO then its keep-LoRA
        inputs; `batch`: the dynamic batch dimension of the batched inputs, or None for a static batch."""
        own, outputs = GRAPH_IO[graph]
        adapter = self.graph_inputs(graph)
        names = own + [i.input_name for i in adapter]
        dims = tuple(None if batch is None or n in UNBATCHED_INPUTS else {0: batch} for n in own)
        if graph != "mapping":
            dims += ([None] * len(adapter),)
        module = self._module(graph, live).eval()
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(module, args, dynamo=True, opset_version=self.opts.opset, input_names=names,
                                        output_names=outputs, dynamic_shapes=dims, verbose=False,
                                        external_data=False, optimize=True)
            program.save(str(path), external_data=False)
        model = onnx.load(str(path), load_external_data=False)
        name_batch_axis(model)
        onnx.save(model, str(path))
        got = {o.domain: o.version for o in model.opset_import}.get("", None)
        if got != self.opts.opset:
            raise ExportError(f"{path.name}: the exporter produced opset {got}, not the requested {self.opts.opset}")
        got_names = [i.name for i in model.graph.input]
        if got_names != names:
            raise ExportError(f"{path.name}: graph inputs {got_names[:6]}... differ from the requested {names[:6]}...")

    def _module(self, graph: str, live: AdapterTensors | None) -> torch.nn.Module:
        """The torch module `graph` is traced from (keep-LoRA: its inputs bound into `live`)."""
        if graph == "mapping":
            return MappingGraph(self.G)
        if graph == "synthesis":
            return SynthesisGraph(self.G, self.graph_inputs(graph), live, self.planes_dtype)
        return RenderGraph(self.G, self.graph_inputs(graph), live)

    def _example_args(self, graph: str, mixed_batch: int = 0) -> tuple:
        """The example inputs `graph` is traced from: its own inputs, then its keep-LoRA tensors; with
        `mixed_batch` N, cycled to N samples with a per-sample axis on the adapter tensors (mixed_example)."""
        ex = self.example
        if graph == "mapping":
            return ex.z, ex.c, torch.tensor([EXAMPLE_PSI])
        batch = (ex.ws,) if graph == "synthesis" else (ex.planes.to(self.planes_dtype), ex.ws, ex.c)
        if mixed_batch:
            return tuple(mixed_example(mixed_batch, self.tensors(graph), *batch))
        return (*batch, self.tensors(graph))

    def convert_fp16(self, files: ExportFiles) -> dict[str, Any]:
        """fp16 compute where safe (export.fp16_graph), then float16 weights; returns the manifest's
        'mixed_precision'. The compute conversion must come first: it reads the float32 weights."""
        from export.fp16_graph import convert_export_graphs
        mixed_precision = convert_export_graphs(files.graphs)
        for p in files.graphs.values():
            convert_weights_fp16(p)
        return mixed_precision

    def add_input_defaults(self, files: ExportFiles) -> None:
        """The base values as the default of every keep-LoRA input of the served synthesis and render graphs."""
        for g in ("synthesis", "render"):
            add_input_defaults(files.graphs[g], self.base_feeds(g))

    def verify(self, files: ExportFiles) -> dict[str, Any]:
        """The manifest's 'verification' (export.verification): onnxruntime vs eager PyTorch on the example batch,
        and the mixed graphs vs the served ones; an fp32 export beyond FP32_TOLERANCE is refused."""
        verification = verify_graphs(files.graphs, self.example, self.feeds, self.opts.fp16)
        if files.mixed:
            verification["mixed_batch_max_abs_diff"] = verify_mixed(files.graphs, files.mixed, self.opts.mixed_batch,
                                                                    self.example, self.feeds, self.base_feeds)
        return verification

    def manifest(self, files: ExportFiles, verification: dict[str, Any] | None,
                 mixed_precision: dict[str, Any] | None) -> dict[str, Any]:
        """The manifest (formats.export_manifest.build_manifest); writes the files it names beside the graphs (the
        adapter's anchors or base values, the torch backend's model directory)."""
        adapter = self.adapter_section(files.dir)
        torch_model = self.write_torch_model(files.dir / TORCH_MODEL_DIR)
        graphs = {}
        for name, p in files.manifest_graphs():
            gin, gout = io_spec(p)
            graphs[name] = graph_entry(p.name, sha256_file(p), gin, gout,
                                       [i.input_name for i in self.graph_inputs(name.removesuffix("_mixed"))])
        checks = {name: trt_check_summary(files.dir / g["file"]) for name, g in graphs.items()}
        G, cfg = self.G, self.G.cfg
        return build_manifest(
            graphs=graphs, generator=cfg.to_dict(),
            model={"num_ws": G.num_ws, "w_dim": G.w_dim, "z_dim": G.z_dim, "c_dim": G.c_dim,
                   "img_resolution": G.img_resolution, "neural_rendering_resolution": G.neural_rendering_resolution,
                   "triplane_shape": [3, cfg.plane_features, cfg.triplane_resolution, cfg.triplane_resolution]},
            camera={"radius": cfg.rendering.avg_camera_radius, "pivot": list(cfg.rendering.avg_camera_pivot),
                    "focal": FFHQ_FOCAL},
            base_fingerprint=self.fingerprint, source=self.source, adapter=adapter,
            precision="fp16" if self.opts.fp16 else "fp32", opset=self.opts.opset, versions=_versions(),
            verification=verification, tensorrt_check=checks, mixed_precision=mixed_precision,
            torch_model=torch_model)

    def adapter_section(self, d: Path) -> dict[str, Any]:
        """The manifest's 'adapter' section of the mode, with its file in `d`: the merged person's anchors, or the
        keep-LoRA inputs' base values."""
        mode = self.opts.mode
        if mode == "base":
            return {"mode": "none"}
        if mode == "merge":
            anchors = self.anchors
            if anchors is not None:
                save_safetensors(d / ANCHORS_FILE, {"anchors.ws": anchors.ws.float().numpy(),
                                                    "anchors.c": anchors.c.float().numpy()},
                                 {"names": json.dumps(anchors.names), "person": self.person})
            return merged_adapter_section(self.person, sha256_file(self.adapter_path), self.meta["base_fingerprint"],
                                          self.meta["policy"], list(anchors.names) if anchors is not None else None)
        policy = self.adapter.policy
        save_safetensors(d / BASE_ADAPTER_FILE, self.base_values,
                         {"what": "base-model values of the keep-LoRA inputs (LoRA A = B = 0)"})
        return keep_lora_adapter_section(
            dataclasses.asdict(policy), policy.rank, policy.alpha, policy.layout, policy.scale,
            [[t.key, t.kind, list(t.shape)] for t in self.adapter.targets.values()],
            [{"input": i.input_name, "tensor": i.tensor_name, "target": i.target_key, "role": i.role,
              "shape": list(i.shape), "graph": i.graph, "dtype": "float32"} for i in self.inputs],
            sha256_file(self.adapter_path) if self.adapter_path is not None else None,
            ADAPTER_FORMAT_VERSION if self.adapter.fc_after_gain else 1, defaults_in_graph=True,
            mixed_batch=self.opts.mixed_batch or None)

    def write_torch_model(self, path: Path) -> dict[str, str]:
        """The export's model directory for the runtime's torch backend (manifest 'torch'): G's base weights, or in
        a 'merge' export the person baked in (generator.lora.merged_state_dict, the weights the merged graphs were
        traced from); returns the manifest section with the weights fingerprint the backend checks."""
        from generator.lora import merged_state_dict
        from generator.model_dir import read_config, save_model_dir
        G = self.G
        if self.opts.mode == "merge":
            G = copy.deepcopy(G)
            G.load_state_dict(merged_state_dict(G, self.adapter), strict=True)
        save_model_dir(G, path, source={"export": f"weights of this {self.opts.mode} export, for the runtime's torch "
                                                  f"backend"})
        return torch_section(read_config(path)[1]["fingerprint"], TORCH_MODEL_DIR)


def _load_adapter(G: TriPlaneGenerator, adapter_path: str | os.PathLike | None) -> tuple[Any, Any, Any]:
    """(adapter, anchors, metadata) of the adapter file at `adapter_path` for G; (None, None, None) without one."""
    from generator.adapter_file import AdapterFileError, load_adapter
    if adapter_path is None:
        return None, None, None
    try:
        return load_adapter(adapter_path, G)
    except AdapterFileError as e:
        raise ExportError(str(e)) from None


def _merged_person(opts: ExportOptions, adapter_path: str | os.PathLike) -> str:
    """The merged person's name: opts.person, or the adapter file's stem (which must then be a valid name)."""
    person = opts.person or Path(adapter_path).stem
    if not is_valid_name(person):
        raise ExportError(f"person name {person!r} (from the adapter file name) must use {NAME_RULE}: "
                          f"pass --person NAME")
    return person


def export_generator(G: TriPlaneGenerator, out: str | os.PathLike, adapter_path: str | os.PathLike | None = None,
                     options: ExportOptions | None = None, source: dict[str, Any] | None = None) -> Path:
    """Export G (and the adapter at `adapter_path`, per options.mode) to the directory `out`; returns it. The
    directory appears complete or not at all (written in a temporary directory, then renamed)."""
    job = ExportJob.prepare(G, adapter_path, options, source)
    with atomic_dir(out, overwrite=job.opts.overwrite) as tmp:
        job.write(tmp)
    return Path(out)


def build_engines(export_dir: str | os.PathLike, max_batch: int = 8, fp16: bool = True,
                  refit: bool = False) -> dict[str, Any]:
    """Build a TensorRT engine per graph (adapter tensors stay engine inputs); raises where TensorRT is missing.

    `refit`: refittable engines, so another merged person's export can reuse them by refit (build-engine
    --refit-from) instead of a rebuild."""
    from export.tensorrt_build import build_engine, import_tensorrt
    import_tensorrt()
    import tempfile
    export_dir = Path(export_dir)
    engines = {}
    for name, f in GRAPH_FILES.items():
        with tempfile.TemporaryDirectory(prefix="my3dgen-trt-") as tmp:
            src = export_dir / f
            if without_input_defaults(src, Path(tmp) / f):  # TensorRT's parser would bake defaults in as weights
                src = Path(tmp) / f
            info = build_engine(src, export_dir / f"{name}.engine", fp16=fp16, max_batch=max_batch, refit=refit)
        engines[name] = {"file": f"{name}.engine", "fp16": info.fp16, "tensorrt_version": info.tensorrt_version,
                         "refit": info.refit, "max_batch": max_batch, "size_bytes": info.size_bytes,
                         "build_seconds": round(info.build_seconds, 2),
                         **engine_fingerprints(export_dir / f"{name}.engine", sha256_file(export_dir / f))}
    return engines


def export_model(out: str | os.PathLike, model: str | os.PathLike | None = None, preset: str | None = None,
                 adapter: str | os.PathLike | None = None, options: ExportOptions | None = None) -> Path:
    """`cli.py export`: a model directory (or a random-weight preset, seed 0) -> export directory."""
    from generator.model_dir import build_generator
    if (model is None) == (preset is None):
        raise ExportError("give exactly one of a model directory or --preset NAME")
    G = build_generator(model=model, preset_name=preset)
    source = {"model_dir": str(model)} if model is not None else {"preset": preset, "seed": 0,
                                                                 "weights": "random init (calibrated)"}
    return export_generator(G, out, adapter_path=adapter, options=options, source=source)
