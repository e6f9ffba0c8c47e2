"""The web page's settings, torch-free so `cli.py web --help` and its range checks answer without importing torch:
what one request may cost and how long it may take (`WebLimits`), and where and how the server listens
(`ServerOptions`). Each field has a range, checked when the dataclass is built; the CLI reads its ranges from here.
`check_page_source` is the command line's rule for what the page serves: exactly one of --export, --model and
--preset, and --backend / --precision only with --export.
"""
from __future__ import annotations

import ipaddress
import math
import secrets
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class WebLimits:
    """What one request may cost and how long it may take; each field has a range (`RANGES`), checked here."""

    max_frames: int = 120
    """Most frames of one video."""
    max_mesh_resolution: int = 192
    """Largest side of a mesh's density grid."""
    video_size: int | None = None
    """Side of a video frame in pixels, even (None: the generator's)."""
    view_budget_s: float = 30.0
    """Time budget of one view or interpolation, seconds: refused (503) when it cannot be met, waiting included."""
    video_budget_s: float = 300.0
    """Time budget of one video, seconds: refused (503) when the estimate exceeds it, stopped (504) midway."""
    mesh_budget_s: float = 180.0
    """Time budget of one mesh, seconds (as video_budget_s)."""
    max_jobs: int = 1
    """Videos and meshes made at once; one more is a 503 with Retry-After (views go on beside them)."""

    RANGES = {"max_frames": (2, 1000), "max_mesh_resolution": (16, 512), "video_size": (16, 2048),
              "view_budget_s": (0.1, 600.0), "video_budget_s": (0.1, 3600.0), "mesh_budget_s": (0.1, 3600.0),
              "max_jobs": (1, 8)}

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "video_size" and value is None:
                continue
            check_setting(f"WebLimits.{f.name}", value, *self.RANGES[f.name], integer="int" in str(f.type))
        if self.video_size is not None and self.video_size % 2:
            raise ValueError(f"WebLimits.video_size must be even (H.264), got {self.video_size}")

    def budget_s(self, kind: str) -> float:
        """The time budget of a request of `kind` (one of KINDS)."""
        return getattr(self, f"{kind}_budget_s")


def check_setting(name: str, value, lo: float, hi: float, integer: bool = False) -> None:
    """Raise ValueError naming `name` unless `value` is a finite number (an int when `integer`) within [lo, hi]."""
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value) or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind} within [{lo:g}, {hi:g}], got {value!r}")


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerOptions:
    """Where and how the page's server listens; each number has a range (`RANGES`), checked here."""

    host: str = "127.0.0.1"
    """Address to listen on; anything but loopback always gets a token (generated if not given)."""
    port: int = 8765
    """Port (0: any free port)."""
    token: str | None = None
    """What every request must carry (>= 16 characters), or None on loopback."""
    read_timeout_s: float = 30.0
    """Seconds a connection may stay silent (idle keep-alive or a half-sent request) before it is closed."""
    max_connections: int = 32
    """Connections served at once; one more is answered 503 at once."""

    RANGES = {"port": (0, 65535), "read_timeout_s": (0.1, 3600.0), "max_connections": (1, 1024)}

    def __post_init__(self):
        for name, (lo, hi) in self.RANGES.items():
            check_setting(f"ServerOptions.{name}", getattr(self, name), lo, hi, integer=isinstance(lo, int)
                          and isinstance(hi, int))

    def resolved_token(self) -> str | None:
        if self.token is not None and len(self.token) < 16:
            raise ValueError("--token must be at least 16 characters")
        if self.token is None and not is_loopback(self.host):
            return secrets.token_urlsafe(24)
        return self.token


def check_page_source(export, model, preset, backend: str | None = None, precision: str | None = None) -> None:
    """Refuse (ValueError) a `cli.py web` command line that does not give exactly one of --export, --model and
    --preset, or gives --backend / --precision (how an export is served) without --export."""
    given = [opt for opt, value in (("--export", export), ("--model", model), ("--preset", preset))
             if value is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of --export DIR, --model DIR or --preset NAME"
                         + (f" (got {' and '.join(given)})" if given else ""))
    if export is None:
        extra = [opt for opt, value in (("--backend", backend), ("--precision", precision)) if value is not None]
        if extra:
            raise ValueError(f"{' and '.join(extra)} {'choose' if len(extra) > 1 else 'chooses'} how an export is "
                             f"served: give {'them' if len(extra) > 1 else 'it'} with --export DIR (--model / --preset "
                             f"run the generator eagerly)")
