"""How much memory a personalization step needs, before training starts.

The step's memory is (a) what lives all run long: the base model, the loss networks, the photos, the adapter with
its gradient and Adam's two moments; and (b) what autograd keeps for backward, which grows with the views rendered
in one step. (b) is counted, not guessed: the step's own modules run once on PyTorch's meta device (shapes only, no
arithmetic, a few seconds) under a saved-tensor hook that adds up the bytes backward would keep, separately for
the tri-plane backbone (per latent), the ray march, the super-resolution and the loss networks (per view). With
gradient checkpointing on, what a checkpointed region keeps is only its inputs, and its insides exist only while
backward recomputes it: one region at a time, the largest of which is added once.

The heaviest step is a symmetry step with L_sym in the same step (`sym_step='joint'`): `batch` latents rendered at
their own cameras and at a mirrored pair each, 3 x batch views. Peak = resident + BACKWARD_FACTOR x (backbone x
batch + views x per-view + the largest recomputed region + the largest kept tensor twice).
bf16/fp16 halve what the backbone and super-resolution keep (autocast runs their convolutions in 16 bits; a few
ops stay fp32, so this reads a little low). BACKWARD_FACTOR comes from one H100 record; the GPU check's
`lora_train` section prints plan and measurement side by side, so a new card re-checks it.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, replace

import torch

from generator.checkpointing import Checkpointable, set_gradient_checkpointing
from generator.lora import PersonAdapter, attach, detach

GIB = 2 ** 30
REDUCED_PRECISIONS = ("bf16", "fp16")
BACKWARD_FACTOR = 1.32
"""Peak memory over the bytes counted as kept for backward: gradient buffers and kernel workspaces of the backward
pass grow with the views of a step. The ratio of the H100's measured peak (torch.cuda.max_memory_allocated,
docs/gpu/nvidia-h100-80gb-hbm3-2026-11-27.md, ffhq512-128 fp32 without checkpointing) to the counted bytes:
16.67 / 12.6 GiB at batch 1 and 65.0 / 48.7 GiB at batch 4, both 1.32-1.33. Not yet checked with checkpointing or
bf16 on a GPU."""


@dataclass(frozen=True)
class MemoryPlan:
    """Estimated peak memory of one training step; bytes unless the name says otherwise."""

    device: str
    precision: str
    checkpointing: bool
    batch: int
    symmetry: str
    """'joint' (L_sym's mirrored pair rendered in the same step: 3 views per latent), 'separate' (its own backward
    after the reconstruction's: the larger of 1 and 2 views) or 'off'."""
    resident: int
    """Base model, loss networks, photos, adapter + gradient + Adam moments."""
    backbone: int
    """Kept for backward per latent (the tri-plane backbone)."""
    own_view: int
    """Kept per view at a photo's camera: ray march, super-resolution, LPIPS on the final and the raw image."""
    sym_view: int
    """Kept per view of L_sym's mirrored pair: ray march, super-resolution, the identity network."""
    transient: int
    """The largest recomputed region (checkpointing) plus twice the largest kept tensor."""
    capacity: int | None
    """The device's memory (CUDA), or None where there is no fixed budget (the CPU)."""
    why: str = ""
    """How 'auto' decided checkpointing, when it did."""

    def peak(self, batch: int | None = None) -> int:
        b = self.batch if batch is None else batch
        views = {"joint": self.own_view + 2 * self.sym_view, "separate": max(self.own_view, 2 * self.sym_view),
                 "off": self.own_view}[self.symmetry]
        return self.resident + int(BACKWARD_FACTOR * (b * (self.backbone + views) + self.transient))

    def largest_batch(self, capacity: int, limit: int = 256) -> int:
        """The largest batch whose peak fits in `capacity` bytes (0 if not even batch 1)."""
        return max((b for b in range(1, limit + 1) if self.peak(b) <= capacity), default=0)

    def fits(self) -> bool:
        return self.capacity is None or self.peak() <= self.capacity

    def describe(self) -> str:
        head = (f"memory plan: about {self.peak() / GIB:.1f} GiB peak per step on {self.device} (batch {self.batch}, "
                f"{self.precision}, checkpointing {'on' if self.checkpointing else 'off'}"
                f"{' (auto: ' + self.why + ')' if self.why else ''}): "
                f"{self.resident / GIB:.2f} resident, per latent {self.backbone / GIB:.2f} backbone + "
                f"{self.own_view / GIB:.2f} per view" + (f" + {self.sym_view / GIB:.2f} per L_sym view "
                                                          f"({self.symmetry})" if self.symmetry != "off" else "") +
                f", {self.transient / GIB:.2f} transient")
        if self.capacity is None:
            return head
        largest = self.largest_batch(self.capacity)
        return head + (f"; {self.capacity / GIB:.1f} GiB on the device: batch up to {largest} fits"
                       if largest else f"; {self.capacity / GIB:.1f} GiB on the device: even batch 1 does not fit")


def plan_memory(G: torch.nn.Module, config, lp: torch.nn.Module, identity: torch.nn.Module | None,
                photos: int, device: torch.device | str, checkpointing: bool,
                capacity: int | None = None) -> MemoryPlan:
    """The plan of `config` (a TrainConfig) for generator G with loss networks `lp` (LPIPS) and `identity` (None
    without L_sym), `photos` training photos, on `device`. G, lp and identity are not changed (meta copies run)."""
    device = torch.device(device)
    res, raw = G.img_resolution, G.neural_rendering_resolution
    Gm = _meta_copy(G)
    lpm = _meta_copy(lp)
    idm = _meta_copy(identity) if identity is not None and config.sym else None
    with torch.device("meta"):
        adapter = PersonAdapter.create(Gm, config.policy())
    Gm.requires_grad_(False).train()
    attach(Gm, adapter)
    try:
        set_gradient_checkpointing(Gm, checkpointing)
        ws = torch.zeros(1, Gm.num_ws, Gm.w_dim, device="meta")
        c = torch.zeros(1, 25, device="meta")
        counter = _SavedBytes(Gm)
        with counter.region("backbone"):
            planes = Gm.planes(ws)
        p = planes.detach().requires_grad_()
        with counter.region("view"):
            out = Gm.render_planes(p, ws, c, return_internals=True)
            image = out["image"]
        with counter.region("superresolution"):
            feature = torch.zeros_like(out["feature_image"], requires_grad=True)
            Gm.superresolution(feature[:, :3], feature, ws)
        with counter.region("lpips"):
            lpm(image, torch.zeros_like(image))
            lpm(out["image_raw"], torch.zeros_like(out["image_raw"]))
        sym_view = 0
        if idm is not None:
            with counter.region("identity"):
                idm(torch.cat([image, image]))
            sym_view = counter.bytes["identity"] // 2
    finally:
        detach(Gm)
    half = 0.5 if config.precision in REDUCED_PRECISIONS else 1.0
    sr = counter.bytes["superresolution"]
    render = counter.bytes["view"] - sr + half * sr
    symmetry = "off" if idm is None else config.sym_step
    trainable = sum(t.numel() for t in adapter.parameters()) * 4 * 4  # fp32 value, gradient, two Adam moments
    resident = (_bytes(G) + _bytes(lp) + (_bytes(identity) if idm is not None else 0) + trainable
                + photos * 3 * (res * res + raw * raw) * 4)
    transient = counter.largest_region + 2 * counter.largest_tensor
    return MemoryPlan(str(device), config.precision, checkpointing, config.batch, symmetry, int(resident),
                      int(half * counter.bytes["backbone"]), int(render + counter.bytes["lpips"]),
                      int(render + sym_view), int(transient), capacity)


def choose_plan(G: torch.nn.Module, config, lp: torch.nn.Module, identity: torch.nn.Module | None, photos: int,
                device: torch.device | str) -> MemoryPlan:
    """The plan of the run as it will go. `config.checkpointing` 'on'/'off' is taken as given; 'auto' is on for
    CUDA (memory decides the batch that fits there) and, on a CPU, on only when the step without it would need more
    than half of the memory available now (it costs one more forward of the recomputed regions)."""
    device = torch.device(device)
    capacity = device_capacity(device)
    if config.checkpointing != "auto" or device.type == "cuda":
        plan = plan_memory(G, config, lp, identity, photos, device,
                           resolve_checkpointing(config.checkpointing, device), capacity)
        return replace(plan, why="on for CUDA") if config.checkpointing == "auto" else plan
    without = plan_memory(G, config, lp, identity, photos, device, False, capacity)
    available = available_memory()
    if available is None or without.peak() <= available / 2:
        return replace(without, why=f"the step fits in half of the {available / GIB:.1f} GiB available"
                       if available else "the available memory is unknown")
    return replace(plan_memory(G, config, lp, identity, photos, device, True, capacity),
                   why=f"{without.peak() / GIB:.1f} GiB without it is over half of the {available / GIB:.1f} GiB "
                       "available")


def resolve_checkpointing(setting: str, device: torch.device) -> bool:
    """TrainConfig.checkpointing without a plan: 'auto' is on for CUDA (memory decides the batch), off elsewhere."""
    return setting == "on" or (setting == "auto" and torch.device(device).type == "cuda")


def available_memory() -> int | None:
    """Memory the system can give now without swapping (Linux MemAvailable), or None where it is not known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def device_capacity(device: torch.device | str) -> int | None:
    """Total memory of a CUDA device; None for the CPU (RAM is shared and swaps: no fixed budget to plan to)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory


def _meta_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of `module` whose parameters and buffers are meta tensors (no data is copied, even from a GPU)."""
    memo: dict[int, torch.Tensor] = {}
    for p in module.parameters():
        memo[id(p)] = torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in module.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(module, memo)


def _bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


class _SavedBytes:
    """Bytes autograd keeps for backward, per named region (a tensor saved by several operations, as a
    checkpoint's input is by each chunk, is counted once); and the largest region a checkpoint recomputes."""

    def __init__(self, model: torch.nn.Module | None = None):
        self.bytes: dict[str, int] = {}
        self.largest_tensor = 0
        self.largest_region = 0
        self._current = "none"
        self._seen: dict[int, torch.Tensor] = {}  # id -> tensor, kept alive so that ids stay unique
        for sub in model.modules() if model is not None else ():
            if isinstance(sub, Checkpointable):  # an instance attribute of the meta copy: the class is untouched
                sub.checkpointed = self._measuring(sub, sub.checkpointed)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        if id(t) not in self._seen:
            self._seen[id(t)] = t
            n = t.numel() * t.element_size()
            self.bytes[self._current] += n
            self.largest_tensor = max(self.largest_tensor, n)
        return t

    def _measuring(self, module, checkpointed):
        """`checkpointed` that first runs the region uncheckpointed under its own counter (meta: no arithmetic)
        to learn what its recomputation will hold during backward."""
        def measured(fn, *args, preserve_rng: bool = True, **kwargs):
            if module.gradient_checkpointing and torch.is_grad_enabled():
                inside = _SavedBytes()
                with inside.region("region"):
                    fn(*args, **kwargs)
                self.largest_region = max(self.largest_region, inside.bytes["region"])
            return checkpointed(fn, *args, preserve_rng=preserve_rng, **kwargs)
        return measured

    @contextlib.contextmanager
    def region(self, name: str):
        self._current = name
        self.bytes.setdefault(name, 0)
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
                yield
        finally:
            self._current = "none"
