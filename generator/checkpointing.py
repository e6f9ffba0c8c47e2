"""Gradient checkpointing of the generator: keep layer inputs, recompute the rest during backward.

A training step's memory is activations kept for backward, and almost all of them are produced inside three kinds
of region (ffhq512-128, one 512^2 view, fp32, counted on the meta device by train/memory_plan.py): the
super-resolution's modulated convolutions (2.2 GiB), the ray march's samples (1.5 GiB: 128^2 rays x 96 samples x
the decoder's widths) and the tri-plane backbone's convolutions (0.8 GiB per latent). With checkpointing on, each
StyleGAN2 layer (backbone and super-resolution) and each chunk of `ImportanceRenderer.ray_chunk` rays keeps only
its inputs and recomputes its insides when backward reaches it, so the step keeps layer boundaries and per-ray
results, and at most one region's insides exist at a time.

The recomputation is the same computation on the same inputs (the renderer's random numbers are drawn for all rays
before the chunks, `RayNoise`; layer noise is replayed from the saved RNG state), so gradients equal the
un-checkpointed ones to float rounding (tests/test_train_memory.py). It costs one more forward of the
checkpointed regions per step. Off by default on the module level; the trainer decides (`TrainConfig.checkpointing`).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

from generator.ops import exporting_or_compiling


class Checkpointable:
    """A module whose regions `checkpointed` may recompute; `gradient_checkpointing` is set by
    `set_gradient_checkpointing` on the whole generator (off by default)."""

    gradient_checkpointing: bool = False

    def checkpointed(self, fn: Callable, *args, preserve_rng: bool = True, **kwargs):
        """fn(*args, **kwargs), recomputed during backward when checkpointing is on and autograd records.

        Exports and torch.compile tracing take the plain call (nothing is recorded for backward there)."""
        if not (self.gradient_checkpointing and torch.is_grad_enabled()) or exporting_or_compiling():
            return fn(*args, **kwargs)
        return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=preserve_rng, **kwargs)


def set_gradient_checkpointing(module: torch.nn.Module, enabled: bool) -> list[str]:
    """Turn checkpointing on or off in every `Checkpointable` submodule; returns the names of those changed."""
    names = []
    for name, sub in module.named_modules():
        if isinstance(sub, Checkpointable):
            sub.gradient_checkpointing = bool(enabled)
            names.append(name)
    return names


def gradient_checkpointing_of(module: torch.nn.Module) -> bool:
    """True when any `Checkpointable` submodule checkpoints."""
    return any(isinstance(m, Checkpointable) and m.gradient_checkpointing for m in module.modules())
