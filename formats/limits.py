"""The sizes and counts every reader accepts before it allocates anything from a file, in one dataclass.

A file states sizes (a safetensors header's shapes, an adapter's anchor count, a config's `w_dim`): each reader
checks them against `Limits` first, so a small hostile file cannot make a process allocate gigabytes. The
defaults are far above what the released models and real people need (docs/SECURITY.md lists them); a user
with a larger model or more photos raises a limit explicitly, either in code (`Limits(max_anchors=5000)`,
passed to the reader) or for every command at once with the environment variable MY3DGEN_LIMITS, e.g.
`MY3DGEN_LIMITS="max_anchors=5000,max_file_bytes=8589934592"`.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

LIMITS_ENV = "MY3DGEN_LIMITS"
"""Environment variable of comma-separated `field=value` overrides of the default limits."""


@dataclass(frozen=True)
class Limits:
    """What a file may ask a reader to allocate. Every field is a positive upper bound."""

    max_file_bytes: int = 4 << 30
    """Largest model, adapter, checkpoint or anchors file read (the ffhq512-128 model is ~120 MB)."""
    max_header_bytes: int = 16 << 20
    """Largest safetensors JSON header (the released model's is ~20 KB)."""
    max_metadata_bytes: int = 1 << 20
    """Largest metadata JSON (an adapter's 'my3dgen_adapter', a config.json, a checkpoint record)."""
    max_json_bytes: int = 64 << 20
    """Largest JSON file read (config.json, manifest.json, a checkpoint record)."""
    max_tensors: int = 100_000
    """Most tensors one safetensors file may hold."""
    max_anchors: int = 1024
    """Most anchors (photos) one person's adapter may hold (each costs num_ws x w_dim floats per worker)."""
    max_anchor_name_chars: int = 256
    """Longest anchor name."""
    max_rank: int = 1024
    """Largest LoRA rank."""
    max_alpha: float = 1e6
    """Largest |alpha| of a LoRA adapter (scale = alpha / rank); anything near float overflow is a corrupt file."""
    max_model_dim: int = 8192
    """Largest width of a network (z_dim, w_dim, channel_max, channels, decoder_hidden, feature counts)."""
    max_layers: int = 64
    """Most mapping-network layers."""
    max_resolution: int = 2048
    """Largest tri-plane, neural rendering, super-resolution input and image resolution."""
    max_depth_resolution: int = 1024
    """Most samples per ray (depth_resolution, depth_resolution_importance)."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"Limits.{f.name}={value!r}: must be a positive number")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Limits":
        """The defaults, overridden by MY3DGEN_LIMITS (`field=value,...`); a bad entry is a ValueError naming it."""
        text = (os.environ if environ is None else environ).get(LIMITS_ENV, "").strip()
        if not text:
            return cls()
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        values: dict[str, float | int] = {}
        for item in text.split(","):
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep or key not in types:
                raise ValueError(f"{LIMITS_ENV}: {item.strip()!r} is not field=value with a field among "
                                 f"{', '.join(types)}")
            try:
                values[key] = float(raw) if types[key] == "float" else int(raw.strip())
            except ValueError:
                raise ValueError(f"{LIMITS_ENV}: {key}={raw.strip()!r} is not a number") from None
        return cls(**values)


def current_limits(limits: Limits | None = None) -> Limits:
    """`limits` when given, else the defaults with the environment's overrides (read at every call)."""
    return limits if limits is not None else Limits.from_env()


def raise_hint(field: str) -> str:
    """The words that tell a user how to raise limit `field`."""
    return f"raise it with {LIMITS_ENV}=\"{field}=N\" if the file is trusted"
