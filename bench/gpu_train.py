"""The GPU check's `lora_train` section: step time and peak memory of the personalization step."""
from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import torch

from bench.gpu_common import generator_of, guarded
from bench.gpu_common import sync as _sync


def _random_lpips(net: str, tmp: Path):
    """LPIPS with a random trunk (no ImageNet weights travel) and the calibrated heads of the `lpips` wheel:
    the same computation, and cost, as the trained one."""
    from safetensors.torch import save_file

    from perception.lpips import LPIPS
    from perception.weights import canonical_net
    from perception.alexnet import AlexNetFeatures
    from perception.vgg import VGG16Features
    trunk = AlexNetFeatures() if canonical_net(net) == "alex" else VGG16Features()
    path = tmp / f"random_{canonical_net(net)}.safetensors"
    save_file({k: v.contiguous() for k, v in trunk.state_dict().items()}, str(path))
    return LPIPS(net, backbone_path=path)


def section_lora_train(cfg, device: torch.device) -> dict:
    """Step time and peak memory of the personalization step (train.Trainer, checkpoints off), per batch size."""
    G = generator_of(cfg.preset, cfg.seed, device)
    rows = []
    for batch in cfg.train_batches:
        guarded(rows, "lora_step", "fp32", batch, lambda batch=batch: {
            "op": "lora_step", "dtype": "fp32", "batch": batch, **_lora_step(G, cfg, batch, device)})
    return {"preset": cfg.preset, "resolution": G.img_resolution, "rows": rows,
            "tf32": torch.backends.cuda.matmul.allow_tf32,
            "note": "seconds per step as train.Trainer logs them (each step ends by reading its losses, a sync)"}


def _lora_step(G, cfg, batch: int, device: torch.device) -> dict:
    from generator.views import camera_batch
    from perception.identity import IdentityEncoder
    from train.config import TrainConfig
    from train.data import TrainingSet
    from train.trainer import Trainer
    n = max(batch, 4)
    gen = torch.Generator().manual_seed(cfg.seed)
    images = torch.rand(n, 3, G.img_resolution, G.img_resolution, generator=gen) * 2 - 1
    cams = camera_batch(G, [(0.3 * ((i % 3) - 1), 0.05 * (i % 2)) for i in range(n)]).cpu()
    data = TrainingSet(images, cams, [f"view_{i}.png" for i in range(n)])
    with torch.no_grad():
        anchors = G.mapping(torch.randn(n, G.z_dim, generator=gen).to(device), cams.to(device),
                            truncation_psi=0.7)[:, 0].cpu()
    config = TrainConfig(batch=batch, iterations=cfg.train_warmup + cfg.train_steps, checkpoint_every=10**6)
    with tempfile.TemporaryDirectory() as tmp:
        lp = _random_lpips(config.lpips_net, Path(tmp))
        trainer = Trainer(G, data, anchors, config, identity=IdentityEncoder.random(), lpips=lp)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        trainer.run(stop_at=cfg.train_warmup)
        _sync(device)
        trainer.run()
    records = list(trainer.recent)[-cfg.train_steps:]
    sym = [r["seconds"] for r in records if "sym" in r]
    plain = [r["seconds"] for r in records if "sym" not in r]
    out = {"trainable_parameters": trainer.adapter.num_parameters(), "steps_timed": len(records),
           "step_median_s": statistics.median(r["seconds"] for r in records),
           "step_median_s_without_sym": statistics.median(plain) if plain else None,
           "step_median_s_with_sym": statistics.median(sym) if sym else None}
    if device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    del trainer
    return out
