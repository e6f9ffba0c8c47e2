"""Evaluation metrics on cases with known answers: LPIPS/DISTS wrappers and the nearest-reference ID score."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from evaluation.identity_score import (DlibBackend, IdentityScorer, make_identity_backend, nearest_reference,
                                       summarize)
from evaluation.metrics import ImageMetrics, to_unit_range


def photo(name: str, size: int = 128) -> torch.Tensor:
    """A real photo from scikit-image as [1, 3, size, size] in [-1, 1]."""
    from skimage import data
    pixels = np.array(Image.fromarray(getattr(data, name)()).resize((size, size), Image.LANCZOS))
    return torch.from_numpy(pixels).permute(2, 0, 1).float().unsqueeze(0) / 127.5 - 1.0


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = 2 * round(3 * sigma) + 1
    ax = torch.arange(k, dtype=torch.float32) - k // 2
    w = torch.exp(-ax ** 2 / (2 * sigma ** 2))
    w = w / w.sum()
    x = F.conv2d(F.pad(x, (k // 2, k // 2, 0, 0), mode="reflect"), w.view(1, 1, 1, k).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(F.pad(x, (0, 0, k // 2, k // 2), mode="reflect"), w.view(1, 1, k, 1).repeat(3, 1, 1, 1), groups=3)


NOISE_LEVELS = (0.05, 0.2, 0.5)
BLUR_SIGMAS = (0.7, 1.5, 3.0)


@pytest.fixture(scope="module")
def astronaut():
    return photo("astronaut")


@pytest.fixture(scope="module")
def degraded(astronaut):
    """Noise series and blur series of the astronaut photo, mild to strong."""
    noise = torch.randn(astronaut.shape, generator=torch.Generator().manual_seed(0))
    noisy = torch.cat([(astronaut + s * noise).clamp(-1, 1) for s in NOISE_LEVELS])
    blurred = torch.cat([gaussian_blur(astronaut, s) for s in BLUR_SIGMAS])
    return noisy, blurred


@pytest.fixture(scope="module")
def metrics():
    return ImageMetrics()


def test_identical_images_score_zero(metrics, astronaut):
    x = torch.cat([astronaut, photo("coffee")])
    assert torch.all(metrics.lpips(x, x) == 0)
    assert torch.all(metrics.dists(x, x).abs() < 1e-6)


def test_lpips_and_dists_grow_with_noise_and_blur(metrics, astronaut, degraded):
    for series in degraded:
        ref = astronaut.expand(len(series), -1, -1, -1)
        for name, values in (("lpips", metrics.lpips(series, ref)), ("dists", metrics.dists(series, ref))):
            assert values[0] > 0, name
            assert torch.all(values[1:] > values[:-1]), (name, values)


def test_dists_wrapper_maps_to_unit_range_and_clamps(metrics, astronaut):
    from perception.dists import DISTS
    y = photo("coffee")
    direct = DISTS()(to_unit_range(astronaut), to_unit_range(y))
    assert torch.allclose(metrics.dists(astronaut, y), direct, atol=1e-6)
    # a generator overshooting [-1, 1] is measured as the clamped picture a PNG would hold
    over = astronaut * 1.5
    assert torch.allclose(metrics.lpips(over, y), metrics.lpips(over.clamp(-1, 1), y), atol=1e-6)


def test_metrics_reject_mismatched_shapes(metrics, astronaut):
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.lpips(astronaut, photo("coffee", 64))
    with pytest.raises(ValueError, match="lpips_net"):
        ImageMetrics("squeeze")


def test_nearest_reference_cosine():
    refs = np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])
    scores, nearest = nearest_reference(np.array([[0.1, 5.0], [3.0, 0.0], [-2.0, -2.0]]), refs)
    assert nearest.tolist() == [1, 0, 2]
    assert np.allclose(scores, [5.0 / math.hypot(0.1, 5.0), 1.0, 1.0])


@pytest.fixture(scope="module")
def random_scorer(astronaut):
    backend = make_identity_backend("random:ir_se50")
    return IdentityScorer(backend, torch.cat([photo("coffee"), astronaut, photo("chelsea")]),
                          ["coffee", "astronaut", "chelsea"])


def test_random_encoder_identity_and_nearest_reference(random_scorer, astronaut, degraded):
    assert random_scorer.backend.smoke_test and "smoke test only" in random_scorer.backend.label
    exact = random_scorer.score(torch.cat([photo("chelsea"), astronaut]))
    assert np.allclose(exact.scores, 1.0, atol=1e-5)
    assert exact.nearest.tolist() == [2, 1]
    noisy, blurred = degraded
    for series in (noisy, blurred):
        s = random_scorer.score(series)
        assert s.nearest.tolist() == [1, 1, 1]  # every degraded astronaut is still nearest to the astronaut
        assert np.all(s.scores < 1.0)


def test_random_encoder_score_falls_with_degradation(random_scorer, degraded):
    """Measured: with a random IR-SE50 the score decreases monotonically along both series (1 > mild > strong)."""
    for series in degraded:
        s = random_scorer.score(series).scores
        assert np.all(np.diff(s) < 0), s


def test_summarize_reports_missing_faces():
    s = summarize([0.5, np.nan, 0.7, np.nan])
    assert s["n_scored"] == 2 and s["n_no_face"] == 2 and s["mean"] == pytest.approx(0.6)
    empty = summarize([np.nan])
    assert math.isnan(empty["mean"]) and empty["n_no_face"] == 1


def test_dlib_backend_counts_faces_not_found():
    """dlib finds the astronaut's face (at 256 px) but none in a coffee cup: the cup is counted, never scored."""
    backend = DlibBackend()
    face, cup = photo("astronaut", 256), photo("coffee", 256)
    scorer = IdentityScorer(backend, torch.cat([cup, face]), ["coffee", "astronaut"])
    assert scorer.reference_no_face == ["coffee"] and scorer.reference_names == ["astronaut"]
    s = scorer.score(torch.cat([face, cup, face]))
    assert np.isnan(s.scores[1]) and s.nearest[1] == -1 and s.no_face == 1
    assert np.allclose(s.scores[[0, 2]], 1.0, atol=1e-6)
    summary = summarize(s.scores)
    assert summary["n_no_face"] == 1 and summary["n_scored"] == 2
    with pytest.raises(ValueError, match="found no face in any"):
        IdentityScorer(backend, cup, ["coffee"])


def test_identity_spec_errors(tmp_path):
    with pytest.raises(ValueError, match=r"expected arcface:PATH \| heads \| dlib"):
        make_identity_backend("arcface")
    with pytest.raises(FileNotFoundError, match="not found"):
        make_identity_backend(f"arcface:{tmp_path / 'missing.pth'}")
    with pytest.raises(ValueError, match="unknown architecture"):
        make_identity_backend("random:resnet9000")
    with pytest.raises(ValueError, match="crop"):
        make_identity_backend("random:ir_se50", crop="middle")
    assert make_identity_backend("random:iresnet18:3").spec == "random:iresnet18:3"
