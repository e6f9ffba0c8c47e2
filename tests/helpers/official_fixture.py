"""Where the official EG3D fixture lives and the small generator it was made with.

Used by `tests/conftest.py` and by `bench/gpu_check.py` (which runs where pytest is not installed), so this module
imports neither pytest nor anything heavy at import time.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURE_ENV = "MY3DGEN_FIXTURES"
FIXTURE_NAME = "eg3d_official_small"


def official_fixture_dir() -> Path | None:
    """`$MY3DGEN_FIXTURES`, else shared/fixtures/eg3d_official_small beside or inside the checkout."""
    candidates = [os.environ.get(FIXTURE_ENV), REPO.parent / "shared/fixtures" / FIXTURE_NAME,
                  REPO / "shared/fixtures" / FIXTURE_NAME]
    for c in candidates:
        if c and (Path(c) / "small_io.npz").is_file():
            return Path(c)
    return None


def official_fixture_generator(d: Path):
    """The fixture's small generator, built from its official init_kwargs and loaded strictly, in eval mode."""
    from safetensors.torch import load_file

    from generator import TriPlaneGenerator
    from generator.official_config import config_from_official
    meta = json.loads((d / "small_init_kwargs.json").read_text())
    attrs = meta["attributes_not_in_init_kwargs"]
    cfg = config_from_official(meta["init_kwargs"], attrs["rendering_kwargs"], attrs["neural_rendering_resolution"])
    G = TriPlaneGenerator(cfg)
    G.load_state_dict(load_file(str(d / "small_G_ema.safetensors")), strict=True)
    return G.eval()
