"""`python -m runtime EXPORT_DIR ADAPTER --yaw Y --out view.png`: one novel view of a person, without torch.

The smallest end-to-end use of the runtime (the demo's last step, and a check on a Jetson or GPU box).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from runtime import Runtime, RuntimeErrorBase


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runtime", description=__doc__.splitlines()[0])
    ap.add_argument("export_dir", type=Path, help="directory written by `cli.py export`")
    ap.add_argument("adapter", type=Path, help="a person's adapter file")
    ap.add_argument("--anchor", default="0", help="anchor name or index (default 0)")
    ap.add_argument("--yaw", type=float, default=0.0)
    ap.add_argument("--pitch", type=float, default=0.0)
    ap.add_argument("--budget-ms", type=float, default=None, help="fail fast if this latency cannot be met")
    ap.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = ap.parse_args(argv)
    name = args.adapter.stem.replace(".", "_")
    with tempfile.TemporaryDirectory() as people:
        try:
            rt = Runtime(args.export_dir, people_dir=people)
            rt.add_person(name, args.adapter)
            anchor = int(args.anchor) if args.anchor.isdigit() else args.anchor
            res = rt.novel_view(name, anchor=anchor, yaw=args.yaw, pitch=args.pitch, budget_ms=args.budget_ms)
        except (RuntimeErrorBase, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_bytes(res.png_bytes())
    shutil.move(tmp, args.out)
    print(f"wrote {args.out}; timings (ms): {json.dumps({k: round(v, 1) for k, v in res.timings.items()})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
