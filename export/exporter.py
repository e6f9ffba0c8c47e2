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

`export_generator` is an `ExportJob`: `ExportJob.prepare` checks the options, loads the adapter and runs the
example batch (`Example`) through eager PyTorch; `ExportJob.write` fills a temporary directory (`ExportFiles`)
step by step, each step reading the job: trace the graphs, convert them to fp16, give the keep-LoRA inputs their
defaults, verify, build the manifest.
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
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from export.manifest import io_spec, trt_check_summary
from export.onnx_graphs import AdapterInput, MappingGraph, RenderGraph, SynthesisGraph, graph_of
from formats.adapter_file import FORMAT_VERSION as ADAPTER_FORMAT_VERSION
from formats.atomic import atomic_dir
from formats.cameras import FFHQ_FOCAL
from formats.export_manifest import (ANCHORS_FILE, BASE_ADAPTER_FILE, GRAPH_FILES, MIXED_GRAPH_FILES, TORCH_MODEL_DIR,
                                     build_manifest, engine_fingerprints, graph_entry, keep_lora_adapter_section,
                                     merged_adapter_section, torch_section, write_manifest)
from formats.fingerprint import sha256_file
from formats.names import NAME_RULE, is_valid_name
from formats.tensors import save_safetensors
from generator.lora import AdapterPolicy, AdapterTensors, PersonAdapter, attach, attachment_of, lora_tensor_names
from generator.triplane import TriPlaneGenerator
from generator.views import camera_batch

MIN_OPSET = 18
MAX_OPSET = 20
FP32_TOLERANCE = 1e-3
"""Max abs difference (images in [-1, 1], depth in scene units) allowed between eager PyTorch and onnxruntime."""
FP16_TOLERANCE = 5e-2
"""The same for fp16 exports (float16 weights and tri-planes); recorded, not enforced."""
EXAMPLE_PSI = 0.7
RESERVED_NAMES = {"z", "c", "truncation_psi", "ws", "planes", "image", "image_raw", "depth"}
MODES = ("base", "merge", "keep")


class ExportError(ValueError):
    """An export that cannot be made as asked; the message names the option, file or tensor."""


@dataclass
class ExportOptions:
    """How to export."""

    mode: str = "base"
    """'base' (no adapter), 'merge' (bake one adapter in) or 'keep' (adapter tensors are graph inputs)."""
    fp16: bool = False
    """Store weights as float16 (cast to float32 in the graph) and pass tri-planes as float16."""
    opset: int = MIN_OPSET
    """ONNX opset of the graphs (18..20; the dynamo exporter targets 18+, TensorRT prefers 18 for GridSample)."""
    trt: bool = False
    """Also build fp16 TensorRT engines (fails with install instructions where TensorRT is missing)."""
    max_batch: int = 8
    """Largest batch of the TensorRT optimization profiles (the ONNX batch axis is unbounded)."""
    example_batch: int = 2
    """Batch of the example inputs used for tracing and verification (>= 2, so the batch cannot specialise)."""
    verify: bool = True
    """Compare onnxruntime with eager PyTorch on the example batch and record the differences."""
    person: str | None = None
    """Name of the merged person (default: the adapter file's stem)."""
    policy: AdapterPolicy | None = None
    """Keep-LoRA without an adapter file: the policy whose tensors become inputs (default AdapterPolicy())."""
    overwrite: bool = False
    """Replace an existing export directory."""
    seed: int = 0
    """Seed of the example inputs."""
    mixed_batch: int = 0
    """Keep-LoRA: also export the synthesis and render graphs at a static batch N whose adapter inputs carry one
    person per sample (leading axis N), so one run renders N requests of N people (0: none). Static because an
    ONNX Conv's group count (the per-sample weights' grouped convolution) cannot follow a dynamic batch."""

    def validate(self, has_adapter: bool) -> "ExportOptions":
        if self.mode not in MODES:
            raise ExportError(f"mode={self.mode!r}: expected one of {MODES}")
        if self.mode == "merge" and not has_adapter:
            raise ExportError("--merge-lora needs --adapter FILE (the person to bake into the weights)")
        if self.mode == "base" and has_adapter:
            raise ExportError("--adapter given: choose --merge-lora (bake it in) or --keep-lora (adapters as inputs)")
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ExportError(f"opset={self.opset}: supported {MIN_OPSET}..{MAX_OPSET} (torch.onnx's dynamo exporter "
                              f"emits opset 18+; TensorRT handles GridSample best at 18)")
        if self.example_batch < 2:
            raise ExportError(f"example_batch={self.example_batch}: must be >= 2 so the batch axis stays dynamic")
        if self.mixed_batch and (self.mode != "keep" or not 2 <= self.mixed_batch <= 1024 or self.fp16):
            raise ExportError(f"mixed_batch={self.mixed_batch}: needs --keep-lora, fp32 (not --fp16) and 2..1024")
        if self.max_batch < 1:
            raise ExportError(f"max_batch={self.max_batch}: must be >= 1")
        if self.person is not None and not is_valid_name(self.person):
            raise ExportError(f"person={self.person!r}: use {NAME_RULE}")
        return self


def sanitize_names(names: list[str]) -> dict[str, str]:
    """Adapter tensor name -> graph input name: characters outside [A-Za-z0-9_.] become '_', clashes get a suffix."""
    out: dict[str, str] = {}
    used = set(RESERVED_NAMES)
    for name in names:
        base = re.sub(r"[^A-Za-z0-9_.]", "_", name) or "tensor"
        cand, k = base, 1
        while cand in used:
            cand, k = f"{base}_{k}", k + 1
        used.add(cand)
        out[name] = cand
    return out


def adapter_inputs_for(adapter: PersonAdapter) -> list[AdapterInput]:
    """The graph inputs of a keep-LoRA export, in the adapter's target order (A before B)."""
    rows = []
    for t in adapter.targets.values():
        graph = graph_of(t)
        if graph is None:
            raise ExportError(f"adapter policy puts {t.key} in the mapping network (parts={adapter.policy.parts}): "
                              f"keep-LoRA exports leave mapping frozen; use --merge-lora or a policy without "
                              f"'mapping'")
        if t.kind == "lora":
            a, b = lora_tensor_names(t.key)
            rows += [(a, t.key, "lora_A", t.lora_shapes[0], graph), (b, t.key, "lora_B", t.lora_shapes[1], graph)]
        else:
            rows.append((t.key, t.key, "full", t.shape, graph))
    names = sanitize_names([r[0] for r in rows])
    return [AdapterInput(names[r[0]], r[0], r[1], r[2], tuple(int(s) for s in r[3]), r[4]) for r in rows]


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


def _name_batch_axis(model: onnx.ModelProto, name: str = "batch") -> None:
    """Call the dynamic axis 0 of the graph inputs `name` everywhere (the exporter may call it e.g. 's97')."""
    g = model.graph
    symbols = {i.type.tensor_type.shape.dim[0].dim_param for i in g.input
               if i.type.tensor_type.shape.dim and i.type.tensor_type.shape.dim[0].dim_param}
    for info in list(g.input) + list(g.output) + list(g.value_info):
        for d in info.type.tensor_type.shape.dim:
            if d.dim_param in symbols:
                d.dim_param = name


def convert_weights_fp16(path: Path, min_elements: int = 16) -> int:
    """Store float32 initializers as float16 followed by a Cast to float32; returns how many were converted.

    Initializers outside float16's finite range (or smaller than `min_elements`) stay float32.
    """
    model = onnx.load(str(path))
    graph = model.graph
    keep, casts, converted = [], [], 0
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements:
            keep.append(init)
            continue
        arr = numpy_helper.to_array(init)
        if not np.all(np.abs(arr) < 65000):
            keep.append(init)
            continue
        half = numpy_helper.from_array(arr.astype(np.float16), name=f"{init.name}__fp16")
        keep.append(half)
        casts.append(onnx.helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT,
                                           name=f"{init.name}__cast"))
        converted += 1
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return converted


def base_adapter_values(G: TriPlaneGenerator, inputs: list[AdapterInput]) -> dict[str, np.ndarray]:
    """The base model's value of every keep-LoRA input, by input name: the base tensor for a personal full tensor,
    zeros for LoRA A and B (B @ A = 0). The base values file and the graphs' input defaults both hold these."""
    base = dict(G.named_parameters())
    return {i.input_name: base[i.target_key].detach().float().numpy().reshape(i.shape) if i.role == "full"
            else np.zeros(i.shape, np.float32) for i in inputs}


def add_input_defaults(path: Path, values: dict[str, np.ndarray]) -> None:
    """Give graph inputs default values: an initializer named like a graph input is an overridable default (ONNX
    IR >= 4), so the graph runs without a feed for it and onnxruntime's LoRA adapters (RunOptions) can replace it."""
    if not values:
        return
    model = onnx.load(str(path))
    spec = {i.name: i.type.tensor_type for i in model.graph.input}
    for name, value in values.items():
        if name not in spec:
            raise ExportError(f"{path.name}: no graph input {name!r} to give a default value")
        t = spec[name]
        shape = [d.dim_value for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype).reshape(shape), name))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def without_input_defaults(src: Path, dst: Path) -> bool:
    """Write to `dst` a copy of graph `src` without the default values of its inputs (initializers named like a
    graph input), so TensorRT's ONNX parser keeps those inputs as engine inputs instead of weights; False (nothing
    written) when `src` has none."""
    model = onnx.load(str(src))
    inputs = {i.name for i in model.graph.input}
    kept = [t for t in model.graph.initializer if t.name not in inputs]
    if len(kept) == len(model.graph.initializer):
        return False
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    onnx.save(model, str(dst))
    return True


def _mixed_example(n: int, tensors: list[torch.Tensor], *batch: torch.Tensor) -> list:
    """Examples of a static mixed batch n: the batch tensors cycled to n samples, each adapter tensor given a
    leading per-sample axis n."""
    idx = torch.arange(n) % batch[0].shape[0]
    return [t[idx] for t in batch] + [[t.detach().unsqueeze(0).expand(n, *t.shape).contiguous() for t in tensors]]


def _ort_session(path: Path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _max_diff(a: np.ndarray, b: torch.Tensor) -> float:
    return float(np.abs(a.astype(np.float32) - b.detach().float().numpy()).max())


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__}
    for mod in ("onnxruntime", "onnxscript"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = "not installed"
    return out


def _verification_adapter(adapter: PersonAdapter, seed: int) -> PersonAdapter:
    """A copy of `adapter` whose LoRA B and full tensors are perturbed, so verification exercises every input."""
    ad = copy.deepcopy(adapter)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for pair in ad.lora.values():
            pair.lora_B.add_(torch.randn(pair.lora_B.shape, generator=g) * 0.02)
        for p in ad.full.values():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    return ad


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
class Example:
    """The example batch the graphs are traced from and verified on: z and cameras c, eager PyTorch's W+ latents
    and tri-planes of them, and (when verifying) its images, rendered with the verification adapter attached."""

    z: torch.Tensor
    c: torch.Tensor
    ws: torch.Tensor
    planes: torch.Tensor
    reference: dict[str, torch.Tensor] | None

    @classmethod
    def make(cls, G: TriPlaneGenerator, opts: ExportOptions, adapter: PersonAdapter | None) -> Example:
        """opts.example_batch samples of seed opts.seed at a spread of views; `adapter` is attached (not merged)
        while eager PyTorch runs."""
        gen = torch.Generator().manual_seed(opts.seed)
        b = opts.example_batch
        z = torch.randn(b, G.z_dim, generator=gen)
        c = camera_batch(G, [(0.3 * ((i % 3) - 1) + 0.05 * i, 0.1 * ((i % 2) * 2 - 1)) for i in range(b)])
        handle = attach(G, adapter) if adapter is not None else None
        try:
            with torch.no_grad():
                ws = G.mapping(z, c, truncation_psi=EXAMPLE_PSI)
                planes = G.planes(ws, noise_mode="const", fused_modconv=False)
                ref = G.render_planes(planes, ws, c, sampling="deterministic", fused_modconv=False) \
                    if opts.verify else None
        finally:
            if handle is not None:
                handle.detach()
        return cls(z, c, ws, planes, ref)


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
        verify_adapter = _verification_adapter(adapter, opts.seed) if opts.mode == "keep" and adapter_path is None \
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
        _name_batch_axis(model)
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
        `mixed_batch` N, cycled to N samples with a per-sample axis on the adapter tensors (_mixed_example)."""
        ex = self.example
        if graph == "mapping":
            return ex.z, ex.c, torch.tensor([EXAMPLE_PSI])
        batch = (ex.ws,) if graph == "synthesis" else (ex.planes.to(self.planes_dtype), ex.ws, ex.c)
        if mixed_batch:
            return tuple(_mixed_example(mixed_batch, self.tensors(graph), *batch))
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
        """Run the graphs with onnxruntime on the example batch and compare with eager PyTorch (and the mixed
        graphs with the served ones); an fp32 export beyond FP32_TOLERANCE is refused."""
        ex = self.example

        def run(graph: str, **feeds: np.ndarray) -> list[np.ndarray]:
            return _ort_session(files.graphs[graph]).run(None, {**feeds, **self.feeds(graph)})
        ws_o = run("mapping", z=ex.z.numpy(), c=ex.c.numpy(), truncation_psi=np.array([EXAMPLE_PSI], np.float32))[0]
        planes_o = run("synthesis", ws=ex.ws.numpy())[0]
        image, image_raw, depth = run("render", planes=planes_o, ws=ex.ws.numpy(), c=ex.c.numpy())
        ref = ex.reference
        diffs = {"ws": _max_diff(ws_o, ex.ws), "planes": _max_diff(planes_o, ex.planes),
                 "image": _max_diff(image, ref["image"]), "image_raw": _max_diff(image_raw, ref["image_raw"]),
                 "depth": _max_diff(depth, ref["image_depth"])}
        tol = FP16_TOLERANCE if self.opts.fp16 else FP32_TOLERANCE
        passed = all(v <= tol for v in diffs.values())
        if not passed and not self.opts.fp16:
            raise ExportError(f"onnxruntime differs from eager PyTorch by more than {tol}: {diffs}")
        verification = {"batch": int(ex.z.shape[0]), "reference": "eager PyTorch (adapter attached, not merged)",
                        "max_abs_diff": diffs, "tolerance": tol, "passed": passed}
        if files.mixed:
            verification["mixed_batch_max_abs_diff"] = self._verify_mixed(files)
        return verification

    def _verify_mixed(self, files: ExportFiles) -> float:
        """Max abs difference between the mixed graphs (sample k: the verification adapter for odd k, the base
        model for even k) and each sample run alone through the dynamic-batch graphs."""
        n = self.opts.mixed_batch
        idx = np.arange(n) % self.example.ws.shape[0]
        ws_n, c_n = self.example.ws.numpy()[idx], self.example.c.numpy()[idx]

        def person(k: int, graph: str) -> dict[str, np.ndarray]:
            return self.feeds(graph) if k % 2 else self.base_feeds(graph)

        def stacked(graph: str) -> dict[str, np.ndarray]:
            samples = [person(k, graph) for k in range(n)]
            return {i.input_name: np.stack([s[i.input_name] for s in samples]) for i in self.graph_inputs(graph)}
        syn, ren = _ort_session(files.graphs["synthesis"]), _ort_session(files.graphs["render"])
        planes = _ort_session(files.mixed["synthesis"]).run(None, {"ws": ws_n, **stacked("synthesis")})[0]
        outs = [planes, *_ort_session(files.mixed["render"]).run(None, {"planes": planes, "ws": ws_n, "c": c_n,
                                                                        **stacked("render")})]
        worst = 0.0
        for k in range(n):
            p1 = syn.run(None, {"ws": ws_n[k:k + 1], **person(k, "synthesis")})[0]
            one = [p1, *ren.run(None, {"planes": p1, "ws": ws_n[k:k + 1], "c": c_n[k:k + 1],
                                       **person(k, "render")})]
            worst = max(worst, *(float(np.abs(a[0].astype(np.float32) - b[k].astype(np.float32)).max())
                                 for a, b in zip(one, outs)))
        return worst

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
