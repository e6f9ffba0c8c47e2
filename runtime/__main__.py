"""`python -m runtime EXPORT_DIR ADAPTER --yaw Y --out view.png`: one novel view of a person, without torch.

The smallest end-to-end use of the runtime (the demo's last step, and a check on a Jetson or GPU box). With
`--video turntable` (EG3D's orbit) or `--video interpolate --to B` (anchor to anchor, camera included) it writes an
mp4 or GIF instead (media.runtime_video), the same videos as `cli.py render --video` and the HTTP `video` op.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from formats.atomic import write_bytes
from runtime import Runtime, RuntimeErrorBase
from runtime.people import is_index


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runtime", description=__doc__.splitlines()[0])
    ap.add_argument("export_dir", type=Path, help="directory written by `cli.py export`")
    ap.add_argument("adapter", type=Path, help="a person's adapter file")
    ap.add_argument("--anchor", default="0", help="anchor name or index (default 0)")
    ap.add_argument("--yaw", type=float, default=0.0)
    ap.add_argument("--pitch", type=float, default=0.0)
    ap.add_argument("--budget-ms", type=float, default=None, help="fail fast if this latency cannot be met")
    ap.add_argument("--out", type=Path, required=True, help="PNG to write (.mp4 or .gif with --video)")
    ap.add_argument("--video", choices=("turntable", "interpolate"), help="write a video of --anchor instead")
    ap.add_argument("--to", help="--video interpolate: the last frame's anchor (name or index)")
    ap.add_argument("--frames", type=int, default=16, help="video frames (default 16)")
    ap.add_argument("--fps", type=float, default=30.0, help="video frame rate (default 30)")
    args = ap.parse_args(argv)
    if args.video is None and args.to is not None:
        ap.error("--to is for --video interpolate")
    if args.video == "interpolate" and args.to is None:
        ap.error("--video interpolate needs --to B (the last frame's anchor)")
    name = "person"  # the file's name need not be a valid person name: it is copied under this one
    with tempfile.TemporaryDirectory() as people:
        try:
            rt = Runtime(args.export_dir, people_dir=people)
            rt.add_person(name, args.adapter)
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
