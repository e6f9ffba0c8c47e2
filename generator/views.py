"""Render a generator from chosen viewpoints: the shared code of `cli.py render` and the previews."""
from __future__ import annotations

import numpy as np
import torch

from formats.cameras import lookat_label
from generator.imaging import depth_to_uint8, grid, to_uint8
from generator.triplane import TriPlaneGenerator


def camera_batch(G: TriPlaneGenerator, yaw_pitch: list[tuple[float, float]]) -> torch.Tensor:
    """Look-at camera labels [N, 25] at the generator's average radius and pivot."""
    r = G.cfg.rendering
    labels = [lookat_label(y, p, radius=r.avg_camera_radius, pivot=r.avg_camera_pivot) for y, p in yaw_pitch]
    return torch.from_numpy(np.stack(labels))


def latent_from_seed(G: TriPlaneGenerator, seed: int) -> torch.Tensor:
    """z exactly as official gen_samples.py draws it: RandomState(seed).randn(1, z_dim)."""
    return torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim).astype(np.float32))


@torch.no_grad()
def seed_latent(G: TriPlaneGenerator, seed: int, truncation_psi: float = 0.7,
                truncation_cutoff: int | None = None) -> torch.Tensor:
    """ws [1, num_ws, w_dim] of a seed's z (numpy RandomState, as the official gen_samples.py), mapped with the
    frontal conditioning camera and the given truncation."""
    return G.mapping(latent_from_seed(G, seed), camera_batch(G, [(0.0, 0.0)]), truncation_psi=truncation_psi,
                     truncation_cutoff=truncation_cutoff)


@torch.no_grad()
def render_views(G: TriPlaneGenerator, ws: torch.Tensor, yaw_pitch: list[tuple[float, float]],
                 sampling: str = "deterministic", noise_mode: str = "const", batch: int = 4) -> list[dict]:
    """Render one latent ws [1, num_ws, w_dim] from each (yaw, pitch); tri-planes are computed once."""
    planes = G.planes(ws, noise_mode=noise_mode)
    c_all = camera_batch(G, yaw_pitch)
    outs = []
    for i in range(0, len(yaw_pitch), batch):
        c = c_all[i:i + batch]
        n = len(c)
        out = G.render_planes(planes.expand(n, -1, -1, -1, -1), ws.expand(n, -1, -1), c, sampling=sampling)
        outs += [{k: v[j] for k, v in out.items()} for j in range(n)]
    return outs


def views_picture(outs: list[dict], cols: int, with_depth: bool = False) -> np.ndarray:
    """A grid PNG array of the final images (and, below each row, their depth maps if asked)."""
    tiles = [to_uint8(o["image"]) for o in outs]
    if not with_depth:
        return grid(tiles, cols)
    size = tiles[0].shape[0]
    depth = [np.array(_resize(depth_to_uint8(o["image_depth"]), size)) for o in outs]
    rows = []
    for i in range(0, len(tiles), cols):
        rows += tiles[i:i + cols] + depth[i:i + cols]
    return grid(rows, cols)


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.fromarray(img).resize((size, size), Image.NEAREST))


def anchor_latent(G: TriPlaneGenerator, anchors, anchor: str | int, option: str = "--anchor"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """W+ [1, num_ws, w_dim] and camera [25] of an adapter's anchor (name or index); unknown is a ValueError."""
    try:
        index = anchors.index(anchor)
    except KeyError as e:
        raise ValueError(f"{option}: {e.args[0]}") from None
    return anchors.ws_plus(G.num_ws)[index].unsqueeze(0), anchors.c[index]
