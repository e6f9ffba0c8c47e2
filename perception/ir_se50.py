"""IR-SE50: the ArcFace backbone behind pSp / MyStyle / My3DGen identity losses.

The My3DGen authors (like MyStyle and pSp) measure identity with `model_ir_se50.pth`, a plain PyTorch
state dict of the TreB1eN/InsightFace_Pytorch "IR-SE" network (ResNet-50 with improved residual units and
squeeze-and-excitation). This module rebuilds that network so the checkpoint loads with strict key checking.

Facts taken from pSp `models/encoders/model_irse.py` + `helpers.py` (the same code is vendored by MyStyle
as `third_party/arcface` and by My3DGen as `training/mystyle.py`):

* input 112x112 RGB in [-1, 1]; output 512-d, L2-normalised.
* `input_layer` = Conv3x3(3->64, no bias), BN, PReLU.
* `body` = 24 `bottleneck_IR_SE` units, stages of [3, 4, 14, 3] units with depths 64/128/256/512; the first
  unit of each stage has stride 2. A unit whose input and output depths are equal uses `MaxPool2d(1, stride)`
  as its shortcut (no parameters - this is why `body.0` has no `shortcut_layer` keys); otherwise a 1x1
  strided conv + BN (`body.3`, `body.7`, `body.21`).
* residual branch: BN, Conv3x3(stride 1), PReLU, Conv3x3(stride s), BN, SE(reduction 16, 1x1 convs without
  bias named `fc1`/`fc2`).
* `output_layer` = BN2d(512), Dropout, Flatten, Linear(512*7*7 -> 512), BN1d(512). pSp's `IDLoss` builds the
  network with the default `affine=True`, so the BN1d has weight and bias in the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn
import torch.nn.functional as F

STAGES_50 = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))
"""(in_channels, depth, units) per stage of IR-SE50 (pSp `get_blocks(50)`)."""

INPUT_SIZE = 112
EMBEDDING_DIM = 512


class SEModule(nn.Module):
    """Squeeze-and-excitation gate: global average pool -> 1x1 conv -> ReLU -> 1x1 conv -> sigmoid -> scale."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean(dim=(2, 3), keepdim=True)
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(gate))))
        return x * gate


class BottleneckIRSE(nn.Module):
    """Improved residual unit with SE (pSp `bottleneck_IR_SE`); attribute names match the checkpoint."""

    def __init__(self, in_channels: int, depth: int, stride: int):
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, 1, stride, bias=False),
                nn.BatchNorm2d(depth),
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth, 16),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRSE50(nn.Module):
    """IR-SE50 backbone: [N, 3, 112, 112] RGB in [-1, 1] -> [N, 512] unit-length identity features."""

    arch = "ir_se50"

    def __init__(self, drop_ratio: float = 0.6):
        super().__init__()
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, 64, 3, 1, 1, bias=False),
            nn.BatchNorm2d(64),
            nn.PReLU(64),
        )
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512),
            nn.Dropout(drop_ratio),
            nn.Flatten(),
            nn.Linear(512 * 7 * 7, EMBEDDING_DIM),
            nn.BatchNorm1d(EMBEDDING_DIM, affine=True),
        )
        units = []
        for in_channels, depth, count in STAGES_50:
            units.append(BottleneckIRSE(in_channels, depth, 2))
            units.extend(BottleneckIRSE(depth, depth, 1) for _ in range(count - 1))
        self.body = nn.Sequential(*units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"IR-SE50 expects {INPUT_SIZE}x{INPUT_SIZE} inputs, got {tuple(x.shape)}")
        x = self.output_layer(self.body(self.input_layer(x)))
        return F.normalize(x, dim=1)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint with `torch.load(weights_only=True)` and return its flat tensor state dict.

    Accepts a plain state dict, or one nested under "state_dict"/"model", and strips a DataParallel
    "module." prefix when every key carries it. Anything else is an error naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"identity checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot be read with torch.load(weights_only=True): {exc}") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{path}: expected a non-empty state dict, got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path}: entries that are not tensors: {bad[:5]}")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _listing(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load `state_dict` into `model` requiring the exact key set and shapes.

    Raises ValueError naming `source` and every missing, unexpected and mis-shaped key. The only tolerated
    difference is a missing BatchNorm `num_batches_tracked` counter (absent from checkpoints saved by old
    PyTorch versions and unused in eval mode).
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or misshaped:
        parts = [f"{source}: state dict does not match {type(model).__name__}"]
        if missing:
            parts.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listing(unexpected)}")
        if misshaped:
            parts.append(f"mis-shaped keys: {_listing(misshaped)}")
        raise ValueError("; ".join(parts))
    merged = dict(expected)
    merged.update(state_dict)
    model.load_state_dict(merged, strict=True)


def load_ir_se50(path: str | Path) -> IRSE50:
    """Build IR-SE50 and load `model_ir_se50.pth` (strict), returned in eval mode."""
    model = IRSE50()
    load_state_dict_checked(model, read_state_dict(path), str(path))
    return model.eval()


def is_ir_se50_state_dict(keys) -> bool:
    """True when checkpoint keys follow the IR-SE layout (`input_layer.*`, `body.*`, `output_layer.*`)."""
    keys = set(keys)
    return "input_layer.0.weight" in keys and "output_layer.3.weight" in keys
