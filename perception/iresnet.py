"""insightface arcface_torch IResNet (iresnet18/34/50/100) with an optional folded-BatchNorm form.

Facts from `deepinsight/insightface` `recognition/arcface_torch/backbones/iresnet.py`:

* input 112x112 RGB, normalised (x - 127.5) / 127.5, i.e. images in [-1, 1] are used directly.
* stem `conv1` (3x3, 3->64, no bias), `bn1`, `prelu`; four stages `layer1..4` of `IBasicBlock`s with
  64/128/256/512 planes, every stage starting with a stride-2 block; iresnet50 = [3, 4, 14, 3] blocks,
  iresnet100 = [3, 13, 30, 3] (18 = [2, 2, 2, 2], 34 = [3, 4, 6, 3]).
* `IBasicBlock`: bn1 -> conv1 (3x3, stride 1) -> bn2 -> prelu -> conv2 (3x3, stride s) -> bn3, plus the
  identity or `downsample` = Sequential(conv1x1 stride s, BN) - present on the first block of every stage.
* head: `bn2` (BN2d 512) -> flatten -> dropout -> `fc` (512*7*7 -> 512) -> `features` (BN1d 512). The output
  is NOT normalised by the network; callers L2-normalise.

Folded form (`fused_bn=True`): insightface's released ONNX files (e.g. `buffalo_l/w600k_r50.onnx`) were
exported with Conv+BatchNorm folding, so every BN that directly follows a conv (stem `bn1`, block `bn2` and
`bn3`, `downsample.1`) is gone and the preceding conv carries a bias. In that form those BNs are
`nn.Identity` and the convs have `bias=True`; the pre-activation block `bn1`, the head `bn2` and `features`
stay BatchNorms. Both forms compute the same function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn

from perception.ir_se50 import load_state_dict_checked, read_state_dict

LAYERS = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}
PLANES = (64, 128, 256, 512)
INPUT_SIZE = 112
EMBEDDING_DIM = 512


def _post_conv_bn(channels: int, fused: bool) -> nn.Module:
    return nn.Identity() if fused else nn.BatchNorm2d(channels, eps=1e-05)


class IBasicBlock(nn.Module):
    """Pre-activation residual block of IResNet; attribute names match arcface_torch checkpoints."""

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: bool, fused_bn: bool):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=fused_bn)
        self.bn2 = _post_conv_bn(planes, fused_bn)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=fused_bn)
        self.bn3 = _post_conv_bn(planes, fused_bn)
        self.downsample = None
        if downsample:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=fused_bn),
                _post_conv_bn(planes, fused_bn),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """IResNet backbone: [N, 3, 112, 112] RGB in [-1, 1] -> [N, 512] raw (unnormalised) embeddings."""

    def __init__(self, layers: Sequence[int] = LAYERS["iresnet50"], fused_bn: bool = False, dropout: float = 0.0):
        super().__init__()
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"IResNet needs four positive stage depths, got {list(layers)}")
        self.layers = tuple(int(n) for n in layers)
        self.fused_bn = fused_bn
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=fused_bn)
        self.bn1 = _post_conv_bn(64, fused_bn)
        self.prelu = nn.PReLU(64)
        inplanes = 64
        for index, (planes, blocks) in enumerate(zip(PLANES, self.layers), start=1):
            stage = [IBasicBlock(inplanes, planes, 2, True, fused_bn)]
            stage.extend(IBasicBlock(planes, planes, 1, False, fused_bn) for _ in range(blocks - 1))
            setattr(self, f"layer{index}", nn.Sequential(*stage))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(512, eps=1e-05)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(512 * 7 * 7, EMBEDDING_DIM)
        self.features = nn.BatchNorm1d(EMBEDDING_DIM, eps=1e-05)

    @property
    def arch(self) -> str:
        for name, layers in LAYERS.items():
            if layers == self.layers:
                return name
        return "iresnet" + "-".join(map(str, self.layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"IResNet expects {INPUT_SIZE}x{INPUT_SIZE} inputs, got {tuple(x.shape)}")
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.bn2(x), 1)
        return self.features(self.fc(self.dropout(x)))


def build_iresnet(arch: str, fused_bn: bool = False) -> IResNet:
    """IResNet by name (`iresnet18/34/50/100`)."""
    if arch not in LAYERS:
        raise ValueError(f"unknown IResNet arch {arch!r}; known: {sorted(LAYERS)}")
    return IResNet(LAYERS[arch], fused_bn=fused_bn)


def infer_iresnet_config(keys: Iterable[str]) -> tuple[tuple[int, ...], bool]:
    """(stage depths, fused_bn) read from checkpoint keys: counts `layerS.B.conv1.weight`, checks `conv1.bias`."""
    keys = set(keys)
    layers = []
    for stage in range(1, 5):
        count = 0
        while f"layer{stage}.{count}.conv1.weight" in keys:
            count += 1
        layers.append(count)
    if "conv1.weight" not in keys or 0 in layers:
        raise ValueError(f"keys do not follow the arcface_torch IResNet layout (stage depths found {layers})")
    return tuple(layers), "conv1.bias" in keys


def is_iresnet_state_dict(keys) -> bool:
    """True when checkpoint keys follow the arcface_torch IResNet layout."""
    keys = set(keys)
    return "conv1.weight" in keys and "layer1.0.conv1.weight" in keys and "fc.weight" in keys


def load_iresnet(path: str | Path, arch: str | None = None) -> IResNet:
    """Load an arcface_torch `.pth` (standard or folded-BN layout, inferred from keys), strict, eval mode.

    When `arch` is given it must agree with the stage depths found in the file.
    """
    state_dict = read_state_dict(path)
    layers, fused = infer_iresnet_config(state_dict)
    if arch is not None and LAYERS.get(arch) != layers:
        raise ValueError(f"{path}: requested arch {arch!r} but the file holds stage depths {list(layers)}")
    model = IResNet(layers, fused_bn=fused)
    load_state_dict_checked(model, state_dict, str(path))
    return model.eval()
