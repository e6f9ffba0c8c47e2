"""The head world's identity network: a small CNN trained with an ArcFace margin loss on head-world people.

No ArcFace weights exist offline, and real-face networks mean little on the head world's faces anyway; this one
is trained (scripts/train_heads_identity.py) to tell head-world people apart across pose, expression, lighting
and background, so the symmetry loss and the ID score have meaningful weights here (docs/HEADS.md).

    encoder = load_heads_identity()            # the committed weights, HEADS_IDENTITY_WEIGHTS
    found = load_model_identity("models/heads")  # a model directory's identity network: (encoder, path) or None
    e = encoder(images)                        # [N, 3, H, W] in [-1, 1], any size -> [N, 128] unit vectors

Like `perception.identity.IdentityEncoder`, the module is frozen, stays in eval mode and is differentiable with
respect to the images; `embed(images)` returns numpy features for evaluation.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from formats.atomic import atomic_file
from formats.model_dir import IDENTITY_FILE, IDENTITY_FORMAT, identity_file

HEADS_IDENTITY_WEIGHTS = Path(__file__).resolve().parents[1] / "models" / "heads" / IDENTITY_FILE
"""The committed weights (made by scripts/train_heads_identity.py): the identity network of the `models/heads`
model directory (formats.model_dir.IDENTITY_FILE)."""
FORMAT = IDENTITY_FORMAT
INPUT_SIZE = 64
"""Side of the network's input: the image's central CROP box is resized to this."""
CROP = (0.06, 0.94)
"""Fraction of the image kept on each axis before resizing (drops most of the background)."""
EMBED_DIM = 128
WIDTHS = (32, 64, 128, 192)


def _block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 convs (the first with stride 2) with BatchNorm and PReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.PReLU(cout),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.PReLU(cout),
    )


class HeadsIdNet(nn.Module):
    """64x64 RGB -> EMBED_DIM features (not normalized): four stride-2 blocks, then BN-dropout-FC-BN as in ArcFace."""

    def __init__(self, widths: tuple[int, ...] = WIDTHS, dim: int = EMBED_DIM):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.PReLU(widths[0]))
        self.blocks = nn.Sequential(*[_block(a, b) for a, b in zip((widths[0],) + widths[:-1], widths)])
        side = INPUT_SIZE // 2 ** len(widths)
        self.head = nn.Sequential(nn.BatchNorm2d(widths[-1]), nn.Dropout(0.2), nn.Flatten(),
                                  nn.Linear(widths[-1] * side * side, dim), nn.BatchNorm1d(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in [-1, 1] -> the network's input: clamped, central crop, resized to INPUT_SIZE (antialiased)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [N, 3, H, W] in [-1, 1], got shape {tuple(images.shape)}")
    h, w = images.shape[-2:]
    y0, y1 = round(CROP[0] * h), round(CROP[1] * h)
    x0, x1 = round(CROP[0] * w), round(CROP[1] * w)
    x = images.float().clamp(-1, 1)[:, :, y0:y1, x0:x1]
    return F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                         antialias=x.shape[-1] > INPUT_SIZE)


class HeadsIdentity(nn.Module):
    """Frozen identity encoder: images [N, 3, H, W] in [-1, 1] -> unit features [N, EMBED_DIM]."""

    dim = EMBED_DIM
    name = "heads-identity"

    def __init__(self, net: HeadsIdNet):
        super().__init__()
        self.net = net
        self.net.requires_grad_(False)
        self.net.eval()

    def train(self, mode: bool = True) -> "HeadsIdentity":
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(preprocess(images)), dim=1)

    @torch.no_grad()
    def embed(self, images, batch_size: int = 64) -> np.ndarray:
        """Unit features as float32 numpy [N, D] of a tensor or uint8 NHWC array of images."""
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        chunks = [self(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
        return torch.cat(chunks).numpy()


def save_heads_identity(net: HeadsIdNet, path: str | Path, info: dict | None = None) -> Path:
    """Write the network's state dict as safetensors (atomically) with the format tag and `info` as metadata."""
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    meta = {"format": FORMAT, "widths": json.dumps(list(WIDTHS)), "dim": str(EMBED_DIM),
            "info": json.dumps(info or {})}
    with atomic_file(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return Path(path)


def read_info(path: str | Path = HEADS_IDENTITY_WEIGHTS) -> dict:
    """The `info` metadata saved with the weights (training set, metrics)."""
    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("info", "{}"))


def is_heads_identity_file(path: str | Path) -> bool:
    """True for a safetensors file written by `save_heads_identity` (so `--id-weights` can route it here)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except Exception:  # not a safetensors file at all
        return False


def load_heads_identity(path: str | Path | None = None) -> HeadsIdentity:
    """The frozen encoder of a weights file (default: the committed HEADS_IDENTITY_WEIGHTS)."""
    path = Path(path) if path is not None else HEADS_IDENTITY_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no heads identity weights (train them with "
                                f"python scripts/train_heads_identity.py)")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: metadata 'format' is {meta.get('format')!r}, expected {FORMAT!r}")
        state = {k: f.get_tensor(k) for k in f.keys()}
    net = HeadsIdNet(tuple(json.loads(meta["widths"])), int(meta["dim"]))
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shaped = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or extra or shaped:
        raise ValueError(f"{path}: missing {missing[:5]}, unexpected {extra[:5]}, mis-shaped {shaped[:5]}")
    net.load_state_dict(state)
    return HeadsIdentity(net)


def load_model_identity(model_dir: str | Path) -> tuple[HeadsIdentity, Path] | None:
    """(encoder, file) of a model directory's identity network (formats.model_dir.identity_file), or None if the
    directory has none; a file that is not an identity network is a ModelDirError or ValueError naming it."""
    path = identity_file(model_dir)
    return None if path is None else (load_heads_identity(path), path)
