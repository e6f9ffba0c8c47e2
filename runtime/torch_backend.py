"""The torch backend (runtime.backend): the product's eager generator, built from the model directory an export
carries (manifest 'torch'), behind the same interface as the onnxruntime Renderer. Imported only when chosen.

    planes = G.planes(ws)                                 ws [B, num_ws, w_dim] -> [B, 3, C, H, W]
    out    = G.render_planes(planes, ws, c)               c [B, 25] -> image, image_raw, image_depth

in the export's rendering mode (noise 'const', deterministic sampling, fused_modconv off), under torch.no_grad()
and the precision: 'fp32', 'bf16' (the super-resolution in bf16, generator.precision; on a CPU only where oneDNN
has native bf16 kernels) or 'fp16' (CUDA only). Device: 'cuda' when torch sees a GPU (or 'cuda:N' as named), else 'cpu'.

Every stage runs through runtime.static_graphs.StaticGraphs, keyed by (operation, batch, precision, routing): on
CUDA a graph captured once per key and replayed; on the CPU the same function run eagerly. A person's adapter
reaches the generator through runtime.adapter_slots.AdapterSlots, one per stage: static tensors that a person swap
copies into (skipped when the slot already holds that person), attachments built once. Routing:

    base     the base model (or a merged export's person): G's own weights, nothing attached
    single   one person for the whole batch: slot 0
    mixed    one person per sample (runtime.batching pads to the export's mixed_batch): sample k reads the slot
             that holds its person, or the base model (index -1)

A person's tensors arrive as runtime.native_adapters.GraphFeeds per graph; their `arrays` (graph input name ->
array) become the adapter file's tensors again through the manifest's keep-LoRA `adapter.inputs` rows (input ->
tensor), moved to the device once and cached per Person.identity ('adapter:<file sha256>'), so a replaced adapter
file is a new identity: never served stale. On CUDA tri-planes stay on the device (`planes_on_device`): the
runtime's plane cache keeps them there, bounded in bytes.

One generator serves every person: routing and running hold a lock. Threads: torch.set_num_threads(threads),
which is process-wide in PyTorch.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from formats.adapter_file import lora_fc_after_gain
from formats.errors import FormatError
from formats.export_manifest import ExportManifest, keep_lora_adapter_format
from generator.adapter_file import policy_of
from generator.lora import detach, plan
from generator.model_dir import load_model_dir, weights_fingerprint
from generator.precision import cpu_has_fast_bf16, inference_precision
from runtime.adapter_slots import AdapterSlots
from runtime.backend import Backend
from runtime.cache import LRUCache
from runtime.errors import ExportInvalid, InvalidRequest
from runtime.static_graphs import StaticGraphs

GRAPHS = ("synthesis", "render")
STAGE_OF = {"planes": "synthesis", "render": "render"}
"""The operation a StaticGraphs key names -> the export graph (and adapter stage) it stands for."""
ADAPTER_CACHE = 16
"""People whose adapter tensors are kept on the device (per identity); the people store's LRU bounds the parsed
files the same way."""
BASE = "base"
"""Person.identity of the base model (and of a merged export's person): nothing to attach."""


def bf16_refusal() -> str | None:
    """Why precision 'bf16' is refused on this CPU, or None when it has native bf16 kernels."""
    if cpu_has_fast_bf16():
        return None
    return ("this CPU has no native bf16 kernels (AVX512-BF16 or AMX; generator.precision.cpu_has_fast_bf16), "
            "where bf16 is emulated and slower than fp32: use precision='fp32'")


def precision_refusal(precision: str, device: torch.device) -> str | None:
    """Why `precision` cannot run on `device`, or None."""
    if precision == "fp16" and device.type != "cuda":
        return "'fp16' runs on CUDA only (on a CPU it is emulated): use precision='fp32', or 'bf16' where native"
    if precision == "bf16" and device.type == "cpu":
        return bf16_refusal()
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return f"{torch.cuda.get_device_name(device)} has no bf16: use precision='fp16' or 'fp32'"
    return None


def resolve_device(device: str | None) -> torch.device:
    """The device named ('cpu', 'cuda', 'cuda:N'), or CUDA where torch sees a GPU, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidRequest("device", f"{device!r}: expected 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type not in ("cpu", "cuda"):
        raise InvalidRequest("device", f"{device!r}: the torch backend runs on 'cpu' or 'cuda'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidRequest("device", f"{device!r}: torch sees no CUDA device here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InvalidRequest("device", f"{device!r}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    return dev


class TorchBackend(Backend):
    """See the module docstring."""

    name = "torch"

    def __init__(self, manifest: ExportManifest, precision: str = "fp32", threads: int | None = None,
                 device: str | None = None, compile: bool = False):
        super().__init__(manifest)
        self.device = resolve_device(device)
        refusal = precision_refusal(precision, self.device)
        if refusal is not None:
            raise InvalidRequest("precision", f"{precision!r} refused: {refusal}")
        self._precision = precision
        self.providers = [f"torch-{self.device.type}-{precision}"]
        if threads:
            torch.set_num_threads(int(threads))
        self.G = self._load().to(self.device)
        self.graphs = StaticGraphs(self.device, compile=compile)
        self._adapters = LRUCache(ADAPTER_CACHE)
        self._slots: dict[tuple[str, str], AdapterSlots] = {}
        """(stage, 'single' | 'mixed') -> the stage's slots, made on the first person's first run."""
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
        return G.eval().requires_grad_(False)

    # ------------------------------------------------------------------ the interface

    @property
    def precision(self) -> str:
        return self._precision

    @property
    def graph_providers(self) -> dict[str, str]:
        return {g: self.providers[0] for g in ("mapping", *GRAPHS)}

    @property
    def adapter_paths(self) -> dict[str, int]:
        """Runs of the base weights, with one person's adapter slot, and mixed-person runs."""
        with self._lock:
            return dict(self._runs)

    @property
    def planes_on_device(self) -> bool:
        return self.device.type == "cuda"

    def planes(self, ws: np.ndarray, person) -> Any:
        return self.planes_mixed(ws, [person] * len(ws))

    def render(self, planes: Any, ws: np.ndarray, c: np.ndarray, person) -> dict[str, np.ndarray]:
        return self.render_mixed(planes, ws, c, [person] * len(ws))

    def planes_mixed(self, ws: np.ndarray, people: Sequence) -> Any:
        out = self._run("planes", {"ws": self._in(ws)}, people)["planes"]
        return out if self.planes_on_device else out.float().numpy()

    def render_mixed(self, planes: Any, ws: np.ndarray, c: np.ndarray, people: Sequence) -> dict[str, np.ndarray]:
        out = self._run("render", {"planes": self._in(planes), "ws": self._in(ws), "c": self._in(c)}, people)
        return {k: v.float().cpu().numpy() for k, v in out.items()}

    def map(self, z: np.ndarray, c: np.ndarray, psi: float) -> np.ndarray:
        with self._lock, torch.no_grad():
            detach(self.G)
            return self.G.mapping(self._in(z), self._in(c), truncation_psi=float(psi)).float().cpu().numpy()

    def batch_planes(self, planes: Any) -> Any:
        return planes if isinstance(planes, torch.Tensor) else super().batch_planes(planes)

    def concat(self, parts: Sequence) -> Any:
        if any(isinstance(p, torch.Tensor) for p in parts):
            return torch.cat([self._in(p) for p in parts])
        return super().concat(parts)

    def describe(self) -> dict[str, Any]:
        with self._lock:
            slots = {f"{stage}/{kind}": {"slots": s.n, "copies": s.copies, "bytes": s.nbytes()}
                     for (stage, kind), s in self._slots.items()}
            return {**super().describe(), "device": str(self.device), "graphs": self.graphs.stats(),
                    "adapter_slots": slots}

    def reset_counts(self) -> None:
        with self._lock:
            self._runs = dict.fromkeys(self._runs, 0)

    def close(self) -> None:
        with self._lock:
            self._adapters.clear()
            self.graphs.clear()
            self._slots.clear()

    # ------------------------------------------------------------------ internals

    def _in(self, a: Any) -> torch.Tensor:
        """A float32 tensor on the device of a numpy array (or anything np.asarray takes), or of a tensor."""
        if isinstance(a, torch.Tensor):
            return a.to(self.device, torch.float32)
        t = torch.from_numpy(np.asarray(a, dtype=np.float32, order="C"))  # 0-d stays 0-d (ascontiguousarray: 1-d)
        return t.to(self.device, non_blocking=True) if self.device.type == "cuda" else t

    def _stage_fn(self, op: str):
        """The function a StaticGraphs key of `op` runs (inputs by name -> outputs by name)."""
        G = self.G

        def planes(ws):
            with torch.no_grad():
                return {"planes": G.planes(ws, noise_mode="const", fused_modconv=False)}

        def render(planes, ws, c):
            with torch.no_grad(), inference_precision(self._precision, self.device.type):
                out = G.render_planes(planes, ws, c, sampling="deterministic", fused_modconv=False)
            return {"image": out["image"], "image_raw": out["image_raw"], "depth": out["image_depth"]}
        return planes if op == "planes" else render

    def _run(self, op: str, inputs: dict[str, torch.Tensor], people: Sequence) -> dict[str, torch.Tensor]:
        """One run of `op` for `people` (one per sample): routed (module docstring), then StaticGraphs."""
        stage = STAGE_OF[op]
        with self._lock:
            adapters = [self._adapter(p, stage) for p in people]
            identities = {p.identity for p, a in zip(people, adapters) if a is not None}
            if not identities:
                routing, activate = "base", lambda: detach(self.G)
            elif len({p.identity for p in people}) == 1:
                slots = self._slots_for(stage, "single", adapters[0], 1)
                slots.load(0, people[0].identity, adapters[0], _who(people[0]))
                routing, activate = "single", slots.single.activate
            else:
                slots = self._slots_for(stage, "mixed", next(a for a in adapters if a is not None), len(people))
                slots.set_index(self._assign(slots, people, adapters))
                routing, activate = "mixed", slots.mixed.activate
            self._runs[{"base": "base", "single": "adapter", "mixed": "mixed"}[routing]] += 1
            key = (op, len(people), self._precision, routing)
            out = self.graphs.run(key, self._stage_fn(op), inputs, activate)
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()  # stage times are the device's, not launches
            return out

    def _slots_for(self, stage: str, kind: str, example: dict[str, torch.Tensor], n: int) -> AdapterSlots:
        """The stage's slots of `kind` (n slots), made on first use with the shapes of `example`'s tensors."""
        slots = self._slots.get((stage, kind))
        if slots is None or slots.n != n:
            keys = {r["target"] for r in self._rows[stage]}
            targets = {k: t for k, t in self._targets.items() if k in keys}
            slots = AdapterSlots(self.G, targets, self._policy, self._fc_after_gain,
                                 {k: tuple(v.shape) for k, v in example.items()}, n, self.device)
            self._slots[(stage, kind)] = slots
        return slots

    @staticmethod
    def _assign(slots: AdapterSlots, people: Sequence, adapters: list) -> list[int]:
        """Slot number per sample (-1: base model): a person already in a slot keeps it; others take slots no
        sample of this run needs, so a batch of people seen before copies nothing."""
        wanted = {p.identity: (p, a) for p, a in zip(people, adapters) if a is not None}
        where = {ident: k for k, ident in enumerate(slots.holds) if ident in wanted}
        free = [k for k in range(slots.n) if k not in where.values()]
        for ident, (p, a) in wanted.items():
            if ident not in where:
                where[ident] = free.pop(0)
                slots.load(where[ident], ident, a, _who(p))
        return [where[p.identity] if a is not None else -1 for p, a in zip(people, adapters)]

    def _adapter(self, person, stage: str) -> dict[str, torch.Tensor] | None:
        """`person`'s adapter tensors of `stage` on the device, by file name (cached per identity), or None for the
        base model."""
        if person.identity == BASE or not person.feeds.get(stage) or not person.feeds[stage].arrays:
            return None
        key = (person.identity, stage)
        built = self._adapters.get(key)
        if built is None:
            arrays = person.feeds[stage].arrays
            built = {r["tensor"]: self._in(arrays[r["input"]]) for r in self._rows[stage]}
            self._adapters.put(key, built)
        return built


def _who(person) -> str:
    """How an error names a person's adapter file."""
    return f"{person.name}.safetensors" if person.name else "the base model"
