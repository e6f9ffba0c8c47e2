"""Memory and time of one personalization step on this machine, with the switches of issue 29.

    python -m bench.train_step [--reps 8]     # prints the table and writes its section of docs/BENCHMARKS.md

The `train.Trainer` step the `train` command runs (the paper's recipe, L_sym in the same step with a random
IR-SE50 of the real size, LPIPS AlexNet, checkpoints off), on photos of the right size with cameras and anchors
drawn from a seed:
  memory  ffhq512-128 (random weights) at 512^2, batch 1, one symmetry step (3 views: the heaviest), fp32 with
          gradient checkpointing off and on, each in a fresh process (so its peak RSS is its own): peak RSS, its
          growth over the step, the memory plan's estimate (counted for the CUDA code path);
  time    models/heads with its identity network at the default batch 4, fp32 off / on and bf16 (emulated where the CPU has no
          AVX512-BF16/AMX), in one process, one step of each in turn for `reps` rounds after a warm-up round, so a
          change of load hits all alike: median seconds per step and the ratio to fp32 off.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.run import DOC, TRAIN_STEP_HEADING as HEADING, replace_section
from formats.atomic import write_text

REPO = Path(__file__).resolve().parents[1]
MEMORY_CASES = (("fp32", "off"), ("fp32", "on"))
TIME_CASES = (("fp32", "off"), ("fp32", "on"), ("bf16", "off"))


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _trainer(G, batch: int, precision: str, checkpointing: str, iterations: int, identity=None):
    import torch

    from generator.views import camera_batch
    from perception.identity import IdentityEncoder
    from perception.lpips import LPIPS
    from train.config import TrainConfig
    from train.data import TrainingSet
    from train.trainer import Trainer
    gen = torch.Generator().manual_seed(0)
    n = 4
    images = torch.rand(n, 3, G.img_resolution, G.img_resolution, generator=gen) * 2 - 1
    cams = camera_batch(G, [(0.3 * ((i % 3) - 1), 0.05 * (i % 2)) for i in range(n)])
    with torch.no_grad():
        anchors = G.mapping(torch.randn(n, G.z_dim, generator=gen), cams, truncation_psi=0.7)[:, 0]
    config = TrainConfig(batch=batch, iterations=iterations, precision=precision, checkpointing=checkpointing,
                         checkpoint_every=10 ** 6)
    return Trainer(G, TrainingSet(images, cams, [f"v{i}.png" for i in range(n)]), anchors, config,
                   identity=identity or IdentityEncoder.random(), lpips=LPIPS(config.lpips_net))


def memory_case(precision: str, checkpointing: str) -> dict:
    """In this process: one ffhq512-128 symmetry step at batch 1; seconds, peak RSS, RSS before it, the plan."""
    import torch

    from generator.model_dir import build_generator
    from train.memory_plan import plan_memory
    G = build_generator(preset_name="ffhq512-128")
    trainer = _trainer(G, 1, precision, checkpointing, 1)
    plan = plan_memory(G, trainer.config, trainer.lp, trainer.identity, 4, torch.device("cpu"), trainer.checkpointing)
    before = _rss_bytes()
    with trainer._training_mode():
        t0 = time.perf_counter()
        trainer._train_step(0)  # step 0 is a symmetry step
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rss_before": before,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "plan_peak": plan.peak()}


def time_cases(reps: int) -> list[dict]:
    """models/heads at batch 4: the cases' steps in turn, `reps` rounds after one warm-up round."""
    from generator.model_dir import load_model_dir
    from perception.heads_identity import load_heads_identity
    G = load_model_dir(REPO / "models" / "heads")
    identity = load_heads_identity()  # what `train --model models/heads` uses
    trainers = [_trainer(G, 4, p, c, reps + 1, identity) for p, c in TIME_CASES]
    times: list[list[float]] = [[] for _ in TIME_CASES]
    for step in range(reps + 1):
        for trainer, ts in zip(trainers, times):
            with trainer._training_mode():
                t0 = time.perf_counter()
                trainer._train_step(step)
                if step:
                    ts.append(time.perf_counter() - t0)
    base = statistics.median(times[0])
    return [{"model": "heads", "batch": 4, "precision": p, "checkpointing": c, "steps": reps,
             "seconds": statistics.median(ts), "ratio": statistics.median(ts) / base}
            for (p, c), ts in zip(TIME_CASES, times)]


def measure(reps: int, threads: int) -> list[dict]:
    rows = []
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    for precision, checkpointing in MEMORY_CASES:
        cmd = [sys.executable, "-m", "bench.train_step", "--memory-case", precision, checkpointing]
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[2:])} failed:\n{done.stderr[-2000:]}")
        rows.append({"model": "ffhq512-128", "batch": 1, "precision": precision, "checkpointing": checkpointing,
                     "steps": 1, **json.loads(done.stdout.strip().splitlines()[-1])})
        print(rows[-1], flush=True)
    import torch
    torch.set_num_threads(threads)
    rows += time_cases(reps)
    return rows


def section(rows: list[dict], reps: int, threads: int, load: tuple[float, float]) -> str:
    gib = 2 ** 30
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [HEADING, "", f"`python -m bench.train_step --reps {reps} --threads {threads}` on {when}, "
             f"{os.cpu_count()} cores, {threads} thread(s); load average {load[0]:.2f} before, {load[1]:.2f} after.",
             "", "Memory: one ffhq512-128 symmetry step (3 views at 512^2, the heaviest step), batch 1, each case a "
             "fresh process.", "", "| precision | checkpointing | s/step | peak RSS (GiB) | growth over the step "
             "(GiB) | plan (GiB) |", "|---|---|---:|---:|---:|---:|"]
    for r in (r for r in rows if r["model"] != "heads"):
        lines.append(f"| {r['precision']} | {r['checkpointing']} | {r['seconds']:.1f} | {r['peak_rss'] / gib:.2f} | "
                     f"{(r['peak_rss'] - r['rss_before']) / gib:.2f} | {r['plan_peak'] / gib:.2f} |")
    lines += ["", f"Time: models/heads, batch 4, the cases' steps in turn for {reps} rounds after a warm-up round "
              "(L_sym every 4th step), median.", "", "| precision | checkpointing | s/step | vs fp32 off |",
              "|---|---|---:|---:|"]
    for r in (r for r in rows if r["model"] == "heads"):
        lines.append(f"| {r['precision']} | {r['checkpointing']} | {r['seconds']:.3f} | {r['ratio']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=8, choices=range(1, 101), metavar="1..100")
    ap.add_argument("--threads", type=int, default=2, choices=range(1, 257), metavar="1..256")
    ap.add_argument("--out", type=Path, default=DOC, help="markdown file whose section is replaced")
    ap.add_argument("--memory-case", nargs=2, metavar=("PRECISION", "CHECKPOINTING"),
                    help="internal: run one memory case in this process and print its JSON")
    args = ap.parse_args(argv)
    if args.memory_case:
        print(json.dumps(memory_case(*args.memory_case)))
        return 0
    before = os.getloadavg()[0]
    rows = measure(args.reps, args.threads)
    text = section(rows, args.reps, args.threads, (before, os.getloadavg()[0]))
    print(text)
    write_text(args.out, replace_section(args.out.read_text() if args.out.is_file() else "# Benchmarks\n", HEADING,
                                         text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
