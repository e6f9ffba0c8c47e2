"""The head world: deterministic, geometrically consistent with EG3D camera labels, mirror-symmetric, a face."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from formats.cameras import lookat_label, mirror_label
from headworld import (APPEARANCE_PARAMS, BACKGROUND_DEPTH, HELDOUT_SEEDS, IDENTITY_PARAMS, TRAIN_SEEDS, Appearance,
                       Identity, render)
from headworld.latent import N_PARAMS, params_to_z, z_to_params
from headworld.params import stack_params
from headworld.sdf import landmarks, layout

RES = 64


def _photo(seed: int, photo: int, yaw: float, pitch: float = 0.0, res: int = RES):
    return render([Identity.from_seed(seed)], [Appearance.from_seed(seed, photo)], [lookat_label(yaw, pitch)], res)


def test_parameters_are_many_seeded_and_split():
    assert len(IDENTITY_PARAMS) >= 16 and len(APPEARANCE_PARAMS) >= 8
    assert Identity.from_seed(5) == Identity.from_seed(5) and Identity.from_seed(5) != Identity.from_seed(6)
    assert Appearance.from_seed(5, 1) != Appearance.from_seed(5, 2)
    assert set(TRAIN_SEEDS).isdisjoint(range(HELDOUT_SEEDS.start, HELDOUT_SEEDS.start + 1000))
    with pytest.raises(ValueError, match="skull_width"):
        Identity((2.0,) + (0.5,) * (len(IDENTITY_PARAMS) - 1))


def test_render_is_deterministic_and_shows_a_head():
    a = _photo(3, 0, 0.2)
    b = _photo(3, 0, 0.2)
    for k in ("image", "depth", "mask"):
        assert torch.equal(a[k], b[k]), k
    assert a["image"].shape == (1, 3, RES, RES) and a["depth"].shape == a["mask"].shape == (1, 1, RES, RES)
    mask = a["mask"][0, 0]
    assert mask[RES // 2, RES // 2] == 1 and mask[0, 0] == 0 and mask[0, -1] == 0
    assert 0.25 < float(mask.mean()) < 0.75
    assert float(a["depth"][0, 0][mask == 0].min()) == pytest.approx(BACKGROUND_DEPTH)
    inside = a["depth"][0, 0][mask == 1]
    assert 2.3 < float(inside.min()) < 2.6 and float(inside.max()) < 3.1
    other = _photo(4, 0, 0.2)
    assert float((other["image"] - a["image"]).abs().mean()) > 0.05


@pytest.mark.parametrize("yaw,pitch", [(-0.4, 0.1), (0.0, 0.0), (0.5, -0.15)])
def test_nose_tip_projects_where_the_label_says(yaw, pitch):
    """Project the nose tip with the label's pinhole camera; the photo's depth there is the tip's distance."""
    seed = 11
    ident, app = Identity.from_seed(seed), Appearance.from_seed(seed, 0)
    tip = landmarks(layout(stack_params([ident], IDENTITY_PARAMS), stack_params([app], APPEARANCE_PARAMS)))
    tip = tip["nose_tip"][0].double().numpy()
    label = lookat_label(yaw, pitch)
    cam2world = label[:16].reshape(4, 4).astype(np.float64)
    k = label[16:].reshape(3, 3).astype(np.float64)
    p_cam = np.linalg.inv(cam2world) @ np.append(tip, 1.0)
    u, v, _ = k @ (p_cam[:3] / p_cam[2])
    res = 128
    col, row = int(u * res), int(v * res)
    out = render([ident], [app], [label], res)
    assert out["mask"][0, 0, row, col] == 1
    distance = np.linalg.norm(tip - cam2world[:3, 3])
    assert abs(float(out["depth"][0, 0, row, col]) - distance) < 6e-3
    # The pixel two to the side looks past the tip: farther away.
    assert float(out["depth"][0, 0, row, col + 3]) > distance + 1e-3 or yaw > 0.3


def test_mirrored_person_from_the_mirrored_camera_is_the_mirrored_photo():
    seed = 21
    ident, app = Identity.from_seed(seed), Appearance.from_seed(seed, 2)
    assert ident.mirrored() != ident and ident.mirrored().mirrored() == ident
    label = lookat_label(0.35, 0.1)
    a = render([ident], [app], [label], RES)
    b = render([ident.mirrored()], [app.mirrored()], [mirror_label(label)], RES)
    for k in ("image", "depth", "mask"):
        diff = (a[k] - b[k].flip(-1)).abs()
        assert float(diff.mean()) < 2e-3, k
        assert float((diff > 0.05).float().mean()) < 0.01, k
    # Without mirroring the person, the asymmetric face does not match its mirror image this well.
    c = render([ident], [app.mirrored()], [mirror_label(label)], RES)
    assert float((a["depth"] - c["depth"].flip(-1)).abs().mean()) > float((a["depth"] - b["depth"].flip(-1)).abs().mean())


def test_light_and_background_change_colours_not_geometry():
    seed = 8
    ident = Identity.from_seed(seed)
    app = Appearance.neutral()
    values = dict(zip(APPEARANCE_PARAMS, app.values))
    values.update(light_azimuth=0.1, bg_hue=0.1, bg_brightness=0.9)
    other = Appearance(tuple(values[n] for n in APPEARANCE_PARAMS))
    label = [lookat_label(-0.2, 0.0)]
    a, b = render([ident], [app], label, RES), render([ident], [other], label, RES)
    assert torch.equal(a["depth"], b["depth"]) and torch.equal(a["mask"], b["mask"])
    assert float((a["image"] - b["image"]).abs().mean()) > 0.05


def test_latent_code_round_trips_the_parameters():
    u = torch.rand(6, N_PARAMS, generator=torch.Generator().manual_seed(0))
    z = params_to_z(u, 128, torch.randn(6, 128 - N_PARAMS, generator=torch.Generator().manual_seed(1)))
    assert torch.allclose(z.square().mean(1), torch.ones(6), atol=1e-5)
    assert torch.allclose(z_to_params(z), u.clamp(1e-3, 1 - 1e-3), atol=1e-5)
