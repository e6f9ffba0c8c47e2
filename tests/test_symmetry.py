"""The symmetry loss (My3DGen §3.3): mirrored camera pairs, ~0 for a mirror-symmetric head, gradients to LoRA."""
import numpy as np
import pytest
import torch

from formats.cameras import mirror_label, yaw_pitch_of
from generator.lora import AdapterPolicy, PersonAdapter, attach, detach
from generator.model_dir import build_generator
from perception.identity import IdentityEncoder
from fixtures.synthetic import mirror_planes, person_latent
from train.losses import symmetric_cameras, symmetry_term


@pytest.fixture(scope="module")
def encoder():
    return IdentityEncoder.random("ir_se50", seed=0, crop="full")


@pytest.fixture(scope="module")
def tiny():
    return build_generator(preset_name="tiny", seed=0)


def test_pairs_are_exact_mirrors_within_the_paper_ranges():
    g = torch.Generator().manual_seed(3)
    c1, c2, yaw_pitch = symmetric_cameras(64, g, yaw_range=0.35, pitch_range=0.25)
    # the second camera is the first one mirrored in the face's symmetry plane (x -> -x)
    assert torch.allclose(torch.from_numpy(mirror_label(c1.numpy())), c2, atol=1e-6)
    for a, b, (yaw, pitch) in zip(c1.numpy(), c2.numpy(), yaw_pitch.tolist()):
        ya, pa = yaw_pitch_of(a)
        yb, pb = yaw_pitch_of(b)
        assert abs(ya - yaw) < 1e-5 and abs(pa - pitch) < 1e-5
        assert abs(yb + ya) < 1e-5 and abs(pb - pa) < 1e-5          # mirrored yaw, same pitch
    assert yaw_pitch[:, 0].abs().max() <= 0.35 and yaw_pitch[:, 1].abs().max() <= 0.25
    assert yaw_pitch[:, 0].abs().max() > 0.25                       # the range is actually used
    # same generator state -> same poses (what makes a resumed run draw the same pairs)
    again = symmetric_cameras(64, torch.Generator().manual_seed(3))[0]
    assert torch.equal(again, c1)


def test_loss_is_zero_for_an_image_and_its_mirror_and_positive_otherwise(encoder):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 128, 128, generator=g) * 2 - 1
    x[:, 0, :, :64] -= 0.5                                          # clearly left-right asymmetric
    mirrored = symmetry_term(encoder, x, x.flip(3))                 # pair (x, mirror of x): the flip undoes it
    unmirrored = symmetry_term(encoder, x, x)                       # pair (x, x): compares x with flip(x)
    assert abs(float(mirrored)) < 1e-6
    assert float(unmirrored) > 1e-4 and float(unmirrored) > 100 * abs(float(mirrored))


@torch.no_grad()
def test_mirror_symmetric_head_renders_mirrored_pairs(tiny, encoder):
    """Tri-planes made x-symmetric render exactly mirrored raw images at the sampled pairs, so L_sym ~ 0."""
    ws = person_latent(tiny).expand(3, -1, -1)
    c1, c2, _ = symmetric_cameras(3, torch.Generator().manual_seed(0),
                                  pivot=tuple(tiny.cfg.rendering.avg_camera_pivot))
    planes = tiny.planes(ws)
    symmetric = (planes + mirror_planes(planes)) / 2
    s1, s2 = tiny.render_planes(symmetric, ws, c1), tiny.render_planes(symmetric, ws, c2)
    a1, a2 = tiny.render_planes(planes, ws, c1), tiny.render_planes(planes, ws, c2)
    assert (s1["image_raw"] - s2["image_raw"].flip(3)).abs().max() < 1e-5
    assert (a1["image_raw"] - a2["image_raw"].flip(3)).abs().max() > 0.05
    loss_symmetric = float(symmetry_term(encoder, s1["image_raw"], s2["image_raw"]))
    loss_asymmetric = float(symmetry_term(encoder, a1["image_raw"], a2["image_raw"]))
    assert abs(loss_symmetric) < 1e-5
    assert loss_asymmetric > 1e-4 and loss_asymmetric > 20 * abs(loss_symmetric)


def test_gradients_reach_the_lora_tensors(tiny, encoder):
    adapter = PersonAdapter.create(tiny, AdapterPolicy())
    with torch.no_grad():  # B = 0 would give A no gradient; a trained adapter has B != 0
        for pair in adapter.lora.values():
            pair.lora_B.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(1))
    ws = person_latent(tiny).expand(2, -1, -1)
    c1, c2, _ = symmetric_cameras(2, torch.Generator().manual_seed(5))
    tiny.requires_grad_(False)
    attach(tiny, adapter)
    try:
        out = tiny.synthesis(torch.cat([ws, ws]), torch.cat([c1, c2]).float())["image"]
        loss = symmetry_term(encoder, out[:2].clamp(-1, 1), out[2:].clamp(-1, 1))
        loss.backward()
    finally:
        detach(tiny)
        tiny.requires_grad_(True)
    assert float(loss.detach()) > 0
    grads = {name: p.grad for name, p in adapter.named_parameters()}
    lora = {k: v for k, v in grads.items() if "lora_" in k}
    assert lora and all(g is not None for g in lora.values())
    nonzero = [k for k, g in lora.items() if g.abs().max() > 0]
    assert len(nonzero) == len(lora), f"no gradient in {sorted(set(lora) - set(nonzero))[:5]}"
    for part in ("backbone__synthesis", "superresolution"):
        assert any(part in k for k in nonzero)
    assert all(p.grad is None for p in tiny.parameters())           # base weights get nothing
    assert np.isfinite([float(g.abs().sum()) for g in lora.values()]).all()
