"""A ground-truth "person" G* for tests and the bundled sample data: a known low-rank change of a base generator.

    G0 = build_generator(preset_name='tiny', seed=0)
    G* = G0 with a random LoRA adapter attached (A kaiming-uniform as initialised, B ~ N(0, strength^2), seeded)

G* renders one latent of G0 (z from a seed, mapped with the frontal camera, truncation 0.7) from any camera,
so a test can train on some views of G* and measure the error on views it never saw (held-out cameras), where
the answer is known. The change is of the same family the trainer learns (rank-4 loralib LoRA on synthesis and
super-resolution), so a working trainer can recover it; it does not touch biases or the decoder.
"""
from __future__ import annotations

import torch

from generator.lora import AdapterPolicy, PersonAdapter, attach, detach
from generator.model_dir import build_generator
from generator.views import camera_batch, latent_from_seed

BASE_PRESET = "tiny"
BASE_SEED = 0
CHANGE_SEED = 1
STRENGTH = 2.0
"""Standard deviation of the ground-truth LoRA B entries (mean |image change| ~ 0.16 on the tiny preset)."""
LATENT_SEED = 7
TRUNCATION = 0.7

TRAIN_VIEWS = [(-0.45, 0.0), (-0.3, 0.15), (-0.15, -0.1), (0.0, 0.0), (0.0, 0.2), (0.1, -0.2), (0.2, 0.1),
               (0.3, -0.05), (0.45, 0.05), (-0.05, -0.25)]
"""(yaw, pitch) of the ten training photos, radians from frontal."""
HELDOUT_VIEWS = [(-0.38, 0.08), (-0.22, -0.18), (0.08, 0.12), (0.24, -0.14), (0.38, 0.18), (-0.1, 0.22)]
"""Cameras never used for training: the ground-truth recovery test measures the error here."""


def ground_truth_adapter(G0: torch.nn.Module, seed: int = CHANGE_SEED, strength: float = STRENGTH,
                         policy: AdapterPolicy | None = None) -> PersonAdapter:
    """A random LoRA-only adapter: A as initialised, B ~ N(0, strength^2), from `seed` (global RNG untouched).

    A fully connected layer's B is then multiplied by the layer's gain: its delta acts after the gain (adapter
    format 2), and this keeps G* the person it was when deltas acted before it (the bundled sample data)."""
    policy = policy or AdapterPolicy(train_decoder=False, train_biases=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapter = PersonAdapter.create(G0, policy)
        with torch.no_grad():
            for key, pair in adapter.lora.items():
                pair.lora_B.normal_(0.0, strength).mul_(adapter.targets[key.replace("__", ".")].gain)
    return adapter.requires_grad_(False)


def person_latent(G: torch.nn.Module, seed: int = LATENT_SEED, truncation: float = TRUNCATION) -> torch.Tensor:
    """ws [1, num_ws, w_dim] of the person: z from `seed` (official gen_samples draw) mapped at the frontal camera."""
    with torch.no_grad():
        return G.mapping(latent_from_seed(G, seed), camera_batch(G, [(0.0, 0.0)]), truncation_psi=truncation)


def ground_truth_person(base_seed: int = BASE_SEED, change_seed: int = CHANGE_SEED, strength: float = STRENGTH
                        ) -> tuple[torch.nn.Module, PersonAdapter]:
    """(G0, adapter of G*): the tiny preset generator and the known change that makes G*."""
    G0 = build_generator(preset_name=BASE_PRESET, seed=base_seed)
    return G0, ground_truth_adapter(G0, change_seed, strength)


@torch.no_grad()
def render_views(G: torch.nn.Module, ws: torch.Tensor, views: list[tuple[float, float]],
                 adapter: PersonAdapter | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Final images [N, 3, S, S] and cameras [N, 25] of latent ws [1, num_ws, w_dim] (through `adapter` if given).

    Deterministic sampling and 'const' noise, in eval mode; G is left detached.
    """
    cams = camera_batch(G, views)
    was_training = G.training
    G.eval()
    attach(G, adapter)
    try:
        images = G.synthesis(ws.expand(len(views), -1, -1), cams)["image"]
    finally:
        detach(G)
        G.train(was_training)
    return images, cams


def mirror_planes(planes: torch.Tensor) -> torch.Tensor:
    """Tri-planes [N, 3, C, H, W] of the x-mirrored scene: planes (x,y) and (x,z) flip along their width (x),
    plane (z,x) along its height (x). Averaging planes with this makes a mirror-symmetric head."""
    return torch.stack([planes[:, 0].flip(-1), planes[:, 1].flip(-1), planes[:, 2].flip(-2)], dim=1)


SAMPLE_README = """# tiny_person: bundled sample data (synthetic)

Ten 128x128 views of a ground-truth "person" G* = the `tiny` preset generator (seed {base_seed}) with a known random
rank-4 LoRA change (seed {change_seed}, B ~ N(0, {strength}^2)), rendering latent seed {latent_seed} (truncation
{truncation}) from the cameras in dataset.json (EG3D labels). Random-weight generators render abstract blobs, not
faces: this data exercises the pipeline (`cli.py train --preset tiny --data samples/tiny_person ...`), it does not
show a real person. Regenerate with `python scripts/make_sample_data.py` (deterministic); see tests/helpers/synthetic.py.
"""


def write_sample_dataset(out_dir, overwrite: bool = False):
    """Render the TRAIN_VIEWS of G* as PNGs + dataset.json (+ README.md, truth.json) into `out_dir`, atomically."""
    import json
    from pathlib import Path

    from formats.atomic import atomic_dir
    from generator.imaging import to_uint8
    from PIL import Image
    from formats.dataset import write_dataset_json

    G0, adapter = ground_truth_person()
    ws = person_latent(G0)
    images, cams = render_views(G0, ws, TRAIN_VIEWS, adapter)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        entries = []
        for i, (img, cam) in enumerate(zip(images, cams)):
            name = f"view_{i:02d}.png"
            Image.fromarray(to_uint8(img)).save(tmp / name, format="PNG", optimize=True)
            entries.append((name, cam.numpy()))
        write_dataset_json(tmp, entries)
        (tmp / "README.md").write_text(SAMPLE_README.format(
            base_seed=BASE_SEED, change_seed=CHANGE_SEED, strength=STRENGTH, latent_seed=LATENT_SEED,
            truncation=TRUNCATION))
        truth = {"base_preset": BASE_PRESET, "base_seed": BASE_SEED, "change_seed": CHANGE_SEED,
                 "strength": STRENGTH, "latent_seed": LATENT_SEED, "truncation": TRUNCATION,
                 "train_views": TRAIN_VIEWS, "heldout_views": HELDOUT_VIEWS}
        (tmp / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    return Path(out_dir)
