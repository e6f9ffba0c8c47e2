"""The StyleGAN2 parts of EG3D: mapping network (z, c) -> ws and the skip-architecture synthesis network.

In EG3D the synthesis network draws tri-planes instead of an image: its "image" has 3 * 32 channels at 256^2.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from generator.checkpointing import Checkpointable
from generator.layers import FullyConnectedLayer, Personalizable, SynthesisLayer, ToRGBLayer, to_layout
from generator.ops import fir_filter, normalize_2nd_moment, upsample2d


class MappingNetwork(nn.Module):
    """w = MLP([norm(z), norm(embed(c))]), broadcast to num_ws copies, optionally truncated toward w_avg."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int, num_layers: int = 2,
                 lr_multiplier: float = 0.01):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, c_dim, w_dim, num_ws, num_layers
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, w_dim)
        features = [z_dim + (w_dim if c_dim > 0 else 0)] + [w_dim] * num_layers
        for i in range(num_layers):
            self.add_module(f"fc{i}", FullyConnectedLayer(features[i], features[i + 1], activation="lrelu",
                                                          lr_multiplier=lr_multiplier))
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None) -> torch.Tensor:
        parts = []
        if self.z_dim > 0:
            parts.append(normalize_2nd_moment(z.to(torch.float32)))
        if self.c_dim > 0:
            parts.append(normalize_2nd_moment(self.embed(c.to(torch.float32))))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        ws = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        return truncate(ws, self.w_avg, truncation_psi, truncation_cutoff)


def truncate(ws: torch.Tensor, w_avg: torch.Tensor, psi: float, cutoff: int | None) -> torch.Tensor:
    """The truncation trick: lerp(w_avg, w, psi) on ws[:, :cutoff] (all ws when cutoff is None)."""
    if psi == 1:
        return ws
    if cutoff is None:
        return w_avg.lerp(ws, psi)
    head = w_avg.lerp(ws[:, :cutoff], psi)
    return torch.cat([head, ws[:, cutoff:]], dim=1)


class SynthesisBlock(Personalizable, Checkpointable):
    """One resolution of the skip architecture: [const | conv0(up)], conv1, then img = up(img) + torgb(x).

    With gradient checkpointing each layer keeps only its input for backward (generator/checkpointing.py)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 conv_clamp: float | None = None, fused_modconv_default: str = "inference_only"):
        super().__init__()
        self.in_channels, self.resolution = in_channels, resolution
        kw = dict(w_dim=w_dim, conv_clamp=conv_clamp, fused_modconv_default=fused_modconv_default)
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, resolution=resolution, up=2, **kw)
        self.conv1 = SynthesisLayer(out_channels, out_channels, resolution=resolution, **kw)
        self.torgb = ToRGBLayer(out_channels, img_channels, **kw)
        self.register_buffer("resample_filter", fir_filter())
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor, noise_mode: str = "const",
                fused_modconv: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        w = ws.unbind(dim=1)
        if self.in_channels == 0:
            const = self.in_use("const")
            x = to_layout(const if const.ndim == 4 else const.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1]))
            x = self.checkpointed(self.conv1, x, w[0], noise_mode=noise_mode, fused_modconv=fused_modconv)
        else:
            x = self.checkpointed(self.conv0, x, w[0], noise_mode=noise_mode, fused_modconv=fused_modconv)
            x = self.checkpointed(self.conv1, x, w[1], noise_mode=noise_mode, fused_modconv=fused_modconv)
        y = self.checkpointed(self.torgb, x, w[self.num_conv], fused_modconv=fused_modconv)
        img = y if img is None else upsample2d(img, self.resample_filter).add_(y)  # a fresh tensor: add in place
        return x, img


class SynthesisNetwork(nn.Module):
    """Blocks b4 .. b{img_resolution}; block k reads ws[w_idx : w_idx + num_conv + 1] and w_idx += num_conv."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int, channel_max: int,
                 conv_clamp: float | None = None, fused_modconv_default: str = "inference_only"):
        super().__init__()
        self.block_resolutions = [2 ** i for i in range(2, img_resolution.bit_length())]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        self.num_ws = 0
        for res in self.block_resolutions:
            in_ch = channels[res // 2] if res > 4 else 0
            block = SynthesisBlock(in_ch, channels[res], w_dim, res, img_channels, conv_clamp=conv_clamp,
                                   fused_modconv_default=fused_modconv_default)
            self.num_ws += block.num_conv
            setattr(self, f"b{res}", block)
        self.num_ws += 1  # the last block's torgb

    def blocks(self):
        return [getattr(self, f"b{res}") for res in self.block_resolutions]

    def forward(self, ws: torch.Tensor, noise_mode: str = "const", fused_modconv: bool | None = None) -> torch.Tensor:
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for block in self.blocks():
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            x, img = block(x, img, block_ws, noise_mode=noise_mode, fused_modconv=fused_modconv)
            w_idx += block.num_conv
        return img


class Backbone(nn.Module):
    """EG3D's `backbone`: a StyleGAN2 generator (mapping + synthesis) whose output is the stacked tri-planes."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int,
                 channel_base: int, channel_max: int, mapping_layers: int, conv_clamp: float | None,
                 fused_modconv_default: str):
        super().__init__()
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, channel_base, channel_max,
                                          conv_clamp=conv_clamp, fused_modconv_default=fused_modconv_default)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, num_layers=mapping_layers)
