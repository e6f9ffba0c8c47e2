"""AlexNet convolutional trunk (torchvision `features[:12]` layout) returning the five relu taps used by LPIPS.

Layer indices match torchvision's ``alexnet().features`` (the "one weird trick" variant with 64/192/384/256/256
channels) so that torchvision state dicts (``features.N.weight``) load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

# `features` indices after which relu1 .. relu5 are taken.
ALEXNET_TAP_INDICES = (1, 4, 7, 9, 11)
ALEXNET_TAP_CHANNELS = (64, 192, 384, 256, 256)


class AlexNetFeatures(nn.Module):
    """AlexNet `features[0:12]` (5 conv+ReLU, 2 max-pools). forward(x) -> [relu1, relu2, relu3, relu4, relu5]."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),  # 0
            nn.ReLU(inplace=False),                                 # 1 relu1
            nn.MaxPool2d(kernel_size=3, stride=2),                  # 2
            nn.Conv2d(64, 192, kernel_size=5, padding=2),           # 3
            nn.ReLU(inplace=False),                                 # 4 relu2
            nn.MaxPool2d(kernel_size=3, stride=2),                  # 5
            nn.Conv2d(192, 384, kernel_size=3, padding=1),          # 6
            nn.ReLU(inplace=False),                                 # 7 relu3
            nn.Conv2d(384, 256, kernel_size=3, padding=1),          # 8
            nn.ReLU(inplace=False),                                 # 9 relu4
            nn.Conv2d(256, 256, kernel_size=3, padding=1),          # 10
            nn.ReLU(inplace=False),                                 # 11 relu5
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in ALEXNET_TAP_INDICES:
                taps.append(x)
        return taps
