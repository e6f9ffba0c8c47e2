"""Seeded people and photos of the head world: named parameters in [0, 1], their mirror images, the seed split.

A person (`Identity`) is a vector of IDENTITY_PARAMS drawn uniformly from [0, 1] by `numpy.random.RandomState(seed)`;
a photo (`Appearance`) adds APPEARANCE_PARAMS (expression, light, background) drawn from
`RandomState([seed, photo, 1])`. Parameters listed in MIRRORED_* are signed quantities stored as u in [0, 1]
(value = 2u - 1): mirroring a person or a photo in x maps u -> 1 - u for those and keeps every other one.

Held-out people (the demo person, evaluation people) come from seed ranges that pretraining and the identity
network never draw from (`TRAIN_SEEDS` vs `HELDOUT_SEEDS`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IDENTITY_PARAMS: tuple[str, ...] = (
    "skull_width", "skull_height", "skull_depth", "jaw_width", "chin_length", "chin_projection",
    "cheek_fullness", "nose_length", "nose_width", "nose_projection", "eye_spacing", "eye_size", "eye_height",
    "iris_colour", "brow_thickness", "brow_height", "mouth_width", "lip_thickness", "ear_size",
    "ear_protrusion", "skin_tone", "skin_warmth", "hair_colour", "hair_volume", "hairline",
    "asym_nose", "asym_eyes", "asym_mouth",
)
"""Identity parameters, each u in [0, 1]; their meaning (ranges, units) is in headworld/sdf.py and shading.py."""

APPEARANCE_PARAMS: tuple[str, ...] = (
    "smile", "mouth_open", "brows_raised", "light_azimuth", "light_elevation", "light_warmth", "light_intensity",
    "ambient", "bg_hue", "bg_hue2", "bg_brightness", "bg_direction",
)
"""Per-photo parameters, each u in [0, 1]."""

MIRRORED_IDENTITY = ("asym_nose", "asym_eyes", "asym_mouth")
MIRRORED_APPEARANCE = ("light_azimuth", "bg_direction")

TRAIN_SEEDS = range(0, 100_000)
"""People pretraining and the identity network may use."""
HELDOUT_SEEDS = range(1_000_000, 1_100_000)
"""People never seen in training: evaluation people and the demo person."""
DEMO_PERSON_SEED = 1_000_000
"""The held-out person of the demo and of samples/heads_person."""


def _draw(names: tuple[str, ...], seed) -> np.ndarray:
    return np.random.RandomState(seed).rand(len(names))


@dataclass(frozen=True)
class Identity:
    """One person: `values[k]` is IDENTITY_PARAMS[k] in [0, 1]."""

    values: tuple[float, ...]

    def __post_init__(self):
        if len(self.values) != len(IDENTITY_PARAMS):
            raise ValueError(f"Identity needs {len(IDENTITY_PARAMS)} values, got {len(self.values)}")
        bad = [IDENTITY_PARAMS[i] for i, v in enumerate(self.values) if not 0.0 <= v <= 1.0]
        if bad:
            raise ValueError(f"Identity values outside [0, 1]: {', '.join(bad)}")

    @classmethod
    def from_seed(cls, seed: int) -> "Identity":
        return cls(tuple(float(v) for v in _draw(IDENTITY_PARAMS, int(seed))))

    def mirrored(self) -> "Identity":
        """The same person reflected in x (x -> -x): signed asymmetries change sign."""
        return Identity(_mirror(self.values, IDENTITY_PARAMS, MIRRORED_IDENTITY))

    def __getitem__(self, name: str) -> float:
        return self.values[IDENTITY_PARAMS.index(name)]


@dataclass(frozen=True)
class Appearance:
    """One photo's expression, light and background: `values[k]` is APPEARANCE_PARAMS[k] in [0, 1]."""

    values: tuple[float, ...]

    def __post_init__(self):
        if len(self.values) != len(APPEARANCE_PARAMS):
            raise ValueError(f"Appearance needs {len(APPEARANCE_PARAMS)} values, got {len(self.values)}")
        bad = [APPEARANCE_PARAMS[i] for i, v in enumerate(self.values) if not 0.0 <= v <= 1.0]
        if bad:
            raise ValueError(f"Appearance values outside [0, 1]: {', '.join(bad)}")

    @classmethod
    def from_seed(cls, seed: int, photo: int) -> "Appearance":
        """Photo `photo` of person `seed` (expressions are neutral about half of the time: see `expression`)."""
        return cls(tuple(float(v) for v in _draw(APPEARANCE_PARAMS, [int(seed), int(photo), 1])))

    @classmethod
    def neutral(cls) -> "Appearance":
        """No expression, light from the upper front, a mid-grey background: the reference photo."""
        d = dict(smile=0.5, mouth_open=0.5, brows_raised=0.5, light_azimuth=0.5, light_elevation=0.5,
                 light_warmth=0.5, light_intensity=0.5, ambient=0.5, bg_hue=0.6, bg_hue2=0.6, bg_brightness=0.5,
                 bg_direction=0.5)
        return cls(tuple(d[n] for n in APPEARANCE_PARAMS))

    def mirrored(self) -> "Appearance":
        """The same photo reflected in x: the light's azimuth and the background's horizontal slant flip."""
        return Appearance(_mirror(self.values, APPEARANCE_PARAMS, MIRRORED_APPEARANCE))

    def __getitem__(self, name: str) -> float:
        return self.values[APPEARANCE_PARAMS.index(name)]


def expression(u: torch.Tensor) -> torch.Tensor:
    """Strength in [0, 1] of an expression parameter u: max(0, 2u - 1), so u <= 0.5 (half of all photos) is neutral."""
    return (2.0 * u - 1.0).clamp_min(0.0)


def _mirror(values, names, mirrored) -> tuple[float, ...]:
    return tuple(1.0 - v if n in mirrored else v for v, n in zip(values, names))


def stack_params(items, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """{name: float32 tensor [B]} of a list of Identity or Appearance values."""
    arr = torch.tensor([list(it.values) for it in items], dtype=torch.float32)
    return {n: arr[:, k] for k, n in enumerate(names)}
