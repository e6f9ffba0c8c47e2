"""Train the head world's identity network (perception/heads_identity.py) with an ArcFace margin loss.

    python scripts/train_heads_identity.py data  --run runs/heads_id      # render training photos (resumable)
    python scripts/train_heads_identity.py train --run runs/heads_id      # train, evaluate, write the weights
    python scripts/train_heads_identity.py eval  [--weights W]            # ROC AUC / TAR@FAR on held-out people

Training people are seeds ID_FIRST_SEED.. (inside headworld TRAIN_SEEDS), each photographed PHOTOS times, every
photo with its own expression, light, background and camera (yaw up to +-0.75 rad), rendered at 64^2. Loss:
ArcFace (additive angular margin m on the true class's angle, scale s) over the people, with random flips, blur
and shifts as augmentation. The defaults reproduce the committed weights (chosen over s=30, m=0.3, 6 epochs on
the VALIDATION people, a held-out set apart from the reported one). Evaluation: people from HELDOUT_SEEDS (never trained on),
EVAL_PHOTOS photos each at 128^2; genuine pairs are two photos of one person, impostor pairs two people.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from evaluation.verification import pair_scores, render_people, roc_auc, tar_at_far  # noqa: E402

ID_FIRST_SEED = 50_000
PEOPLE_PER_SHARD = 50
PHOTOS = 8
EVAL_FIRST_SEED = 1_000_100
EVAL_PEOPLE = 150
EVAL_PHOTOS = 4
VALIDATION_FIRST_SEED = 1_000_500
"""Other held-out people, for choosing between training settings (EVAL_FIRST_SEED's are for reporting)."""


def cmd_data(run: Path, people: int) -> None:
    from safetensors.torch import save_file

    from formats.atomic import atomic_file
    from headworld.params import TRAIN_SEEDS
    folder = run / "data"
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range(math.ceil(people / PEOPLE_PER_SHARD)):
        path = folder / f"shard_{shard:05d}.safetensors"
        if path.exists():
            continue
        seeds = range(ID_FIRST_SEED + shard * PEOPLE_PER_SHARD, ID_FIRST_SEED + (shard + 1) * PEOPLE_PER_SHARD)
        assert seeds[0] in TRAIN_SEEDS and seeds[-1] in TRAIN_SEEDS
        t = render_people(seeds, list(range(100, 100 + PHOTOS)), 64, 1)
        t["person"] = t["person"] + shard * PEOPLE_PER_SHARD
        with atomic_file(path) as tmp:
            save_file({k: v.contiguous() for k, v in t.items()}, str(tmp))
        print(f"wrote {path}", flush=True)


def load_data(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    parts = [load_file(str(p)) for p in sorted((run / "data").glob("shard_*.safetensors"))]
    if not parts:
        raise FileNotFoundError(f"{run / 'data'}: no shards; run the 'data' step first")
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def augment(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Random flip, blur (sigma up to 1.2 px) and shift (up to 3 px) of a batch [N, 3, 64, 64] in [-1, 1]."""
    n = len(x)
    flip = torch.rand(n, generator=rng) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    sigma = torch.rand(n, generator=rng) * 1.2
    r = torch.arange(-3, 4, dtype=torch.float32)
    k = torch.exp(-r[None] ** 2 / (2 * sigma[:, None].clamp_min(1e-3) ** 2))
    xb = _blur(F.pad(x, (3, 3, 3, 3), mode="replicate"), k / k.sum(1, keepdim=True))
    shift = torch.randint(-3, 4, (n, 2), generator=rng)
    return torch.stack([torch.roll(xb[i], (int(shift[i, 0]), int(shift[i, 1])), (1, 2)) for i in range(n)])


def _blur(xp: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Separable per-sample blur of padded images xp [N, C, H+6, W+6] with kernels k [N, 7]."""
    n, c = xp.shape[:2]
    kx = k[:, None, None, :].repeat(1, c, 1, 1).reshape(n * c, 1, 1, 7)
    ky = k[:, None, :, None].repeat(1, c, 1, 1).reshape(n * c, 1, 7, 1)
    y = xp.reshape(1, n * c, *xp.shape[2:])
    y = F.conv2d(y, kx, groups=n * c)
    y = F.conv2d(y, ky, groups=n * c)
    return y.reshape(n, c, y.shape[-2], y.shape[-1])


def arcface_logits(emb: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, s: float, m: float) -> torch.Tensor:
    """s * cos(theta + m) for the true class, s * cos(theta) for the others (ArcFace, additive angular margin)."""
    cos = F.linear(F.normalize(emb), F.normalize(weight)).clamp(-1 + 1e-6, 1 - 1e-6)
    theta = torch.acos(cos.gather(1, labels[:, None]))
    target = torch.cos(theta + m)
    return s * cos.scatter(1, labels[:, None], target)


def evaluate(encoder, log=print, first_seed: int = EVAL_FIRST_SEED) -> dict:
    """AUC and TAR@FAR=1e-2 on EVAL_PEOPLE held-out people x EVAL_PHOTOS photos at 128^2."""
    seeds = range(first_seed, first_seed + EVAL_PEOPLE)
    data = render_people(seeds, list(range(200, 200 + EVAL_PHOTOS)), 128, 1)
    x = data["image"].float() / 127.5 - 1
    genuine, impostor = pair_scores(np.asarray(encoder.embed(x)), data["person"].numpy())
    res = {"people": EVAL_PEOPLE, "photos_per_person": EVAL_PHOTOS, "genuine_pairs": int(len(genuine)),
           "impostor_pairs": int(len(impostor)), "roc_auc": roc_auc(genuine, impostor),
           "tar_at_far_1e-2": tar_at_far(genuine, impostor, 1e-2), "tar_at_far_1e-3": tar_at_far(genuine, impostor, 1e-3),
           "genuine_mean": float(genuine.mean()), "impostor_mean": float(impostor.mean())}
    log(json.dumps(res))
    return res


def cmd_train(run: Path, epochs: int, seed: int, out: Path, scale: float = 30.0, margin_max: float = 0.3,
              lr: float = 2e-3) -> None:
    from perception.heads_identity import HeadsIdentity, HeadsIdNet, save_heads_identity
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed)
    data = load_data(run)
    images = data["image"].float() / 127.5 - 1
    labels = data["person"]
    classes = int(labels.max()) + 1
    net = HeadsIdNet()
    weight = torch.nn.Parameter(torch.randn(classes, net.head[-1].num_features) * 0.01)
    opt = torch.optim.AdamW([*net.parameters(), weight], lr=lr, weight_decay=5e-4)
    batch = 128
    steps = epochs * math.ceil(len(images) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    log_path = run / f"train_log_{out.stem}.jsonl"
    t0, step = time.time(), 0
    for epoch in range(epochs):
        perm = torch.randperm(len(images), generator=rng)
        net.train()
        for i in range(0, len(images), batch):
            idx = perm[i:i + batch]
            x = augment(images[idx], rng)
            margin = margin_max * min(1.0, step / (0.3 * steps))
            logits = arcface_logits(net(x), weight, labels[idx], s=scale, m=margin)
            loss = F.cross_entropy(logits, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 20 == 0:
                rec = {"step": step, "epoch": epoch, "loss": round(float(loss), 4), "margin": round(margin, 3),
                       "time": round(time.time() - t0, 1)}
                with open(log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(json.dumps(rec), flush=True)
    net.eval()
    metrics = evaluate(HeadsIdentity(net))
    info = {"script": "scripts/train_heads_identity.py", "seed": seed, "epochs": epochs, "train_people": classes,
            "train_photos": len(images), "train_seeds": [ID_FIRST_SEED, ID_FIRST_SEED + classes - 1],
            "loss": f"ArcFace s={scale} m={margin_max}", "lr": lr, "heldout_eval": metrics,
            "validation": evaluate(HeadsIdentity(net), first_seed=VALIDATION_FIRST_SEED)}
    save_heads_identity(net, out, info)
    print(f"wrote {out}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("data")
    d.add_argument("--run", type=Path, default=REPO / "runs" / "heads_id")
    d.add_argument("--people", type=int, default=400)
    t = sub.add_parser("train")
    t.add_argument("--run", type=Path, default=REPO / "runs" / "heads_id")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", type=Path, default=None, help="weights file (default: HEADS_IDENTITY_WEIGHTS, the "
                   "identity network of the models/heads model directory)")
    t.add_argument("--scale", type=float, default=16.0, help="ArcFace scale s")
    t.add_argument("--margin", type=float, default=0.2, help="ArcFace margin m (ramped up over 30%% of the steps)")
    t.add_argument("--lr", type=float, default=3e-3)
    e = sub.add_parser("eval")
    e.add_argument("--weights", type=Path, default=None)
    for p in (d, t, e):
        p.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.command == "data":
        cmd_data(args.run, args.people)
    elif args.command == "train":
        from perception.heads_identity import HEADS_IDENTITY_WEIGHTS
        cmd_train(args.run, args.epochs, args.seed, args.out or HEADS_IDENTITY_WEIGHTS, args.scale, args.margin,
                  args.lr)
    else:
        from perception.heads_identity import load_heads_identity
        evaluate(load_heads_identity(args.weights))


if __name__ == "__main__":
    main()
