"""VGG16 convolutional trunk (torchvision `features[:30]` layout) returning the five relu_k taps.

Why not torchvision: it has no CPU build here (see perception/weights.py). The layer indices reproduce torchvision's
``vgg16().features`` so that torchvision state dicts (``features.N.weight``) load unchanged. The down-sampling layer
is pluggable: LPIPS uses max-pooling, DISTS replaces it with L2 pooling.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

# torchvision vgg16 "D" configuration; "M" is a 2x2 / stride-2 down-sampling layer.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# `features` indices after which relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 are taken.
VGG16_TAP_INDICES = (3, 8, 15, 22, 29)
VGG16_TAP_CHANNELS = (64, 128, 256, 512, 512)


def _max_pool(channels: int) -> nn.Module:
    return nn.MaxPool2d(kernel_size=2, stride=2)


class VGG16Features(nn.Module):
    """VGG16 `features[0:30]` (13 conv+ReLU, 4 pools; the final pool is not needed by LPIPS/DISTS).

    forward(x) -> [relu1_2, relu2_2, relu3_3, relu4_3, relu5_3]. `pool(channels)` builds each down-sampling layer.
    """

    def __init__(self, pool: Callable[[int], nn.Module] = _max_pool):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for item in VGG16_CFG:
            if item == "M":
                layers.append(pool(in_channels))
            else:
                layers.append(nn.Conv2d(in_channels, item, kernel_size=3, padding=1))
                layers.append(nn.ReLU(inplace=False))
                in_channels = item
        self.features = nn.Sequential(*layers)
        assert len(self.features) == 30

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in VGG16_TAP_INDICES:
                taps.append(x)
        return taps
