"""Pre-rendered training data of the head world: shards of photos with their parameters, depth, mask and cameras.

Shard k of a set holds `per_shard` people (seeds base + k * per_shard + i, all in TRAIN_SEEDS), each photographed
`views` times under one appearance (photo 0) from random cameras (yaw uniform in +-yaw_max, pitch in
+-pitch_max), so the views of a person are true multi-view data of one 3D instance. A shard is one safetensors
file written atomically; `render_missing` skips shards that already exist, so an interrupted run resumes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from formats.atomic import atomic_file
from formats.cameras import lookat_label
from headworld.params import TRAIN_SEEDS, Appearance, Identity
from headworld.render import render


RENDER_BATCH = 16
"""Photos rendered together (bounds the renderer's memory to a few hundred MB)."""


@dataclass(frozen=True)
class ShardSpec:
    """Which people, views and image size a shard set holds."""

    per_shard: int = 64
    views: int = 4
    resolution: int = 128
    yaw_max: float = 0.75
    pitch_max: float = 0.28
    base_seed: int = 0
    photo: int = 0

    def seeds(self, shard: int) -> list[int]:
        first = self.base_seed + shard * self.per_shard
        seeds = list(range(first, first + self.per_shard))
        if seeds[-1] not in TRAIN_SEEDS or seeds[0] not in TRAIN_SEEDS:
            raise ValueError(f"shard {shard} would use seeds {seeds[0]}..{seeds[-1]} outside TRAIN_SEEDS")
        return seeds

    def poses(self, seed: int) -> list[tuple[float, float]]:
        r = np.random.RandomState([int(seed), self.photo, 4])
        return [(float(r.uniform(-self.yaw_max, self.yaw_max)), float(r.uniform(-self.pitch_max, self.pitch_max)))
                for _ in range(self.views)]


def shard_path(folder: Path, shard: int) -> Path:
    return Path(folder) / f"shard_{shard:05d}.safetensors"


def render_shard(spec: ShardSpec, shard: int) -> dict[str, torch.Tensor]:
    """Tensors of one shard: image uint8 [N,3,R,R], depth fp16 [N,1,R,R], mask uint8 [N,1,R,R] (x255),
    label [N,25], params [N,40] (identity then appearance, in [0, 1]), person [N] (index within the shard)."""
    ids, apps, labels, person = [], [], [], []
    for i, seed in enumerate(spec.seeds(shard)):
        ident, app = Identity.from_seed(seed), Appearance.from_seed(seed, spec.photo)
        for yaw, pitch in spec.poses(seed):
            ids.append(ident)
            apps.append(app)
            labels.append(lookat_label(yaw, pitch))
            person.append(i)
    outs = [render(ids[i:i + RENDER_BATCH], apps[i:i + RENDER_BATCH], np.stack(labels[i:i + RENDER_BATCH]),
                   spec.resolution) for i in range(0, len(ids), RENDER_BATCH)]
    out = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
    params = torch.tensor([list(a.values) + list(b.values) for a, b in zip(ids, apps)], dtype=torch.float32)
    tensors = {"image": ((out["image"] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8),
               "depth": out["depth"].half(), "mask": (out["mask"] * 255).round().to(torch.uint8),
               "label": torch.from_numpy(np.stack(labels)).float(), "params": params,
               "person": torch.tensor(person, dtype=torch.int64)}
    return {k: v.contiguous() for k, v in tensors.items()}


def render_missing(spec: ShardSpec, folder: Path, shards: range, log=print) -> None:
    """Render every shard of `shards` not yet in `folder` (resumable)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in shards:
        path = shard_path(folder, k)
        if path.exists():
            continue
        tensors = render_shard(spec, k)
        with atomic_file(path) as tmp:
            save_file(tensors, str(tmp))
        log(f"wrote {path} ({len(tensors['image'])} photos)")


def load_shards(folder: Path, count: int | None = None) -> dict[str, torch.Tensor]:
    """Shards 0..count-1 of `folder` (all present shards if None) concatenated; `person` becomes a global index."""
    if count is None:
        paths = sorted(Path(folder).glob("shard_*.safetensors"))
    else:
        paths = [shard_path(folder, k) for k in range(count)]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"missing shard(s): {', '.join(missing[:4])}")
    if not paths:
        raise FileNotFoundError(f"{folder}: no shard_*.safetensors files (render them first)")
    parts = [load_file(str(p)) for p in paths]
    offset = 0
    for part in parts:
        part["person"] = part["person"] + offset
        offset = int(part["person"].max()) + 1
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
