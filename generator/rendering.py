"""Volume rendering of tri-planes: rays, tri-plane sampling, the OSG decoder, ray marching, importance sampling.

`sampling='deterministic'` (the default for rendering and export) places coarse samples at exact linspace depths
and importance samples at u = linspace(0, 1); 'stochastic' is the official behaviour (uniform jitter, u ~ U[0,1)).
Everything here is written with ONNX-exportable ops: transmittance as exp(cumsum(log(.))) instead of cumprod,
searchsorted(right=True) as a count of cdf <= u.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from generator.config import RenderingConfig
from generator.layers import FullyConnectedLayer

SAMPLING_MODES = ("deterministic", "stochastic")


def sample_rays(cam2world: torch.Tensor, intrinsics: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel rays of pinhole cameras with normalized intrinsics; ray m = row * R + col, OpenCV axes.

    Returns origins and unit directions, both [N, R*R, 3].
    """
    dtype, device = cam2world.dtype, cam2world.device
    centers = (torch.arange(resolution, dtype=dtype, device=device) + 0.5) / resolution
    v, u = torch.meshgrid(centers, centers, indexing="ij")
    u = u.reshape(1, -1)
    v = v.reshape(1, -1)
    fx, fy = intrinsics[:, 0, 0:1], intrinsics[:, 1, 1:2]
    cx, cy, sk = intrinsics[:, 0, 2:3], intrinsics[:, 1, 2:3], intrinsics[:, 0, 1:2]
    x_cam = (u - cx + cy * sk / fy - sk * v / fy) / fx
    y_cam = (v - cy) / fy
    ones = torch.ones_like(x_cam)
    points = torch.stack([x_cam, y_cam, ones, ones], dim=-1)                     # [N, M, 4]
    world = torch.bmm(cam2world, points.transpose(1, 2)).transpose(1, 2)[..., :3]
    origin = cam2world[:, :3, 3]
    dirs = F.normalize(world - origin[:, None, :], dim=2)
    return origin[:, None, :].expand(-1, dirs.shape[1], -1), dirs


def sample_from_planes(planes: torch.Tensor, points: torch.Tensor, box_warp: float) -> torch.Tensor:
    """Bilinear features of points [N, M, 3] on planes [N, 3, C, H, W]; planes are (x,y), (x,z), (z,x).

    grid_sample with zeros padding and align_corners=False; the box [-box_warp/2, box_warp/2]^3 maps to [-1, 1].
    Returns [N, 3, M, C].
    """
    n, n_planes, c, h, w = planes.shape
    p = points * (2.0 / box_warp)
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    grids = torch.stack([torch.stack([x, y], -1), torch.stack([x, z], -1), torch.stack([z, x], -1)], dim=1)
    grids = grids.reshape(n * n_planes, 1, -1, 2)
    feats = F.grid_sample(planes.reshape(n * n_planes, c, h, w), grids, mode="bilinear", padding_mode="zeros",
                          align_corners=False)
    return feats.permute(0, 3, 2, 1).reshape(n, n_planes, -1, c)


class OSGDecoder(nn.Module):
    """Mean of the three plane features -> FC -> softplus -> FC: raw density and sigmoid colour features."""

    def __init__(self, n_features: int, hidden_dim: int = 64, output_dim: int = 32, lr_multiplier: float = 1.0):
        super().__init__()
        self.net = nn.Sequential(
            FullyConnectedLayer(n_features, hidden_dim, lr_multiplier=lr_multiplier),
            nn.Softplus(),
            FullyConnectedLayer(hidden_dim, 1 + output_dim, lr_multiplier=lr_multiplier),
        )

    def forward(self, sampled_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = sampled_features.mean(1)
        n, m, c = x.shape
        if self.net[0].personal is not None and self.net[0].personal.per_sample:
            x = self.net(x)  # per-sample decoder weights: keep [N, M, C]
        else:
            x = self.net(x.reshape(n * m, c)).reshape(n, m, -1)
        rgb = torch.sigmoid(x[..., 1:]) * (1 + 2 * 0.001) - 0.001
        return rgb, x[..., 0:1]


def ray_march(colors: torch.Tensor, densities: torch.Tensor, depths: torch.Tensor, white_back: bool = False):
    """MipRayMarcher2: midpoint quadrature of the volume rendering integral.

    colors [N, M, S, C], densities and depths [N, M, S, 1]. Returns (features*2-1 [N, M, C], depth [N, M, 1],
    weights [N, M, S-1, 1]). Depth is clamped to the min/max of all depths in the tensor, as in EG3D.
    """
    deltas = depths[:, :, 1:] - depths[:, :, :-1]
    colors_mid = (colors[:, :, :-1] + colors[:, :, 1:]) / 2
    densities_mid = (densities[:, :, :-1] + densities[:, :, 1:]) / 2
    depths_mid = (depths[:, :, :-1] + depths[:, :, 1:]) / 2
    densities_mid = F.softplus(densities_mid - 1)
    alpha = 1 - torch.exp(-densities_mid * deltas)
    # exclusive cumulative product of (1 - alpha + 1e-10), written as exp(cumsum(log)) for ONNX (no CumProd op)
    log_t = torch.log(1 - alpha + 1e-10)
    transmittance = torch.exp(torch.cumsum(log_t, dim=-2) - log_t)
    weights = alpha * transmittance
    rgb = torch.sum(weights * colors_mid, -2)
    weight_total = weights.sum(2)
    depth = torch.sum(weights * depths_mid, -2) / weight_total
    depth = torch.nan_to_num(depth, float("inf"))
    depth = torch.clamp(depth, torch.min(depths), torch.max(depths))
    if white_back:
        rgb = rgb + 1 - weight_total
    return rgb * 2 - 1, depth, weights


def stratified_depths(n: int, m: int, cfg: RenderingConfig, sampling: str, device, dtype=torch.float32):
    """Coarse depths [N, M, S, 1]: linspace(ray_start, ray_end, S), plus U[0, delta) jitter when stochastic."""
    s = cfg.depth_resolution
    depths = torch.linspace(cfg.ray_start, cfg.ray_end, s, device=device, dtype=dtype).reshape(1, 1, s, 1)
    depths = depths.expand(n, m, s, 1)
    if sampling == "stochastic":
        delta = (cfg.ray_end - cfg.ray_start) / (s - 1)
        depths = depths + torch.rand(n, m, s, 1, device=device, dtype=dtype) * delta
    return depths


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, n_samples: int, sampling: str, eps: float = 1e-5):
    """Inverse-transform sampling of `n_samples` depths from piecewise-constant weights between `bins`.

    As in EG3D, bins has one more entry than the cdf needs, so its last value is never reached.
    """
    rays, n_bins = weights.shape
    weights = weights + eps
    pdf = weights / torch.sum(weights, -1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)           # [rays, n_bins + 1]
    if sampling == "deterministic":
        u = torch.linspace(0, 1, n_samples, device=bins.device, dtype=bins.dtype).expand(rays, n_samples)
    else:
        u = torch.rand(rays, n_samples, device=bins.device, dtype=bins.dtype)
    # searchsorted(cdf, u, right=True) == number of cdf entries <= u (cdf is non-decreasing)
    inds = (cdf.unsqueeze(1) <= u.unsqueeze(2)).sum(-1)
    below = torch.clamp(inds - 1, min=0)
    above = torch.clamp(inds, max=n_bins)
    idx = torch.stack([below, above], -1).reshape(rays, 2 * n_samples)
    cdf_g = torch.gather(cdf, 1, idx).reshape(rays, n_samples, 2)
    bins_g = torch.gather(bins, 1, idx).reshape(rays, n_samples, 2)
    denom = cdf_g[..., 1] - cdf_g[..., 0]
    denom = torch.where(denom < eps, torch.ones_like(denom), denom)
    return bins_g[..., 0] + (u - cdf_g[..., 0]) / denom * (bins_g[..., 1] - bins_g[..., 0])


def importance_depths(depths: torch.Tensor, weights: torch.Tensor, n_samples: int, sampling: str) -> torch.Tensor:
    """Fine depths [N, M, n_samples, 1] from coarse depths and their ray-marching weights (no gradient)."""
    with torch.no_grad():
        n, m, s, _ = depths.shape
        z = depths.reshape(n * m, s)
        w = weights.reshape(n * m, 1, -1)
        w = F.avg_pool1d(F.max_pool1d(w, 2, 1, padding=1), 2, 1).reshape(n * m, -1) + 0.01
        z_mid = 0.5 * (z[:, :-1] + z[:, 1:])
        fine = sample_pdf(z_mid, w[:, 1:-1], n_samples, sampling)
        return fine.detach().reshape(n, m, n_samples, 1)


class ImportanceRenderer(nn.Module):
    """Coarse pass, importance sampling, fine pass over the union of samples sorted by depth."""

    def __init__(self, cfg: RenderingConfig):
        super().__init__()
        self.cfg = cfg

    def decode(self, planes, decoder, origins, dirs, depths):
        n, m, s, _ = depths.shape
        points = (origins.unsqueeze(-2) + depths * dirs.unsqueeze(-2)).reshape(n, -1, 3)
        rgb, sigma = decoder(sample_from_planes(planes, points, self.cfg.box_warp))
        if self.cfg.density_noise > 0:
            sigma = sigma + torch.randn_like(sigma) * self.cfg.density_noise
        return rgb.reshape(n, m, s, -1), sigma.reshape(n, m, s, 1)

    def forward(self, planes: torch.Tensor, decoder: OSGDecoder, origins: torch.Tensor, dirs: torch.Tensor,
                sampling: str = "deterministic", return_fine_depths: bool = False):
        """Returns features [N, M, C], depth [N, M, 1], accumulated opacity [N, M, 1] (and fine depths if asked)."""
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling={sampling!r}: expected one of {SAMPLING_MODES}")
        cfg = self.cfg
        n, m, _ = origins.shape
        depths = stratified_depths(n, m, cfg, sampling, origins.device, origins.dtype)
        colors, densities = self.decode(planes, decoder, origins, dirs, depths)
        fine = None
        if cfg.depth_resolution_importance > 0:
            _, _, weights = ray_march(colors, densities, depths, cfg.white_back)
            fine = importance_depths(depths, weights, cfg.depth_resolution_importance, sampling)
            colors_f, densities_f = self.decode(planes, decoder, origins, dirs, fine)
            depths = torch.cat([depths, fine], dim=-2)
            colors = torch.cat([colors, colors_f], dim=-2)
            densities = torch.cat([densities, densities_f], dim=-2)
            depths, order = torch.sort(depths, dim=-2)
            colors = torch.gather(colors, -2, order.expand(-1, -1, -1, colors.shape[-1]))
            densities = torch.gather(densities, -2, order)
        rgb, depth, weights = ray_march(colors, densities, depths, cfg.white_back)
        out = (rgb, depth, weights.sum(2))
        return out + (fine,) if return_fine_depths else out
