"""Do issue 29's switches change what training learns? Novel-view LPIPS of three held-out people, per switch.

    python scripts/precision_check.py [--iterations 200] [--inversion-steps 50] [--threads 2]

For the demo person (samples/heads_person) and two more held-out head-world people (HELDOUT_SEEDS offsets 400 and
401, photographed at the demo's PERSON_POSES), `models/heads` is personalized with the paper's recipe three times
from the same anchors (one shared inversion cache): fp32 without gradient checkpointing (the path before issue
29, and what `--checkpointing auto` does on a CPU), fp32 with checkpointing (what `auto` does on CUDA), and bf16.
Each adapter's novel views are compared with the world's true views at NOVEL_POSES (`scripts/heads_figures.py
compare`'s measurement). Targets: checkpointing within +-0.005 LPIPS of fp32 off on every person, bf16 within
+-0.01. Results go to docs/training_length/precision.json and a section of docs/TRAINING_LENGTH.md.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = {"fp32, checkpointing off": ("fp32", "off"), "fp32, checkpointing on": ("fp32", "on"),
            "bf16, checkpointing off": ("bf16", "off")}
EXTRA_PEOPLE = (400, 401)
"""HELDOUT_SEEDS offsets of the two more people (0 is the demo person; 200.. the Table 1-4 people, 300.. the
symmetry experiment's)."""
HEADING = "## Precision and checkpointing (issue 29)"


def _figures():
    spec = importlib.util.spec_from_file_location("heads_figures", REPO / "scripts" / "heads_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def people(work: Path) -> list[Path]:
    from headworld.params import HELDOUT_SEEDS
    from headworld.photos import PERSON_POSES, write_person
    folders = [REPO / "samples" / "heads_person"]
    for offset in EXTRA_PEOPLE:
        folder = work / f"person_{offset}"
        if not folder.is_dir():
            write_person(folder, HELDOUT_SEEDS.start + offset, PERSON_POSES, list(range(len(PERSON_POSES))),
                         note="issue 29 precision check")
        folders.append(folder)
    return folders


def run(work: Path, iterations: int, inversion_steps: int, report) -> dict:
    from generator.adapter_file import load_adapter
    from generator.model_dir import load_model_dir
    from perception.heads_identity import load_heads_identity
    from evaluation.experiments import claim_work
    from train.config import TrainConfig, projector_for
    from train.trainer import personalize
    figures = _figures()
    G = load_model_dir(REPO / "models" / "heads")
    claim_work(work, G, {"iterations": iterations, "inversion_steps": inversion_steps, "inversion": "z"})
    identity = load_heads_identity()
    results = json.loads((work / "results.json").read_text()) if (work / "results.json").is_file() else {}
    folders = people(work)
    for name, (precision, checkpointing) in VARIANTS.items():  # every person's fp32 runs before any bf16 run
        for person in folders:
            info = json.loads((person / "truth.json").read_text())
            key = f"{info['seed']}/{name}"
            if key in results:
                continue
            out = work / f"{info['seed']}_{precision}_{checkpointing}.safetensors"
            config = TrainConfig(iterations=iterations, precision=precision, checkpointing=checkpointing,
                                 projector=projector_for("z", inversion_steps))
            t0 = time.perf_counter()
            personalize(G, person, out, config, checkpoint_dir=work / f"{out.stem}_train", identity=identity,
                        identity_name="heads-identity", preview=False, inversion_cache_dir=work / "inversions")
            adapter, anchors, meta = load_adapter(out, G)
            compared = figures.compare_views(G, adapter, anchors, info)
            results[key] = {"seed": info["seed"], "variant": name, "lpips": compared["lpips_personalized"],
                            "lpips_w_inversion": compared["lpips_w_inversion"],
                            "train_seconds": meta["extra"]["train_seconds"],
                            "seconds": round(time.perf_counter() - t0, 1)}
            print(json.dumps(results[key]), flush=True)
            (work / "results.json").write_text(json.dumps(results, indent=1) + "\n")
            report(results)
    return results


def section(results: dict, iterations: int, inversion_steps: int, threads: int) -> str:
    import torch

    from generator.precision import cpu_has_fast_bf16
    seeds = sorted({r["seed"] for r in results.values()})
    base = "fp32, checkpointing off"
    lines = [HEADING, "", f"`python scripts/precision_check.py --iterations {iterations} --inversion-steps "
             f"{inversion_steps} --threads {threads}` ({time.strftime('%Y-%m-%d', time.gmtime())}, a 2-core CPU "
             f"{'with' if cpu_has_fast_bf16() else 'without'} native bf16, torch {torch.__version__}): "
             "`models/heads` personalized with the paper's recipe at this length from the same anchors; LPIPS of "
             "the novel views against the world's true views (NOVEL_POSES), per held-out person.", "",
             "| person (seed) | " + " | ".join(VARIANTS) + " | W inversion |", "|---|" + "---:|" * (len(VARIANTS) + 1)]
    for seed in seeds:
        row = [results.get(f"{seed}/{v}") for v in VARIANTS]
        cells = [f"{r['lpips']:.4f}" if r else "" for r in row]
        w = next((r["lpips_w_inversion"] for r in row if r), None)
        lines.append(f"| {seed} | " + " | ".join(cells) + f" | {w:.4f} |")
    lines.append("")
    for name, tolerance in (("fp32, checkpointing on", 0.005), ("bf16, checkpointing off", 0.01)):
        diffs = [results[f"{s}/{name}"]["lpips"] - results[f"{s}/{base}"]["lpips"] for s in seeds
                 if f"{s}/{name}" in results and f"{s}/{base}" in results]
        if diffs:
            worst = max(diffs, key=abs)
            lines.append(f"- {name} minus {base}: " + ", ".join(f"{d:+.4f}" for d in diffs) +
                         f"; largest |difference| {abs(worst):.4f} against the target {tolerance} "
                         f"({'met' if abs(worst) <= tolerance else 'NOT met'}).")
    times = {v: [results[f"{s}/{v}"]["train_seconds"] for s in seeds if f"{s}/{v}" in results] for v in VARIANTS}
    lines.append("- Training seconds per run (same machine, same load class): " + "; ".join(
        f"{v} {sum(t) / len(t):.0f} s" for v, t in times.items() if t) + ".")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=200, choices=range(1, 100_001), metavar="1..100000")
    ap.add_argument("--inversion-steps", type=int, default=50, choices=range(1, 10_001), metavar="1..10000")
    ap.add_argument("--threads", type=int, default=2, choices=range(1, 257), metavar="1..256")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "precision_check")
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    from bench.run import replace_section
    from formats.atomic import write_text

    def report(results: dict) -> None:
        """Rewrite the doc after every run, so an interrupted check leaves what it measured."""
        out = REPO / "docs" / "training_length"
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "precision.json", json.dumps(results, indent=1) + "\n")
        doc = REPO / "docs" / "TRAINING_LENGTH.md"
        text = section(results, args.iterations, args.inversion_steps, args.threads)
        write_text(doc, replace_section(doc.read_text(), HEADING, text))
        print(text, flush=True)

    run(args.work, args.iterations, args.inversion_steps, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
