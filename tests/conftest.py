"""Shared fixtures: the official EG3D reference outputs and small generators."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def official_fixture_dir() -> Path | None:
    """`$MY3DGEN_FIXTURES`, else ../shared/fixtures/eg3d_official_small beside the checkout."""
    candidates = [os.environ.get("MY3DGEN_FIXTURES"), REPO.parent / "shared/fixtures/eg3d_official_small",
                  REPO / "shared/fixtures/eg3d_official_small"]
    for c in candidates:
        if c and (Path(c) / "small_io.npz").is_file():
            return Path(c)
    return None


@pytest.fixture(scope="session")
def official_dir() -> Path:
    d = official_fixture_dir()
    if d is None:
        pytest.fail("official EG3D fixture not found: set MY3DGEN_FIXTURES or place shared/ beside the checkout")
    return d


@pytest.fixture(scope="session")
def official_io(official_dir):
    return dict(np.load(official_dir / "small_io.npz"))


@pytest.fixture(scope="session")
def official_generator(official_dir):
    """The fixture's small generator, built from its official init_kwargs and loaded strictly."""
    from safetensors.torch import load_file
    from generator import TriPlaneGenerator
    from generator.official_config import config_from_official
    meta = json.loads((official_dir / "small_init_kwargs.json").read_text())
    attrs = meta["attributes_not_in_init_kwargs"]
    cfg = config_from_official(meta["init_kwargs"], attrs["rendering_kwargs"], attrs["neural_rendering_resolution"])
    G = TriPlaneGenerator(cfg)
    G.load_state_dict(load_file(str(official_dir / "small_G_ema.safetensors")), strict=True)
    return G.eval()


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
