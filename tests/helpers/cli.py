"""Run `cli.py` the way a user does: a subprocess in the repository root."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python cli.py ARGS...`; with `check`, a non-zero exit fails the test with the command's output."""
    proc = subprocess.run([sys.executable, str(REPO / "cli.py"), *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"cli {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def help_words(*command: str) -> str:
    """`python cli.py COMMAND --help`, piped (the help's 120 columns, nothing cut), as its words joined by single
    spaces without the table borders, so a sentence of an option's help can be searched whatever its wrapping."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "TERMINAL_WIDTH")}
    out = subprocess.run([sys.executable, str(REPO / "cli.py"), *command, "--help"], capture_output=True, text=True,
                         cwd=REPO, env=env, timeout=120, check=True).stdout
    return " ".join(out.replace("│", " ").split())
