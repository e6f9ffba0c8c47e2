"""The fast renderer (chunks, densities-only coarse march, sort-free colour matmul) equals the straightforward one.

bench/reference_renderer.py keeps the straightforward formulation; both share the random draws (RayNoise), so
even stochastic renders and training steps must agree to float rounding.
"""
import dataclasses

import numpy as np
import pytest
import torch

from bench.reference_renderer import ReferenceRenderer, previous_formulation
from generator import TriPlaneGenerator, preset
from formats.cameras import lookat_label
from generator.rendering import (ImportanceRenderer, OSGDecoder, flat_planes, gather_plane_mean, plane_features,
                                 sample_planes, sample_rays)


def _scene(cfg, n=1, res=19, seed=0):
    g = torch.Generator().manual_seed(seed)
    planes = torch.randn(n, 3, 8, 16, 16, generator=g)
    c = torch.from_numpy(np.stack([lookat_label(0.3 * i - 0.2, 0.1) for i in range(n)]))
    origins, dirs = sample_rays(c[:, :16].reshape(-1, 4, 4), c[:, 16:25].reshape(-1, 3, 3), res)
    torch.manual_seed(seed)
    decoder = OSGDecoder(8, 16, 4)
    return planes, decoder, origins, dirs


@pytest.mark.parametrize("shape", [(1, 8, 16, 16), (2, 5, 7, 11)])
def test_gathered_plane_mean_equals_grid_sample_and_its_gradients(shape):
    """The eager sampler (one weighted embedding_bag) against grid_sample + mean, points inside, on the border and
    outside the box (zeros padding), non-square planes; values and gradients for planes and points."""
    n, c, h, w = shape
    g = torch.Generator().manual_seed(3)
    planes = flat_planes(torch.randn(n, 3, c, h, w, generator=g)).requires_grad_(True)
    points = ((torch.rand(n, 500, 3, generator=g) * 2 - 1) * 0.65).requires_grad_(True)  # box 1: some outside
    outside = (points.detach().abs() > 0.5).any(-1).float().mean()
    assert 0.2 < outside < 0.8
    ref = sample_planes(planes, points, 1.0).mean(1)
    new = gather_plane_mean(planes, points, 1.0)
    assert new.shape == ref.shape == (n, 500, c)
    assert (new - ref).abs().max() <= 1e-6
    grad_out = torch.randn(ref.shape, generator=g)
    ref_grads = torch.autograd.grad(ref, (planes, points), grad_out)
    new_grads = torch.autograd.grad(new, (planes, points), grad_out)
    for name, a, b in zip(("planes", "points"), ref_grads, new_grads):
        assert (a - b).abs().max() <= 1e-5 * max(1.0, a.abs().max().item()), name
    with torch.no_grad():  # the renderer's entry point takes the gather in eager mode
        assert torch.equal(plane_features(planes, points, 1.0), gather_plane_mean(planes, points, 1.0))


def test_exported_plane_lookup_is_grid_sample_then_mean(monkeypatch):
    """Exports and torch.compile take grid_sample, averaging before the transpose: the same numbers exactly."""
    from generator import rendering
    g = torch.Generator().manual_seed(4)
    planes = flat_planes(torch.randn(2, 3, 6, 9, 13, generator=g))
    points = (torch.rand(2, 300, 3, generator=g) * 2 - 1) * 0.6
    monkeypatch.setattr(rendering, "exporting_or_compiling", lambda: True)
    graph_path = plane_features(planes, points, 1.0)
    assert torch.equal(graph_path, sample_planes(planes, points, 1.0).mean(1))


@pytest.mark.parametrize("chunk", [None, 1, 37, 64, 361, 1000])
@pytest.mark.parametrize("sampling", ["deterministic", "stochastic"])
def test_fast_renderer_matches_reference_at_any_chunk(chunk, sampling):
    """19^2 = 361 rays: chunk 37 and 64 leave a short last chunk; 361 and 1000 are one chunk."""
    cfg = dataclasses.replace(preset("tiny").rendering, density_noise=0.5 if sampling == "stochastic" else 0.0)
    planes, decoder, origins, dirs = _scene(cfg, n=2)
    torch.manual_seed(1)
    ref = ReferenceRenderer(cfg)(planes, decoder, origins, dirs, sampling=sampling, return_fine_depths=True)
    torch.manual_seed(1)
    fast = ImportanceRenderer(cfg, ray_chunk=chunk)(planes, decoder, origins, dirs, sampling=sampling,
                                                    return_fine_depths=True)
    for name, a, b in zip(("features", "depth", "opacity", "fine depths"), ref, fast):
        assert a.shape == b.shape, name
        assert (a - b).abs().max() <= 1e-6, f"{name}: {(a - b).abs().max():.2e} at chunk {chunk}"


def test_white_background_and_no_importance_pass():
    cfg = dataclasses.replace(preset("tiny").rendering, white_back=True, depth_resolution_importance=0)
    planes, decoder, origins, dirs = _scene(cfg)
    ref = ReferenceRenderer(cfg)(planes, decoder, origins, dirs)
    fast = ImportanceRenderer(cfg, ray_chunk=50)(planes, decoder, origins, dirs)
    for a, b in zip(ref, fast):
        assert (a - b).abs().max() <= 1e-6


def test_whole_generator_matches_the_previous_formulation():
    torch.manual_seed(0)
    G = TriPlaneGenerator(preset("tiny")).eval()
    G.renderer.ray_chunk = 100  # 32^2 rays: several chunks and a short last one
    z = torch.randn(2, G.z_dim)
    c = torch.from_numpy(np.stack([lookat_label(0.3, 0.1), lookat_label(-0.2, 0.0)]))
    with torch.no_grad():
        fast = G(z, c)
        with previous_formulation(G):
            ref = G(z, c)
    for k in ref:
        # float rounding relative to the output's range: random tiny weights make SR outputs reach ~6, and its
        # channels_last convs sum in another order (the rendered features alone differ by ~1e-7)
        tol = 2e-6 * max(1.0, ref[k].abs().max().item())
        assert (fast[k] - ref[k]).abs().max() <= tol, f"{k}: {(fast[k] - ref[k]).abs().max():.2e} > {tol:.1e}"


def test_training_step_matches_the_previous_formulation():
    """One LoRA training step (stochastic sampling, random noise) gives the same parameters either way."""
    from generator.lora import PersonAdapter, attach, detach

    torch.manual_seed(0)
    G = TriPlaneGenerator(preset("tiny")).train()
    G.renderer.ray_chunk = 100
    z = torch.randn(2, G.z_dim)
    c = torch.from_numpy(np.stack([lookat_label(0.3, 0.1), lookat_label(-0.2, 0.0)]))
    target = torch.rand(2, 3, G.img_resolution, G.img_resolution) * 2 - 1
    results = []
    for previous in (False, True):
        torch.manual_seed(5)
        adapter = PersonAdapter.create(G)
        with torch.no_grad():
            for pair in adapter.lora.values():
                pair.lora_B.normal_(0, 0.02)
        # SGD: the step is linear in the gradients. Adam's first step, lr * g / (|g| + eps), turns a 1e-11
        # difference in a near-zero gradient into a 1e-5 difference in the parameter: not the formulation's doing.
        opt = torch.optim.SGD(adapter.parameters(), lr=1e-2)
        attach(G, adapter)
        torch.manual_seed(7)
        if previous:
            with previous_formulation(G):
                out = G(z, c, noise_mode="random", sampling="stochastic")
        else:
            out = G(z, c, noise_mode="random", sampling="stochastic")
        loss = (out["image"] - target).square().mean() + out["image_depth"].mean() * 1e-3
        opt.zero_grad()
        loss.backward()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in adapter.parameters()]
        assert sum(g.abs().sum().item() for g in grads) > 0
        opt.step()
        detach(G)
        results.append((loss.detach(), grads, [p.detach().clone() for p in adapter.parameters()]))
    (l0, g0, p0), (l1, g1, p1) = results
    assert (l0 - l1).abs() <= 1e-5
    assert max((a - b).abs().max().item() for a, b in zip(g0, g1)) <= 1e-5
    assert max((a - b).abs().max().item() for a, b in zip(p0, p1)) <= 1e-5


def test_bf16_autocast_stays_within_its_stated_error():
    """--precision bf16: only the super-resolution runs in bf16 (rays, tri-planes, decoder and march stay fp32);
    its image is within 1e-2 of fp32 (measured: 4.2e-3 on tiny, see docs/BENCHMARKS.md for ffhq512-128)."""
    from generator.model_dir import build_generator
    from generator.precision import inference_precision

    G = build_generator(preset_name="tiny").eval()
    z = torch.from_numpy(np.random.RandomState(0).randn(1, G.z_dim).astype(np.float32))
    c = torch.from_numpy(lookat_label(0.3, -0.1)[None])
    with torch.no_grad():
        ws = G.mapping(z, c, truncation_psi=0.7)
        ref = G.synthesis(ws, c)
        with inference_precision("bf16"):
            out = G.synthesis(ws, c)
    assert out["image"].dtype == torch.bfloat16 or out["image"].dtype == torch.float32
    image_err = (out["image"].float() - ref["image"]).abs().max().item()
    assert 0 < image_err <= 1e-2
    assert (out["image_raw"].float() - ref["image_raw"]).abs().max() <= 1e-5
    assert (out["image_depth"].float() - ref["image_depth"]).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="precision"):
        inference_precision("fp8")


@pytest.mark.parametrize("name", ["tiny", "ffhq512-128"])
def test_super_resolution_convolutions_stay_channels_last(name, monkeypatch):
    """Every convolution of a novel view's super-resolution reads and returns channels_last (CHANNELS_LAST): oneDNN
    read the feature image's size-1 batch stride as NCHW, handed back NCHW from the first transposed conv, and every
    later conv then ran ~1.5x slower."""
    import torch.nn.functional as F

    import generator.layers as layers
    import generator.ops as ops
    from generator.views import camera_batch
    torch.manual_seed(0)
    G = TriPlaneGenerator(preset(name)).eval()
    with torch.no_grad():
        ws = G.mapping(torch.randn(1, G.z_dim), camera_batch(G, [(0.0, 0.0)]))
        planes = G.planes(ws, noise_mode="const")
    seen = []

    def spy(conv):
        def run(x, w, *args, **kwargs):
            y = conv(x, w, *args, **kwargs)
            if x.shape[1] > 3 and x.shape[-1] > 1:
                seen.append((conv.__name__, tuple(x.shape), x.is_contiguous(memory_format=torch.channels_last),
                             y.is_contiguous(memory_format=torch.channels_last)))
            return y
        return run
    monkeypatch.setattr(layers.F, "conv2d", spy(F.conv2d))  # layers.F and ops.F are torch.nn.functional
    monkeypatch.setattr(layers.F, "conv_transpose2d", spy(F.conv_transpose2d))
    assert ops.F.conv2d is layers.F.conv2d
    with torch.no_grad():
        G.render_planes(planes, ws, camera_batch(G, [(0.3, 0.1)]))  # cached planes: only the SR convolves
    assert seen and all(cl_in for _, _, cl_in, _ in seen), [s for s in seen if not s[2]]
    # and oneDNN hands each output back channels_last by itself (no relayout copy): the feature image it reads
    # must have canonical channels_last strides, also in its size-1 batch dim
    assert all(cl_out for _, _, _, cl_out in seen), [s for s in seen if not s[3]]


def test_bf16_bias_and_activation_stay_in_bf16():
    """bias_act adds an fp32 bias to a bf16 activation without a round trip through fp32 (that cost the
    super-resolution ~2.6x under --precision bf16: 648 -> 245 ms at 2 threads on the reference CPU)."""
    from torch.profiler import ProfilerActivity, profile

    from generator.ops import bias_act
    x = torch.randn(1, 16, 32, 32).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    b = torch.randn(16)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        y = bias_act(x, b, act="lrelu", clamp=256.0, inplace=True)
    assert y.dtype == torch.bfloat16 and y.data_ptr() == x.data_ptr()
    big_copies = [e for e in prof.events() if e.name in ("aten::copy_", "aten::_to_copy") and e.cpu_time_total > 0
                  and any(list(s) == [1, 16, 32, 32] for s in (e.input_shapes or []))]
    assert not big_copies, [e.name for e in big_copies]
