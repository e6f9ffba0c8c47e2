"""The three exported graphs as torch modules: mapping, tri-plane synthesis, rendering + super-resolution.

Each wrapper fixes the deterministic inference mode (const noise, sampling='deterministic') and the non-fused
modulated convolution, so that the batch axis stays dynamic in ONNX:

    MappingGraph    (z [B, z_dim], c [B, 25], truncation_psi [1])            -> ws [B, num_ws, w_dim]
    SynthesisGraph  (ws [B, num_ws, w_dim], [adapter tensors])               -> planes [B, 3, C, H, W]
    RenderGraph     (planes, ws, c [B, 25], [adapter tensors])               -> image, image_raw, depth

With `adapter_inputs`, the personal tensors of a LoRA policy become graph inputs (keep-LoRA export): a layer
reads W0 + scale * reshape(B @ A) computed in the graph from the inputs A and B, and its biases / noise strengths
/ const / decoder tensors straight from inputs. The wrappers route the generator's `Personalizable.p()` through
an `InputRoute` (the same hook generator/lora.py uses), so the exported arithmetic is exactly the eager one.
Build wrappers on a private copy of the generator: routes are installed on its modules, and RenderGraph swaps
in `ExportRenderer` and `StableSoftplus` (same numbers as the eager renderer; ops TensorRT parses and
onnxruntime runs fast) and drops the no-op antialias flag of the upsampling resize.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from generator.layers import Personalizable
from generator.rendering import ImportanceRenderer, ray_march, stratified_depths
from generator.triplane import TriPlaneGenerator

GRAPH_PARTS = {"synthesis": ("backbone.synthesis.",), "render": ("superresolution.", "decoder.")}
"""Which base-key prefixes each graph owns; personal tensors under them become that graph's adapter inputs."""


@dataclass(frozen=True)
class AdapterInput:
    """One adapter tensor that is a graph input."""

    input_name: str
    """Name of the ONNX graph input (the adapter file's tensor name, sanitised)."""
    tensor_name: str
    """Name of the tensor in the adapter file ('<module>.lora_A', '<module>.lora_B' or a base key)."""
    target_key: str
    """Base state-dict key the tensor personalises."""
    role: str
    """'lora_A', 'lora_B' or 'full'."""
    shape: tuple[int, ...]
    """Shape of the input (static: adapters of one policy all have it)."""
    graph: str
    """'synthesis' or 'render'."""


def graph_of(key: str) -> str | None:
    """The graph that owns base key `key` (None for the mapping network, which keep-LoRA leaves frozen)."""
    for graph, prefixes in GRAPH_PARTS.items():
        if key.startswith(prefixes):
            return graph
    return None


class InputRoute:
    """What one layer reads in a keep-LoRA graph: base tensors, with personal ones taken from graph inputs."""

    per_sample = False

    def __init__(self, prefix: str, table: dict, scale: float):
        self.prefix, self.table, self.scale = prefix, table, scale

    def get(self, name: str, base: torch.Tensor) -> torch.Tensor:
        entry = self.table.get(f"{self.prefix}.{name}")
        if entry is None:
            return base
        if entry[0] == "full":
            return entry[1]
        _, a, b = entry
        return base + (b @ a).reshape(base.shape) * self.scale


class _AdapterRouting(nn.Module):
    """Shared plumbing: install InputRoutes on the layers whose tensors are inputs, fill them per forward."""

    def __init__(self, G: TriPlaneGenerator, inputs: list[AdapterInput], scale: float):
        super().__init__()
        self.inputs = list(inputs)
        self._table: dict = {}
        modules = {key.rpartition(".")[0] for key in (i.target_key for i in self.inputs)}
        for name, m in G.named_modules():
            if isinstance(m, Personalizable) and name in modules:
                m.personal = InputRoute(name, self._table, scale)

    def bind(self, tensors: list[torch.Tensor]) -> None:
        if len(tensors) != len(self.inputs):
            raise ValueError(f"expected {len(self.inputs)} adapter tensors, got {len(tensors)}")
        self._table.clear()
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for spec, t in zip(self.inputs, tensors):
            if spec.role == "full":
                self._table[spec.target_key] = ("full", t)
            else:
                pairs.setdefault(spec.target_key, {})[spec.role] = t
        for key, pair in pairs.items():
            if set(pair) != {"lora_A", "lora_B"}:
                raise ValueError(f"LoRA target {key}: needs both lora_A and lora_B inputs, got {sorted(pair)}")
            self._table[key] = ("lora", pair["lora_A"], pair["lora_B"])


class MappingGraph(nn.Module):
    """(z, c, truncation_psi) -> ws, truncating every w toward w_avg (truncation_cutoff = None)."""

    def __init__(self, G: TriPlaneGenerator):
        super().__init__()
        self.G = G

    def forward(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: torch.Tensor) -> torch.Tensor:
        ws = self.G.mapping(z, c, truncation_psi=1)
        w_avg = self.G.backbone.mapping.w_avg
        return w_avg + truncation_psi.reshape(1, 1, 1) * (ws - w_avg)


class SynthesisGraph(nn.Module):
    """ws (+ adapter tensors) -> tri-planes [B, 3, C, H, W]: the StyleGAN2 backbone in const-noise mode."""

    def __init__(self, G: TriPlaneGenerator, adapter_inputs: list[AdapterInput] | None = None, scale: float = 1.0,
                 planes_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.G = G
        self.routing = _AdapterRouting(G, adapter_inputs or [], scale)
        self.planes_dtype = planes_dtype

    def forward(self, ws: torch.Tensor, adapter: list[torch.Tensor] | None = None) -> torch.Tensor:
        self.routing.bind(adapter or [])
        img = self.G.backbone.synthesis(ws, noise_mode="const", fused_modconv=False)
        cfg = self.G.cfg
        planes = img.reshape(-1, 3, cfg.plane_features, cfg.triplane_resolution, cfg.triplane_resolution)
        return planes.to(self.planes_dtype)


def pool_max_then_avg(w: torch.Tensor) -> torch.Tensor:
    """avg_pool1d(max_pool1d(w, 2, 1, padding=1), 2, 1) over the last axis, with elementwise ops only.

    TensorRT pools only 2-D/3-D; the padded max of neighbours is max(w[i-1], w[i]) with the ends kept as is.
    """
    inner = torch.maximum(w[..., :-1], w[..., 1:])
    m = torch.cat([w[..., :1], inner, w[..., -1:]], dim=-1)
    return (m[..., :-1] + m[..., 1:]) / 2


def sample_pdf_float_index(bins: torch.Tensor, weights: torch.Tensor, n_samples: int, eps: float = 1e-5):
    """generator.rendering.sample_pdf in deterministic mode, counting `cdf <= u` in float (no INT64 Clip)."""
    rays, n_bins = weights.shape
    weights = weights + eps
    pdf = weights / torch.sum(weights, -1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)
    u = torch.linspace(0, 1, n_samples, device=bins.device, dtype=bins.dtype).expand(rays, n_samples)
    inds = (cdf.unsqueeze(1) <= u.unsqueeze(2)).to(bins.dtype).sum(-1)      # exact small integers
    below = torch.clamp(inds - 1, min=0).to(torch.int64)
    above = torch.clamp(inds, max=float(n_bins)).to(torch.int64)
    idx = torch.stack([below, above], -1).reshape(rays, 2 * n_samples)
    cdf_g = torch.gather(cdf, 1, idx).reshape(rays, n_samples, 2)
    bins_g = torch.gather(bins, 1, idx).reshape(rays, n_samples, 2)
    denom = cdf_g[..., 1] - cdf_g[..., 0]
    denom = torch.where(denom < eps, torch.ones_like(denom), denom)
    return bins_g[..., 0] + (u - cdf_g[..., 0]) / denom * (bins_g[..., 1] - bins_g[..., 0])


class StableSoftplus(nn.Module):
    """softplus(x) = relu(x) + log(1 + exp(-|x|)): equal to torch's (threshold 20) within float32 rounding.

    onnxruntime's CPU Softplus kernel is scalar; these elementwise ops are vectorised, which makes the render
    graph ~1.5x faster on CPU (the OSG decoder's softplus runs on every sample of every ray).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) + torch.log(1 + torch.exp(-torch.abs(x)))


class ExportRenderer(ImportanceRenderer):
    """ImportanceRenderer (deterministic sampling) written with ops TensorRT's ONNX parser takes.

    Three rewrites, each equal to the eager code: the 1-D max/avg pooling of the coarse weights as elementwise
    max and mean, the searchsorted count in float (so no Clip on INT64), and the depth sort as a TopK whose K is
    a build-time constant (torch.sort exports a K computed from the tensor's shape).
    """

    def forward(self, planes, decoder, origins, dirs, sampling: str = "deterministic", return_fine_depths=False):
        if sampling != "deterministic":
            raise ValueError("the exported renderer is deterministic only")
        cfg = self.cfg
        n, m, _ = origins.shape
        depths = stratified_depths(n, m, cfg, sampling, origins.device, origins.dtype)
        colors, densities = self.decode(planes, decoder, origins, dirs, depths)
        fine = None
        if cfg.depth_resolution_importance > 0:
            _, _, weights = ray_march(colors, densities, depths, cfg.white_back)
            s = cfg.depth_resolution
            z = depths.reshape(-1, s)
            w = pool_max_then_avg(weights.reshape(-1, s - 1)) + 0.01
            z_mid = 0.5 * (z[:, :-1] + z[:, 1:])
            fine = sample_pdf_float_index(z_mid, w[:, 1:-1], cfg.depth_resolution_importance)
            fine = fine.reshape(n, m, cfg.depth_resolution_importance, 1)
            colors_f, densities_f = self.decode(planes, decoder, origins, dirs, fine)
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


class RenderGraph(nn.Module):
    """(planes, ws, c) (+ adapter tensors) -> image, image_raw, depth with deterministic sampling."""

    def __init__(self, G: TriPlaneGenerator, adapter_inputs: list[AdapterInput] | None = None, scale: float = 1.0):
        super().__init__()
        self.G = G
        self.routing = _AdapterRouting(G, adapter_inputs or [], scale)
        G.renderer = ExportRenderer(G.cfg.rendering)
        if isinstance(G.decoder.net[1], nn.Softplus) and G.decoder.net[1].beta == 1:
            G.decoder.net[1] = StableSoftplus()
        sr = G.superresolution
        if G.neural_rendering_resolution < sr.input_resolution:
            # Antialiasing changes nothing when upsampling (the filter support stays one pixel), and the plain
            # bilinear resize exports to a standard ONNX Resize while the antialiased one does not.
            sr.antialias = False
        elif G.neural_rendering_resolution > sr.input_resolution and sr.antialias:
            raise ValueError(f"neural_rendering_resolution {G.neural_rendering_resolution} > superresolution "
                             f"input {sr.input_resolution}: the antialiased downsampling does not export to ONNX")

    def forward(self, planes: torch.Tensor, ws: torch.Tensor, c: torch.Tensor,
                adapter: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.routing.bind(adapter or [])
        out = self.G.render_planes(planes.to(torch.float32), ws, c, sampling="deterministic", fused_modconv=False)
        return out["image"], out["image_raw"], out["image_depth"]


def upsample_matches_antialiased(size_in: int, size_out: int, channels: int = 2, seed: int = 0) -> float:
    """Max |bilinear(antialias=True) - bilinear(antialias=False)| for an upsampling resize (a self-check)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, channels, size_in, size_in, generator=g)
    kw = dict(size=(size_out, size_out), mode="bilinear", align_corners=False)
    return float((F.interpolate(x, antialias=True, **kw) - F.interpolate(x, antialias=False, **kw)).abs().max())

