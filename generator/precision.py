"""Inference precision of the eager generator: fp32 (the default, exact), or the super-resolution in bf16 / fp16.

Reduced precision applies to the super-resolution only: its convolutions are most of a forward's work and
tolerate the rounding (oneDNN uses AMX or AVX512-BF16 where the CPU has them; elsewhere bf16 is emulated and
slower than fp32; fp16 is for CUDA). The mapping, the tri-plane backbone, the decoder, the ray march and the colour
integral stay fp32: their rounding, sampled along every ray, roughly doubled the image error. The image differs
from fp32 by up to ~1e-2 (tests/test_renderer_fast.py states the bound); fp32 stays the default everywhere.

`inference_precision` sets the precision for the code it wraps (a context variable, so threads and async tasks
each keep their own); `superresolution_precision` is the autocast the generator enters around its
super-resolution.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar

import torch

PRECISIONS = ("fp32", "bf16")
"""What the CPU command line offers."""
REDUCED = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""Reduced precisions and their dtypes (fp16: CUDA only)."""

_current: ContextVar[tuple[str, torch.dtype] | None] = ContextVar("my3dgen_sr_precision", default=None)


def cpu_has_fast_bf16() -> bool:
    """True when oneDNN has native bf16 kernels here (AVX512-BF16 or AMX)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def inference_precision(precision: str, device: str = "cpu"):
    """A context manager running the generator inside at `precision` ('fp32', 'bf16' or 'fp16') on `device`
    ('cpu', 'cuda', 'cuda:N'); an unknown precision is a ValueError at once.

    Outputs of a reduced-precision forward may be bfloat16/float16: callers cast what they keep with `.float()`.
    """
    if precision != "fp32" and precision not in REDUCED:
        raise ValueError(f"precision={precision!r}: expected one of {('fp32', *REDUCED)}")
    return _scoped(None if precision == "fp32" else (torch.device(device).type, REDUCED[precision]))


@contextlib.contextmanager
def _scoped(value: tuple[str, torch.dtype] | None):
    token = _current.set(value)
    try:
        yield
    finally:
        _current.reset(token)


def superresolution_precision():
    """The autocast the super-resolution runs under: the one `inference_precision` set, else none."""
    current = _current.get()
    if current is None:
        return contextlib.nullcontext()
    return torch.autocast(current[0], dtype=current[1])
