"""How fast the command line answers before any work: `--help` and a usage error, as a new user meets them.

    python -m bench.startup [--reps 5]     # prints the table and writes its section of docs/BENCHMARKS.md

Each command runs as a fresh process (the way a user runs it: allocator re-execution included), the commands in
turn within each repetition so that a change of load hits each alike; medians of wall time. The target (issue 28):
under 1 s on a quiet machine; the load average is printed with the table because on a busy 2-core machine every
process start is slower.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.run import DOC, STARTUP_HEADING as HEADING, replace_section
from formats.atomic import write_text

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "cli.py --help": ["cli.py", "--help"],
    "cli.py render --help": ["cli.py", "render", "--help"],
    "cli.py render --yaw 5 (usage error)": ["cli.py", "render", "--preset", "tiny", "--yaw", "5", "--out", "x.png"],
    "python -m runtime --help": ["-m", "runtime", "--help"],
}


def measure(reps: int) -> dict[str, float]:
    """Median seconds per command over `reps` rounds (commands in turn within a round)."""
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(reps):
        for name, args in COMMANDS.items():
            t0 = time.perf_counter()
            subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, timeout=300)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def section(medians: dict[str, float], reps: int, load: tuple[float, float]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [HEADING, "", f"`python -m bench.startup --reps {reps}` on {when}, {os.cpu_count()} cores; load average "
             f"{load[0]:.2f} before, {load[1]:.2f} after. Wall time of a fresh process, median of {reps}. Target: "
             f"under 1 s on a quiet machine.", "", "| command | seconds |", "|---|---:|"]
    lines += [f"| `{name}` | {s:.2f} |" for name, s in medians.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5, choices=range(1, 51), metavar="1..50")
    ap.add_argument("--out", type=Path, default=DOC, help="markdown file whose section is replaced")
    args = ap.parse_args(argv)
    before = os.getloadavg()[0]
    medians = measure(args.reps)
    text = section(medians, args.reps, (before, os.getloadavg()[0]))
    print(text)
    write_text(args.out, replace_section(args.out.read_text() if args.out.is_file() else "# Benchmarks\n", HEADING,
                                         text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
