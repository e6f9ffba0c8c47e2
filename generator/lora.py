"""LoRA personalization of the generator (My3DGen §3.2), without touching the base tensors.

A person's adapter is a `PersonAdapter`: for every targeted weight W0 a pair (A, B) with

    W = W0 + lora_delta(A, B) = W0 + (alpha / r) * reshape(B @ A)   (before modulation and demodulation)

on the layer's stored weight; for a fully connected layer (the style affines) the scale is divided by the layer's
equalized-lr gain g, so that the layer computes W0 g + (alpha / r) B A: the delta acts after the gain, as in the
authors' code (adapter format 2; `fc_after_gain=False` keeps format 1's rule, delta before the gain, exactly).

and its own trainable copies of the other personal tensors (biases, noise strengths, the 4x4 const, the OSG
decoder). Two conv layouts: 'loralib' (A [r*k, in*k], B [out*k, r*k]; the paper's ~0.6M budget) and 'flat'
(A [r, in*k*k], B [out, r]; the PEFT convention). B starts at zero, so an untrained adapter is an exact no-op.

Which tensors are personal (`plan`, generator/lora_targets.py, re-exported here) follows the module tree: each
layer's role comes from its type and position, never from its key string.

`attach(G, adapter)` returns an `Attachment`, the object that owns the adapter's presence in G: each targeted
layer gets a `LayerAdapter` view through which it reads its tensors, and the attachment detaches, merges (bakes
the adapter into the base weights, keeping the originals) and unmerges (restores them bit-exactly).
`attach_mixed(G, adapters, index)` makes sample n of a batch use adapters[index[n]]. `LayerTensors.tensor` (with
`lora_delta`) is the one place where an adapter changes a tensor: single adapters, mixed batches, merging and
keep-LoRA export (whose adapter tensors are graph inputs, see `AdapterTensors`) all go through it.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from formats.adapter_file import lora_shapes, lora_tensor_names
from generator.layers import Personalizable
from generator.lora_targets import (LAYER_KINDS, PARTS, AdapterPolicy, Role, Target, count_table, module_roles,
                                    part_roots, plan)

__all__ = ["AdapterPolicy", "AdapterTensors", "Attachment", "LAYER_KINDS", "LayerAdapter", "LayerTensors", "LoraPair",
           "PARTS", "PersonAdapter", "Role", "Target", "attach", "attach_mixed", "attachment_of", "base_state_dict",
           "count_table", "detach", "layer_tensors", "lora_delta", "lora_shapes", "lora_tensor_names", "merge",
           "merged_state_dict", "module_roles", "part_roots", "plan", "target_scale", "unmerge"]

# ------------------------------------------------------------------------------------------ the delta

def lora_delta(lora_A: torch.Tensor, lora_B: torch.Tensor, shape: torch.Size | tuple[int, ...],
               scale: float) -> torch.Tensor:
    """scale * reshape(B @ A) to the weight's `shape`: the change a LoRA pair makes to its weight.

    A and B may carry leading per-sample axes (a keep-LoRA graph of a mixed-person batch): the delta then has
    them too, [N, *shape], which the layers read as one weight per sample."""
    return (lora_B @ lora_A).reshape(*lora_B.shape[:-2], *shape) * scale


@dataclass
class LayerTensors:
    """One adapter's tensors for one layer, looked up by file name in `tensors` each time they are read.

    Reading at forward time lets `tensors` be live: an adapter's parameters, or the inputs of a keep-LoRA graph.
    """

    tensors: Mapping[str, torch.Tensor]
    scale: float
    lora: tuple[str, str] | None = None
    """File names of the (A, B) pair on the layer's `weight`."""
    full: dict[str, str] = field(default_factory=dict)
    """Layer tensor name -> file name of its full replacement."""

    def names(self) -> list[str]:
        """The layer's tensors this adapter changes."""
        return list(self.full) + (["weight"] if self.lora is not None and "weight" not in self.full else [])

    def tensor(self, name: str, base: torch.Tensor) -> torch.Tensor:
        """The tensor the layer uses instead of its base tensor `name` (the base itself if unchanged)."""
        if name in self.full:
            return self.tensors[self.full[name]]
        if name == "weight" and self.lora is not None:
            a, b = self.lora
            return base + lora_delta(self.tensors[a], self.tensors[b], base.shape, self.scale)
        return base


def target_scale(target: Target, scale: float, fc_after_gain: bool) -> float:
    """The factor on reshape(B @ A) for `target`: alpha / r, over a fully connected layer's gain when its delta
    acts after the gain (format 2). With `fc_after_gain=False` it is alpha / r exactly (format 1)."""
    return scale / target.gain if fc_after_gain and target.gain != 1.0 else scale


def layer_tensors(targets: Iterable[Target], tensors: Mapping[str, torch.Tensor], scale: float,
                  fc_after_gain: bool = True) -> dict[str, LayerTensors]:
    """Module name -> LayerTensors for an adapter given as file-named `tensors` (see PersonAdapter.file_tensors)."""
    out: dict[str, LayerTensors] = {}
    for t in targets:
        module, _, leaf = t.key.rpartition(".")
        view = out.setdefault(module, LayerTensors(tensors, scale))
        if t.kind == "lora":
            view.scale = target_scale(t, scale, fc_after_gain)
            if leaf != "weight":
                raise ValueError(f"LoRA target {t.key}: only a layer's 'weight' takes a LoRA pair")
            view.lora = lora_tensor_names(t.key)
        else:
            view.full[leaf] = t.key
    return out


class LoraPair(nn.Module):
    """A and B of one weight (the delta they make is `LayerTensors.tensor`'s)."""

    def __init__(self, a_shape, b_shape):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(a_shape))
        self.lora_B = nn.Parameter(torch.zeros(b_shape))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))


def _module_key(key: str) -> str:
    return key.replace(".", "__")


class PersonAdapter(nn.Module):
    """All personal tensors of one person. Its state dict is what a training checkpoint stores."""

    def __init__(self, targets: list[Target], policy: AdapterPolicy, base: nn.Module | None = None,
                 fc_after_gain: bool = True):
        super().__init__()
        self.policy = policy
        self.fc_after_gain = fc_after_gain  # FC deltas act after the layer's gain (format 2); False: format-1 files
        self.targets = {t.key: t for t in targets}
        self.lora = nn.ModuleDict()
        self.full = nn.ParameterDict()
        base_params = dict(base.named_parameters()) if base is not None else {}
        for t in targets:
            if t.kind == "lora":
                a, b = t.lora_shapes
                self.lora[_module_key(t.key)] = LoraPair(a, b)
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

    def file_tensors(self) -> dict[str, torch.Tensor]:
        """Flat name -> tensor, with base key names: '<module>.lora_A', '<module>.lora_B', or the base key."""
        out = {}
        for t in self.targets.values():
            mk = _module_key(t.key)
            if t.kind == "lora":
                a, b = lora_tensor_names(t.key)
                out[a] = self.lora[mk].lora_A
                out[b] = self.lora[mk].lora_B
            else:
                out[t.key] = self.full[mk]
        return out

    def tensor_for(self, key: str, base: torch.Tensor) -> torch.Tensor:
        """The tensor that replaces base tensor `key` when this adapter is active."""
        module, _, leaf = key.rpartition(".")
        view = layer_tensors(self.targets.values(), self.file_tensors(), self.policy.scale,
                             self.fc_after_gain).get(module)
        return base if view is None else view.tensor(leaf, base)


@dataclass
class AdapterTensors:
    """An adapter given as plain tensors by file name (e.g. the inputs of a keep-LoRA graph), not as parameters.

    `tensors` may be filled after attaching: layers read it at forward time.
    """

    targets: dict[str, Target]
    policy: AdapterPolicy
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    fc_after_gain: bool = True
    """As PersonAdapter.fc_after_gain."""

    def file_tensors(self) -> dict[str, torch.Tensor]:
        return self.tensors


# ------------------------------------------------------------------------------------------ attaching

class LayerAdapter:
    """How one layer reads its tensors while an attachment is active (the layer's `adapter` attribute).

    `people` has one LayerTensors per adapter of the attachment (None where that adapter leaves the layer alone).
    Without `index` the layer reads people[0]; with it, sample n reads people[index[n]] (index -1: the base
    tensors), stacked along a new leading axis. Once merged, the base tensors hold the adapter and are read as
    they are; `stash` keeps the originals for `unmerge`.
    """

    def __init__(self, owner: "Attachment", people: list[LayerTensors | None], index: torch.Tensor | None):
        self.owner, self.people, self.index = owner, people, index
        self.merged = False
        self.stash: dict[str, torch.Tensor] = {}

    def read(self, name: str, base: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return base
        if self.index is None:
            return self.people[0].tensor(name, base)
        if not any(p is not None and name in p.names() for p in self.people):
            return base
        per_person = [base] + [base if p is None else p.tensor(name, base) for p in self.people]
        return torch.stack(per_person)[self.index + 1]

    @torch.no_grad()
    def merge(self, layer: Personalizable) -> None:
        view = self.people[0]
        for name in view.names():
            param = getattr(layer, name)
            self.stash[name] = param.detach().clone()
            param.copy_(view.tensor(name, param))
        self.merged = True

    @torch.no_grad()
    def unmerge(self, layer: Personalizable) -> None:
        for name, value in self.stash.items():
            getattr(layer, name).copy_(value)
        self.stash = {}
        self.merged = False


class Attachment:
    """One adapter (or several, chosen per sample) attached to a generator; it owns every layer view it installs.

    Made by `attach` / `attach_mixed`. `detach()` removes it (unmerging first if merged); `merge()` bakes a single
    adapter into the base weights for speed, `unmerge()` restores them bit for bit. Usable as a context manager
    that detaches on exit.
    """

    def __init__(self, G: nn.Module, adapters: list, index: torch.Tensor | None = None):
        self.G, self.adapters, self.index = G, list(adapters), index
        self.merged = False
        self.attached = False
        views = [layer_tensors(a.targets.values(), a.file_tensors(), a.policy.scale, a.fc_after_gain)
                 for a in self.adapters]
        modules = dict(G.named_modules())
        self._layers: list[tuple[str, Personalizable, LayerAdapter]] = []
        wanted = set().union(*views) if views else set()
        for name in [n for n in modules if n in wanted] + sorted(wanted - set(modules)):
            layer = modules.get(name)
            if not isinstance(layer, Personalizable):
                what = "has no such module" if layer is None else f"has a {type(layer).__name__} there"
                raise ValueError(f"adapter targets layer {name!r}, but this generator {what}")
            self._layers.append((name, layer, LayerAdapter(self, [v.get(name) for v in views], index)))

    def _install(self) -> "Attachment":
        for _, layer, view in self._layers:
            layer.adapter = view
        self.attached = True
        return self

    def activate(self) -> "Attachment":
        """Route G through this attachment again (detaching whatever is attached now): an attachment over live
        tensors (runtime.adapter_slots) is built once and re-activated, never rebuilt."""
        return _replace(self.G, self)

    def layers(self) -> list[str]:
        """Names of the layers this attachment changes."""
        return [name for name, _, _ in self._layers]

    def detach(self) -> None:
        """Remove the adapter from G (a merged one is unmerged first, so the base weights are restored)."""
        if self.merged:
            self.unmerge()
        for _, layer, view in self._layers:
            if layer.adapter is view:
                layer.adapter = None
        self.attached = False

    def merge(self) -> "Attachment":
        """Bake the adapter into G's parameters; the originals are kept so `unmerge` is bit-exact."""
        if not self.attached:
            raise RuntimeError("merge: this attachment was detached")
        if self.index is not None:
            raise ValueError("merge: a mixed-person attachment cannot be merged (one set of weights per batch)")
        if self.merged:
            raise RuntimeError("merge: the adapter is already merged")
        for _, layer, view in self._layers:
            view.merge(layer)
        self.merged = True
        return self

    def unmerge(self) -> "Attachment":
        """Restore the base tensors saved by `merge`, bit for bit; the adapter stays attached (unmerged)."""
        if not self.merged:
            raise RuntimeError("unmerge: the adapter is not merged")
        for _, layer, view in self._layers:
            view.unmerge(layer)
        self.merged = False
        return self

    def stashed(self) -> dict[str, torch.Tensor]:
        """Base state-dict key -> original tensor of every base tensor a merge changed (empty when not merged)."""
        return {f"{name}.{leaf}": t for name, _, view in self._layers for leaf, t in view.stash.items()}

    def __enter__(self) -> "Attachment":
        return self

    def __exit__(self, *exc) -> None:
        self.detach()


def attachment_of(G: nn.Module) -> Attachment | None:
    """The attachment active on G, or None."""
    for m in G.modules():
        if isinstance(m, Personalizable) and m.adapter is not None:
            return m.adapter.owner
    return None


def _replace(G: nn.Module, new: Attachment) -> Attachment:
    current = attachment_of(G)
    if current is new and new.attached:
        return new
    if current is not None:
        if current.merged:
            raise RuntimeError("an adapter is merged into this generator: unmerge() before attaching another")
        current.detach()
    return new._install()


def attach(G: nn.Module, adapter) -> Attachment | None:
    """Route G's layers through `adapter` (a PersonAdapter or AdapterTensors; None detaches) and return the
    Attachment that owns it. Any adapter attached before is detached. Base tensors are not modified."""
    if adapter is None:
        detach(G)
        return None
    return _replace(G, Attachment(G, [adapter]))


def attach_mixed(G: nn.Module, adapters: list, index: torch.Tensor) -> Attachment:
    """Per-sample routing: sample n uses adapters[index[n]], or the base model where index[n] == -1."""
    index = torch.as_tensor(index, dtype=torch.long)
    if index.numel() and (index.min() < -1 or index.max() >= len(adapters)):
        raise ValueError(f"adapter index out of range: {index.tolist()} for {len(adapters)} adapter(s)")
    return _replace(G, Attachment(G, adapters, index))


def detach(G: nn.Module) -> None:
    """Remove whatever adapter is attached to G (unmerging it first if it is merged)."""
    current = attachment_of(G)
    if current is not None:
        current.detach()


def merge(G: nn.Module, adapter: PersonAdapter) -> Attachment:
    """Attach `adapter` and bake it into G's parameters; `unmerge(G)` (or the returned handle) restores them."""
    return attach(G, adapter).merge()


def unmerge(G: nn.Module) -> None:
    """Restore the base tensors changed by `merge`, bit for bit, and detach the adapter."""
    current = attachment_of(G)
    if current is None or not current.merged:
        raise RuntimeError("unmerge: no adapter is merged into this generator")
    current.detach()


def base_state_dict(G: nn.Module) -> dict[str, torch.Tensor]:
    """G's state dict with the base tensors it had before any merge (what its fingerprint describes)."""
    sd = G.state_dict()
    current = attachment_of(G)
    if current is not None:
        sd.update(current.stashed())
    return sd


@torch.no_grad()
def merged_state_dict(G: nn.Module, adapter: PersonAdapter) -> dict[str, torch.Tensor]:
    """G's base state dict with the adapter baked in (W0 + delta, personal copies); G is not modified."""
    sd = {k: v.detach().clone() for k, v in base_state_dict(G).items()}
    for module, view in layer_tensors(adapter.targets.values(), adapter.file_tensors(), adapter.policy.scale,
                                      adapter.fc_after_gain).items():
        for leaf in view.names():
            key = f"{module}.{leaf}"
            sd[key] = view.tensor(leaf, sd[key]).detach().clone()
    return sd
