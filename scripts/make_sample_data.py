"""Regenerate the bundled sample data `samples/tiny_person/` (deterministic): ten views of the synthetic person G*.

    python scripts/make_sample_data.py [--out samples/tiny_person]

G* is defined in fixtures/synthetic.py (the tiny preset generator plus a known random low-rank change).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "samples" / "tiny_person", help="folder to (re)write")
    args = parser.parse_args(argv)
    from fixtures.synthetic import write_sample_dataset
    out = write_sample_dataset(args.out, overwrite=True)
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({len(list(out.glob('*.png')))} views, {size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
