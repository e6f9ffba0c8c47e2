"""Our generator against outputs stored by the official EG3D code (fixture README: tolerances).

Tolerances: atol 1e-5 for ws / rays / depths, 1e-4 for planes, feature_image, image_raw, image_depth and image.
"""
import numpy as np
import pytest
import torch

WS_TOL, IMG_TOL = 1e-5, 1e-4


@pytest.fixture(scope="module")
def outputs(official_generator, official_io):
    G = official_generator
    z, c = torch.from_numpy(official_io["z"]), torch.from_numpy(official_io["c"])
    with torch.no_grad():
        ws = G.mapping(z, c, truncation_psi=0.7)
        out = G.synthesis(ws, c, noise_mode="const", return_internals=True)
        out["ws"] = ws
        out["ws_psi1"] = G.mapping(z, c, truncation_psi=1)
        out["ws_psi0.5_cutoff4"] = G.mapping(z, c, truncation_psi=0.5, truncation_cutoff=4)
        out["planes"] = G.backbone.synthesis(ws, noise_mode="const")
        out["G_call"] = G(z, c, truncation_psi=0.7, noise_mode="const")
    return {k: v for k, v in out.items()}


@pytest.mark.parametrize("key", ["ws_psi1", "ws_psi0.5_cutoff4", "ws"])
def test_mapping_and_truncation(outputs, official_io, key):
    np.testing.assert_allclose(outputs[key].numpy(), official_io[key], rtol=0, atol=WS_TOL)


def test_planes(outputs, official_io):
    planes = outputs["planes"]
    assert planes.shape[1:] == (96, 256, 256)
    np.testing.assert_allclose(planes[:, :, ::4, ::4].numpy(), official_io["planes_sub4"], rtol=0, atol=IMG_TOL)
    np.testing.assert_allclose(planes[:, :, :8, :8].numpy(), official_io["planes_corner_8x8"], rtol=0, atol=IMG_TOL)
    p64 = planes.double()
    # per-channel sums over 65,536 values: an absolute tolerance of IMG_TOL per value, summed
    np.testing.assert_allclose(p64.sum((2, 3)).numpy(), official_io["planes_sum_per_channel_f64"], rtol=0,
                               atol=IMG_TOL * 256 * 256)
    np.testing.assert_allclose(p64.abs().sum((2, 3)).numpy(), official_io["planes_abssum_per_channel_f64"], rtol=0,
                               atol=IMG_TOL * 256 * 256)


@pytest.mark.parametrize("key,tol", [("ray_origins", WS_TOL), ("ray_directions", WS_TOL), ("depths_fine", WS_TOL),
                                     ("feature_image", IMG_TOL), ("weights_total", IMG_TOL),
                                     ("image_raw", IMG_TOL), ("image_depth", IMG_TOL), ("image", IMG_TOL)])
def test_rendering_outputs(outputs, official_io, key, tol):
    ours = outputs[key]
    if key == "depths_fine":
        ours = ours.squeeze(-1)
    assert tuple(ours.shape) == official_io[key].shape
    np.testing.assert_allclose(ours.numpy(), official_io[key], rtol=0, atol=tol)


def test_G_call_equals_mapping_then_synthesis(outputs):
    for key in ("image", "image_raw", "image_depth"):
        assert torch.equal(outputs["G_call"][key], outputs[key])


def test_nonfused_modconv_matches_fused(official_generator, official_io, outputs):
    """The non-fused form (train mode and ONNX export) agrees with the fused one used by the fixture."""
    c = torch.from_numpy(official_io["c"])
    with torch.no_grad():
        out = official_generator.synthesis(outputs["ws"], c, fused_modconv=False)
    np.testing.assert_allclose(out["image"].numpy(), official_io["image"], rtol=0, atol=IMG_TOL)
