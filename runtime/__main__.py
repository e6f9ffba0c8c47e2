"""`python -m runtime EXPORT_DIR [ADAPTER] --yaw Y --out view.png`: one novel view of a person, without torch.

ADAPTER is the person's adapter file for a keep-LoRA export (`cli.py export --keep-lora`); a merged export
(`--merge-lora`) is one person already and is rendered without it.

The smallest end-to-end use of the runtime (the demo's last step, and a check on a Jetson or GPU box). With
`--video turntable` (EG3D's orbit) or `--video interpolate --to B` (anchor to anchor, camera included) it writes an
mp4 or GIF instead (media.runtime_video), the same videos as `cli.py render --video` and the HTTP `video` op.
The runtime interpolates between a person's anchors only; `cli.py render --video interpolate` also takes seeds
and latent files.

Every number is finite and within a range stated in `--help` (the camera angles of formats.limits, counts up to a
`formats.limits.Limits` field that MY3DGEN_LIMITS raises), checked before the export is loaded; a bad command line
is one line `error: ...` and exit code 2, as in `cli.py`.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from formats.atomic import write_bytes
from formats.limits import LIMITS_ENV, MAX_ABS_PITCH, MAX_ABS_YAW, Limits, current_limits
from runtime import Runtime, RuntimeErrorBase
from runtime.backend import BACKENDS, PRECISIONS
from runtime.people import is_index
from runtime.requests import RequestLimits

MAX_BUDGET_MS = 3_600_000.0
"""Largest --budget-ms: an hour."""


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class Number:
    """argparse type of a finite `kind` (int or float) in [low, high]; `high` is a number or the name of a
    `formats.limits.Limits` field (MY3DGEN_LIMITS raises it). Anything else is an error naming the value and the
    range, as cli.py's options say it."""

    kind: type
    low: float
    high: float | str

    @property
    def limit(self) -> str | None:
        """The `Limits` field that bounds the value, if any."""
        return self.high if isinstance(self.high, str) else None

    def describe(self) -> str:
        """The range, with a limit's default: what --help says."""
        if self.limit is None:
            return f"in [{_fmt(self.low)}, {_fmt(self.high)}]"
        return f"in [{_fmt(self.low)}, {_fmt(getattr(Limits(), self.limit))}] ({self.limit} in {LIMITS_ENV})"

    def __call__(self, text: str) -> int | float:
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if self.kind is int else 'a number'}"
                                             ) from None
        try:
            high = getattr(current_limits(), self.limit) if self.limit else self.high
        except ValueError as e:  # a malformed MY3DGEN_LIMITS
            raise argparse.ArgumentTypeError(str(e)) from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be finite and in [{_fmt(self.low)}, {_fmt(high)}], got {text}")
        if self.limit is not None and value > high:
            raise argparse.ArgumentTypeError(f"{text} is outside [{_fmt(self.low)}, {_fmt(high)}], above the limit "
                                             f'{self.limit}; raise it with {LIMITS_ENV}="{self.limit}=N"')
        if not self.low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is outside [{_fmt(self.low)}, {_fmt(high)}]")
        return value


class UsageError(Exception):
    """A bad command line; `main` prints it as one line `error: ...` and returns 2, as cli.py reports usage
    errors."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError where argparse prints the usage and exits."""

    def error(self, message: str):
        raise UsageError(message)


def _preload_allocator() -> None:
    """Re-execute under jemalloc/tcmalloc when installed (launch/allocator.py, shipped in the runtime wheel)."""
    from launch.allocator import preload
    preload()


def _video(rt: Runtime, person: str, anchor, args: argparse.Namespace) -> int:
    from media.runtime_video import render_video, video_frames
    from media.video_writer import check_video_path, write_video
    check_video_path(args.out)
    if args.video == "turntable":
        what = {"anchor": anchor}
    else:
        what = {"a": anchor, "b": int(args.to) if is_index(args.to) else args.to}
    results = render_video(rt, args.video, person, frames=args.frames, budget_ms=args.budget_ms, **what)
    print(write_video(video_frames(results), args.out, fps=args.fps).summary())
    return 0


def _person(rt: Runtime, adapter: Path | None) -> str:
    """The person to render: the merged one, or the adapter file's (copied in under a fixed name, since the file's
    name need not be a valid person name); ValueError when the export and the arguments disagree."""
    if rt.mode == "merged":
        merged = rt.people()[0]
        if adapter is not None:
            raise ValueError(f"{adapter}: this export has {merged!r} merged into its weights; render it without an "
                             f"adapter argument (a keep-LoRA export, `cli.py export --keep-lora`, takes adapters)")
        return merged
    if rt.mode != "keep-lora":
        raise ValueError("this export is the base model alone (no person): export a person with --keep-lora or "
                         "--merge-lora, or render the base model with `cli.py render`")
    if adapter is None:
        raise ValueError("this keep-LoRA export renders a person's adapter: give ADAPTER (the .safetensors file that "
                         "`cli.py train` wrote)")
    rt.add_person("person", adapter)
    return "person"


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m runtime`."""
    yaw, pitch = Number(float, -MAX_ABS_YAW, MAX_ABS_YAW), Number(float, -MAX_ABS_PITCH, MAX_ABS_PITCH)
    budget = Number(float, 1.0, MAX_BUDGET_MS)
    frames, fps = Number(int, 1, "max_video_frames"), Number(float, 1.0, "max_fps")
    ap = _Parser(prog="python -m runtime", description=__doc__.splitlines()[0])
    ap.add_argument("export_dir", type=Path, help="directory written by `cli.py export`")
    ap.add_argument("adapter", type=Path, nargs="?",
                    help="a person's adapter file (keep-LoRA exports; a merged export renders its own person)")
    ap.add_argument("--anchor", default="0", help="anchor name or index (default 0)")
    ap.add_argument("--yaw", type=yaw, default=0.0, help=f"camera yaw from frontal, radians, {yaw.describe()}")
    ap.add_argument("--pitch", type=pitch, default=0.0, help=f"camera pitch, radians, {pitch.describe()}")
    ap.add_argument("--budget-ms", type=budget, default=None,
                    help=f"fail fast if this latency cannot be met (ms, {budget.describe()})")
    ap.add_argument("--out", type=Path, required=True, help="PNG to write (.mp4 or .gif with --video)")
    ap.add_argument("--video", choices=("turntable", "interpolate"), help="write a video of --anchor instead")
    ap.add_argument("--to", help="--video interpolate: the last frame's anchor (name or index); the runtime "
                                 "interpolates between a person's anchors only (between seeds or latent files: "
                                 "`cli.py render --video interpolate --from/--to`)")
    ap.add_argument("--frames", type=frames, default=16,
                    help=f"video frames (default 16), {frames.describe()} and at most the runtime's "
                         f"{RequestLimits().max_frames}")
    ap.add_argument("--fps", type=fps, default=30.0, help=f"video frame rate (default 30), {fps.describe()}")
    ap.add_argument("--backend", choices=BACKENDS, default="auto",
                    help="what runs the model (default auto: torch or onnxruntime, whichever renders faster here, by "
                         "the rule in runtime/choose_backend.py, timed and logged at start-up)")
    ap.add_argument("--precision", choices=PRECISIONS, default="fp32",
                    help="fp32 (default); bf16 (torch backend: CUDA, or CPUs with native bf16); fp16 (torch on CUDA)")
    ap.add_argument("--device", help="torch backend: cpu, cuda or cuda:N (default: cuda where torch sees a GPU)")
    ap.add_argument("--compile", action="store_true",
                    help="torch backend: torch.compile each stage before its first run (minutes of start-up)")
    return ap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The checked command line; UsageError naming what is wrong, before anything is loaded."""
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.video is None and args.to is not None:
        ap.error("--to is for --video interpolate")
    if args.video == "interpolate" and args.to is None:
        ap.error("--video interpolate needs --to B (the last frame's anchor)")
    if args.frames > RequestLimits().max_frames:
        ap.error(f"argument --frames: {args.frames} is above the runtime's {RequestLimits().max_frames} frames per "
                 f"video (runtime.requests.RequestLimits)")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as people:
        try:
            rt = Runtime(args.export_dir, people_dir=people, backend=args.backend, precision=args.precision,
                         device=args.device, compile=args.compile)
            name = _person(rt, args.adapter)
            anchor = int(args.anchor) if is_index(args.anchor) else args.anchor
            if args.video is not None:
                return _video(rt, name, anchor, args)
            res = rt.novel_view(name, anchor=anchor, yaw=args.yaw, pitch=args.pitch, budget_ms=args.budget_ms)
        except (RuntimeErrorBase, OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    write_bytes(args.out, res.png_bytes())
    print(f"wrote {args.out}; timings (ms): {json.dumps({k: round(v, 1) for k, v in res.timings.items()})}")
    return 0


if __name__ == "__main__":
    _preload_allocator()
    raise SystemExit(main())
