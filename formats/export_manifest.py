"""An export directory's `manifest.json`: what each graph takes and returns, and how the export was made.

Written once, by export.exporter through `build_manifest` + `write_manifest`; read by `ExportManifest.read` (the
runtime, the TorchServe handler, `cli.py build-engine`, the packager). Layout of an export directory:

    manifest.json              this file
    mapping.onnx               (z [batch, z_dim], c [batch, 25], truncation_psi [1]) -> ws [batch, num_ws, w_dim]
    synthesis.onnx             (ws, *adapter inputs) -> planes [batch, 3, C, H, W]
    render.onnx                (planes, ws, c, *adapter inputs) -> image, image_raw, depth
    synthesis_mixed.onnx,      keep-LoRA with a mixed batch N only: the same graphs at a static batch N whose
    render_mixed.onnx          adapter inputs have a leading axis N (one person per sample)
    base_adapter.safetensors   keep-LoRA only: the base model's values of every adapter input (B = 0)
    anchors.safetensors        merged only: the merged person's anchors (W latents, cameras, names)
    <graph>.engine             TensorRT engines, where built
    model/                     the model directory (formats.model_dir: model.safetensors + config.json) the runtime's
                               torch backend builds the generator from: base weights, or a merged export's merged ones

Top-level fields, in file order:

    format, format_version     'my3dgen-export', 3 (versions 1 and 2 still load: version 1 has no input defaults
                               and no mixed graphs; engines of versions 1-2 record no fingerprints)
    graphs                     {name: {file, sha256, inputs: [{name, dtype, shape[, default]}], outputs: [...],
                                adapter_inputs: [input names]}}; shapes use 'batch' for the dynamic axis;
                               `default: true` marks an input the graph holds a value for (may be left unfed)
    generator                  GeneratorConfig.to_dict() of the base model
    model                      num_ws, w_dim, z_dim, c_dim, img_resolution, neural_rendering_resolution,
                               triplane_shape [3, C, H, W]
    camera                     radius, pivot, focal of the look-at cameras the runtime builds
    rendering_mode             noise_mode 'const', sampling 'deterministic', fused_modconv false, truncation
    base_fingerprint           weights fingerprint of the base model (adapter files name the one they need)
    source                     where the base model came from (model directory or preset)
    adapter                    mode 'none' | 'merged' | 'keep-lora' and, per mode: merged person name, adapter
                               file sha256 and its base fingerprint; or the kept-LoRA policy, scale, target list,
                               and `inputs`: [{input, tensor, target, role, shape, graph, dtype}];
                               version 2 adds `defaults_in_graph` (the base values are overridable initializers of
                               the graphs, so onnxruntime's native LoRA adapters apply and no feed runs the base
                               model), `mixed_batch` (N of the *_mixed graphs, or null) and
                               `adapter_format_version` (the adapter-file version whose LoRA rule the graphs
                               compute; version-1 manifests: 1)
    precision                  'fp32' or 'fp16' (fp16 weights stored as float16 initializers cast to float32 in
                               the graph, tri-planes passed between the graphs as float16)
    opset, versions            ONNX opset; python, torch, onnx, onnxruntime, onnxscript versions
    verification               eager PyTorch vs onnxruntime on the export's example batch: max abs diffs, tolerance
    tensorrt                   {check: {graph: {...}}, engines: {graph: {file, fp16, ..., sha256, graph_sha256}}
                               or null}; version 3 adds each engine's own sha256 and the sha256 of the ONNX graph
                               it was built or refitted from (`engine_fingerprints`), checked when it loads
    torch                      version 3, optional: {model_dir, weights_fingerprint}: the model directory
                               (formats.model_dir) the runtime's torch backend builds the generator from, a folder
                               inside the export (`model/`): the base weights for 'none' and 'keep-lora' exports
                               (fingerprint = base_fingerprint), the merged weights for 'merged' exports. Exports
                               without it serve on onnxruntime / TensorRT only (re-export for the torch backend)
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from formats.atomic import write_text
from formats.errors import ManifestError
from formats.fingerprint import sha256_bytes, sha256_file
from formats.limits import Limits, current_limits
from formats.tensors import open_regular
from formats.versioned_json import dump_json, read_versioned_json

FORMAT = "my3dgen-export"
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
MANIFEST_FILE = "manifest.json"
GRAPH_FILES = {"mapping": "mapping.onnx", "synthesis": "synthesis.onnx", "render": "render.onnx"}
MIXED_GRAPH_FILES = {"synthesis": "synthesis_mixed.onnx", "render": "render_mixed.onnx"}
"""Served graph -> file of its static mixed-person-batch form (keep-LoRA exports with a mixed batch)."""
BASE_ADAPTER_FILE = "base_adapter.safetensors"
TORCH_MODEL_DIR = "model"
"""The folder of an export holding the model directory its torch backend loads (manifest 'torch.model_dir')."""
ANCHORS_FILE = "anchors.safetensors"
MODES = ("none", "merged", "keep-lora")
RENDERING_MODE = {"noise_mode": "const", "sampling": "deterministic", "fused_modconv": False,
                  "truncation": "psi is the mapping graph input 'truncation_psi' [1]; "
                                "truncation_cutoff None (every w is truncated)"}
"""How every export renders (the runtime relies on it: same latent and camera, same image)."""
SERVED_GRAPHS = ("synthesis", "render")
"""The graphs a runtime needs; the mapping graph is optional (only for z -> W)."""


def graph_entry(file: str, sha256: str, inputs: list[dict], outputs: list[dict], adapter_inputs: list[str]
                ) -> dict[str, Any]:
    """One `graphs` item."""
    return {"file": file, "sha256": sha256, "inputs": inputs, "outputs": outputs, "adapter_inputs": adapter_inputs}


def merged_adapter_section(person: str, adapter_sha256: str, adapter_base_fingerprint: str, policy: dict,
                           anchor_names: list[str] | None) -> dict[str, Any]:
    """`adapter` of a merged export; `anchor_names` None when the adapter had no anchors (no anchors file)."""
    return {"mode": "merged", "person": person, "adapter_sha256": adapter_sha256,
            "adapter_base_fingerprint": adapter_base_fingerprint, "policy": policy,
            "anchors_file": ANCHORS_FILE if anchor_names is not None else None,
            "anchor_names": list(anchor_names or [])}


def keep_lora_adapter_section(policy: dict, rank: int, alpha: float, layout: str, scale: float, targets: list[list],
                              inputs: list[dict], example_adapter_sha256: str | None, adapter_format_version: int,
                              defaults_in_graph: bool = False, mixed_batch: int | None = None) -> dict[str, Any]:
    """`adapter` of a keep-LoRA export; `inputs` are {input, tensor, target, role, shape, graph, dtype} rows.
    `adapter_format_version` is the adapter-file version whose LoRA rule the graphs compute (formats.adapter_file:
    version 2 adds fully connected deltas after the gain); exports without the key compute version 1's."""
    return {"mode": "keep-lora", "policy": policy, "rank": rank, "alpha": alpha, "layout": layout, "scale": scale,
            "targets": targets, "inputs": inputs, "base_values_file": BASE_ADAPTER_FILE,
            "example_adapter_sha256": example_adapter_sha256, "adapter_format_version": adapter_format_version,
            "defaults_in_graph": bool(defaults_in_graph), "mixed_batch": mixed_batch}


def torch_section(weights_fingerprint: str, model_dir: str = TORCH_MODEL_DIR) -> dict[str, str]:
    """`torch` of a manifest: the export's model directory (a folder inside the export) and the weights
    fingerprint its safetensors must have (formats.fingerprint.weights_fingerprint)."""
    return {"model_dir": model_dir, "weights_fingerprint": weights_fingerprint}


def engine_fingerprints(engine_path: str | os.PathLike, graph_sha256: str) -> dict[str, str]:
    """What an engine entry records so a reader can check it (format 3): the engine file's own sha256, and the
    sha256 of the ONNX graph it was built or refitted from, which must be the export's graph of that name."""
    return {"sha256": sha256_file(engine_path), "graph_sha256": graph_sha256}


def engine_is_fingerprinted(entry: dict[str, Any]) -> bool:
    """True when an engine entry records both fingerprints (engines of format 1-2 exports do not)."""
    return all(isinstance(entry.get(k), str) for k in ("sha256", "graph_sha256"))


def keep_lora_adapter_format(adapter_section: dict) -> int:
    """The adapter-file version whose LoRA rule a keep-LoRA export's graphs compute (1 for older exports)."""
    return int(adapter_section.get("adapter_format_version", 1))


def build_manifest(*, graphs: dict[str, dict], generator: dict, model: dict, camera: dict, base_fingerprint: str,
                   source: dict, adapter: dict, precision: str, opset: int, versions: dict,
                   verification: dict | None, tensorrt_check: dict, engines: dict | None = None,
                   mixed_precision: dict | None = None, torch_model: dict | None = None) -> dict[str, Any]:
    """The manifest of an export, every field in its documented place; `mixed_precision` (fp16 exports only:
    which nodes of each graph compute in fp16) is optional, so readers of format version 1 ignore it;
    `torch_model` is `torch_section(...)` (optional: exports made before it serve without the torch backend)."""
    if adapter.get("mode") not in MODES:
        raise ValueError(f"adapter mode {adapter.get('mode')!r}: expected one of {MODES}")
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "graphs": graphs, "generator": generator,
            "model": model, "camera": camera, "rendering_mode": dict(RENDERING_MODE),
            "base_fingerprint": base_fingerprint, "source": source, "adapter": adapter, "precision": precision,
            "opset": opset, "versions": versions, "verification": verification,
            "tensorrt": {"check": tensorrt_check, "engines": engines},
            **({"mixed_precision": mixed_precision} if mixed_precision is not None else {}),
            **({"torch": torch_model} if torch_model is not None else {})}


def write_manifest(directory: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write `directory`/manifest.json atomically."""
    return write_text(Path(directory) / MANIFEST_FILE, dump_json(manifest))


def _plain_file(value: Any) -> bool:
    """A file name inside the export directory: no folders, no '..', no NUL."""
    return isinstance(value, str) and value not in ("", ".", "..") and "/" not in value and "\\" not in value \
        and "\0" not in value


def _is_int(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def check_manifest(m: dict[str, Any], directory: Path, where: str, limits: Limits | None = None) -> None:
    """The one validator of manifest.json: the type of every field a reader relies on, sizes within
    formats.limits, file names that stay inside the export directory, and the served graphs present as regular
    files. ManifestError names the field."""
    lim = current_limits(limits)

    def need(cond: bool, field: str, why: str) -> None:
        if not cond:
            raise ManifestError(where, f"field '{field}' {why}")
    for key, kind in (("graphs", dict), ("model", dict), ("camera", dict), ("adapter", dict),
                      ("base_fingerprint", str)):
        need(key in m, key, "is missing")
        need(isinstance(m[key], kind), key, f"is not a JSON {'object' if kind is dict else 'string'}")
    model = m["model"]
    for key, hi in (("num_ws", lim.max_layers * 4), ("w_dim", lim.max_model_dim), ("z_dim", lim.max_model_dim),
                    ("img_resolution", lim.max_resolution * 4)):
        need(isinstance(model.get(key), int), f"model.{key}", "is missing or not an integer")
        need(_is_int(model[key], 1, hi), f"model.{key}", f"is {model[key]}: expected 1..{hi} (formats.limits)")
    cam = m["camera"]
    pivot = cam.get("pivot") if isinstance(cam.get("pivot"), list) else [None]
    numbers = [cam.get("radius"), cam.get("focal"), *pivot]
    need(len(numbers) == 5 and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                   for v in numbers), "camera", "needs finite 'radius', 'focal' and a 3-number 'pivot'")
    for g, entry in m["graphs"].items():
        need(isinstance(entry, dict) and _plain_file(entry.get("file")), f"graphs.{g}.file",
             "is not a file name inside the export directory")
        need(all(isinstance(entry.get(k, []), list) for k in ("inputs", "outputs", "adapter_inputs")),
             f"graphs.{g}", "has inputs/outputs/adapter_inputs that are not lists")
    for g in SERVED_GRAPHS:
        if g not in m["graphs"] or not (directory / m["graphs"][g]["file"]).is_file():
            raise ManifestError(where, f"graph '{g}' is missing from the manifest or the directory")
    engines = m.get("tensorrt") or {}
    need(isinstance(engines, dict) and isinstance(engines.get("engines") or {}, dict), "tensorrt",
         "is not an object with an 'engines' object")
    for g, entry in (engines.get("engines") or {}).items():
        need(isinstance(entry, dict) and _plain_file(entry.get("file")), f"tensorrt.engines.{g}.file",
             "is not a file name inside the export directory")
    a = m["adapter"]
    need(a.get("mode") in MODES, "adapter.mode", f"is {a.get('mode')!r}")
    for key in ("anchors_file", "base_values_file"):
        need(a.get(key) is None or _plain_file(a[key]), f"adapter.{key}",
             "is not a file name inside the export directory")
    if a["mode"] == "merged":
        need(isinstance(a.get("person"), str) and isinstance(a.get("adapter_sha256"), str), "adapter",
             "of a merged export needs string 'person' and 'adapter_sha256'")
    if a["mode"] == "keep-lora":
        need(isinstance(a.get("policy"), dict) and isinstance(a.get("targets"), list)
             and isinstance(a.get("inputs"), list) and isinstance(a.get("base_values_file"), str), "adapter",
             "of a keep-LoRA export needs 'policy', 'targets', 'inputs' and 'base_values_file'")
        for n, i in enumerate(a["inputs"]):
            need(isinstance(i, dict) and all(isinstance(i.get(k), str) for k in ("input", "tensor", "graph"))
                 and isinstance(i.get("shape"), list) and all(_is_int(d, 0, 1 << 31) for d in i["shape"]),
                 f"adapter.inputs[{n}]", "needs string 'input', 'tensor', 'graph' and an integer 'shape'")
        need(a.get("mixed_batch") is None or _is_int(a["mixed_batch"], 2, 1024), "adapter.mixed_batch",
             f"is {a.get('mixed_batch')!r}: expected null or an integer 2..1024")
    if "torch" in m:
        t = m["torch"]
        need(isinstance(t, dict) and _plain_file(t.get("model_dir")), "torch.model_dir",
             "is not a folder name inside the export directory")
        need(isinstance(t.get("weights_fingerprint"), str) and t["weights_fingerprint"].startswith("sha256:"),
             "torch.weights_fingerprint", "is not a 'sha256:<hex>' string")


def read_checked(directory: str | os.PathLike, file: str, sha256: Any, what: str, limits: Limits | None = None
                 ) -> bytes:
    """The bytes of `file` in an export directory, after checking that they hash to `sha256`, the fingerprint the
    manifest recorded when the file was written. Readers load a graph or engine from these bytes, never from the
    path again, so what was checked is what runs. A missing, oversized or altered file is a ManifestError naming
    it: a graph replaced by another with the same inputs and outputs must not render."""
    path = Path(directory) / file
    if not isinstance(sha256, str) or not sha256.startswith("sha256:"):
        raise ManifestError(str(path), f"the manifest records no sha256 for this {what}: it cannot be checked "
                                       f"(re-export, or rebuild the engines, to record one)")
    f, _ = open_regular(path, ManifestError, limits, what)
    with f:
        data = f.read()
    actual = sha256_bytes(data)
    if actual != sha256:
        raise ManifestError(str(path), f"this {what} is not the one the export wrote (sha256 {actual[7:23]}..., "
                                       f"manifest {sha256[7:23]}...): it was replaced or corrupted; re-export")
    return data


@dataclass(frozen=True)
class ExportManifest:
    """A checked manifest: the fields a reader relies on, typed; `raw` is the whole JSON object."""

    directory: Path
    raw: dict[str, Any]

    @classmethod
    def read(cls, directory: str | os.PathLike) -> "ExportManifest":
        """Read and check `directory`/manifest.json: format and version, the required fields, the adapter mode,
        and that the synthesis and render graphs it names exist. ManifestError names the file and field."""
        directory = Path(directory)
        path = directory / MANIFEST_FILE
        m = read_versioned_json(path, FORMAT, READABLE_VERSIONS, ManifestError,
                                f" (is {directory} an export directory made by `cli.py export`?)")
        check_manifest(m, directory, str(path))
        return cls(directory, m)

    @property
    def path(self) -> Path:
        return self.directory / MANIFEST_FILE

    @property
    def mode(self) -> str:
        """'none', 'merged' or 'keep-lora'."""
        return self.raw["adapter"]["mode"]

    @property
    def adapter(self) -> dict[str, Any]:
        return self.raw["adapter"]

    @property
    def merged_person(self) -> str | None:
        return self.adapter.get("person") if self.mode == "merged" else None

    @property
    def num_ws(self) -> int:
        return self.raw["model"]["num_ws"]

    @property
    def w_dim(self) -> int:
        return self.raw["model"]["w_dim"]

    @property
    def z_dim(self) -> int:
        return self.raw["model"]["z_dim"]

    @property
    def image_size(self) -> int:
        """Side of the final image (512 for ffhq512-128)."""
        return self.raw["model"]["img_resolution"]

    @property
    def base_fingerprint(self) -> str:
        return self.raw["base_fingerprint"]

    @property
    def camera(self) -> tuple[float, tuple[float, float, float], float]:
        """(radius, pivot, focal) of the look-at cameras."""
        cam = self.raw["camera"]
        return float(cam["radius"]), tuple(float(x) for x in cam["pivot"]), float(cam["focal"])

    @property
    def engines(self) -> dict[str, Any] | None:
        """TensorRT engines by graph, or None."""
        return (self.raw.get("tensorrt") or {}).get("engines") or None

    def graph(self, name: str) -> dict[str, Any] | None:
        return self.raw["graphs"].get(name)

    @property
    def adapter_defaults_in_graph(self) -> bool:
        """Keep-LoRA graphs carry the base adapter values as overridable initializers (format 2)."""
        return self.mode == "keep-lora" and self.adapter.get("defaults_in_graph") is True

    @property
    def mixed_batch(self) -> int | None:
        """N of the static mixed-person-batch graphs ('synthesis_mixed', 'render_mixed'), or None."""
        n = self.adapter.get("mixed_batch") if self.mode == "keep-lora" else None
        return n if n and all(self.graph(f"{g}_mixed") for g in SERVED_GRAPHS) else None

    @property
    def torch_model(self) -> tuple[Path, str] | None:
        """(model directory, its weights fingerprint) for the torch backend, or None (an export made before the
        'torch' field: it serves on onnxruntime / TensorRT only)."""
        t = self.raw.get("torch")
        return None if t is None else (self.directory / t["model_dir"], t["weights_fingerprint"])

    def adapter_inputs(self, graph: str) -> list[dict[str, Any]]:
        """The keep-LoRA inputs of one graph ([] for other modes)."""
        return [i for i in self.adapter.get("inputs", []) if i["graph"] == graph]
