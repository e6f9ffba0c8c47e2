"""The torch backend (runtime.backend): the product's eager generator, built from the model directory an export
carries (manifest 'torch'), behind the same interface as the onnxruntime Renderer. Imported only when chosen.

    planes = G.planes(ws)                                 ws [B, num_ws, w_dim] -> [B, 3, C, H, W]
    out    = G.render_planes(planes, ws, c)               c [B, 25] -> image, image_raw, image_depth

in the export's rendering mode (noise 'const', deterministic sampling, fused_modconv off), under torch.no_grad()
and generator.precision.inference_precision ('fp32', or 'bf16' where the CPU has native bf16 kernels).

A person's adapter arrives as runtime.native_adapters.GraphFeeds per graph; their `arrays` (graph input name ->
array) become the adapter file's tensors again through the manifest's keep-LoRA `adapter.inputs` rows (input ->
tensor), wrapped as a generator.lora.AdapterTensors per graph and attached (`attach`; a mixed batch: `attach_mixed`,
one adapter per distinct person, the base model at index -1). Built adapters are cached per Person.identity
('adapter:<file sha256>'), so a replaced adapter file is rebuilt, never served stale. Merged and adapter-free
exports carry their final weights in the model directory: nothing is attached.

One generator serves every person: attaching and running hold a lock. Threads: torch.set_num_threads(threads),
which is process-wide in PyTorch.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from formats.adapter_file import lora_fc_after_gain
from formats.errors import FormatError
from formats.export_manifest import ExportManifest, keep_lora_adapter_format
from generator.adapter_file import policy_of
from generator.lora import AdapterTensors, attach, attach_mixed, detach, plan
from generator.model_dir import load_model_dir, weights_fingerprint
from generator.precision import cpu_has_fast_bf16, inference_precision
from runtime.backend import Backend
from runtime.cache import LRUCache
from runtime.errors import ExportInvalid, InvalidRequest

GRAPHS = ("synthesis", "render")
ADAPTER_CACHE = 16
"""Built adapters kept (per person identity); the people store's LRU bounds the parsed files the same way."""
BASE = "base"
"""Person.identity of the base model (and of a merged export's person): nothing to attach."""


def bf16_refusal() -> str | None:
    """Why precision 'bf16' is refused on this CPU, or None when it has native bf16 kernels."""
    if cpu_has_fast_bf16():
        return None
    return ("this CPU has no native bf16 kernels (AVX512-BF16 or AMX; generator.precision.cpu_has_fast_bf16), "
            "where bf16 is emulated and slower than fp32: use precision='fp32'")


class TorchBackend(Backend):
    """See the module docstring."""

    name = "torch"

    def __init__(self, manifest: ExportManifest, precision: str = "fp32", threads: int | None = None):
        super().__init__(manifest)
        refusal = bf16_refusal() if precision == "bf16" else None
        if refusal is not None:
            raise InvalidRequest("precision", f"'bf16' refused: {refusal}")
        self._precision = precision
        self.providers = [f"torch-cpu-{precision}"]
        if threads:
            torch.set_num_threads(int(threads))
        self.G = self._load()
        self._adapters = LRUCache(ADAPTER_CACHE)
        self._lock = threading.Lock()
        self._runs = {"base": 0, "adapter": 0, "mixed": 0}
        if manifest.mode == "keep-lora":
            a = manifest.adapter
            try:
                self._policy = policy_of(a["policy"])
            except (TypeError, ValueError) as e:
                raise ExportInvalid(str(manifest.path), f"field 'adapter.policy' is invalid ({e}); re-export") from None
            self._targets = {t.key: t for t in plan(self.G, self._policy)}
            listed = [(x[0], x[1], tuple(x[2])) for x in a["targets"]]
            if listed != [(t.key, t.kind, tuple(t.shape)) for t in self._targets.values()]:
                raise ExportInvalid(str(manifest.path), "field 'adapter.targets' does not match the model directory's "
                                                        "architecture; re-export")
            self._fc_after_gain = lora_fc_after_gain(keep_lora_adapter_format(a))
            self._rows = {g: manifest.adapter_inputs(g) for g in GRAPHS}

    def _load(self) -> torch.nn.Module:
        """The generator of the export's model directory, its weights checked against the manifest's fingerprint
        (and, unless merged, the export's base fingerprint)."""
        folder, want = self.manifest.torch_model
        try:
            G = load_model_dir(folder)
        except FormatError as e:
            raise ExportInvalid(e.path, f"{e.reason} (the export's torch model directory); re-export") from None
        got = weights_fingerprint(G.state_dict())
        if got != want or (self.manifest.mode != "merged" and got != self.manifest.base_fingerprint):
            raise ExportInvalid(str(folder), f"its weights (fingerprint {got[7:23]}...) are not the ones the manifest "
                                             f"records (torch.weights_fingerprint {want[7:23]}..., base_fingerprint "
                                             f"{self.manifest.base_fingerprint[7:23]}...): replaced or corrupted; "
                                             f"re-export")
        return G.eval()

    # ------------------------------------------------------------------ the interface

    @property
    def precision(self) -> str:
        return self._precision

    @property
    def graph_providers(self) -> dict[str, str]:
        return {g: self.providers[0] for g in ("mapping", *GRAPHS)}

    @property
    def adapter_paths(self) -> dict[str, int]:
        """Runs of the base weights, with one person's adapter attached, and mixed-person runs."""
        with self._lock:
            return dict(self._runs)

    def planes(self, ws: np.ndarray, person) -> np.ndarray:
        return self.planes_mixed(ws, [person])

    def render(self, planes: Any, ws: np.ndarray, c: np.ndarray, person) -> dict[str, np.ndarray]:
        return self.render_mixed(planes, ws, c, [person])

    def planes_mixed(self, ws: np.ndarray, people: Sequence) -> np.ndarray:
        with self._lock, self._attached(people, "synthesis"):
            return self._out(self.G.planes(_t(ws), noise_mode="const", fused_modconv=False))

    def render_mixed(self, planes: np.ndarray, ws: np.ndarray, c: np.ndarray, people: Sequence
                     ) -> dict[str, np.ndarray]:
        with self._lock, self._attached(people, "render"):
            out = self.G.render_planes(_t(planes), _t(ws), _t(c), sampling="deterministic", fused_modconv=False)
            return {"image": self._out(out["image"]), "image_raw": self._out(out["image_raw"]),
                    "depth": self._out(out["image_depth"])}

    def map(self, z: np.ndarray, c: np.ndarray, psi: float) -> np.ndarray:
        with self._lock, torch.no_grad():
            return self.G.mapping(_t(z), _t(c), truncation_psi=float(psi)).float().numpy()

    def reset_counts(self) -> None:
        with self._lock:
            self._runs = dict.fromkeys(self._runs, 0)

    def close(self) -> None:
        self._adapters.clear()

    # ------------------------------------------------------------------ internals

    def _out(self, t: torch.Tensor) -> np.ndarray:
        return t.float().numpy()

    @contextlib.contextmanager
    def _attached(self, people: Sequence, graph: str):
        """G with `people`'s adapters of `graph` attached (one person: `attach`; one person per sample:
        `attach_mixed`, the base model at index -1), under no_grad and the precision; detached on exit."""
        adapters, index, slot = [], [], {}
        for p in people:
            ad = self._adapter(p, graph)
            if ad is not None and p.identity not in slot:
                slot[p.identity] = len(adapters)
                adapters.append(ad)
            index.append(-1 if ad is None else slot[p.identity])
        if adapters and len(people) > 1:
            attach_mixed(self.G, adapters, torch.tensor(index))
        elif adapters:
            attach(self.G, adapters[0])
        self._runs["mixed" if adapters and len(people) > 1 else "adapter" if adapters else "base"] += 1
        try:
            with torch.no_grad(), inference_precision(self.precision):
                yield
        finally:
            detach(self.G)

    def _adapter(self, person, graph: str) -> AdapterTensors | None:
        """`person`'s adapter of `graph` as AdapterTensors (cached per identity), or None for the base model."""
        if person.identity == BASE or not person.feeds.get(graph) or not person.feeds[graph].arrays:
            return None
        key = (person.identity, graph)
        built = self._adapters.get(key)
        if built is None:
            arrays = person.feeds[graph].arrays
            rows = self._rows[graph]
            tensors = {r["tensor"]: torch.from_numpy(np.asarray(arrays[r["input"]], np.float32)) for r in rows}
            keys = {r["target"] for r in rows}
            built = AdapterTensors({k: t for k, t in self._targets.items() if k in keys}, self._policy, tensors,
                                   fc_after_gain=self._fc_after_gain)
            self._adapters.put(key, built)
        return built


def _t(a: Any) -> torch.Tensor:
    """A float32 tensor of a numpy array (or anything np.asarray takes), sharing memory where it can."""
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
