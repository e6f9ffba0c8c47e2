"""W inversion (paper §3.1): the schedule, LPIPS parity, the cache, and recovering a known latent on `tiny`."""
import math

import pytest
import torch

from generator.lora import AdapterPolicy, PersonAdapter, attach, detach
from generator.model_dir import build_generator
from perception.lpips import LPIPS
from fixtures.synthetic import TRAIN_VIEWS, person_latent, render_views
from train import projector as projector_module
from train.config import ProjectorConfig
from train.losses import lpips_distance, lpips_features
from train.projector import model_fingerprint, project_batch, project_w, w_stats


@pytest.fixture(scope="module")
def tiny():
    return build_generator(preset_name="tiny", seed=0)


@pytest.fixture(scope="module")
def vgg():
    return LPIPS("vgg")


@pytest.fixture(scope="module")
def targets(tiny):
    """Two views of a latent the projector does not know (seed 11), with their cameras."""
    ws = person_latent(tiny, seed=11)
    images, cams = render_views(tiny, ws, [TRAIN_VIEWS[1], TRAIN_VIEWS[7]])
    return images, cams, ws


def _assert_same_trajectory(a, b, cfg):
    """Batched and single inversions differ only by float rounding of batched convolutions; Adam can turn a
    rounding difference of a near-zero gradient component into a sign flip, i.e. at most one lr-sized step."""
    diff = (a - b).abs()
    assert float(diff.max()) <= cfg.lr and float(diff.mean()) < 1e-3


def test_schedule_is_the_stylegan2_projector_schedule():
    cfg = ProjectorConfig(steps=500)
    assert cfg.lr == 0.01 and cfg.w_avg_samples == 10000 and cfg.w_avg_seed == 123
    assert cfg.lr_at(0) == 0.0                                      # ramp-up starts at zero
    assert math.isclose(cfg.lr_at(25), 0.01)                        # 5% ramp-up done
    assert math.isclose(cfg.lr_at(250), 0.01)                       # flat middle
    assert math.isclose(cfg.lr_at(437), 0.01 * (0.5 - 0.5 * math.cos((63 / 500) / 0.25 * math.pi)))
    assert cfg.lr_at(499) < 1e-4                                    # cosine ramp-down to ~0
    assert math.isclose(cfg.noise_factor_at(0), 0.05) and cfg.noise_factor_at(375) == 0.0
    assert cfg.lpips_size(512) == 256 and cfg.lpips_size(128) == 64 and cfg.lpips_size(256) == 128


def test_split_lpips_equals_lpips(vgg):
    g = torch.Generator().manual_seed(0)
    x, y = (torch.rand(2, 3, 64, 64, generator=g) * 2 - 1 for _ in range(2))
    split = lpips_distance(vgg, lpips_features(vgg, x), lpips_features(vgg, y))
    assert torch.allclose(split, vgg(x, y), atol=1e-6, rtol=1e-5)


def test_w_stats_follow_the_camera(tiny, targets):
    _, cams, _ = targets
    avg0, std0 = w_stats(tiny, cams[0], samples=2000)
    avg1, _ = w_stats(tiny, cams[1], samples=2000)
    assert avg0.shape == (tiny.w_dim,) and std0 > 0
    assert not torch.allclose(avg0, avg1)                           # mapping is pose-conditioned (EG3D)


@pytest.mark.slow
def test_projector_recovers_a_latent(tiny, targets, vgg):
    images, cams, _ = targets
    cfg = ProjectorConfig(steps=60)
    w = project_batch(tiny, images, cams, cfg, seed=0, lpips=vgg)
    assert w.shape == (2, tiny.w_dim)
    with torch.no_grad():
        start = torch.stack([w_stats(tiny, c)[0] for c in cams])
        ws_start = start[:, None].expand(-1, tiny.num_ws, -1)
        ws_end = w[:, None].expand(-1, tiny.num_ws, -1)
        img_start = tiny.synthesis(ws_start, cams)["image"]
        img_end = tiny.synthesis(ws_end, cams)["image"]
    mse_start = (img_start - images).square().mean(dim=(1, 2, 3))
    mse_end = (img_end - images).square().mean(dim=(1, 2, 3))
    lp_start, lp_end = vgg(img_start, images), vgg(img_end, images)
    print(f"projector 60 steps: mse {mse_start.tolist()} -> {mse_end.tolist()}, "
          f"lpips {lp_start.tolist()} -> {lp_end.tolist()}")
    assert (mse_end < 0.5 * mse_start).all()
    assert (lp_end < 0.6 * lp_start).all()


def test_cache_reuses_results_and_keys_on_everything(tiny, targets, vgg, tmp_path, monkeypatch):
    images, cams, _ = targets
    cfg = ProjectorConfig(steps=4)
    first = project_batch(tiny, images, cams, cfg, seed=0, cache_dir=tmp_path, lpips=vgg)
    originals = sorted(tmp_path.glob("*.safetensors"))
    assert len(originals) == 2

    def no_optimising(*args, **kwargs):
        raise AssertionError("the cache should have answered")
    monkeypatch.setattr(projector_module, "_optimise", no_optimising)
    again = project_batch(tiny, images, cams, cfg, seed=0, cache_dir=tmp_path, lpips=vgg)
    assert torch.equal(first, again)
    single = project_w(tiny, images[1], cams[1], steps=4, seed=0, config=cfg, cache_dir=tmp_path, lpips=vgg)
    assert torch.equal(single, first[1])
    monkeypatch.undo()
    # anything that changes the result is part of the key: steps, seed, camera, the model (an adapter)
    project_batch(tiny, images[:1], cams[:1], ProjectorConfig(steps=5), seed=0, cache_dir=tmp_path, lpips=vgg)
    project_batch(tiny, images[:1], cams[:1], cfg, seed=1, cache_dir=tmp_path, lpips=vgg)
    project_batch(tiny, images[:1], cams[1:], cfg, seed=0, cache_dir=tmp_path, lpips=vgg)
    assert len(list(tmp_path.glob("*.safetensors"))) == 5
    # a corrupt cache file is recomputed, not trusted
    victim = originals[0]
    victim.write_bytes(b"not a safetensors file")
    recomputed = project_batch(tiny, images, cams, cfg, seed=0, cache_dir=tmp_path, lpips=vgg)
    assert victim.stat().st_size > 100
    _assert_same_trajectory(recomputed, first, cfg)


def test_model_fingerprint_sees_attached_adapters(tiny):
    base = model_fingerprint(tiny)
    adapter = PersonAdapter.create(tiny, AdapterPolicy())
    attach(tiny, adapter)
    try:
        with_zero = model_fingerprint(tiny)
        with torch.no_grad():
            next(iter(adapter.lora.values())).lora_B.add_(0.1)
        changed = model_fingerprint(tiny)
    finally:
        detach(tiny)
    assert len({base, with_zero, changed}) == 3
    assert model_fingerprint(tiny) == base


def test_project_w_shapes_and_errors(tiny, targets, vgg):
    images, cams, _ = targets
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    w = project_w(tiny, images[0], cams[0], steps=3, seed=0, lpips=vgg)
    assert w.shape == (tiny.w_dim,) and torch.isfinite(w).all()
    w_plus = project_w(tiny, images[0], cams[0], steps=3, seed=0, w_plus=True, lpips=vgg)
    assert w_plus.shape == (tiny.num_ws, tiny.w_dim)
    batch = project_batch(tiny, images, cams, ProjectorConfig(steps=3), seed=0, lpips=vgg)
    _assert_same_trajectory(batch[:1], w[None], ProjectorConfig(steps=3))
    assert all(torch.equal(v, before[k]) for k, v in tiny.state_dict().items())
    assert all(p.grad is None for p in tiny.parameters())
    with pytest.raises(ValueError, match="output size"):
        project_w(tiny, images[0, :, :64, :64], cams[0], steps=1, lpips=vgg)
    with pytest.raises(ValueError, match="25"):
        project_batch(tiny, images, cams[:, :16], ProjectorConfig(steps=1), lpips=vgg)


def test_noise_regularizer_penalises_correlated_noise():
    g = torch.Generator().manual_seed(0)
    white = torch.randn(2, 1, 32, 32, generator=g)
    smooth = torch.nn.functional.avg_pool2d(torch.randn(2, 1, 35, 35, generator=g), 4, stride=1)
    smooth = (smooth - smooth.mean()) / smooth.std()
    reg_white = projector_module.noise_regularization([white])
    reg_smooth = projector_module.noise_regularization([smooth])
    assert reg_white.shape == (2,) and (reg_smooth > 100 * reg_white).all()


def test_projector_optimises_noise_maps_without_touching_G(tiny, targets, vgg, tmp_path, monkeypatch):
    import copy
    images, cams, _ = targets
    G = copy.deepcopy(tiny)
    with torch.no_grad():
        for layer in projector_module.noise_layers(G):
            layer.noise_strength.fill_(0.3)  # the random tiny preset has zero strengths: noise would do nothing
    layers = projector_module.noise_layers(G)
    assert len(layers) == 2 * len(G.backbone.synthesis.block_resolutions) - 1
    buffers = [layer.noise_const for layer in layers]
    before = {k: v.clone() for k, v in G.state_dict().items()}
    seen = []
    normalize = projector_module._normalize_noise

    def spy(maps):
        normalize(maps)
        seen.append([m.detach().clone() for m in maps])
    monkeypatch.setattr(projector_module, "_normalize_noise", spy)
    cfg = ProjectorConfig(steps=4, w_avg_samples=200)
    with_noise = project_batch(G, images, cams, cfg, seed=0, cache_dir=tmp_path, lpips=vgg)
    assert len(seen) == 4 and len(seen[0]) == len(layers) and seen[0][0].shape[0] == 2
    assert not torch.equal(seen[0][-1], seen[-1][-1])  # the maps moved
    for m in seen[-1]:
        assert m.mean(dim=(1, 2, 3)).abs().max() < 1e-5 and (m.square().mean(dim=(1, 2, 3)) - 1).abs().max() < 1e-4
    assert all(layer.noise_const is buf for layer, buf in zip(layers, buffers))  # G's own buffers are back
    assert all(torch.equal(v, before[k]) for k, v in G.state_dict().items())
    without = project_batch(G, images, cams, ProjectorConfig(steps=4, w_avg_samples=200, optimize_noise=False),
                            seed=0, cache_dir=tmp_path, lpips=vgg)
    assert len(seen) == 4 and not torch.equal(with_noise, without)
    assert len(list(tmp_path.glob("*.safetensors"))) == 4  # the option is part of the cache key
    monkeypatch.undo()
    single = project_w(G, images[1], cams[1], steps=4, seed=0, config=cfg, lpips=vgg)
    _assert_same_trajectory(single[None], with_noise[1:], cfg)


def test_z_space_inversion_moves_along_the_mapping_toward_the_photo(tiny, targets, vgg):
    """In z the anchor is mapping(z, c) of the optimised z: it gets closer to the photo than the seeded start."""
    images, cams, _ = targets
    cfg = ProjectorConfig(steps=30, space="z", lr=0.1, pixel_weight=1.0)
    w = project_batch(tiny, images, cams, cfg, seed=0, lpips=vgg)
    assert w.shape == (2, tiny.w_dim) and torch.isfinite(w).all()
    z0 = torch.randn(tiny.z_dim, generator=torch.Generator().manual_seed(0))
    z0 = (z0 * tiny.z_dim ** 0.5 / z0.norm()).expand(2, -1)
    with torch.no_grad():
        start = tiny.synthesis(tiny.mapping(z0, cams), cams)["image"]
        end = tiny.synthesis(w[:, None].expand(-1, tiny.num_ws, -1), cams)["image"]
    assert (vgg(end, images).flatten() < vgg(start, images).flatten()).all()


def test_new_projector_fields_are_checked_and_leave_old_cache_keys_alone():
    with pytest.raises(ValueError, match="space"):
        ProjectorConfig(space="x").validate()
    with pytest.raises(ValueError, match="w_plus"):
        ProjectorConfig(space="z", w_plus=True).validate()
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="pixel_weight"):
            ProjectorConfig(pixel_weight=bad).validate()
    # the official settings serialise as before these fields existed (cached inversions stay valid)
    assert "space" not in ProjectorConfig().to_dict() and "pixel_weight" not in ProjectorConfig().to_dict()
    assert ProjectorConfig(space="z", pixel_weight=1.0).to_dict()["space"] == "z"


def test_projector_for_names_the_two_settings():
    from train.config import Z_SPACE_LR, projector_for
    official, heads = projector_for("w", 50), projector_for("z", 50)
    assert official == ProjectorConfig(steps=50)
    assert (heads.space, heads.lr, heads.pixel_weight, heads.steps) == ("z", Z_SPACE_LR, 1.0, 50)
    with pytest.raises(ValueError, match="space"):
        projector_for("W+", 50)
