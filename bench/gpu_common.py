"""What the GPU check's sections share (bench/gpu_check.py, bench/gpu_serve.py): timing synchronized on CUDA, the
autocast of a dtype name, the random-weight generator, differences and table cells."""
from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any, Callable

import torch

DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def times(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of `fn` after `warmup` untimed ones, synchronized on CUDA."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> dict:
    """Median/min seconds of `fn` over `repeats` runs after `warmup` untimed ones, synchronized on CUDA."""
    t = times(fn, device, warmup, repeats)
    return {"median_s": statistics.median(t), "min_s": min(t), "repeats": repeats, "warmup": warmup}


def autocast(device: torch.device, dtype: str):
    """The autocast context of a dtype name ('fp32': none)."""
    if DTYPES[dtype] is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])


def max_diff(a: torch.Tensor, b) -> float:
    b = torch.as_tensor(b)
    return float((a.detach().double().cpu() - b.double().cpu()).abs().max())


def generator_of(preset: str, seed: int, device: torch.device):
    """The preset's generator with random weights drawn from `seed`, in eval mode, on `device`."""
    from generator.model_dir import build_generator
    torch.manual_seed(seed)
    return build_generator(preset_name=preset).eval().requires_grad_(False).to(device)


def cell(v) -> str:
    """A markdown table cell of a value."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {cell(x)}" for k, x in v.items())
    return str(v).replace("|", "/")
