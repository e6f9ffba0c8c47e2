"""Inference precision of the eager generator: fp32 (the default, exact) or bf16 autocast on CPU.

bf16 runs the super-resolution's convolutions in bfloat16 (oneDNN uses AMX or AVX512-BF16 where the CPU has them;
elsewhere it is emulated and slower than fp32), with channels_last activations (generator/layers.CHANNELS_LAST).
The mapping, the tri-plane backbone, the decoder, the ray march and the colour integral stay fp32: their bf16
rounding, sampled along every ray, roughly doubled the image error. The image differs from fp32 by up to ~1e-2
(tests/test_renderer_fast.py states the bound); fp32 stays the default everywhere.
"""
from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16")


def cpu_has_fast_bf16() -> bool:
    """True when oneDNN has native bf16 kernels here (AVX512-BF16 or AMX)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def inference_precision(precision: str, device: str = "cpu"):
    """A context manager running the eager generator at `precision` ('fp32': nothing changes; 'bf16': autocast).

    Outputs of a bf16 forward may be bfloat16: callers cast what they keep with `.float()`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: expected one of {PRECISIONS}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=torch.bfloat16)
