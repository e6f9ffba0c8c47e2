"""Pretrain the `heads` generator on the head world (reproducible from a seed, resumable).

    python scripts/pretrain_heads.py data  --run runs/heads [--shards 40]      # pre-render training photos
    python scripts/pretrain_heads.py train --run runs/heads [--minutes 75]     # train (resumes from the checkpoint)
    python scripts/pretrain_heads.py train --run runs/heads_perceptual --stage perceptual --init-from models/heads
    python scripts/pretrain_heads.py export --run runs/heads --out models/heads  # model directory from the checkpoint

Method (docs/HEADS.md): supervised multi-view training with known latent factors. Every training photo's world
parameters u (identity + appearance) are encoded as z = headworld.latent.params_to_z(u); the generator's own
mapping network turns z into w and the tri-plane generator renders w from the photo's camera. The losses are L1 on
the final 128^2 image, L1 on the raw 32^2 render against the downsampled photo, and L1 on the raw depth against the
true depth (inside the head's mask; toward the far end of the rays outside it). Each person is photographed from
several cameras under one appearance, so one w must explain all views: the tri-planes become a 3D head. Camera
conditioning of the mapping is off (c_gen_conditioning_zero), so w is a property of the person and photo alone.
Held-out people (headworld.params.HELDOUT_SEEDS) are never rendered here.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("data", help="render the training shards (skips shards already written)")
    d.add_argument("--run", type=Path, default=REPO / "runs" / "heads")
    d.add_argument("--shards", type=int, default=64)
    d.add_argument("--threads", type=int, default=1)
    d.add_argument("--worker", default="0/1", help="I/N: render shards I, I+N, I+2N, ... (run N workers at once)")
    t = sub.add_parser("train", help="train or resume")
    t.add_argument("--run", type=Path, default=REPO / "runs" / "heads")
    t.add_argument("--minutes", type=float, default=75.0, help="stop after this much wall time (resumable)")
    t.add_argument("--steps", type=int, default=100_000, help="stop at this step")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--stage", choices=("l1", "perceptual"), default="l1",
                   help="l1: the first prior from random weights; perceptual: continue --init-from with LPIPS "
                        "(headworld.pretrain.STAGES)")
    t.add_argument("--init-from", default="", help="model directory that starts a perceptual run")
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--export-to", type=Path, default=None, help="also write the model directory at each save")
    e = sub.add_parser("export", help="write the model directory from the latest checkpoint")
    e.add_argument("--run", type=Path, default=REPO / "runs" / "heads")
    e.add_argument("--out", type=Path, default=REPO / "models" / "heads")
    args = parser.parse_args(argv)

    import torch
    if args.command == "data":
        torch.set_num_threads(args.threads)
        from headworld.shards import ShardSpec, render_missing
        index, count = (int(v) for v in args.worker.split("/"))
        render_missing(ShardSpec(), args.run / "data", range(index, args.shards, count),
                       log=lambda m: print(m, flush=True))
    elif args.command == "train":
        torch.set_num_threads(args.threads)
        from dataclasses import replace

        from headworld.pretrain import STAGES, train
        if (args.stage == "perceptual") != bool(args.init_from):
            parser.error("--init-from is needed by --stage perceptual, and only by it")
        cfg = replace(STAGES[args.stage], seed=args.seed, init_from=args.init_from)
        train(cfg, args.run, minutes=args.minutes, max_steps=args.steps, export_to=args.export_to)
    else:
        from headworld.pretrain import export_checkpoint
        print(export_checkpoint(args.run, args.out))


if __name__ == "__main__":
    main()
