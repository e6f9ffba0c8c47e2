"""Volume rendering of tri-planes: rays, tri-plane sampling, the OSG decoder, ray marching, importance sampling.

Rays are rendered in chunks of `DEFAULT_RAY_CHUNK` (so a chunk's samples stay in the CPU caches instead of streaming
~1 GB of intermediates through memory at 128^2 rays x 96 samples); the coarse pass ray-marches densities only (its
weights need no colour); the union of coarse and fine samples is sorted by depth for depths and densities only, and
colour is integrated with one batched matmul of per-sample weights (the midpoint rule's weight of a sample is the
mean of the two interval weights it touches) against the unsorted colours. Each equals the straightforward
formulation (bench/reference_renderer.py keeps it) to float rounding, ~1e-7 on the image.

`sampling='deterministic'` (the default for rendering and export) places coarse samples at exact linspace depths
and importance samples at u = linspace(0, 1); 'stochastic' is the official behaviour (uniform jitter, u ~ U[0,1)).

This one renderer serves eager PyTorch, training and ONNX/TensorRT export alike, so every step is written with ops
that TensorRT's ONNX parser takes and onnxruntime runs fast, each equal to the official formulation:
transmittance as exp(cumsum(log(.))) (no CumProd), the 1-D max/avg pooling of the coarse weights as elementwise
max and mean (TensorRT pools only 2-D/3-D), searchsorted(right=True) as a count of cdf <= u done in float (no
Clip on INT64), the depth sort as a TopK whose K is a build-time constant (torch.sort exports a K computed from
the tensor's shape), and softplus as relu(x) + log(1 + exp(-|x|)) (onnxruntime's Softplus kernel is scalar).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from generator.checkpointing import Checkpointable
from generator.config import RenderingConfig
from generator.layers import FullyConnectedLayer
from generator.ops import exporting_or_compiling

SAMPLING_MODES = ("deterministic", "stochastic")

DEFAULT_RAY_CHUNK = 512
"""Rays per chunk: 512 rays x 96 samples x 32 features is ~6 MB per intermediate, near a core's L2/L3 share
instead of ~200 MB streamed through memory, and few enough chunks that per-op overhead stays small (the sweep that
chose it is in docs/BENCHMARKS.md). `ImportanceRenderer(cfg, ray_chunk=...)` or `G.renderer.ray_chunk` changes
it. The renderer is the same for any chunk size; exports and torch.compile'd graphs take all rays at once (a loop
would be unrolled)."""


def sample_rays(cam2world: torch.Tensor, intrinsics: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel rays of pinhole cameras with normalized intrinsics; ray m = row * R + col, OpenCV axes.

    Returns origins and unit directions, both [N, R*R, 3], in the cameras' dtype.
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


def flat_planes(planes: torch.Tensor) -> torch.Tensor:
    """Planes [N, 3, C, H, W] as the [N*3, C, H, W] channels_last batch the samplers read: a point's C features
    are then adjacent in memory, which makes CPU grid_sample ~2.5x faster (one copy per render, not per chunk)."""
    n, n_planes, c, h, w = planes.shape
    return planes.reshape(n * n_planes, c, h, w).contiguous(memory_format=torch.channels_last)


def sample_planes(planes: torch.Tensor, points: torch.Tensor, box_warp: float) -> torch.Tensor:
    """Bilinear features [N, 3, M, C] of points [N, M, 3] on `flat_planes` planes [N*3, C, H, W], which are the
    (x,y), (x,z), (z,x) planes of each sample: grid_sample with zeros padding and align_corners=False, the box
    [-box_warp/2, box_warp/2]^3 mapped to [-1, 1]."""
    n, c = points.shape[0], planes.shape[1]
    return _grid_sample_planes(planes, points, box_warp).permute(0, 3, 2, 1).reshape(n, 3, -1, c)


def _grid_sample_planes(planes: torch.Tensor, points: torch.Tensor, box_warp: float) -> torch.Tensor:
    """grid_sample of points [N, M, 3] on `flat_planes` planes: [N*3, C, 1, M]."""
    p = points * (2.0 / box_warp)
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    grids = torch.stack([torch.stack([x, y], -1), torch.stack([x, z], -1), torch.stack([z, x], -1)], dim=1)
    grids = grids.reshape(points.shape[0] * 3, 1, -1, 2)
    return F.grid_sample(planes, grids, mode="bilinear", padding_mode="zeros", align_corners=False)


def plane_features(planes: torch.Tensor, points: torch.Tensor, box_warp: float) -> torch.Tensor:
    """What OSGDecoder reads: the mean over the three planes of the bilinear features of points [N, M, 3] on
    `flat_planes` planes [N*3, C, H, W]. Returns [N, M, C].

    Eager on the CPU: one weighted gather of the 12 corner rows (`gather_plane_mean`), ~2x faster than
    grid_sample + mean there and equal to it to float32 rounding (tests/test_renderer_fast.py). Elsewhere
    grid_sample + mean (`grid_plane_mean`): on CUDA it is faster (an H100's eager novel view took 168 ms with it
    and 289 ms with the gather; bench/gpu_check.py's plane_lookup section, docs/gpu/), ONNX has GridSample but no
    weighted EmbeddingBag, and TensorRT runs GridSample natively.
    """
    if planes.device.type == "cpu" and not exporting_or_compiling():
        return gather_plane_mean(planes, points, box_warp)
    return grid_plane_mean(planes, points, box_warp)


def grid_plane_mean(planes: torch.Tensor, points: torch.Tensor, box_warp: float) -> torch.Tensor:
    """`plane_features` as grid_sample + mean over the planes, the mean before the transpose: the graph's Transpose
    then moves a third of the data (it cost up to 29% of the onnxruntime render graph when it came first)."""
    n, m, _ = points.shape
    c = planes.shape[1]
    return _grid_sample_planes(planes, points, box_warp).reshape(n, 3, c, m).mean(1).transpose(1, 2)


def gather_plane_mean(planes: torch.Tensor, points: torch.Tensor, box_warp: float) -> torch.Tensor:
    """`plane_features` as one `embedding_bag`: feature = sum over planes k and corners j of w_kj/3 * row_kj.

    The rows are the planes' texels, [N*3*H*W, C] (a view of channels_last planes). A point's coordinate u in
    [-1, 1] falls at texel position (u+1)*W/2 - 1/2 (grid_sample, align_corners=False); its corners are
    floor/floor+1 with bilinear weights, and a corner outside the plane has weight 0 (zeros padding).
    """
    n_planes, c, h, w = planes.shape
    n, m, _ = points.shape
    rows = planes.permute(0, 2, 3, 1).reshape(-1, c)
    p = points * (2.0 / box_warp)
    x, y, z = p.unbind(-1)
    u = (torch.stack([x, x, z], -1) + 1) * (w * 0.5) - 0.5  # [N, M, 3]: width axis of planes (x,y), (x,z), (z,x)
    v = (torch.stack([y, z, x], -1) + 1) * (h * 0.5) - 0.5  # height axis
    u0, v0 = torch.floor(u), torch.floor(v)
    fu, fv = u - u0, v - v0
    u0, v0 = u0.long(), v0.long()
    first_row = (torch.arange(n, device=points.device).view(n, 1, 1) * 3
                 + torch.arange(3, device=points.device)) * (h * w)  # [N, 1, 3]
    index, weight = [], []
    for du, wu in ((0, 1 - fu), (1, fu)):
        for dv, wv in ((0, 1 - fv), (1, fv)):
            uu, vv = u0 + du, v0 + dv
            inside = (uu >= 0) & (uu < w) & (vv >= 0) & (vv < h)
            index.append(first_row + vv.clamp(0, h - 1) * w + uu.clamp(0, w - 1))
            weight.append(torch.where(inside, wu * wv, torch.zeros_like(wu)) * (1.0 / 3))
    index = torch.stack(index, -1).reshape(n * m, 12)
    weight = torch.stack(weight, -1).reshape(n * m, 12).to(rows.dtype)
    return F.embedding_bag(index, rows, per_sample_weights=weight, mode="sum").reshape(n, m, c)


class Softplus(nn.Module):
    """torch's softplus (beta 1, threshold 20); in exported and compiled graphs relu(x) + log(1 + exp(-|x|)), equal
    to float32 rounding.

    The graph form is elementwise ops only: onnxruntime's CPU Softplus kernel is scalar, these are vectorised, which
    makes the exported render graph ~1.5x faster on CPU (the decoder's softplus runs on every sample of every ray).
    In eager code torch's one fused kernel is 2x faster than the six ops.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if exporting_or_compiling():
            return torch.relu(x) + torch.log(1 + torch.exp(-torch.abs(x)))
        return F.softplus(x)


class OSGDecoder(nn.Module):
    """Plane-mean features (`plane_features`) -> FC -> softplus -> FC: raw density and sigmoid colour features."""

    def __init__(self, n_features: int, hidden_dim: int = 64, output_dim: int = 32, lr_multiplier: float = 1.0):
        super().__init__()
        self.net = nn.Sequential(
            FullyConnectedLayer(n_features, hidden_dim, lr_multiplier=lr_multiplier),
            Softplus(),
            FullyConnectedLayer(hidden_dim, 1 + output_dim, lr_multiplier=lr_multiplier),
        )

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.net(features)  # [N, M, C]: the layers keep the sample axis (per-sample weights)
        rgb = torch.sigmoid(x[..., 1:]) * (1 + 2 * 0.001) - 0.001
        return rgb, x[..., 0:1]


def march_weights(densities: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
    """MipRayMarcher2's interval weights [N, M, S-1, 1] from raw densities and depths [N, M, S, 1] sorted by depth.

    Midpoint quadrature: interval i has density softplus(mean of its two ends - 1) and length depths[i+1]-depths[i];
    weight = alpha * transmittance, the exclusive cumulative product of (1 - alpha + 1e-10) written as
    exp(cumsum(log)) for ONNX (no CumProd op). 1 - alpha is taken as exp(-density * delta) itself rather than
    recomputed as 1 - (1 - exp(.)): in the exported graph 1 - alpha + 1e-10 came out as exactly 0 for an opaque
    interval (the constants folded before the subtraction), and log(0) turned a sharp (well-trained) head's colours
    into NaN under onnxruntime. The two differ
    only where exp(.) < 6e-8, i.e. behind an opaque interval (weights change by < 1e-7).
    """
    deltas = depths[:, :, 1:] - depths[:, :, :-1]
    densities_mid = F.softplus((densities[:, :, :-1] + densities[:, :, 1:]) / 2 - 1)
    transmit = torch.exp(-densities_mid * deltas)                                   # 1 - alpha of each interval
    log_t = torch.log(transmit + 1e-10)
    return (1 - transmit) * torch.exp(torch.cumsum(log_t, dim=-2) - log_t)


def sample_weights(weights: torch.Tensor) -> torch.Tensor:
    """Per-sample weights [N, M, S, 1] of interval weights [N, M, S-1, 1]: sum_i w_i (c_i + c_i+1) / 2 = sum_k a_k c_k
    with a_k = (w_k-1 + w_k) / 2 (w_-1 = w_S-1 = 0), so colour integrates as one matmul over the samples."""
    return (F.pad(weights, (0, 0, 1, 0)) + F.pad(weights, (0, 0, 0, 1))) / 2


def marched_depth(weights: torch.Tensor, depths: torch.Tensor, weight_total: torch.Tensor) -> torch.Tensor:
    """Expected depth of the midpoints, inf where no weight; EG3D then clamps it to the min/max of all depths."""
    depths_mid = (depths[:, :, :-1] + depths[:, :, 1:]) / 2
    return torch.nan_to_num(torch.sum(weights * depths_mid, -2) / weight_total, float("inf"))


def stratified_depths(n: int, m: int, cfg: RenderingConfig, device, dtype=torch.float32,
                      jitter: torch.Tensor | None = None) -> torch.Tensor:
    """Coarse depths [N, M, S, 1]: linspace(ray_start, ray_end, S), plus jitter [N, M, S, 1] ~ U[0,1) times delta."""
    s = cfg.depth_resolution
    depths = torch.linspace(cfg.ray_start, cfg.ray_end, s, device=device, dtype=dtype).reshape(1, 1, s, 1)
    depths = depths.expand(n, m, s, 1)
    if jitter is not None:
        depths = depths + jitter * ((cfg.ray_end - cfg.ray_start) / (s - 1))
    return depths


def max_then_mean_of_neighbours(w: torch.Tensor) -> torch.Tensor:
    """avg_pool1d(max_pool1d(w, 2, 1, padding=1), 2, 1) over the last axis, with elementwise ops only.

    The padded max of neighbours is max(w[i-1], w[i]) with the two ends kept as they are.
    """
    inner = torch.maximum(w[..., :-1], w[..., 1:])
    m = torch.cat([w[..., :1], inner, w[..., -1:]], dim=-1)
    return (m[..., :-1] + m[..., 1:]) / 2


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, n_samples: int, sampling: str, eps: float = 1e-5,
               u: torch.Tensor | None = None):
    """Inverse-transform sampling of `n_samples` depths from piecewise-constant weights between `bins`.

    As in EG3D, bins has one more entry than the cdf needs, so its last value is never reached. `u` [rays,
    n_samples] overrides the sampling positions (deterministic: linspace(0, 1); stochastic: U[0, 1)).
    """
    rays, n_bins = weights.shape
    weights = weights + eps
    pdf = weights / torch.sum(weights, -1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)           # [rays, n_bins + 1]
    if u is None and sampling == "deterministic":
        u = torch.linspace(0, 1, n_samples, device=bins.device, dtype=bins.dtype).expand(rays, n_samples)
    elif u is None:
        u = torch.rand(rays, n_samples, device=bins.device, dtype=bins.dtype)
    # searchsorted(cdf, u, right=True) == number of cdf entries <= u (cdf is non-decreasing); counted in float, where
    # such small integers are exact, so that the clamps are float ops (TensorRT has no Clip on INT64)
    inds = (cdf.unsqueeze(1) <= u.unsqueeze(2)).to(bins.dtype).sum(-1)
    below = torch.clamp(inds - 1, min=0).to(torch.int64)
    above = torch.clamp(inds, max=float(n_bins)).to(torch.int64)
    idx = torch.stack([below, above], -1).reshape(rays, 2 * n_samples)
    cdf_g = torch.gather(cdf, 1, idx).reshape(rays, n_samples, 2)
    bins_g = torch.gather(bins, 1, idx).reshape(rays, n_samples, 2)
    denom = cdf_g[..., 1] - cdf_g[..., 0]
    denom = torch.where(denom < eps, torch.ones_like(denom), denom)
    return bins_g[..., 0] + (u - cdf_g[..., 0]) / denom * (bins_g[..., 1] - bins_g[..., 0])


def importance_depths(depths: torch.Tensor, weights: torch.Tensor, n_samples: int, sampling: str,
                      u: torch.Tensor | None = None) -> torch.Tensor:
    """Fine depths [N, M, n_samples, 1] from coarse depths and their ray-marching weights (no gradient)."""
    n, m, s, _ = depths.shape
    z = depths.detach().reshape(n * m, s)
    w = max_then_mean_of_neighbours(weights.detach().reshape(n * m, s - 1)) + 0.01
    z_mid = 0.5 * (z[:, :-1] + z[:, 1:])
    u = None if u is None else u.reshape(n * m, n_samples)
    return sample_pdf(z_mid, w[:, 1:-1], n_samples, sampling, u=u).reshape(n, m, n_samples, 1)


@dataclass
class RayNoise:
    """The random numbers of one render, drawn for all rays up front in the order the unchunked renderer draws them
    (coarse jitter, coarse density noise, fine u, fine density noise), so a chunked render is the same render.
    Each is [N, M, ...] or None (deterministic sampling; density_noise 0; no importance pass)."""

    jitter: torch.Tensor | None = None
    coarse_noise: torch.Tensor | None = None
    u: torch.Tensor | None = None
    fine_noise: torch.Tensor | None = None

    @staticmethod
    def draw(n: int, m: int, cfg: RenderingConfig, sampling: str, device, dtype) -> "RayNoise":
        s, s_fine = cfg.depth_resolution, cfg.depth_resolution_importance
        stochastic, noisy = sampling == "stochastic", cfg.density_noise > 0
        jitter = torch.rand(n, m, s, 1, device=device, dtype=dtype) if stochastic else None
        coarse = torch.randn(n, m, s, 1, device=device, dtype=dtype) * cfg.density_noise if noisy else None
        u = fine = None
        if s_fine > 0:
            u = torch.rand(n, m, s_fine, device=device, dtype=dtype) if stochastic else None
            fine = torch.randn(n, m, s_fine, 1, device=device, dtype=dtype) * cfg.density_noise if noisy else None
        return RayNoise(jitter, coarse, u, fine)

    def rays(self, start: int, stop: int) -> "RayNoise":
        cut = lambda t: None if t is None else t[:, start:stop]  # noqa: E731
        return RayNoise(cut(self.jitter), cut(self.coarse_noise), cut(self.u), cut(self.fine_noise))


class ImportanceRenderer(nn.Module, Checkpointable):
    """Coarse pass, importance sampling, fine pass over the union of samples sorted by depth; rays in chunks.

    `ray_chunk` rays are rendered at a time (None or 0: all at once; exports and torch.compile always take all).
    `chunk_fn` is the per-chunk function (`TriPlaneGenerator.compile_renderer`, for `render --compile` and
    training's `compile` option, replaces it with a torch.compile'd one).
    With gradient checkpointing a chunk keeps only its results for backward (generator/checkpointing.py).
    """

    def __init__(self, cfg: RenderingConfig, ray_chunk: int | None = DEFAULT_RAY_CHUNK):
        super().__init__()
        self.cfg = cfg
        self.ray_chunk = ray_chunk
        self.chunk_fn = self.render_rays

    def decode(self, planes, decoder, origins, dirs, depths, noise: torch.Tensor | None = None):
        n, m, s, _ = depths.shape
        points = (origins.unsqueeze(-2) + depths * dirs.unsqueeze(-2)).reshape(n, -1, 3)
        features = plane_features(planes, points, self.cfg.box_warp)
        rgb, sigma = decoder(features)
        sigma = sigma.reshape(n, m, s, 1)
        if noise is not None:
            sigma = sigma + noise
        return rgb.reshape(n, m, s, -1), sigma

    def render_rays(self, planes: torch.Tensor, decoder: OSGDecoder, origins: torch.Tensor, dirs: torch.Tensor,
                    sampling: str, noise: RayNoise):
        """One chunk of rays on `flat_planes` planes: (features [N, m, C], depth before the clamp [N, m, 1],
        opacity [N, m, 1], fine depths [N, m, S_fine, 1] or None, smallest and largest sample depth)."""
        cfg = self.cfg
        n, m, _ = origins.shape
        depths = stratified_depths(n, m, cfg, origins.device, origins.dtype, noise.jitter)
        colors, densities = self.decode(planes, decoder, origins, dirs, depths, noise.coarse_noise)
        fine = None
        if cfg.depth_resolution_importance > 0:
            fine = importance_depths(depths, march_weights(densities, depths), cfg.depth_resolution_importance,
                                     sampling, noise.u)
            colors_f, densities_f = self.decode(planes, decoder, origins, dirs, fine, noise.fine_noise)
            depths = torch.cat([depths, fine], dim=-2)
            colors = torch.cat([colors, colors_f], dim=-2)
            densities = torch.cat([densities, densities_f], dim=-2)
            total = depths.shape[-2]
            depths_sorted, order = torch.topk(depths, total, dim=-2, largest=False, sorted=True)
            weights = march_weights(torch.gather(densities, -2, order), depths_sorted)
            # the inverse permutation (a TopK of the order, K fixed) takes each sample's weight back to its colour
            inverse = torch.topk(order.to(depths.dtype), total, dim=-2, largest=False, sorted=True).indices
            per_sample = torch.gather(sample_weights(weights), -2, inverse)
            depths = depths_sorted
        else:
            weights = march_weights(densities, depths)
            per_sample = sample_weights(weights)
        rgb = torch.matmul(per_sample.transpose(-1, -2), colors).squeeze(-2)
        weight_total = weights.sum(2)
        if cfg.white_back:
            rgb = rgb + 1 - weight_total
        depth = marched_depth(weights, depths, weight_total)
        return rgb * 2 - 1, depth, weight_total, fine, torch.min(depths), torch.max(depths)

    def forward(self, planes: torch.Tensor, decoder: OSGDecoder, origins: torch.Tensor, dirs: torch.Tensor,
                sampling: str = "deterministic", return_fine_depths: bool = False):
        """Returns features [N, M, C], depth [N, M, 1], accumulated opacity [N, M, 1] (and fine depths if asked)."""
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling={sampling!r}: expected one of {SAMPLING_MODES}")
        n, m, _ = origins.shape
        noise = RayNoise.draw(n, m, self.cfg, sampling, origins.device, origins.dtype)
        planes = flat_planes(planes)
        chunk = self.ray_chunk or m
        if chunk >= m or exporting_or_compiling():
            rgb, depth, weight_total, fine, lo, hi = self.render_rays(planes, decoder, origins, dirs, sampling, noise)
        else:
            # random numbers are drawn up front (RayNoise), so a recomputed chunk needs no RNG state
            parts = [self.checkpointed(self.chunk_fn, planes, decoder, origins[:, i:i + chunk],
                                       dirs[:, i:i + chunk], sampling, noise.rays(i, i + chunk), preserve_rng=False)
                     for i in range(0, m, chunk)]
            rgb, depth, weight_total = (torch.cat([p[k] for p in parts], dim=1) for k in range(3))
            fine = None if parts[0][3] is None else torch.cat([p[3] for p in parts], dim=1)
            lo = torch.stack([p[4] for p in parts]).min()
            hi = torch.stack([p[5] for p in parts]).max()
        # EG3D clamps to the min/max of all sample depths of the batch, so the clamp waits for every chunk
        depth = torch.clamp(depth, lo, hi)
        out = (rgb, depth, weight_total)
        return out + (fine,) if return_fine_depths else out
