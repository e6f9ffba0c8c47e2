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
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
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


def _export_graph(module: torch.nn.Module, args: tuple, path: Path, input_names: list[str],
                  output_names: list[str], dynamic_shapes: tuple, opset: int) -> None:
    module.eval()
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(module, args, dynamo=True, opset_version=opset, input_names=input_names,
                                    output_names=output_names, dynamic_shapes=dynamic_shapes, verbose=False,
                                    external_data=False, optimize=True)
        program.save(str(path), external_data=False)
    model = onnx.load(str(path), load_external_data=False)
    _name_batch_axis(model)
    onnx.save(model, str(path))
    got = {o.domain: o.version for o in model.opset_import}.get("", None)
    if got != opset:
        raise ExportError(f"{path.name}: the exporter produced opset {got}, not the requested {opset}")
    names = [i.name for i in model.graph.input]
    if names != input_names:
        raise ExportError(f"{path.name}: graph inputs {names[:6]}... differ from the requested {input_names[:6]}...")


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


def _export_mixed_graphs(G, live, paths: dict[str, Path], syn_in, ren_in, file_tensors, ws, c, planes, opts) -> None:
    """The synthesis and render graphs at the static batch opts.mixed_batch, adapter inputs [N, *shape]: the layers
    read per-sample tensors (lora_delta keeps the leading axis), the modulated convs run grouped per sample."""
    n = opts.mixed_batch
    ws_n, syn_t = _mixed_example(n, [file_tensors[i.tensor_name] for i in syn_in], ws)
    _export_graph(SynthesisGraph(G, syn_in, live), (ws_n, syn_t), paths["synthesis"],
                  ["ws"] + [i.input_name for i in syn_in], ["planes"], (None, [None] * len(syn_in)), opts.opset)
    planes_n, ws_n, c_n, ren_t = _mixed_example(n, [file_tensors[i.tensor_name] for i in ren_in], planes, ws, c)
    _export_graph(RenderGraph(G, ren_in, live), (planes_n, ws_n, c_n, ren_t), paths["render"],
                  ["planes", "ws", "c"] + [i.input_name for i in ren_in], ["image", "image_raw", "depth"],
                  (None, None, None, [None] * len(ren_in)), opts.opset)


def _verify_mixed(paths, mixed_paths, ws, c, file_tensors, base_values, syn_in, ren_in, n: int) -> float:
    """Max abs difference between the mixed graphs (sample k: the verification adapter for odd k, the base model
    for even k) and each sample run alone through the dynamic-batch graphs."""
    idx = np.arange(n) % ws.shape[0]
    ws_n, c_n = ws.numpy()[idx], c.numpy()[idx]

    def person(k: int, spec) -> dict[str, np.ndarray]:
        return {i.input_name: file_tensors[i.tensor_name].numpy() if k % 2 else base_values[i.input_name]
                for i in spec}

    def stacked(spec) -> dict[str, np.ndarray]:
        return {i.input_name: np.stack([person(k, [i])[i.input_name] for k in range(n)]) for i in spec}
    syn, ren = _ort_session(paths["synthesis"]), _ort_session(paths["render"])
    planes = _ort_session(mixed_paths["synthesis"]).run(None, {"ws": ws_n, **stacked(syn_in)})[0]
    outs = [planes, *_ort_session(mixed_paths["render"]).run(None, {"planes": planes, "ws": ws_n, "c": c_n,
                                                                     **stacked(ren_in)})]
    worst = 0.0
    for k in range(n):
        p1 = syn.run(None, {"ws": ws_n[k:k + 1], **person(k, syn_in)})[0]
        one = [p1, *ren.run(None, {"planes": p1, "ws": ws_n[k:k + 1], "c": c_n[k:k + 1], **person(k, ren_in)})]
        worst = max(worst, *(float(np.abs(a[0].astype(np.float32) - b[k].astype(np.float32)).max())
                             for a, b in zip(one, outs)))
    return worst


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


def export_generator(G: TriPlaneGenerator, out: str | os.PathLike, adapter_path: str | os.PathLike | None = None,
                     options: ExportOptions | None = None, source: dict[str, Any] | None = None) -> Path:
    """Export G (and the adapter at `adapter_path`, per options.mode) to the directory `out`; returns it."""
    from generator.adapter_file import AdapterFileError, base_fingerprint, load_adapter

    opts = (options or ExportOptions()).validate(adapter_path is not None)
    if opts.trt:
        from export.tensorrt_build import import_tensorrt
        import_tensorrt()  # fail before any work: "TensorRT is not installed ..." with install steps
    G = G.eval()
    if attachment_of(G) is not None:
        raise ExportError("the generator has an adapter attached: detach it first (export takes the adapter as a "
                          "file, per mode)")
    fingerprint = base_fingerprint(G)
    adapter = anchors = meta = None
    if adapter_path is not None:
        try:
            adapter, anchors, meta = load_adapter(adapter_path, G)
        except AdapterFileError as e:
            raise ExportError(str(e)) from None
    if opts.mode == "keep" and adapter is None:
        adapter = PersonAdapter.create(G, opts.policy or AdapterPolicy())
    person = None
    if opts.mode == "merge":
        person = opts.person or Path(adapter_path).stem
        if not is_valid_name(person):
            raise ExportError(f"person name {person!r} (from the adapter file name) must use {NAME_RULE}: "
                              f"pass --person NAME")

    inputs = adapter_inputs_for(adapter) if opts.mode == "keep" else []
    verify_adapter = None
    if opts.mode == "keep":
        verify_adapter = _verification_adapter(adapter, opts.seed) if adapter_path is None else adapter
    elif opts.mode == "merge":
        verify_adapter = adapter

    gen = torch.Generator().manual_seed(opts.seed)
    b = opts.example_batch
    z = torch.randn(b, G.z_dim, generator=gen)
    views = [(0.3 * ((i % 3) - 1) + 0.05 * i, 0.1 * ((i % 2) * 2 - 1)) for i in range(b)]
    c = camera_batch(G, views)
    psi = torch.tensor([EXAMPLE_PSI])
    reference = attach(G, verify_adapter) if verify_adapter is not None else None  # eager: attached, not merged
    try:
        with torch.no_grad():
            ws = G.mapping(z, c, truncation_psi=EXAMPLE_PSI)
            planes_ref = G.planes(ws, noise_mode="const", fused_modconv=False)
            ref = G.render_planes(planes_ref, ws, c, sampling="deterministic", fused_modconv=False) \
                if opts.verify else None
    finally:
        if reference is not None:
            reference.detach()
    planes_dtype = torch.float16 if opts.fp16 else torch.float32
    file_tensors = {k: v.detach() for k, v in (verify_adapter or adapter).file_tensors().items()} if inputs else {}
    syn_in = [i for i in inputs if i.graph == "synthesis"]
    ren_in = [i for i in inputs if i.graph == "render"]
    batch = torch.export.Dim("batch", min=1, max=1024)

    with atomic_dir(out, overwrite=opts.overwrite) as tmp:
        paths = {name: tmp / f for name, f in GRAPH_FILES.items()}
        with _graph_state(G, opts.mode, adapter) as live:
            _export_graph(MappingGraph(G), (z, c, psi), paths["mapping"], ["z", "c", "truncation_psi"], ["ws"],
                          ({0: batch}, {0: batch}, None), opts.opset)
            _export_graph(SynthesisGraph(G, syn_in, live, planes_dtype),
                          (ws, [file_tensors[i.tensor_name] for i in syn_in]), paths["synthesis"],
                          ["ws"] + [i.input_name for i in syn_in], ["planes"], ({0: batch}, [None] * len(syn_in)),
                          opts.opset)
            _export_graph(RenderGraph(G, ren_in, live),
                          (planes_ref.to(planes_dtype), ws, c, [file_tensors[i.tensor_name] for i in ren_in]),
                          paths["render"], ["planes", "ws", "c"] + [i.input_name for i in ren_in],
                          ["image", "image_raw", "depth"], ({0: batch}, {0: batch}, {0: batch}, [None] * len(ren_in)),
                          opts.opset)
            mixed_paths = {g: tmp / f for g, f in MIXED_GRAPH_FILES.items()} if opts.mixed_batch else {}
            if mixed_paths:
                _export_mixed_graphs(G, live, mixed_paths, syn_in, ren_in, file_tensors, ws, c, planes_ref, opts)
        mixed_precision = None
        if opts.fp16:
            from export.fp16_graph import convert_export_graphs
            mixed_precision = convert_export_graphs(paths)  # fp16 compute where safe; before the weights are halved
            for p in paths.values():
                convert_weights_fp16(p)

        base_values = base_adapter_values(G, inputs)
        for g in ("synthesis", "render"):
            add_input_defaults(paths[g], {i.input_name: base_values[i.input_name] for i in inputs if i.graph == g})

        verification = None
        if opts.verify:
            verification = _verify(paths, z, c, ws, ref, planes_ref, file_tensors, syn_in, ren_in, opts)
            if mixed_paths:
                verification["mixed_batch_max_abs_diff"] = _verify_mixed(paths, mixed_paths, ws, c, file_tensors,
                                                                         base_values, syn_in, ren_in, opts.mixed_batch)

        adapter_section = _adapter_section(opts, G, adapter, anchors, meta, adapter_path, person, inputs, tmp)
        torch_model = _write_torch_model(G, adapter if opts.mode == "merge" else None, tmp / TORCH_MODEL_DIR,
                                         opts.mode)
        graphs = {}
        for name, p in [*paths.items(), *((f"{g}_mixed", p) for g, p in mixed_paths.items())]:
            gin, gout = io_spec(p)
            graphs[name] = graph_entry(p.name, sha256_file(p), gin, gout,
                                       [i.input_name for i in inputs if i.graph == name.removesuffix("_mixed")])
        checks = {name: trt_check_summary(tmp / g["file"]) for name, g in graphs.items()}
        cfg = G.cfg
        manifest = build_manifest(
            graphs=graphs, generator=cfg.to_dict(),
            model={"num_ws": G.num_ws, "w_dim": G.w_dim, "z_dim": G.z_dim, "c_dim": G.c_dim,
                   "img_resolution": G.img_resolution, "neural_rendering_resolution": G.neural_rendering_resolution,
                   "triplane_shape": [3, cfg.plane_features, cfg.triplane_resolution, cfg.triplane_resolution]},
            camera={"radius": cfg.rendering.avg_camera_radius, "pivot": list(cfg.rendering.avg_camera_pivot),
                    "focal": FFHQ_FOCAL},
            base_fingerprint=fingerprint, source=source or {}, adapter=adapter_section,
            precision="fp16" if opts.fp16 else "fp32", opset=opts.opset, versions=_versions(),
            verification=verification, tensorrt_check=checks, mixed_precision=mixed_precision,
            torch_model=torch_model)
        if opts.trt:
            manifest["tensorrt"]["engines"] = build_engines(tmp, max_batch=opts.max_batch)
        write_manifest(tmp, manifest)
        for f in tmp.rglob("*"):  # temp files are created private; an export is meant to be read by servers
            os.chmod(f, 0o755 if f.is_dir() else 0o644)
        os.chmod(tmp, 0o755)
    return Path(out)


def _verify(paths, z, c, ws, ref, planes_ref, file_tensors, syn_in, ren_in, opts) -> dict[str, Any]:
    """Run the three graphs with onnxruntime on the example batch and compare with eager PyTorch."""
    feeds_syn = {i.input_name: file_tensors[i.tensor_name].numpy() for i in syn_in}
    feeds_ren = {i.input_name: file_tensors[i.tensor_name].numpy() for i in ren_in}
    ws_o = _ort_session(paths["mapping"]).run(None, {"z": z.numpy(), "c": c.numpy(),
                                                     "truncation_psi": np.array([EXAMPLE_PSI], np.float32)})[0]
    planes_o = _ort_session(paths["synthesis"]).run(None, {"ws": ws.numpy(), **feeds_syn})[0]
    image, image_raw, depth = _ort_session(paths["render"]).run(
        None, {"planes": planes_o, "ws": ws.numpy(), "c": c.numpy(), **feeds_ren})
    diffs = {"ws": _max_diff(ws_o, ws), "planes": _max_diff(planes_o, planes_ref), "image": _max_diff(image, ref["image"]),
             "image_raw": _max_diff(image_raw, ref["image_raw"]), "depth": _max_diff(depth, ref["image_depth"])}
    tol = FP16_TOLERANCE if opts.fp16 else FP32_TOLERANCE
    passed = all(v <= tol for v in diffs.values())
    if not passed and not opts.fp16:
        raise ExportError(f"onnxruntime differs from eager PyTorch by more than {tol}: {diffs}")
    return {"batch": int(z.shape[0]), "reference": "eager PyTorch (adapter attached, not merged)",
            "max_abs_diff": diffs, "tolerance": tol, "passed": passed}


def _write_torch_model(G: TriPlaneGenerator, merged: PersonAdapter | None, path: Path, mode: str) -> dict[str, str]:
    """The export's model directory for the runtime's torch backend (manifest 'torch'): G's base weights, or with
    `merged` the person baked in (generator.lora.merged_state_dict, the weights the merged graphs were traced
    from); returns the manifest section with the weights fingerprint the backend checks."""
    from generator.lora import merged_state_dict
    from generator.model_dir import read_config, save_model_dir
    if merged is not None:
        G = copy.deepcopy(G)
        G.load_state_dict(merged_state_dict(G, merged), strict=True)
    save_model_dir(G, path, source={"export": f"weights of this {mode} export, for the runtime's torch backend"})
    return torch_section(read_config(path)[1]["fingerprint"], TORCH_MODEL_DIR)


def _adapter_section(opts, G, adapter, anchors, meta, adapter_path, person, inputs, tmp: Path) -> dict[str, Any]:
    if opts.mode == "base":
        return {"mode": "none"}
    if opts.mode == "merge":
        if anchors is not None:
            save_safetensors(tmp / ANCHORS_FILE, {"anchors.ws": anchors.ws.float().numpy(),
                                                  "anchors.c": anchors.c.float().numpy()},
                             {"names": json.dumps(anchors.names), "person": person})
        return merged_adapter_section(person, sha256_file(adapter_path), meta["base_fingerprint"], meta["policy"],
                                      list(anchors.names) if anchors is not None else None)
    policy = adapter.policy
    save_safetensors(tmp / BASE_ADAPTER_FILE, base_adapter_values(G, inputs),
                     {"what": "base-model values of the keep-LoRA inputs (LoRA A = B = 0)"})
    return keep_lora_adapter_section(
        dataclasses.asdict(policy), policy.rank, policy.alpha, policy.layout, policy.scale,
        [[t.key, t.kind, list(t.shape)] for t in adapter.targets.values()],
        [{"input": i.input_name, "tensor": i.tensor_name, "target": i.target_key, "role": i.role,
          "shape": list(i.shape), "graph": i.graph, "dtype": "float32"} for i in inputs],
        sha256_file(adapter_path) if adapter_path is not None else None,
        ADAPTER_FORMAT_VERSION if adapter.fc_after_gain else 1, defaults_in_graph=True,
        mixed_batch=opts.mixed_batch or None)


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
