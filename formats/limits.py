"""Every size and count the product accepts, in one dataclass: what a file may state and what a user may ask for.

A file states sizes (a safetensors header's shapes, an adapter's anchor count, a config's `w_dim`): each reader
checks them against `Limits` first, so a small hostile file cannot make a process allocate gigabytes. A user sets
counts and sizes on the command line (video frames, image sides, grid views, steps, workers): each command checks
them against `Limits` before any work starts, so a typo cannot run for hours or allocate gigabytes. The defaults
are far above what the released models and real people need (docs/SECURITY.md lists them); a user with a larger
model, more photos or a longer video raises a limit explicitly, either in code (`Limits(max_anchors=5000)`,
passed to the reader) or for every command at once with the environment variable MY3DGEN_LIMITS, e.g.
`MY3DGEN_LIMITS="max_anchors=5000,max_video_frames=3000"`.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

LIMITS_ENV = "MY3DGEN_LIMITS"
"""Environment variable of comma-separated `field=value` overrides of the default limits."""


@dataclass(frozen=True)
class Limits:
    """What a file may ask a reader to allocate, and what a user may ask a command to do. Every field is a positive
    upper bound."""

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
    max_nesting: int = 200
    """Deepest nesting the official-pickle reader follows (modules in modules, dicts in lists in init_kwargs...):
    the released pickle nests about 10 deep, and an unbounded depth (or a reference cycle) ends in a
    RecursionError."""
    max_video_frames: int = 1000
    """Most frames of a video a command renders (`render --video --frames`, `python -m runtime --frames`) or lets
    a request ask for (`package --max-frames`): the default turntable has 60 and the server allows 64; every
    frame is a full render, so this bounds the run time."""
    max_image_size: int = 2048
    """Largest side in pixels of an image or video frame a command resizes to (`render --video --size`,
    `preprocess --size`): 4x the released model's 512. A frame that size is 12 MiB, and a GIF keeps them all in
    memory."""
    max_fps: float = 60.0
    """Largest frame rate of a video a command writes (`render --fps`, `python -m runtime --fps`), the same as
    the server's video op allows (a GIF shows at most 50)."""
    max_views: int = 100
    """Most camera views one command renders from a list (`render --grid-yaws x --grid-pitches`, `eval
    --inversion-yaws x --inversion-pitches`): a 10 x 10 grid; every view is a full render."""
    max_seeds: int = 1000
    """Most seeds one `render --seeds` call renders (one picture each, as EG3D's gen_samples.py)."""
    max_latent_file_bytes: int = 16 << 20
    """Largest latent file (.npz / .npy) read (`render --video interpolate --from/--to FILE`): EG3D's
    projected_w.npz of ffhq512-128 is ~30 KB."""
    max_mesh_resolution: int = 512
    """Largest density grid side N of `mesh --resolution` (N^3 samples): EG3D's own 512, a 512 MiB volume, the
    most the mesh code supports."""
    max_mesh_chunk: int = 1 << 22
    """Most points per decoder call of `mesh --chunk`: 16x the default 2^18, whose activations take a few
    hundred MB."""
    max_batch: int = 64
    """Largest batch a command trains, inverts, exports or serves with (`train --batch` and `--inversion-batch`,
    `export --max-batch` and `--mixed-batch`, `build-engine --max-batch`, `package --batch-size`): a LoRA step
    on ffhq512-128 needs ~17 GiB of GPU memory per photo, so 64 is beyond any one GPU."""
    max_steps: int = 1_000_000
    """Most optimisation steps of one run, and the longest period counted in steps (`train --iterations`,
    `--inversion-steps`, `--sym-every`, `--checkpoint-every`; `invert`/`eval` `--latent-steps`, `--tune-steps`,
    `--anchor-steps`): 8x the 125,000 steps of the authors' recipe."""
    max_workers: int = 1024
    """Most worker processes or threads a command starts (`train-many --workers`, `package --workers` and
    `--threads`): more than the cores of one machine."""
    max_cache_entries: int = 100_000
    """Most entries of one in-memory cache a server keeps (handler `plane_cache_size`, `adapter_cache_size`;
    `package --plane-cache-size`): the byte bound below is what limits memory; this bounds bookkeeping."""
    max_plane_cache_mb: float = 1 << 20
    """Largest tri-plane cache of one worker, in MiB (handler `plane_cache_mb`, `package --plane-cache-mb`): 1 TiB,
    beyond any one machine's memory (an ffhq512-128 latent's planes are 24 MiB)."""
    max_eval_count: int = 1000
    """Most anchor pairs, views per weight, interpolation weights or test photos of one `eval` run (the paper
    uses 10, 20, 10 and every test photo); the run time grows with their product."""

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


def raise_hint(field: str, for_a_file: bool = True) -> str:
    """The words that tell a user how to raise limit `field` (for a file's sizes: only if the file is trusted)."""
    return f"raise it with {LIMITS_ENV}=\"{field}=N\"" + (" if the file is trusted" if for_a_file else "")


MAX_ABS_YAW = 0.8
"""Largest |yaw| (radians from frontal) any command, request or page renders: further round the head the views
leave the distribution EG3D was trained on (its FFHQ poses). One range for the CLI, the runtime, the server and
the web page."""
MAX_ABS_PITCH = 0.5
"""Largest |pitch| (radians from frontal), for the same reason as MAX_ABS_YAW."""
