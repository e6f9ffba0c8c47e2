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


SWITCHES = (("fp32", "off"), ("fp32", "on"), ("bf16", "on"), ("fp16", "on"))
"""(precision, gradient checkpointing) of issue 29's rows: today's path, exact checkpointing, and mixed precision."""
BUDGETS_GIB = (8, 16, 24)
"""Consumer-card memory sizes: the largest batch that fits each, from the memory plan, then run to confirm."""


def section_lora_train(cfg, device: torch.device) -> dict:
    """Step time and peak memory of the personalization step (train.Trainer, checkpoints off) per batch size and
    switch, next to the memory plan's estimate; then the largest batch the plan fits in 8/16/24 GiB, run once each
    to confirm the peak stays under the budget."""
    G = generator_of(cfg.preset, cfg.seed, device)
    rows = []
    for precision, checkpointing in SWITCHES:
        for batch in cfg.train_batches:
            guarded(rows, "lora_step", precision, batch, lambda batch=batch, p=precision, c=checkpointing: {
                "op": "lora_step", "dtype": p, "checkpointing": c, "batch": batch,
                **_lora_step(G, cfg, batch, device, p, c)})
    for budget in BUDGETS_GIB if device.type == "cuda" else ():  # a card's budget means nothing on a CPU dry run
        for precision in ("fp32", "bf16"):
            batch = _plan(G, 1, device, precision, "on").largest_batch(budget * 2 ** 30, limit=64)
            if batch:
                guarded(rows, f"fits_{budget}gib", precision, batch, lambda b=batch, p=precision, g=budget: {
                    "op": f"fits_{g}gib", "dtype": p, "checkpointing": "on", "batch": b,
                    **_lora_step(G, cfg, b, device, p, "on", steps=min(cfg.train_steps, 4))})
    return {"preset": cfg.preset, "resolution": G.img_resolution, "rows": rows,
            "tf32": torch.backends.cuda.matmul.allow_tf32,
            "note": "seconds per step as train.Trainer logs them (each step ends by reading its losses, a sync); "
                    "plan_gib: train/memory_plan.py's estimate of the same step before it ran"}


def _plan(G, batch: int, device: torch.device, precision: str, checkpointing: str, lp=None):
    """The memory plan of a step (the plan reads only module shapes: any LPIPS of the right net will do)."""
    from perception.identity import IdentityEncoder
    from train.config import TrainConfig
    from train.memory_plan import plan_memory
    config = TrainConfig(batch=batch, precision=precision, checkpointing=checkpointing)
    if lp is None:
        with tempfile.TemporaryDirectory() as tmp:
            lp = _random_lpips(config.lpips_net, Path(tmp))
    return plan_memory(G, config, lp, IdentityEncoder.random(), max(batch, 4), device, checkpointing == "on")


def _lora_step(G, cfg, batch: int, device: torch.device, precision: str = "fp32", checkpointing: str = "off",
               steps: int | None = None) -> dict:
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
    steps = cfg.train_steps if steps is None else steps
    config = TrainConfig(batch=batch, iterations=cfg.train_warmup + steps, checkpoint_every=10**6,
                         precision=precision, checkpointing=checkpointing)
    with tempfile.TemporaryDirectory() as tmp:
        lp = _random_lpips(config.lpips_net, Path(tmp))
        plan_gib = round(_plan(G, batch, device, precision, checkpointing, lp).peak() / 2**30, 3)
        trainer = Trainer(G, data, anchors, config, identity=IdentityEncoder.random(), lpips=lp)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        trainer.run(stop_at=cfg.train_warmup)
        _sync(device)
        trainer.run()
    records = list(trainer.recent)[-steps:]
    sym = [r["seconds"] for r in records if "sym" in r]
    plain = [r["seconds"] for r in records if "sym" not in r]
    out = {"trainable_parameters": trainer.adapter.num_parameters(), "steps_timed": len(records), "plan_gib": plan_gib,
           "step_median_s": statistics.median(r["seconds"] for r in records),
           "step_median_s_without_sym": statistics.median(plain) if plain else None,
           "step_median_s_with_sym": statistics.median(sym) if sym else None}
    if device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    del trainer
    return out
