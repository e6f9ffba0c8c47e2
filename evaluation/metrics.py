"""Reconstruction metrics of the paper's Table 1: LPIPS and DISTS between a reconstruction and its photo.

Both take generator-convention images, NCHW RGB in [-1, 1]. Values outside [-1, 1] (a generator can overshoot)
are clamped first, so the metric sees the picture a user would see in a saved PNG. DISTS is defined on [0, 1]
images, so its inputs are mapped with (x + 1) / 2 after clamping. Both networks run frozen under `no_grad`
and in batches, and are built lazily (each loads VGG16/AlexNet weights from the offline packages once).

LPIPS network: AlexNet by default (the `lpips` package's default and what PTI uses); the paper does not say
which one it used, so every report records the choice.
"""
from __future__ import annotations

import torch

LPIPS_NETS = ("alex", "vgg")


def _check_images(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images [N, 3, H, W] in [-1, 1], got shape {tuple(x.shape)}")
    if x.shape != y.shape:
        raise ValueError(f"images to compare differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] (clamped): the input convention of DISTS."""
    return (images.clamp(-1.0, 1.0) + 1.0) / 2.0


class ImageMetrics:
    """LPIPS and DISTS on [-1, 1] images, per sample: `lpips(x, y)` and `dists(x, y)` -> float tensors [N]."""

    def __init__(self, lpips_net: str = "alex", batch_size: int = 8):
        if lpips_net not in LPIPS_NETS:
            raise ValueError(f"lpips_net={lpips_net!r}: expected one of {LPIPS_NETS}")
        self.lpips_net = lpips_net
        self.batch_size = batch_size
        self._lpips = None
        self._dists = None

    @property
    def lpips_module(self):
        if self._lpips is None:
            from perception.lpips import LPIPS
            self._lpips = LPIPS(net=self.lpips_net)
        return self._lpips

    @property
    def dists_module(self):
        if self._dists is None:
            from perception.dists import DISTS
            self._dists = DISTS()
        return self._dists

    @torch.no_grad()
    def _batched(self, fn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_images(x, y)
        x, y = x.detach().float().cpu(), y.detach().float().cpu()
        out = [fn(x[i:i + self.batch_size], y[i:i + self.batch_size]) for i in range(0, x.shape[0], self.batch_size)]
        return torch.cat(out).float()

    def lpips(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """LPIPS v0.1 distance (0 for identical images; lower is better)."""
        return self._batched(lambda a, b: self.lpips_module(a.clamp(-1, 1), b.clamp(-1, 1)), x, y)

    def dists(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """DISTS score (about 0 for identical images; lower is better), computed on (x + 1) / 2."""
        return self._batched(lambda a, b: self.dists_module(to_unit_range(a), to_unit_range(b)), x, y)

    def describe(self) -> dict:
        """What a report records about these metrics."""
        return {"lpips": f"LPIPS v0.1 ({self.lpips_net}), images clamped to [-1, 1]",
                "dists": "DISTS (VGG16, alpha/beta of dists-pytorch), images clamped and mapped to [0, 1]"}


# ---- ground-truth metrics (the head world knows the true image and depth of every view)

def psnr(x: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per sample of images in [-1, 1] (x clamped; peak-to-peak 2) against the true images."""
    _check_images(x, truth)
    mse = ((x.clamp(-1, 1) - truth) ** 2).mean((1, 2, 3))
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))


def depth_error(depth_raw: torch.Tensor, true_depth: torch.Tensor, true_mask: torch.Tensor) -> torch.Tensor:
    """Mean |depth - true depth| per sample over the raw pixels fully covered by the true surface.

    depth_raw [N, 1, r, r] is the generator's raw depth; the true depth and coverage mask [N, 1, R, R] (R a multiple
    of r) are area-pooled to r first, the depth as a coverage-weighted mean."""
    import torch.nn.functional as F
    k = true_depth.shape[-1] // depth_raw.shape[-1]
    cover = F.avg_pool2d(true_mask, k)
    td = F.avg_pool2d(true_depth * true_mask, k) / cover.clamp_min(1e-6)
    inside = (cover > 0.99).float()
    return ((depth_raw - td).abs() * inside).sum((1, 2, 3)) / inside.sum((1, 2, 3)).clamp_min(1)
