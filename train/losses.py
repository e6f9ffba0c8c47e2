"""The personalization objective (paper eq. 1-3): L_rec on raw and final images, plus the symmetry loss.

    L_rec = lambda_lpips * LPIPS(G(w, c), x) + lambda_L2 * MSE(G(w, c), x)     on the final image (S x S) and on
            the raw neural rendering (R x R) against the photo downsampled to R (antialiased bilinear, as the
            authors' loss.py `filtered_resizing`)
    L_sym = 1 - cos(ID(G(w, c_k1)), ID(flip(G(w, c_k2))))                     c_k1, c_k2 mirrored about frontal

LPIPS is split into features and distance so that a fixed target's features are computed once (the projectors
do this); `lpips_distance(lp, lpips_features(lp, x), lpips_features(lp, y))` equals `lp(x, y)`.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from formats.cameras import FFHQ_FOCAL, lookat_label
from perception.identity import IdentityEncoder, symmetry_loss
from perception.lpips import LPIPS, normalize_channels


def lpips_features(lp: LPIPS, x: torch.Tensor) -> list[torch.Tensor]:
    """Channel-normalized trunk features of images [N, 3, H, W] in [-1, 1] (LPIPS v0.1 taps)."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected NCHW images with 3 channels, got {tuple(x.shape)}")
    return [normalize_channels(f) for f in lp.net((x - lp.shift) / lp.scale)]


def lpips_distance(lp: LPIPS, feats_x: list[torch.Tensor], feats_y: list[torch.Tensor]) -> torch.Tensor:
    """Per-sample LPIPS [N] from two feature lists of `lpips_features` (same image size)."""
    total = feats_x[0].new_zeros(feats_x[0].shape[0])
    for lin, fx, fy in zip(lp.lins, feats_x, feats_y):
        total = total + lin((fx - fy) ** 2).mean(dim=(1, 2, 3))
    return total


def resize_antialiased(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images to size x size with antialiased bilinear filtering (identity when already that size)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def reconstruction_losses(out: dict, target: torch.Tensor, target_raw: torch.Tensor, lp: LPIPS,
                          lpips_weight: float = 1.0, l2_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """Batch-mean L_rec terms of generator outputs against photos (final) and their downsampled copies (raw).

    Returns 'lpips', 'l2' (final image), 'lpips_raw', 'l2_raw' and their weighted sum 'rec'.
    """
    img, raw = out["image"], out["image_raw"]
    if img.shape != target.shape or raw.shape != target_raw.shape:
        raise ValueError(f"render/target shapes differ: image {tuple(img.shape)} vs {tuple(target.shape)}, "
                         f"raw {tuple(raw.shape)} vs {tuple(target_raw.shape)}")
    terms = {
        "lpips": lp(img, target).mean(),
        "l2": (img - target).square().mean(),
        "lpips_raw": lp(raw, target_raw).mean(),
        "l2_raw": (raw - target_raw).square().mean(),
    }
    terms["rec"] = lpips_weight * (terms["lpips"] + terms["lpips_raw"]) + l2_weight * (terms["l2"] + terms["l2_raw"])
    return terms


def symmetric_cameras(n: int, generator: torch.Generator, yaw_range: float = 0.35, pitch_range: float = 0.25,
                      radius: float = 2.7, pivot: tuple[float, float, float] = (0.0, 0.0, 0.2),
                      focal: float = FFHQ_FOCAL) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n pairs of look-at cameras mirrored about the frontal pose: (yaw, pitch) and (-yaw, pitch).

    yaw ~ U(-yaw_range, yaw_range) and pitch ~ U(-pitch_range, pitch_range), drawn from `generator` (so a resumed
    run draws the same poses). Returns c1 [n, 25], c2 [n, 25] and the (yaw, pitch) pairs [n, 2].
    The authors' loss.py draws one pair per step from a 120-frame orbit (frame i and 119 - i: yaw
    0.35 sin(2 pi i / 120), pitch -0.05 + 0.25 cos(...)), which is mirrored only to within one frame; the pair
    here is exactly mirrored, so a mirror-symmetric head renders exactly mirrored images.
    """
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    yaw = (u[:, 0] * 2 - 1) * yaw_range
    pitch = (u[:, 1] * 2 - 1) * pitch_range
    c1 = np.stack([lookat_label(float(y), float(p), radius=radius, focal=focal, pivot=pivot)
                   for y, p in zip(yaw, pitch)])
    c2 = np.stack([lookat_label(-float(y), float(p), radius=radius, focal=focal, pivot=pivot)
                   for y, p in zip(yaw, pitch)])
    return torch.from_numpy(c1), torch.from_numpy(c2), torch.stack([yaw, pitch], 1).float()


ORBIT_FRAMES = 120
"""Frames of the authors' symmetric-view orbit (loss.py `get_lookat_pose_sampler_pair`: w_frames = 120)."""
ORBIT_PI = 3.14
"""The authors write pi as 3.14 in that orbit; kept, so the poses are theirs to the last digit."""


def orbit_symmetric_cameras(n: int, generator: torch.Generator, yaw_range: float = 0.35, pitch_range: float = 0.25,
                            radius: float = 2.7, pivot: tuple[float, float, float] = (0.0, 0.0, 0.0),
                            focal: float = FFHQ_FOCAL) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The authors' symmetric pair, repeated for n samples: frames i ~ U{0..59} and 119 - i of their orbit.

    Frame k: yaw 0.35 sin(2 * 3.14 * k / 120) and polar angle 3.14/2 - 0.05 + 0.25 cos(2 * 3.14 * k / 120) in
    EG3D's LookAtPoseSampler convention (3.14/2 where pi/2 would be frontal), radius 2.7, looking at the origin
    (their `camera_lookat_point`), not at EG3D's pivot (0, 0, 0.2). Frames i and 119 - i are mirror images only
    to within one frame (yaw -0.35 sin(2 pi (i + 1) / 120)). Returns c1 [n, 25], c2 [n, 25] and the
    (yaw, pitch) offsets from frontal of the pair [2, 2].
    """
    i = int(torch.randint(0, ORBIT_FRAMES // 2, (1,), generator=generator))
    poses = []
    for k in (i, ORBIT_FRAMES - i - 1):
        phase = 2 * ORBIT_PI * k / ORBIT_FRAMES
        yaw = ORBIT_PI / 2 + yaw_range * np.sin(phase) - np.pi / 2
        pitch = ORBIT_PI / 2 - 0.05 + pitch_range * np.cos(phase) - np.pi / 2
        poses.append((float(yaw), float(pitch)))
    c1, c2 = (torch.from_numpy(np.stack([lookat_label(y, p, radius=radius, focal=focal, pivot=pivot)] * n))
              for y, p in poses)
    return c1, c2, torch.tensor(poses, dtype=torch.float32)


def symmetry_term(encoder: IdentityEncoder, img_k1: torch.Tensor, img_k2: torch.Tensor) -> torch.Tensor:
    """L_sym of renders at mirrored cameras (the second is flipped inside `perception.identity.symmetry_loss`)."""
    return symmetry_loss(encoder, img_k1, img_k2)
