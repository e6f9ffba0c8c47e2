"""The straightforward (previous) renderer formulation, kept to check and to time the product's fast renderer.

`ReferenceRenderer` is the renderer as it was before issue 16: all rays at once, colours and densities both
ray-marched in the coarse pass, the union of samples sorted with its colours gathered, and the colour integral
as an elementwise weighted sum of interval midpoints. It shares the product's building blocks (depths, tri-plane
sampling, the decoder, importance sampling and the interval weights), so the two differ only in the formulation
issue 16 changed. Not product code: tests and `bench/run.py` use it.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from generator.rendering import (SAMPLING_MODES, RayNoise, importance_depths, march_weights, marched_depth,
                                 sample_planes, stratified_depths)


def ray_march(colors, densities, depths, white_back: bool = False):
    """MipRayMarcher2 as written in EG3D: returns (features*2-1, clamped depth, interval weights)."""
    weights = march_weights(densities, depths)
    colors_mid = (colors[:, :, :-1] + colors[:, :, 1:]) / 2
    rgb = torch.sum(weights * colors_mid, -2)
    weight_total = weights.sum(2)
    depth = torch.clamp(marched_depth(weights, depths, weight_total), torch.min(depths), torch.max(depths))
    if white_back:
        rgb = rgb + 1 - weight_total
    return rgb * 2 - 1, depth, weights


class ReferenceRenderer(nn.Module):
    """The product renderer's interface and random draws, computed the straightforward way (no chunks)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    def decode(self, planes, decoder, origins, dirs, depths, noise=None):
        n, m, s, _ = depths.shape
        points = (origins.unsqueeze(-2) + depths * dirs.unsqueeze(-2)).reshape(n, -1, 3)
        flat = planes.reshape(-1, *planes.shape[2:])  # NCHW, as grid_sample read the planes before issue 16
        rgb, sigma = decoder(sample_planes(flat, points, self.cfg.box_warp).mean(1))  # grid_sample + mean
        sigma = sigma.reshape(n, m, s, 1)
        return rgb.reshape(n, m, s, -1), sigma if noise is None else sigma + noise

    def forward(self, planes, decoder, origins, dirs, sampling: str = "deterministic",
                return_fine_depths: bool = False):
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling={sampling!r}: expected one of {SAMPLING_MODES}")
        cfg = self.cfg
        n, m, _ = origins.shape
        noise = RayNoise.draw(n, m, cfg, sampling, origins.device, origins.dtype)
        depths = stratified_depths(n, m, cfg, origins.device, origins.dtype, noise.jitter)
        colors, densities = self.decode(planes, decoder, origins, dirs, depths, noise.coarse_noise)
        fine = None
        if cfg.depth_resolution_importance > 0:
            _, _, weights = ray_march(colors, densities, depths, cfg.white_back)
            fine = importance_depths(depths, weights, cfg.depth_resolution_importance, sampling, noise.u)
            colors_f, densities_f = self.decode(planes, decoder, origins, dirs, fine, noise.fine_noise)
            depths = torch.cat([depths, fine], dim=-2)
            colors = torch.cat([colors, colors_f], dim=-2)
            densities = torch.cat([densities, densities_f], dim=-2)
            total = cfg.depth_resolution + cfg.depth_resolution_importance
            depths, order = torch.topk(depths, total, dim=-2, largest=False, sorted=True)
            colors = torch.gather(colors, -2, order.expand(-1, -1, -1, colors.shape[-1]))
            densities = torch.gather(densities, -2, order)
        rgb, depth, weights = ray_march(colors, densities, depths, cfg.white_back)
        out = (rgb, depth, weights.sum(2))
        return out + (fine,) if return_fine_depths else out


@contextlib.contextmanager
def previous_formulation(G):
    """Within the block G renders with ReferenceRenderer and contiguous (NCHW) activations, as before issue 16."""
    from generator import layers
    saved_renderer, saved_layout = G.renderer, layers.CHANNELS_LAST
    G.renderer = ReferenceRenderer(G.cfg.rendering)
    layers.CHANNELS_LAST = False
    try:
        yield G
    finally:
        G.renderer, layers.CHANNELS_LAST = saved_renderer, saved_layout
