"""Which tensors of the generator a person trains: the adapter policy, layer roles and the target plan.

A layer's role (the part of the generator it sits in, and whether it is a modulated conv, a toRGB, a style
affine, ...) comes from its type and position in the module tree (`module_roles`), never from its key string;
`plan` turns a policy into the list of personal tensors (`Target`), in state-dict order. The LoRA shape rule is
the adapter-file format's (formats.adapter_file.lora_shapes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn as nn

from formats.adapter_file import LAYOUTS, lora_shapes
from generator.layers import FullyConnectedLayer, SynthesisLayer, ToRGBLayer
from generator.stylegan2 import SynthesisBlock

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


# ------------------------------------------------------------------------------------------ roles and targets

@dataclass(frozen=True)
class Role:
    """Where a module sits in the generator and what it is."""

    part: str
    """'synthesis' (backbone synthesis), 'superresolution', 'mapping' or 'decoder'."""
    kind: str | None
    """'conv' (modulated 3x3 conv), 'torgb', 'affine' (the style FC of either), 'fc' (another fully connected
    layer), 'block' (a synthesis block: its 4x4 const) or None (a module without personal tensors)."""


def part_roots(G: nn.Module) -> dict[str, nn.Module]:
    """The generator's parts as modules: the roots under which `module_roles` classifies layers."""
    return {"synthesis": G.backbone.synthesis, "superresolution": G.superresolution,
            "mapping": G.backbone.mapping, "decoder": G.decoder}


def module_roles(G: nn.Module) -> dict[str, Role]:
    """Module name -> Role for every module inside the generator's parts, from module types and positions."""
    names = {id(m): name for name, m in G.named_modules()}
    roles: dict[str, Role] = {}
    for part, root in part_roots(G).items():
        affines = {id(m.affine) for m in root.modules() if isinstance(m, (SynthesisLayer, ToRGBLayer))}
        for name, m in root.named_modules(prefix=names[id(root)]):
            roles[name] = Role(part, _kind_of(m, affines))
    return roles


def _kind_of(module: nn.Module, affines: set[int]) -> str | None:
    if isinstance(module, SynthesisLayer):
        return "conv"
    if isinstance(module, ToRGBLayer):
        return "torgb"
    if isinstance(module, FullyConnectedLayer):
        return "affine" if id(module) in affines else "fc"
    if isinstance(module, SynthesisBlock):
        return "block"
    return None


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
    part: str = ""
    """The generator part of its layer (Role.part)."""
    layer: str | None = None
    """The kind of its layer (Role.kind)."""
    gain: float = 1.0
    """The equalized-lr gain a fully connected layer multiplies its weight by (lr_multiplier / sqrt(in)); 1 for
    every other layer. Adapters of format 2 divide an FC layer's LoRA delta by it, so the delta acts after it."""

    @property
    def numel(self) -> int:
        if self.kind == "lora":
            return sum(math.prod(s) for s in self.lora_shapes)
        return math.prod(self.shape)


def _personal_kind(role: Role, leaf: str, policy: AdapterPolicy) -> str | None:
    """'lora', 'full' or None for the tensor `leaf` of a layer with `role` under `policy`."""
    if policy.mode == "full":
        return "full" if role.part in ("synthesis", "superresolution", "decoder") else None
    if role.part == "decoder":
        return "full" if policy.train_decoder else None
    if role.part not in policy.parts:
        return None
    lora_layer = role.kind == "fc" if role.part == "mapping" else role.kind in policy.layer_kinds
    if leaf == "weight" and lora_layer:
        return "lora"
    if policy.train_biases and role.part != "mapping" and leaf in ("bias", "noise_strength", "const"):
        return "full"
    return None


def plan(G: nn.Module, policy: AdapterPolicy) -> list[Target]:
    """The personal tensors of `G` under `policy`, in state-dict order."""
    policy.validate()
    roles = module_roles(G)
    modules = dict(G.named_modules())
    targets: list[Target] = []
    for key, tensor in G.named_parameters():
        module, _, leaf = key.rpartition(".")
        role = roles.get(module)
        kind = None if role is None else _personal_kind(role, leaf, policy)
        if kind is None:
            continue
        shape = tuple(tensor.shape)
        pair = lora_shapes(shape, policy.rank, policy.layout) if kind == "lora" else None
        layer = modules[module]
        gain = float(layer.weight_gain) if isinstance(layer, FullyConnectedLayer) else 1.0
        targets.append(Target(key, kind, shape, pair, role.part, role.kind, gain))
    return targets


def count_table(targets: list[Target]) -> list[tuple[str, int, int]]:
    """Rows (group, tensors, parameters) for display: LoRA per part/layer kind, then full tensors by kind."""
    groups: dict[str, list[int]] = {}
    for t in targets:
        if t.kind == "lora":
            label = f"LoRA {t.part} {t.layer}"
        elif t.part == "decoder":
            label = "decoder (full)"
        else:
            label = f"{t.part} {t.key.rpartition('.')[2]} (full)"
        g = groups.setdefault(label, [0, 0])
        g[0] += 1
        g[1] += t.numel
    return [(k, v[0], v[1]) for k, v in groups.items()]
