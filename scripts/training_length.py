"""How long to personalize: error on true unseen views against training steps (docs/TRAINING_LENGTH.md).

    python scripts/training_length.py [--steps 250,500,1000,2500,5000] [--rules after,before]

One run per LoRA rule on the demo head-world person (samples/heads_person: 10 photos of a held-out person), the
paper's recipe (LoRA rank 4 + decoder, L_sym with the head-world identity network), same seeds for every rule.
Each run is continued milestone by milestone from its own checkpoint (the learning rate is constant, so this is
one uninterrupted run), and at each milestone the adapter's novel views are compared with the world's true views
at NOVEL_POSES (LPIPS, PSNR; `scripts/heads_figures.py compare`'s measurement). 'after' is adapter format 2 (fully
connected LoRA deltas act after the layer gain, as in the authors' code); 'before' is format 1's rule.
Results accumulate in WORK/curve.json (a rerun skips measured milestones) and the doc is rewritten each time,
with the curve plotted to docs/training_length/curve.png and the discussion from docs/training_length/notes.md;
`--report` only rewrites the doc from WORK/curve.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RULES = {"after": True, "before": False}


def _compare(G, adapter_path: Path, person: Path) -> dict:
    import importlib.util
    spec = importlib.util.spec_from_file_location("heads_figures", REPO / "scripts" / "heads_figures.py")
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)
    from generator.adapter_file import load_adapter
    adapter, anchors, _ = load_adapter(adapter_path, G)
    res = figures.compare_views(G, adapter, anchors, json.loads((person / "truth.json").read_text()))
    res.pop("picture")
    return res


def plot_curve(curve: dict, path: Path) -> Path:
    """LPIPS on the true unseen views against steps (log axis), one line per rule, W inversion as a dashed line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    steps = sorted({p["steps"] for points in curve["runs"].values() for p in points})
    for rule, points in curve["runs"].items():
        pts = sorted(points, key=lambda p: p["steps"])
        if pts:
            ax.plot([p["steps"] for p in pts], [p["lpips"] for p in pts], "o-", label=f"{rule} the gain")
    first = next((pts[0] for pts in curve["runs"].values() if pts), None)
    if first is not None:  # W inversion is far above the curve: named in the title rather than drawn
        ax.set_title(f"step 0 (W inversion): LPIPS {first['lpips_w_inversion']:.3f}", fontsize=9)
    ax.set_xscale("log")
    ax.set_xticks(steps, [f"{s:,}" for s in steps])
    ax.minorticks_off()
    ax.set_xlabel("training steps (batch 4)")
    ax.set_ylabel("LPIPS vs true unseen views")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def render_doc(curve: dict, command: str, notes: str = "", figure: str | None = None) -> str:
    lines = ["# Training length: error on true unseen views against steps", "",
             "Personalization of the demo head-world person (10 photos, held out from pretraining) with the paper's "
             "recipe, measured at every milestone on the 60 true unseen views of `scripts/heads_figures.py` "
             "(6 cameras not among the photos x 10 anchors; LPIPS AlexNet, PSNR). Step 0 is W inversion on the "
             "base model. 'after' = adapter format 2 (fully connected LoRA deltas after the layer gain, as the "
             "authors' code); 'before' = format 1's rule. Same seeds for both.", "",
             f"    {command}", "",
             "| rule | steps | LPIPS ↓ | PSNR ↑ | train seconds (cumulative) |", "|---|---:|---:|---:|---:|"]
    for rule, points in curve["runs"].items():
        if points:
            lines.append(f"| {rule} | 0 (W inversion) | {points[0]['lpips_w_inversion']:.4f} | | 0 |")
        for p in sorted(points, key=lambda p: p["steps"]):
            lines.append(f"| {rule} | {p['steps']:,} | {p['lpips']:.4f} | {p['psnr']:.2f} | {p['seconds']:.0f} |")
    lines += ["", f"Machine: {curve.get('machine', '?')}.", ""]
    if figure:
        lines += [f"![LPIPS against steps]({figure})", ""]
    if notes:
        lines += ["## Reading", "", notes.strip(), ""]
    return "\n".join(lines)


def write_doc(curve: dict, command: str, doc: Path) -> Path:
    """The doc, its figure (beside it in training_length/) and the notes kept there."""
    from formats.atomic import write_text
    folder = doc.parent / "training_length"
    figure = plot_curve(curve, folder / "curve.png")
    notes_file = folder / "notes.md"
    notes = notes_file.read_text() if notes_file.is_file() else ""
    return write_text(doc, render_doc(curve, command, notes, figure.relative_to(doc.parent).as_posix()))


INVERSION = "z"
"""The anchors' inversion (train.config.projector_for): the head world's, as scripts/demo.sh."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "models" / "heads")
    parser.add_argument("--person", type=Path, default=REPO / "samples" / "heads_person")
    parser.add_argument("--steps", default="250,500,1000,2500,5000")
    parser.add_argument("--rules", default="after,before")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "training_length")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "TRAINING_LENGTH.md")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report", action="store_true", help="only rewrite the doc from WORK/curve.json")
    args = parser.parse_args(argv)
    import os
    import platform
    import torch
    from formats.atomic import write_text
    from generator.model_dir import load_model_dir
    from perception.heads_identity import load_heads_identity
    from evaluation.experiments import claim_work
    from train.config import TrainConfig, projector_for
    from train.trainer import personalize
    torch.set_num_threads(args.threads)
    milestones = sorted(int(s) for s in args.steps.split(","))
    rules = [r.strip() for r in args.rules.split(",")]
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        raise SystemExit(f"--rules: unknown {unknown}; choose from {list(RULES)}")
    G = load_model_dir(args.model)
    identity = load_heads_identity()
    args.work.mkdir(parents=True, exist_ok=True)
    if not args.report:  # curve.json resumes: it must come from this model and inversion
        claim_work(args.work, G, {"person": str(args.person), "inversion": INVERSION, "inversion_steps": 50})
    curve_path = args.work / "curve.json"
    curve = json.loads(curve_path.read_text()) if curve_path.is_file() else {"runs": {}}
    if args.report:
        if not curve["runs"]:
            raise SystemExit(f"{curve_path}: no measurements yet (run without --report first)")
        print(write_doc(curve, curve.get("command", "python scripts/training_length.py"), args.doc))
        return
    curve["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} torch threads"
    command = "python scripts/training_length.py " + " ".join(argv if argv is not None else sys.argv[1:])
    curve["command"] = command.strip()
    for rule in rules:
        done = {p["steps"] for p in curve["runs"].setdefault(rule, [])}
        run = args.work / rule
        for steps in milestones:
            if steps in done:
                continue
            cfg = dataclasses.replace(TrainConfig(), iterations=steps, lora_fc_after_gain=RULES[rule],
                                      projector=projector_for(INVERSION, 50))
            t0 = time.time()
            result = personalize(G, args.person, run / f"person_{steps}.safetensors", cfg,
                                 checkpoint_dir=run / "checkpoint", identity=identity,
                                 identity_name="heads-identity", preview=False, inversion_batch=10,
                                 inversion_cache_dir=args.work / "inversions")
            res = _compare(G, result.adapter_path, args.person)
            point = {"steps": steps, "lpips": res["lpips_personalized"], "psnr": res["psnr_personalized"],
                     "lpips_w_inversion": res["lpips_w_inversion"], "seconds": result.extra["train_seconds"],
                     "wall": round(time.time() - t0, 1)}
            curve["runs"][rule].append(point)
            write_text(curve_path, json.dumps(curve, indent=2) + "\n")
            write_doc(curve, command.strip(), args.doc)
            print(json.dumps({rule: point}), flush=True)


if __name__ == "__main__":
    main()
