"""The GPU check's `mixed` section: a batch mixing people through per-sample adapters against one person."""
from __future__ import annotations

import torch

from bench.gpu_common import generator_of, inputs, timed
from bench.gpu_common import max_diff as _max_diff

MIXED_TOL = {"cpu": 1e-5, "cuda": 1e-4}
"""A mixed-person sample against its own single-person run; on CUDA batched and single convolutions may pick
different cuDNN algorithms, hence the looser bound."""


def _people(G, count: int, seed: int) -> list:
    """`count` adapters whose LoRA B and personal tensors are randomly perturbed (distinct people)."""
    from generator.lora import PersonAdapter
    gen = torch.Generator().manual_seed(seed)
    people = []
    for _ in range(count):
        ad = PersonAdapter.create(G)
        with torch.no_grad():
            for p in ad.parameters():
                p.add_(torch.randn(p.shape, generator=gen).to(p.device) * 0.01)
        people.append(ad.requires_grad_(False))
    return people


def section_mixed(cfg, device: torch.device) -> dict:
    from generator.lora import attach, attach_mixed, detach
    G = generator_of(cfg.preset, cfg.seed, device)
    batch = max(cfg.batches)
    people = [p.to(device) for p in _people(G, cfg.people, cfg.seed)]
    index = torch.arange(batch) % len(people)
    z, c = inputs(G, batch, device, cfg.seed)

    def forward(zz, cc):
        with torch.no_grad():
            ws = G.mapping(zz, cc, truncation_psi=0.7)
            return G.synthesis(ws, cc, noise_mode="const")["image"]
    try:
        attach(G, people[0])
        same = timed(lambda: forward(z, c), device, cfg.warmup, cfg.repeats)
        attach_mixed(G, people, index.to(device))
        mixed = timed(lambda: forward(z, c), device, cfg.warmup, cfg.repeats)
        mixed_out = forward(z, c)
        worst = 0.0
        for n in range(batch):
            attach(G, people[int(index[n])])
            worst = max(worst, _max_diff(forward(z[n:n + 1], c[n:n + 1]), mixed_out[n:n + 1]))
    finally:
        detach(G)
    tol = MIXED_TOL[device.type]
    return {"batch": batch, "people": len(people), "same_person_images_per_s": round(batch / same["median_s"], 2),
            "mixed_images_per_s": round(batch / mixed["median_s"], 2),
            "mixed_over_same": round(same["median_s"] / mixed["median_s"], 3), "same_ms": same["median_s"] * 1e3,
            "mixed_ms": mixed["median_s"] * 1e3, "max_abs_diff_sample_vs_single": worst, "tolerance": tol,
            "parity_passed": worst <= tol, "dtype": "fp32"}
