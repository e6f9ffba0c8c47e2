"""Shared fixtures: the official EG3D reference outputs and small generators."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures.official_fixture import official_fixture_dir, official_fixture_generator

REPO = Path(__file__).resolve().parents[1]


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
    return official_fixture_generator(official_dir)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
