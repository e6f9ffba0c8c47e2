"""Architecture, presets, modes and call signatures of the generator."""
import numpy as np
import pytest
import torch

from generator import TriPlaneGenerator, preset
from formats.cameras import lookat_label, mirror_label, yaw_pitch_of
from generator.rendering import sample_pdf

TSV = "ffhq512-128_G_ema_state_dict_shapes.tsv"


def test_ffhq512_128_parameter_count_keys_and_shapes(official_dir):
    G = TriPlaneGenerator(preset("ffhq512-128"))
    assert sum(p.numel() for p in G.parameters()) == 30_662_136
    expected = {}
    for line in (official_dir / TSV).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, kind = line.split("\t")
        expected[key] = (tuple(int(s) for s in shape.strip("[]").split(",") if s.strip()), kind.strip())
    params = dict(G.named_parameters())
    sd = G.state_dict()
    assert set(sd) == set(expected)
    for key, (shape, kind) in expected.items():
        assert tuple(sd[key].shape) == shape, key
        assert (key in params) == (kind == "param"), key
    assert G.num_ws == 14


def test_tiny_preset_shapes_and_determinism():
    torch.manual_seed(0)
    G = TriPlaneGenerator(preset("tiny")).eval()
    z = torch.randn(2, G.z_dim)
    c = torch.from_numpy(np.stack([lookat_label(0.3, 0.1), lookat_label(-0.2, 0.0)]))
    with torch.no_grad():
        a = G(z, c)
        b = G(z, c)
    assert a["image"].shape == (2, 3, 128, 128)
    assert a["image_raw"].shape == (2, 3, 32, 32) and a["image_depth"].shape == (2, 1, 32, 32)
    for k in a:
        assert torch.equal(a[k], b[k]), f"deterministic mode is not deterministic for {k}"


def test_stochastic_mode_differs_and_stays_close():
    torch.manual_seed(0)
    G = TriPlaneGenerator(preset("tiny")).eval()
    z = torch.randn(1, G.z_dim)
    c = torch.from_numpy(lookat_label(0.0, 0.0)[None])
    with torch.no_grad():
        det = G(z, c)
        sto = G(z, c, noise_mode="random", sampling="stochastic")
    diff = (det["image_raw"] - sto["image_raw"]).abs()
    assert diff.max() > 0
    assert diff.mean() < 0.5


def test_noise_modes():
    torch.manual_seed(0)
    G = TriPlaneGenerator(preset("tiny")).eval()
    for layer in G.modules():
        if hasattr(layer, "noise_strength"):
            layer.noise_strength.data.fill_(0.5)
    ws = G.mapping(torch.randn(1, G.z_dim), torch.from_numpy(lookat_label(0, 0)[None]))
    with torch.no_grad():
        const = G.planes(ws, noise_mode="const")
        none = G.planes(ws, noise_mode="none")
        r1, r2 = G.planes(ws, noise_mode="random"), G.planes(ws, noise_mode="random")
    assert not torch.equal(const, none) and not torch.equal(r1, r2)
    with pytest.raises(ValueError, match="noise_mode"):
        G.planes(ws, noise_mode="bogus")


@pytest.mark.parametrize("sampling", ["deterministic", "stochastic"])
def test_sample_pdf_matches_searchsorted(sampling):
    """The ONNX-friendly count of cdf <= u equals torch.searchsorted(right=True) in the official sampler."""
    g = torch.Generator().manual_seed(0)
    bins = torch.sort(torch.rand(64, 20, generator=g), -1).values
    weights = torch.rand(64, 18, generator=g)
    torch.manual_seed(1)
    ours = sample_pdf(bins, weights, 16, sampling)
    w = weights + 1e-5
    cdf = torch.cat([torch.zeros(64, 1), torch.cumsum(w / w.sum(-1, keepdim=True), -1)], -1)
    torch.manual_seed(1)
    u = torch.linspace(0, 1, 16).expand(64, 16).contiguous() if sampling == "deterministic" else torch.rand(64, 16)
    inds = torch.searchsorted(cdf, u, right=True)
    below, above = (inds - 1).clamp(min=0), inds.clamp(max=18)
    cb, ca = cdf.gather(1, below), cdf.gather(1, above)
    bb, ba = bins.gather(1, below), bins.gather(1, above)
    denom = torch.where(ca - cb < 1e-5, torch.ones_like(ca), ca - cb)
    ref = bb + (u - cb) / denom * (ba - bb)
    assert torch.equal(ours, ref)


def test_cameras_round_trip_and_mirror():
    c = lookat_label(0.3, -0.1)
    yaw, pitch = yaw_pitch_of(c)
    assert abs(yaw - 0.3) < 1e-6 and abs(pitch + 0.1) < 1e-6
    my, mp = yaw_pitch_of(mirror_label(c))
    assert abs(my + 0.3) < 1e-6 and abs(mp + 0.1) < 1e-6


def test_lookat_matches_official_fixture_cameras(official_io):
    from formats.cameras import camera_label, intrinsics, lookat_cam2world
    c0 = lookat_label(0.30, -0.10)
    c1 = camera_label(lookat_cam2world(-0.45, 0.12, radius=2.6), intrinsics(4.0, 0.51, 0.49))
    np.testing.assert_allclose(np.stack([c0, c1]), official_io["c"], rtol=0, atol=1e-6)


def test_config_validation_names_the_field():
    cfg = preset("tiny")
    cfg.triplane_resolution = 48
    with pytest.raises(ValueError, match="triplane_resolution=48"):
        TriPlaneGenerator(cfg)
