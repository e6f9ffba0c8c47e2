"""Benchmark: people per hour, `cli.py train` one person after another vs `train-many` on a local Ray.

    python -m bench.train_many                         # rewrites the measured section of docs/SCALING.md
    python -m bench.train_many --no-write              # print only
    python -m bench.train_many --flops ffhq512-128     # counted FLOPs of a model's stages and training work

Every run trains the same roster (4 tiny people of 4 photos, subsets of samples/tiny_person) with the same
options (`--preset tiny`, 8 steps, 4 inversion steps): `cli.py train` once per person, one after another, once
per thread count of --sequential-threads (default: 1 torch thread, then torch's default of all cores: what a
user without train-many would script), then `train-many --workers 2 --cpus-per-person 1` once. Each run is timed
from its first process start to its last exit, so process start-up, imports and Ray's own start are included.
People per hour = people / wall seconds x 3600. When this runs as root with `unshare` available, train-many
runs in a private network namespace (Ray binds its servers to every interface; ../shared/docs/environment.md).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from formats.atomic import write_text
from formats.dataset import read_dataset_json, write_dataset_json

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples" / "tiny_person"
DOC = REPO / "docs" / "SCALING.md"
BEGIN, END = "<!-- bench.train_many: begin -->", "<!-- bench.train_many: end -->"


def make_sample_person(folder: Path, views) -> Path:
    """A preprocessed person folder holding the chosen views of the bundled sample person (and their labels)."""
    entries = read_dataset_json(SAMPLES)
    chosen = [entries[i % len(entries)] for i in views]
    folder.mkdir(parents=True)
    for name, _ in chosen:
        shutil.copy(SAMPLES / name, folder / name)
    write_dataset_json(folder, chosen)
    return folder


def make_sample_roster(root: Path, people: int, photos: int) -> Path:
    """`people` tiny people p0, p1, ...: person i holds `photos` consecutive sample views starting at view i."""
    for i in range(people):
        make_sample_person(root / f"p{i}", range(i, i + photos))
    return root


def train_args(iterations: int, inversion_steps: int) -> list[str]:
    return ["--preset", "tiny", "--iterations", str(iterations), "--inversion-steps", str(inversion_steps),
            "--checkpoint-every", str(max(1, iterations // 4)), "--no-preview"]


def can_isolate() -> bool:
    """True when `unshare -n` works here (root on Linux) and `ip` can bring up loopback inside it."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    return subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True).returncode == 0


def run_sequential(roster: Path, out: Path, args: list[str], threads: int | None) -> tuple[float, list[float]]:
    """`cli.py train` per person, one after another (torch threads: `threads`, None = torch's default);
    (wall seconds, per-person seconds)."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    per_person = []
    t0 = time.perf_counter()
    for person in sorted(roster.iterdir()):
        t = time.perf_counter()
        subprocess.run([sys.executable, str(REPO / "cli.py"), "train", "--data", str(person), "--out",
                        str(out / f"{person.name}.safetensors"), *args], check=True, capture_output=True, cwd=REPO,
                       env=env)
        per_person.append(time.perf_counter() - t)
    return time.perf_counter() - t0, per_person


def run_train_many(roster: Path, store: Path, args: list[str], workers: int, isolate: bool) -> tuple[float, dict]:
    """One `train-many` process (local Ray, `workers` people at once); (wall seconds, its summary JSON)."""
    cmd = [sys.executable, str(REPO / "cli.py"), "train-many", str(roster), "--out", str(store), "--workers",
           str(workers), "--cpus-per-person", "1", "--summary", str(store / "summary.json"), *args]
    if isolate:
        cmd = ["unshare", "-n", "sh", "-c", "ip link set lo up && exec " + " ".join(cmd)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"train-many failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return wall, json.loads((store / "summary.json").read_text())


def load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


def _threads(threads: int) -> str:
    return f"{threads} torch thread{'s' if threads > 1 else ''}" if threads else "torch's default threads"


def report(r: dict) -> str:
    """The markdown section written between BEGIN and END in docs/SCALING.md."""
    inner, n = r["summary"], r["people"]
    rows = [f"| `cli.py train` x {n}, one after another, {_threads(leg['threads'])} each | {leg['wall_s']:.1f} s | "
            f"{3600 * n / leg['wall_s']:.0f} | {', '.join(f'{s:.1f}' for s in leg['each_s'])} s |"
            for leg in r["sequential"]]
    isolated = ", in `unshare -n`" if r["isolated"] else ""
    task_walls = ", ".join(f"{p['wall_seconds']:.1f}" for p in inner["people"])
    rows.append(f"| `train-many --workers {r['workers']} --cpus-per-person 1` (local Ray{isolated}) | "
                f"{r['train_many_s']:.1f} s | {3600 * n / r['train_many_s']:.0f} | {task_walls} s (task wall) |")
    best = min(leg["wall_s"] for leg in r["sequential"])
    lines = [
        BEGIN,
        f"Measured {r['date']} on {r['machine']} (`python -m bench.train_many`): {n} tiny people of "
        f"{r['photos']} photos each, `{' '.join(r['args'])}`; 1-minute load average {r['load_before']} before, "
        f"{r['load_after']} after.",
        "",
        "| run | wall time | people per hour | per person |",
        "|---|---:|---:|---|",
        *rows,
        "",
        f"train-many vs the faster sequential run: {best / r['train_many_s']:.2f}x. Its wall time includes the "
        f"process start and imports ({r['train_many_s'] - inner['wall_seconds']:.1f} s) and Ray's start "
        f"({inner['ray'].get('start_seconds', float('nan')):.1f} s).",
        END,
    ]
    return "\n".join(lines)


def write_section(section: str, doc: Path = DOC) -> None:
    """Replace the measured section of `doc` (or append it when the markers are missing)."""
    text = doc.read_text() if doc.is_file() else ""
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    write_text(doc, text)


def count_flops(preset: str = "ffhq512-128") -> dict[str, float]:
    """Matmul/conv FLOPs (torch.utils.flop_counter: multiply-adds x 2; grid_sample and element-wise ops are not
    counted) of one image through each stage of `preset`, of one training step's work per photo (forward with
    the LoRA adapter attached, LPIPS-Alex on the final and raw images, backward), of one symmetry pair through
    a random IR-SE50 (forward + backward) and of one W-inversion step per photo (forward, LPIPS-VGG at 256,
    backward to w). Random weights: FLOPs do not depend on their values."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from generator.lora import PersonAdapter, attach, detach
    from generator.model_dir import build_generator
    from generator.views import camera_batch
    from perception.identity import IdentityEncoder
    from perception.lpips import LPIPS
    from train.config import TrainConfig
    from train.losses import resize_antialiased

    def flops(fn) -> float:
        with FlopCounterMode(display=False) as counter:
            fn()
        return float(counter.get_total_flops())

    torch.manual_seed(0)
    G = build_generator(preset_name=preset).eval().requires_grad_(False)
    c = camera_batch(G, [(0.0, 0.0)])
    z = torch.randn(1, G.z_dim)
    out: dict[str, float] = {}
    with torch.no_grad():
        ws = G.mapping(z, c)
        out["mapping"] = flops(lambda: G.mapping(z, c))
        out["backbone (tri-planes)"] = flops(lambda: G.planes(ws))
        planes = G.planes(ws)
        out["render + super-resolution"] = flops(lambda: G.render_planes(planes, ws, c))
    out["forward"] = out["mapping"] + out["backbone (tri-planes)"] + out["render + super-resolution"]
    alex, vgg = LPIPS("alex").requires_grad_(False), LPIPS("vgg").requires_grad_(False)
    adapter = PersonAdapter.create(G, TrainConfig().policy())
    target = torch.zeros(1, 3, G.img_resolution, G.img_resolution)
    target_raw = resize_antialiased(target, G.neural_rendering_resolution)

    def train_image():
        o = G.render_planes(G.planes(ws), ws, c)
        loss = alex(o["image"], target).mean() + alex(o["image_raw"], target_raw).mean()
        loss.backward()
    G.train()
    attach(G, adapter)
    try:
        out["training step per photo (fwd + LPIPS + bwd)"] = flops(train_image)
    finally:
        detach(G)
        G.eval()
    identity = IdentityEncoder.random("ir_se50", seed=0, crop="full").requires_grad_(False)
    pair = torch.zeros(2, 3, G.img_resolution, G.img_resolution, requires_grad=True)
    out["ArcFace pair (fwd + bwd)"] = flops(lambda: identity(pair).sum().backward())
    w = ws.detach().clone().requires_grad_(True)
    small = resize_antialiased(target, 256 if G.img_resolution > 256 else G.img_resolution // 2)

    def inversion_step():
        o = G.render_planes(G.planes(w), w, c)
        vgg(resize_antialiased(o["image"], small.shape[-1]), small).mean().backward()
    out["inversion step per photo (fwd + LPIPS-VGG + bwd)"] = flops(inversion_step)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--people", type=int, default=4)
    ap.add_argument("--photos", type=int, default=4, help="photos per person")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--inversion-steps", type=int, default=4)
    ap.add_argument("--sequential-threads", default="1,0",
                    help="comma-separated torch thread counts, one sequential run each (0: torch's default, "
                         "all cores)")
    ap.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                    help="run Ray inside `unshare -n` (default: when possible)")
    ap.add_argument("--write", action=argparse.BooleanOptionalAction, default=True,
                    help="rewrite the measured section of docs/SCALING.md")
    ap.add_argument("--flops", metavar="PRESET", help="only count the FLOPs of PRESET's stages and training work "
                                                     "(e.g. ffhq512-128) and print them as JSON")
    a = ap.parse_args(argv)
    if a.flops:
        print(json.dumps({k: v / 1e9 for k, v in count_flops(a.flops).items()}, indent=2))
        return 0
    isolate = can_isolate() if a.isolate is None else a.isolate
    args = train_args(a.iterations, a.inversion_steps)
    result = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
              "people": a.people, "photos": a.photos, "workers": a.workers, "args": args, "isolated": isolate,
              "load_before": load_average()}
    with tempfile.TemporaryDirectory(prefix="bench-train-many-") as tmp:
        tmp = Path(tmp)
        roster = make_sample_roster(tmp / "roster", a.people, a.photos)
        result["sequential"] = []
        for threads in (int(t) for t in a.sequential_threads.split(",")):
            out = tmp / f"seq{threads}"
            out.mkdir()
            wall, each = run_sequential(roster, out, args, threads or None)
            result["sequential"].append({"threads": threads, "wall_s": wall, "each_s": each})
            print(f"sequential, {_threads(threads)}: {wall:.1f} s", flush=True)
        result["train_many_s"], result["summary"] = run_train_many(roster, tmp / "store", args, a.workers, isolate)
        print(f"train-many: {result['train_many_s']:.1f} s", flush=True)
    result["load_after"] = load_average()
    section = report(result)
    print(section)
    if a.write:
        write_section(section)
        print(f"wrote the measured section of {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
