"""LoRA personalization of the generator (My3DGen §3.2), without touching the base tensors.

A person's adapter is a `PersonAdapter`: for every targeted weight W0 a pair (A, B) with

    W = W0 + (alpha / r) * reshape(B @ A)        (before equalized-lr gains, modulation and demodulation)

and its own trainable copies of the other personal tensors (biases, noise strengths, the 4x4 const, the OSG
decoder). Two conv layouts: 'loralib' (A [r*k, in*k], B [out*k, r*k]; the paper's ~0.6M budget) and 'flat'
(A [r, in*k*k], B [out, r]; the PEFT convention). B starts at zero, so an untrained adapter is an exact no-op.

`attach(G, adapter)` routes the generator's layers through the adapter; `attach_mixed(G, adapters, index)` makes
sample n of a batch use adapters[index[n]]; `merge`/`unmerge` bake an adapter into the base weights and restore
them bit-exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from generator.layers import FullyConnectedLayer, Personalizable, SynthesisLayer, ToRGBLayer

LAYOUTS = ("loralib", "flat")
PARTS = ("synthesis", "superresolution", "mapping")
LAYER_KINDS = ("conv", "torgb", "affine")


@dataclass
class AdapterPolicy:
    """Which tensors of the generator a person trains, and how (one object the CLI shows and the trainer uses)."""

    rank: int = 4
    """LoRA rank r."""
    alpha: float = 4.0
    """LoRA alpha; the delta is scaled by alpha / r (default 1.0 at rank 4)."""
    layout: str = "loralib"
    """'loralib' (the paper's ~0.6M budget) or 'flat' (A [r, in*k*k], B [out, r], as PEFT)."""
    parts: tuple[str, ...] = ("synthesis", "superresolution")
    """Where LoRA goes: backbone synthesis, super-resolution, and optionally the mapping FCs."""
    layer_kinds: tuple[str, ...] = ("conv", "torgb", "affine")
    """Which layers of those parts get LoRA: modulated 3x3 convs, 1x1 toRGB, style `affine` FCs."""
    train_decoder: bool = True
    """Fine-tune the whole OSG decoder (paper §3.2)."""
    train_biases: bool = True
    """Train conv/affine/toRGB biases, noise strengths and the 4x4 const of the LoRA parts."""
    mode: str = "lora"
    """'lora', or 'full' (full fine-tuning baseline: every synthesis/SR/decoder tensor is personal)."""

    def validate(self) -> "AdapterPolicy":
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout={self.layout!r}: expected one of {LAYOUTS}")
        if self.rank < 1:
            raise ValueError(f"rank={self.rank}: must be >= 1")
        if self.mode not in ("lora", "full"):
            raise ValueError(f"mode={self.mode!r}: expected 'lora' or 'full'")
        for p in self.parts:
            if p not in PARTS:
                raise ValueError(f"parts contains {p!r}: expected a subset of {PARTS}")
        for k in self.layer_kinds:
            if k not in LAYER_KINDS:
                raise ValueError(f"layer_kinds contains {k!r}: expected a subset of {LAYER_KINDS}")
        return self

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclass
class Target:
    """One personal tensor: a LoRA pair on a base weight, or a full trainable copy of a base tensor."""

    key: str
    """Base state-dict key, e.g. 'backbone.synthesis.b8.conv0.weight'."""
    kind: str
    """'lora' or 'full'."""
    shape: tuple[int, ...]
    """Shape of the base tensor."""
    lora_shapes: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    """(A, B) shapes for kind 'lora'."""

    @property
    def numel(self) -> int:
        if self.kind == "lora":
            return sum(math.prod(s) for s in self.lora_shapes)
        return math.prod(self.shape)


def lora_shapes(shape: tuple[int, ...], rank: int, layout: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """(A, B) shapes for a weight [out, in] or [out, in, k, k]."""
    out_f, in_f = shape[0], shape[1]
    k = shape[2] if len(shape) == 4 else 1
    if layout == "loralib" and k > 1:
        return (rank * k, in_f * k), (out_f * k, rank * k)
    return (rank, in_f * k * k), (out_f, rank)


def _part_of(name: str) -> str | None:
    if name.startswith("backbone.synthesis."):
        return "synthesis"
    if name.startswith("superresolution."):
        return "superresolution"
    if name.startswith("backbone.mapping."):
        return "mapping"
    return None


def _kind_of(name: str, module: nn.Module) -> str | None:
    if isinstance(module, SynthesisLayer):
        return "conv"
    if isinstance(module, ToRGBLayer):
        return "torgb"
    if isinstance(module, FullyConnectedLayer):
        return "affine" if name.endswith(".affine") else ("mapping" if _part_of(name) == "mapping" else None)
    return None


def plan(G: nn.Module, policy: AdapterPolicy) -> list[Target]:
    """The personal tensors of `G` under `policy`, in state-dict order."""
    policy.validate()
    targets: list[Target] = []
    lora_modules = set()
    for name, module in G.named_modules():
        part = _part_of(name)
        kind = _kind_of(name, module)
        if part is None or kind is None or part not in policy.parts:
            continue
        if part == "mapping" or kind in policy.layer_kinds:
            lora_modules.add(name)
    params = dict(G.named_parameters())
    for key, tensor in params.items():
        module_name, _, leaf = key.rpartition(".")
        part = _part_of(key)
        shape = tuple(tensor.shape)
        if policy.mode == "full":
            if part in ("synthesis", "superresolution") or key.startswith("decoder."):
                targets.append(Target(key, "full", shape))
            continue
        if leaf == "weight" and module_name in lora_modules:
            targets.append(Target(key, "lora", shape, lora_shapes(shape, policy.rank, policy.layout)))
        elif key.startswith("decoder."):
            if policy.train_decoder:
                targets.append(Target(key, "full", shape))
        elif policy.train_biases and part in policy.parts and part != "mapping" and leaf in (
                "bias", "noise_strength", "const"):
            targets.append(Target(key, "full", shape))
    return targets


def count_table(targets: list[Target]) -> list[tuple[str, int, int]]:
    """Rows (group, tensors, parameters) for display: LoRA per part/kind, then full tensors by kind."""
    groups: dict[str, list[int]] = {}
    for t in targets:
        part = _part_of(t.key) or t.key.split(".")[0]
        leaf = t.key.rsplit(".", 2)
        if t.kind == "lora":
            what = "affine" if leaf[-2] == "affine" else ("torgb" if "torgb" in t.key else "conv")
            label = f"LoRA {part} {what}"
        elif t.key.startswith("decoder."):
            label = "decoder (full)"
        else:
            label = f"{part} {leaf[-1]} (full)"
        g = groups.setdefault(label, [0, 0])
        g[0] += 1
        g[1] += t.numel
    return [(k, v[0], v[1]) for k, v in groups.items()]


class LoraPair(nn.Module):
    """A and B of one weight; `delta()` = scale * reshape(B @ A) to the weight's shape."""

    def __init__(self, shape: tuple[int, ...], a_shape, b_shape, scale: float):
        super().__init__()
        self.shape, self.scale = tuple(shape), scale
        self.lora_A = nn.Parameter(torch.empty(a_shape))
        self.lora_B = nn.Parameter(torch.zeros(b_shape))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def delta(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A).reshape(self.shape) * self.scale


def _module_key(key: str) -> str:
    return key.replace(".", "__")


class PersonAdapter(nn.Module):
    """All personal tensors of one person. Its state dict is what an adapter file stores."""

    def __init__(self, targets: list[Target], policy: AdapterPolicy, base: nn.Module | None = None):
        super().__init__()
        self.policy = policy
        self.targets = {t.key: t for t in targets}
        self.lora = nn.ModuleDict()
        self.full = nn.ParameterDict()
        base_params = dict(base.named_parameters()) if base is not None else {}
        for t in targets:
            if t.kind == "lora":
                a, b = t.lora_shapes
                self.lora[_module_key(t.key)] = LoraPair(t.shape, a, b, policy.scale)
            else:
                init = base_params[t.key].detach().clone() if t.key in base_params else torch.zeros(t.shape)
                self.full[_module_key(t.key)] = nn.Parameter(init)

    @classmethod
    def create(cls, G: nn.Module, policy: AdapterPolicy | None = None) -> "PersonAdapter":
        """A fresh adapter for G: LoRA B = 0 and copies of the base tensors, so it changes nothing yet."""
        policy = (policy or AdapterPolicy()).validate()
        return cls(plan(G, policy), policy, base=G)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def tensor_for(self, key: str, base: torch.Tensor) -> torch.Tensor:
        """The tensor that replaces base tensor `key` when this adapter is active."""
        mk = _module_key(key)
        if mk in self.lora:
            return base + self.lora[mk].delta()
        if mk in self.full:
            return self.full[mk]
        return base

    def file_tensors(self) -> dict[str, torch.Tensor]:
        """Flat name -> tensor, with base key names: '<module>.lora_A', '<module>.lora_B', or the base key."""
        out = {}
        for t in self.targets.values():
            mk = _module_key(t.key)
            if t.kind == "lora":
                module = t.key.rsplit(".", 1)[0]
                out[f"{module}.lora_A"] = self.lora[mk].lora_A
                out[f"{module}.lora_B"] = self.lora[mk].lora_B
            else:
                out[t.key] = self.full[mk]
        return out


class _Route:
    """What one layer reads when one adapter is attached."""

    per_sample = False

    def __init__(self, adapter: PersonAdapter, prefix: str):
        self.adapter, self.prefix = adapter, prefix

    def get(self, name: str, base: torch.Tensor) -> torch.Tensor:
        return self.adapter.tensor_for(f"{self.prefix}.{name}", base)


class _MixedRoute:
    """What one layer reads when sample n of the batch uses adapters[index[n]] (index -1: the base model)."""

    per_sample = True

    def __init__(self, adapters: list[PersonAdapter], index: torch.Tensor, prefix: str):
        self.adapters, self.index, self.prefix = adapters, index, prefix

    def get(self, name: str, base: torch.Tensor) -> torch.Tensor:
        key = f"{self.prefix}.{name}"
        per_person = [base] + [a.tensor_for(key, base) for a in self.adapters]
        return torch.stack(per_person)[self.index + 1]


def _personal_modules(G: nn.Module):
    return [(name, m) for name, m in G.named_modules() if isinstance(m, Personalizable)]


def attach(G: nn.Module, adapter: PersonAdapter | None) -> None:
    """Route G's layers through `adapter` (None detaches). Base tensors are not modified."""
    _check_not_merged(G)
    for name, m in _personal_modules(G):
        m.personal = None if adapter is None else _Route(adapter, name)


def attach_mixed(G: nn.Module, adapters: list[PersonAdapter], index: torch.Tensor) -> None:
    """Per-sample routing: sample n uses adapters[index[n]], or the base model where index[n] == -1."""
    _check_not_merged(G)
    index = torch.as_tensor(index, dtype=torch.long)
    if index.numel() and (index.min() < -1 or index.max() >= len(adapters)):
        raise ValueError(f"adapter index out of range: {index.tolist()} for {len(adapters)} adapter(s)")
    for name, m in _personal_modules(G):
        m.personal = _MixedRoute(adapters, index, name)


def detach(G: nn.Module) -> None:
    attach(G, None)


@torch.no_grad()
def merged_state_dict(G: nn.Module, adapter: PersonAdapter) -> dict[str, torch.Tensor]:
    """G's state dict with the adapter baked in (W0 + delta, personal copies); G is not modified."""
    sd = {k: v.detach().clone() for k, v in G.state_dict().items()}
    for key in adapter.targets:
        sd[key] = adapter.tensor_for(key, sd[key]).detach().clone()
    return sd


@torch.no_grad()
def merge(G: nn.Module, adapter: PersonAdapter) -> None:
    """Bake the adapter into G's parameters for speed; the originals are kept so `unmerge` is bit-exact."""
    _check_not_merged(G)
    detach(G)
    params = dict(G.named_parameters())
    stash = {}
    for key in adapter.targets:
        stash[key] = params[key].detach().clone()
        params[key].copy_(adapter.tensor_for(key, params[key]))
    G._merged_stash = stash


@torch.no_grad()
def unmerge(G: nn.Module) -> None:
    """Restore the base tensors saved by `merge`, bit for bit."""
    stash = getattr(G, "_merged_stash", None)
    if stash is None:
        raise RuntimeError("unmerge: no adapter is merged into this generator")
    params = dict(G.named_parameters())
    for key, value in stash.items():
        params[key].copy_(value)
    G._merged_stash = None


def _check_not_merged(G: nn.Module) -> None:
    if getattr(G, "_merged_stash", None) is not None:
        raise RuntimeError("an adapter is merged into this generator: unmerge() before attaching another")
