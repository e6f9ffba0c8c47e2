"""A procedural world of 3D heads with ground truth: seeded people, per-photo appearance, RGB/depth/mask renders.

    from headworld import Identity, Appearance, render
    out = render([Identity.from_seed(3)], [Appearance.neutral()], [lookat_label(0.3, 0.0)], resolution=128)
"""
from headworld.params import (APPEARANCE_PARAMS, DEMO_PERSON_SEED, HELDOUT_SEEDS, IDENTITY_PARAMS, TRAIN_SEEDS,
                              Appearance, Identity)
from headworld.render import BACKGROUND_DEPTH, render

__all__ = ["APPEARANCE_PARAMS", "BACKGROUND_DEPTH", "DEMO_PERSON_SEED", "HELDOUT_SEEDS", "IDENTITY_PARAMS",
           "TRAIN_SEEDS", "Appearance", "Identity", "render"]
