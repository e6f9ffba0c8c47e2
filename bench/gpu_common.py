"""What the GPU check's sections share (bench/gpu_check.py, bench/gpu_serve.py): timing synchronized on CUDA, the
generator's precision context of a dtype name, the random-weight generator, differences and table cells."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

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
    """The generator's precision context of a dtype name (generator/precision.py: fp32 everywhere but the
    super-resolution)."""
    from generator.precision import inference_precision
    return inference_precision(dtype, device.type)


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


def inputs(G, batch: int, device: torch.device, seed: int):
    """Seeded latents [B, z_dim] and cameras [B, 25] around the front, on `device`."""
    from generator.views import camera_batch
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, G.z_dim, generator=gen)
    views = [(0.35 * ((i % 3) - 1), 0.1 * ((i % 2) * 2 - 1)) for i in range(batch)]
    c = camera_batch(G, views)
    return z.to(device), c.to(device)


def row(op: str, dtype: str, batch: int, t: dict, **extra) -> dict:
    """A timing row of a table: ms, min ms and images per second of `timed`'s result."""
    return {"op": op, "dtype": dtype, "batch": batch, "ms": round(t["median_s"] * 1e3, 3),
            "min_ms": round(t["min_s"] * 1e3, 3), "images_per_s": round(batch / t["median_s"], 2), **extra}


def guarded(rows: list, op: str, dtype: str, batch: int, fn: Callable[[], dict],
             progress: Callable[[dict], None] | None = None) -> None:
    """Append fn()'s row, or the case's error: one failing case does not stop its section."""
    try:
        rows.append(fn())
    except Exception as e:  # noqa: BLE001
        rows.append({"op": op, "dtype": dtype, "batch": batch, "error": f"{type(e).__name__}: {e}"[:500]})
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if progress is not None:
        progress({"rows": rows})
