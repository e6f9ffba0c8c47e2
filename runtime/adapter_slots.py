"""Static adapter buffers for the torch backend: a person swap is a copy into fixed tensors, never a rebuild.

A CUDA graph replays the kernels it captured on the memory it captured, so the adapter a graph reads must live in
tensors that never move. `AdapterSlots` holds, for one stage ('synthesis' or 'render'), `n` slots of such tensors
(one set per slot: every LoRA A and B and every full personal tensor of the stage, by adapter-file name) and the
Attachments that route the generator through them, built once:

    single   slot 0 for every sample of the batch               (one person's requests)
    mixed    sample k reads slot k, or the base model where index[k] == -1   (one person per sample)

`load(k, identity, tensors)` copies a person's tensors into slot k unless it already holds that identity (the swap
is skipped), `set_index` writes the mixed batch's per-sample slot numbers into the index buffer. The base model
runs without an attachment (its own weights), so it costs no adapter arithmetic. Used on the CPU too, so the swap
logic that the CUDA graphs rely on is the one the CPU tests exercise.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn

from generator.lora import AdapterPolicy, AdapterTensors, Attachment, Target, attach, attach_mixed, detach
from runtime.errors import AdapterInvalid


class AdapterSlots:
    """`n` slots of static adapter tensors for one stage of G; see the module docstring."""

    def __init__(self, G: nn.Module, targets: Mapping[str, Target], policy: AdapterPolicy, fc_after_gain: bool,
                 shapes: Mapping[str, tuple[int, ...]], n: int, device: torch.device):
        if n < 1:
            raise ValueError(f"AdapterSlots: n={n}, need at least one slot")
        self.G, self.n, self.device = G, n, device
        self.shapes = dict(shapes)
        """Adapter-file tensor name -> shape: what every person's tensors of this stage must be."""
        self.buffers = [{k: torch.zeros(s, device=device) for k, s in self.shapes.items()} for _ in range(n)]
        self.index = torch.arange(n, device=device)
        """Mixed batches: sample k reads slot index[k] (-1: the base model)."""
        self.holds: list[str | None] = [None] * n
        """Identity of the person each slot holds (None: nothing loaded yet)."""
        self.copies = 0
        """Slot loads that copied tensors (a load of the identity a slot already holds copies nothing)."""
        adapters = [AdapterTensors(dict(targets), policy, buf, fc_after_gain=fc_after_gain) for buf in self.buffers]
        self.single: Attachment = attach(G, adapters[0])
        self.mixed: Attachment = attach_mixed(G, adapters, self.index)
        detach(G)

    def load(self, slot: int, identity: str, tensors: Mapping[str, torch.Tensor], who: str = "?") -> bool:
        """Copy `tensors` (this stage's adapter tensors by file name) into `slot`; False when it already held
        `identity` (nothing copied). Tensors that do not fit the slots raise AdapterInvalid naming `who` (the
        person's adapter file)."""
        if self.holds[slot] == identity:
            return False
        if set(tensors) != set(self.shapes):
            missing, extra = sorted(set(self.shapes) - set(tensors)), sorted(set(tensors) - set(self.shapes))
            raise AdapterInvalid(who, f"does not fit this export's adapter (missing tensors {missing[:3]}, "
                                      f"unexpected {extra[:3]})")
        self.holds[slot] = None  # a failed copy leaves the slot marked empty, never as the wrong person
        with torch.no_grad():
            for name, buf in self.buffers[slot].items():
                src = tensors[name]
                if tuple(src.shape) != tuple(buf.shape):
                    raise AdapterInvalid(who, f"tensor {name} has shape {tuple(src.shape)}, the export's is "
                                              f"{tuple(buf.shape)}")
                buf.copy_(src, non_blocking=True)
        self.holds[slot] = identity
        self.copies += 1
        return True

    def set_index(self, slots: Sequence[int]) -> None:
        """Sample k of the next mixed run reads slot slots[k] (-1: the base model)."""
        if len(slots) != self.n:
            raise ValueError(f"mixed run of {len(slots)} samples, the slots hold {self.n}")
        self.index.copy_(torch.tensor(list(slots), dtype=self.index.dtype), non_blocking=True)

    def nbytes(self) -> int:
        """Device bytes the slots hold."""
        return sum(t.numel() * t.element_size() for buf in self.buffers for t in buf.values())
