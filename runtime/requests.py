"""Request validation, in one place: every value a caller (Python or HTTP) gives the runtime is checked here.

Each check returns the cleaned value or raises InvalidRequest naming the field. `Runtime` runs them on its
arguments; `serve.requests` runs the same ones while decoding JSON (and turns InvalidRequest into HTTP 400).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from formats.limits import MAX_ABS_PITCH, MAX_ABS_YAW
from formats.names import NAME_RULE, is_valid_name
from runtime.errors import InvalidRequest

Anchor = Union[str, int]
"""An anchor name (a photo's name) or index."""
MAX_ANCHOR_CHARS = 256


@dataclass(frozen=True)
class RequestLimits:
    """What a request may ask for."""

    max_abs_yaw: float = MAX_ABS_YAW
    """Largest |yaw| in radians (views further round the head leave the training distribution)."""
    max_abs_pitch: float = MAX_ABS_PITCH
    """Largest |pitch| in radians."""
    max_frames: int = 64
    """Most frames of one turntable or interpolation."""


def is_number(value: Any) -> bool:
    """An int or float (numpy scalars included), not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def number(field: str, value: Any, lo: float | None = None, hi: float | None = None, unit: str = "") -> float:
    """A finite number, within [lo, hi] when given."""
    if not is_number(value):
        raise InvalidRequest(field, f"must be a number, got {type(value).__name__} {value!r:.40}")
    v = float(value)
    if not math.isfinite(v):
        raise InvalidRequest(field, f"must be finite, got {v}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise InvalidRequest(field, f"{v:g} is outside the supported range [{lo:g}, {hi:g}]" + (f" {unit}" if unit
                                                                                                 else ""))
    return v


def integer(field: str, value: Any, lo: int, hi: int) -> int:
    """An integer in [lo, hi] (a float with an integral value is accepted, a bool is not)."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InvalidRequest(field, f"must be an integer, got {type(value).__name__} {value!r:.40}")
    if not lo <= int(value) <= hi:
        raise InvalidRequest(field, f"{int(value)} is outside the supported range [{lo}, {hi}]")
    return int(value)


def angle(field: str, value: Any, limits: RequestLimits) -> float:
    """'yaw' or 'pitch' in radians, within the limits."""
    limit = getattr(limits, f"max_abs_{field}")
    return number(field, value, -limit, limit, "radians")


def weight(field: str, value: Any) -> float:
    """An interpolation weight in [0, 1]."""
    return number(field, value, 0.0, 1.0)


def budget_ms(value: Any, field: str = "budget_ms") -> float | None:
    """A latency budget: None (no deadline) or a positive number of milliseconds."""
    if value is None:
        return None
    v = number(field, value)
    if v <= 0:
        raise InvalidRequest(field, f"must be a positive number of milliseconds, got {v:g}")
    return v


def frames(value: Any, limits: RequestLimits, lo: int = 1) -> int:
    """A frame count in [lo, limits.max_frames]."""
    return integer("frames", value, lo, limits.max_frames)


def name(value: Any, field: str = "person") -> str:
    """A person (or model) name: formats.names' rule, so it can never address another path."""
    if not isinstance(value, str):
        raise InvalidRequest(field, f"must be a string, got {type(value).__name__}")
    if not is_valid_name(value):
        raise InvalidRequest(field, f"{value!r:.40} is not a valid name: use {NAME_RULE}")
    return value


def anchor(field: str, value: Any) -> Anchor:
    """An anchor index (>= 0) or name (1-256 printable characters); whether it exists is the person's business."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (str, int, np.integer)):
        raise InvalidRequest(field, f"must be an anchor name (string) or index (integer), got "
                                    f"{type(value).__name__}")
    if isinstance(value, (int, np.integer)):
        if value < 0:
            raise InvalidRequest(field, f"{int(value)}: anchor indices start at 0")
        return int(value)
    if not 1 <= len(value) <= MAX_ANCHOR_CHARS:
        raise InvalidRequest(field, f"must have 1-{MAX_ANCHOR_CHARS} characters")
    if any(ord(ch) < 32 for ch in value):
        raise InvalidRequest(field, "contains control characters")
    return value


def latent(value: Any, w_dim: int, num_ws: int) -> np.ndarray:
    """A W [w_dim] or W+ [num_ws, w_dim] latent of finite numbers, returned as float32 W+ [num_ws, w_dim]."""
    try:
        w = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidRequest("latent", f"must be a float array, got {type(value).__name__}") from None
    if w.shape == (w_dim,):
        w = np.repeat(w[None], num_ws, axis=0)
    elif w.shape != (num_ws, w_dim):
        raise InvalidRequest("latent", f"shape {list(w.shape)}: expected W [{w_dim}] or W+ [{num_ws}, {w_dim}]")
    if not np.isfinite(w).all():
        raise InvalidRequest("latent", "has non-finite values")
    return w


def camera(value: Any, field: str = "camera") -> np.ndarray:
    """A camera label of 25 finite numbers (cam2world 4x4 + intrinsics 3x3, flattened), as float32 [25]."""
    try:
        c = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidRequest(field, f"must be 25 numbers, got {type(value).__name__}") from None
    if c.size != 25:
        raise InvalidRequest(field, f"shape {list(c.shape)}: expected 25 numbers (a camera label)")
    if not np.isfinite(c).all() or np.abs(c).max() > 1e6:
        raise InvalidRequest(field, "must be finite numbers of magnitude at most 1e6")
    return c.reshape(25)

