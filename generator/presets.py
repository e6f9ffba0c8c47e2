"""Named generator configurations: the released ffhq512-128 and a tiny one for tests and demos."""
from __future__ import annotations

import copy

from generator.config import GeneratorConfig, RenderingConfig, SuperResolutionConfig

FFHQ_TRAINING_OPTIONS = {
    "gpc_reg_prob": 0.5, "density_reg": 0.25, "density_reg_p_dist": 0.004, "reg_type": "l1",
    "superresolution_module": "training.superresolution.SuperresolutionHybrid8XDC",
}

PRESETS: dict[str, GeneratorConfig] = {
    # train.py --cfg=ffhq --gen_pose_cond=True --neural_rendering_resolution_final=128 (eg3d-reference.md §1)
    "ffhq512-128": GeneratorConfig(rendering=RenderingConfig(training_options=dict(FFHQ_TRAINING_OPTIONS))),
    # 32^2 tri-planes of 8 features, 32^2 rays x (12+12) samples, SR 32 -> 64 -> 128 with 32/16 channels.
    "tiny": GeneratorConfig(
        z_dim=64, w_dim=64, channel_base=1024, channel_max=64, triplane_resolution=32, plane_features=8,
        decoder_hidden=32, decoder_output_dim=16, neural_rendering_resolution=32,
        rendering=RenderingConfig(depth_resolution=12, depth_resolution_importance=12),
        superresolution=SuperResolutionConfig(channels=(32, 16), input_resolution=32),
    ),
    # The head-world generator (models/heads, scripts/pretrain_heads.py): 64^2 tri-planes of 16 features, 32^2 rays
    # x (16+16) samples, SR 32 -> 64 -> 128; 4 mapping layers turn the world's parameter code z into w, with no
    # camera conditioning (docs/HEADS.md). Sized to train on two CPU cores.
    "heads": GeneratorConfig(
        z_dim=128, w_dim=128, mapping_layers=4, channel_base=2048, channel_max=128, triplane_resolution=64,
        plane_features=16, decoder_hidden=32, decoder_output_dim=16, neural_rendering_resolution=32,
        rendering=RenderingConfig(depth_resolution=16, depth_resolution_importance=16, c_gen_conditioning_zero=True),
        superresolution=SuperResolutionConfig(channels=(32, 16), input_resolution=32),
    ),
}


def preset(name: str) -> GeneratorConfig:
    """A fresh copy of a named configuration."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])
