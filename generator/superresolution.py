"""EG3D's SuperresolutionHybrid8XDC: raw features (R^2) -> resized to 128^2 -> two 2x StyleGAN2 blocks -> 512^2."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from generator.config import SuperResolutionConfig
from generator.layers import to_layout
from generator.stylegan2 import SynthesisBlock


class SuperresolutionHybrid8XDC(nn.Module):
    """Both blocks are styled by the last w only (ws[:, -1] for all six layers)."""

    def __init__(self, channels: int, w_dim: int, img_channels: int, cfg: SuperResolutionConfig,
                 fused_modconv_default: str = "inference_only"):
        super().__init__()
        self.input_resolution = cfg.input_resolution
        self.antialias = cfg.antialias
        self.noise_mode = cfg.noise_mode
        c0, c1 = cfg.channels
        kw = dict(w_dim=w_dim, img_channels=img_channels, conv_clamp=cfg.conv_clamp,
                  fused_modconv_default=fused_modconv_default)
        self.block0 = SynthesisBlock(channels, c0, resolution=cfg.input_resolution * 2, **kw)
        self.block1 = SynthesisBlock(c0, c1, resolution=cfg.input_resolution * 4, **kw)

    def forward(self, rgb: torch.Tensor, x: torch.Tensor, ws: torch.Tensor,
                fused_modconv: bool | None = None) -> torch.Tensor:
        ws = ws[:, -1:, :].repeat(1, 3, 1)
        size = self.input_resolution
        if x.shape[-1] != size:
            # Antialiasing only changes downsampling: upsampling keeps the bilinear filter's one-pixel support, so the
            # plain resize is the same filter (to float rounding) and exports to a standard ONNX Resize.
            antialias = self.antialias and x.shape[-1] > size
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)
            rgb = F.interpolate(rgb, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)
        x, rgb = to_layout(x), to_layout(rgb)
        x, rgb = self.block0(x, rgb, ws, noise_mode=self.noise_mode, fused_modconv=fused_modconv)
        x, rgb = self.block1(x, rgb, ws, noise_mode=self.noise_mode, fused_modconv=fused_modconv)
        return rgb
