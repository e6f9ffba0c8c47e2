"""The picture at the end of training: photos, base-model reconstructions, personalized reconstructions, novel views.

Rows (up to `cols` photos): 1 the training photos; 2 the base model at the photos' anchors and cameras (what
inversion alone reaches); 3 the personalized model there; 4 the personalized model rendering the first anchor
from `cols` yaws across [-0.5, 0.5] rad at pitch 0 (views it was not trained on). A strip on the left names each
row (ROW_LABELS).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from generator.imaging import grid, save_png, to_uint8
from generator.lora import PersonAdapter, attach, detach
from generator.views import camera_batch
from media.frames import resize_frame
from train.data import TrainingSet

ROW_LABELS = ("photos", "base model", "personalized", "new views")
LABEL_WIDTH = 96
"""Pixels of the label strip left of the grid."""


def with_row_labels(picture: np.ndarray, labels: tuple[str, ...], row_height: int, pad: int = 2) -> np.ndarray:
    """`picture` (rows of `row_height` pixels, `pad` apart) with a white strip on its left naming each row."""
    from PIL import Image, ImageDraw
    h, w, _ = picture.shape
    canvas = Image.new("RGB", (LABEL_WIDTH + w, h), "white")
    canvas.paste(Image.fromarray(picture), (LABEL_WIDTH, 0))
    draw = ImageDraw.Draw(canvas)
    for i, label in enumerate(labels):
        draw.text((4, i * (row_height + pad) + row_height // 2 - 5), label, fill=(0, 0, 0))
    return np.asarray(canvas)


@torch.no_grad()
def _render(G, adapter: PersonAdapter | None, ws: torch.Tensor, cams: torch.Tensor) -> torch.Tensor:
    attach(G, adapter)
    try:
        return G.synthesis(ws, cams, noise_mode="const")["image"]
    finally:
        detach(G)


@torch.no_grad()
def preview_grid(G: torch.nn.Module, adapter: PersonAdapter, data: TrainingSet, anchors_ws: torch.Tensor,
                 cols: int = 6, tile: int = 256) -> np.ndarray:
    """The preview as an HWC uint8 array (tiles at most `tile` pixels wide)."""
    was_training = G.training
    G.eval()
    device = next(G.parameters()).device
    try:
        k = min(cols, len(data))
        ws = anchors_ws[:k].to(device)
        ws = ws if ws.ndim == 3 else ws[:, None, :].expand(-1, G.num_ws, -1)
        cams = data.cameras[:k].to(device)
        base = _render(G, None, ws, cams)
        personal = _render(G, adapter, ws, cams)
        yaws = np.linspace(-0.5, 0.5, k) if k > 1 else np.zeros(1)
        novel_cams = camera_batch(G, [(float(y), 0.0) for y in yaws]).to(device)
        novel = _render(G, adapter, ws[:1].expand(k, -1, -1), novel_cams)
    finally:
        G.train(was_training)
    size = min(tile, G.img_resolution)
    rows = [data.images[:k], base, personal, novel]
    tiles = [resize_frame(to_uint8(img), size) for row in rows for img in row]
    return with_row_labels(grid(tiles, k), ROW_LABELS, size)


def save_preview(G: torch.nn.Module, adapter: PersonAdapter, data: TrainingSet, anchors_ws: torch.Tensor,
                 path: str | Path, cols: int = 6) -> Path:
    """Write the preview grid PNG atomically and return its path."""
    save_png(preview_grid(G, adapter, data, anchors_ws, cols=cols), path)
    return Path(path)
