"""Cameras of world photos and people written as dataset folders (`dataset.json` + PNGs: formats.dataset).

`photo_pose(seed, photo)` draws a yaw/pitch like an FFHQ photo's (mostly frontal, |yaw| up to ~0.75 rad);
labels are `formats.cameras.lookat_label` cameras (pivot (0, 0, 0.2), radius 2.7, focal 4.2647).
`write_person` renders a person's photos and writes them with their labels and a `truth.json` that says how to
re-render them (seed, appearance, yaw/pitch), so held-out views can be compared against the truth.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from formats.atomic import atomic_dir
from formats.cameras import lookat_label
from formats.dataset import write_dataset_json
from generator.imaging import to_uint8
from headworld.params import Appearance, Identity
from headworld.render import render

TRUTH_JSON = "truth.json"

PERSON_POSES: tuple[tuple[float, float], ...] = (
    (0.0, 0.0), (-0.45, 0.0), (-0.3, 0.15), (-0.15, -0.1), (0.0, 0.2), (0.1, -0.2), (0.2, 0.1), (0.3, -0.05),
    (0.45, 0.05), (-0.05, -0.25))
"""Cameras (yaw, pitch) of a held-out person's 10 photos; photo 0 is frontal (the one-photo inversion input)."""
NOVEL_POSES: tuple[tuple[float, float], ...] = (
    (-0.6, 0.0), (-0.35, 0.0), (0.35, 0.0), (0.6, 0.0), (-0.6, 0.2), (0.6, -0.15))
"""Cameras of the true novel views: none of them is among PERSON_POSES (|yaw| up to 0.6 vs 0.45)."""


def photo_pose(seed: int, photo: int, yaw_max: float = 0.75, pitch_max: float = 0.3) -> tuple[float, float]:
    """(yaw, pitch) in radians of photo `photo` of person `seed`: a clipped normal, wider in yaw than pitch."""
    r = np.random.RandomState([int(seed), int(photo), 3])
    yaw = float(np.clip(r.randn() * 0.4 * yaw_max / 0.75, -yaw_max, yaw_max))
    pitch = float(np.clip(r.randn() * 0.12, -pitch_max, pitch_max))
    return yaw, pitch


def render_poses(identity: Identity, appearances: Sequence[Appearance], poses: Sequence[tuple[float, float]],
                 resolution: int = 128, batch: int = 16) -> dict[str, np.ndarray]:
    """Render one person at each (appearance, pose): uint8 images [N, R, R, 3], depth [N, R, R], mask [N, R, R]."""
    labels = np.stack([lookat_label(y, p) for y, p in poses])
    images, depths, masks = [], [], []
    for i in range(0, len(poses), batch):
        sl = slice(i, i + batch)
        n = len(labels[sl])
        out = render([identity] * n, list(appearances[sl]), labels[sl], resolution)
        images.append(to_uint8(out["image"]))
        depths.append(out["depth"][:, 0].numpy())
        masks.append(out["mask"][:, 0].numpy())
    return {"image": np.concatenate(images), "depth": np.concatenate(depths), "mask": np.concatenate(masks),
            "label": labels}


def write_person(folder: str | Path, seed: int, poses: Sequence[tuple[float, float]], photo_ids: Sequence[int],
                 resolution: int = 128, overwrite: bool = False, note: str = "") -> Path:
    """Write `view_XX.png` photos of person `seed` (photo k uses Appearance.from_seed(seed, photo_ids[k]))."""
    from PIL import Image
    if len(poses) != len(photo_ids):
        raise ValueError(f"{len(poses)} poses for {len(photo_ids)} photo ids")
    identity = Identity.from_seed(seed)
    apps = [Appearance.from_seed(seed, k) for k in photo_ids]
    out = render_poses(identity, apps, poses, resolution)
    names = [f"view_{k:02d}.png" for k in range(len(poses))]
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        for name, img in zip(names, out["image"]):
            Image.fromarray(img).save(tmp / name, format="PNG")
        write_dataset_json(tmp, zip(names, out["label"]))
        truth = {"world": "headworld", "seed": int(seed), "resolution": resolution,
                 "views": [{"name": n, "yaw": y, "pitch": p, "photo": int(k)}
                           for n, (y, p), k in zip(names, poses, photo_ids)], "note": note}
        (tmp / TRUTH_JSON).write_text(json.dumps(truth, indent=2) + "\n")
    return Path(folder)
