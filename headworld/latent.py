"""A world photo's parameters as a generator latent z, and back: how the `heads` generator's z space is defined.

The `heads` generator is trained with z = `params_to_z(u)` for the known parameters u in [0, 1]^40 of each
training photo (28 identity + 12 appearance), so its mapping network learns w = f(person, photo) and a random
z ~ N(0, I) is a random person under a random photo. The first 40 entries of z are the normal quantiles
Phi^-1(u); the remaining z_dim - 40 entries are filler, scaled so that mean(z^2) = 1 exactly. The mapping network
normalizes z by its root mean square before use (EG3D's normalize_2nd_moment), which then leaves z unchanged,
so `z_to_params(normalize(z))` recovers u. For z ~ N(0, I) the normalized z is uniform on the sphere, whose
first 40 coordinates are close to N(0, 1): random latents give photos distributed close to the world's.
"""
from __future__ import annotations

import math

import torch

from headworld.params import APPEARANCE_PARAMS, IDENTITY_PARAMS

N_PARAMS = len(IDENTITY_PARAMS) + len(APPEARANCE_PARAMS)
U_EPS = 1e-3
"""u is clipped to [U_EPS, 1 - U_EPS] before the quantile (Phi^-1(0) is -inf)."""


def params_to_z(u: torch.Tensor, z_dim: int, filler: torch.Tensor) -> torch.Tensor:
    """z [B, z_dim] for parameters u [B, N_PARAMS] in [0, 1]; `filler` [B, z_dim - N_PARAMS] sets the other entries."""
    if u.ndim != 2 or u.shape[1] != N_PARAMS:
        raise ValueError(f"u must be [B, {N_PARAMS}], got {tuple(u.shape)}")
    if z_dim < 2 * N_PARAMS:
        raise ValueError(f"z_dim={z_dim} is too small: the filler needs room (z_dim >= {2 * N_PARAMS})")
    head = math.sqrt(2.0) * torch.erfinv(2 * u.clamp(U_EPS, 1 - U_EPS) - 1)
    room = (z_dim - head.square().sum(1, keepdim=True)).clamp_min(1e-6)
    tail = filler / filler.norm(dim=1, keepdim=True).clamp_min(1e-12) * room.sqrt()
    return torch.cat([head, tail], 1)


def z_to_params(z: torch.Tensor) -> torch.Tensor:
    """Parameters u [B, N_PARAMS] that a latent z [B, z_dim] stands for (after the mapping's normalization)."""
    z = z * torch.rsqrt(z.square().mean(1, keepdim=True) + 1e-8)
    return 0.5 * (1 + torch.erf(z[:, :N_PARAMS] / math.sqrt(2.0)))
