"""The committed head-world models: the generator loads with its fingerprint and renders a head; the identity
network matches two photos of one held-out person better than photos of two people."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from formats.cameras import lookat_label
from generator.model_dir import load_model_dir, read_config, weights_fingerprint
from generator.presets import preset
from generator.views import latent_from_seed
from headworld import HELDOUT_SEEDS, Appearance, Identity, render
from perception.heads_identity import HEADS_IDENTITY_WEIGHTS, is_heads_identity_file, load_heads_identity

MODEL = Path(__file__).resolve().parents[1] / "models" / "heads"


def test_heads_model_loads_with_its_fingerprint_and_renders_a_head():
    _, raw = read_config(MODEL)
    G = load_model_dir(MODEL)
    assert raw["fingerprint"] == weights_fingerprint(G.state_dict())
    assert G.cfg.to_dict() == preset("heads").to_dict()
    assert (MODEL / "model.safetensors").stat().st_size < 15e6
    c = torch.from_numpy(np.stack([lookat_label(0.0, 0.0), lookat_label(0.4, 0.0)]))
    with torch.no_grad():
        z = torch.cat([latent_from_seed(G, 1), latent_from_seed(G, 2)])
        out = G.synthesis(G.mapping(z, c), c)
    image, depth = out["image"], out["image_depth"]
    assert image.shape == (2, 3, 128, 128) and torch.isfinite(image).all()
    assert float(image.std()) > 0.1 and float((image[0] - image[1]).abs().mean()) > 0.02
    # A head in front of the background: the middle of the raw depth map is nearer than its corners.
    r = depth.shape[-1]
    middle = depth[:, 0, r // 2 - 2:r // 2 + 2, r // 2 - 2:r // 2 + 2].mean()
    corners = depth[:, 0, [0, 0, -1], [0, -1, 0]].mean()
    assert float(middle) < float(corners) - 0.2


def test_identity_network_tells_held_out_people_apart():
    assert is_heads_identity_file(HEADS_IDENTITY_WEIGHTS)
    encoder = load_heads_identity()
    a, b = HELDOUT_SEEDS.start + 50, HELDOUT_SEEDS.start + 51
    people = [a, a, b, b]
    photos = [Appearance.from_seed(s, k) for s, k in zip(people, (0, 1, 0, 1))]
    labels = np.stack([lookat_label(y, 0.0) for y in (-0.3, 0.3, -0.3, 0.3)])
    images = render([Identity.from_seed(s) for s in people], photos, labels, 128)["image"].requires_grad_(True)
    e = encoder(images)
    assert e.shape == (4, encoder.dim) and torch.allclose(e.norm(dim=1), torch.ones(4), atol=1e-5)
    sim = e @ e.T
    s = sim.detach()
    assert float(s[0, 1]) > float(s[0, 2:].max()) and float(s[2, 3]) > float(s[2, :2].max())
    sim[0, 1].backward()
    assert images.grad is not None and float(images.grad.abs().sum()) > 0
