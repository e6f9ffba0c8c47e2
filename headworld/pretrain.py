"""Pretraining of the `heads` generator on pre-rendered head-world shards (see scripts/pretrain_heads.py).

Reproducible and resumable: the batch sampler and the z filler draw from one seeded torch.Generator whose state
is saved with the weights and the optimizer, and the global RNG (stochastic depth sampling) is re-seeded from
(seed, step) before every step; shard k is used from step `shard_schedule(k)` on (the loop waits for
a shard that is not rendered yet), so the data seen at each step does not depend on how fast the renderer ran.
Checkpoints are written atomically to RUN/checkpoint.pt (torch.save of tensors and plain values only, loaded with
`weights_only=True`, which executes no code).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from generator.model_dir import calibrate_random_init, load_model_dir, save_model_dir
from generator.presets import preset
from generator.triplane import TriPlaneGenerator
from headworld.latent import N_PARAMS, params_to_z
from headworld.render import BACKGROUND_DEPTH
from headworld.shards import load_shards, shard_path

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"


@dataclass
class PretrainConfig:
    """Hyper-parameters of a pretraining run (saved in the checkpoint; a resumed run must match them)."""

    seed: int = 0
    preset: str = "heads"
    batch: int = 4
    lr: float = 2e-3
    mapping_lr_scale: float = 100.0
    """The mapping's layers have lr_multiplier 0.01 (EG3D); their Adam lr is lr * this, so that they learn as fast
    as the synthesis layers (at 30x the first run's prior ignored most of z and rendered one average head)."""
    decay_steps: int = 24_000
    """The learning rate follows a cosine from lr down to lr * final_lr_scale at this step, then stays there."""
    final_lr_scale: float = 0.05
    betas: tuple[float, float] = (0.9, 0.99)
    w_raw: float = 1.0
    w_depth: float = 1.0
    w_bg_depth: float = 0.1
    w_lpips: float = 0.0
    """Weight of LPIPS-VGG (perception/lpips.py) on the final image, next to its L1. L1 alone is minimised by the
    average of the plausible details, so eyes and hair come out as blur; a perceptual term asks for the details."""
    init_from: str = ""
    """Model directory whose weights start the run (a second stage on top of a finished one); empty: random init."""
    first_shards: int = 2
    steps_per_shard: int = 60
    total_shards: int = 64
    save_every: int = 100
    log_every: int = 10

    def lr_scale(self, step: int) -> float:
        """Factor on every group's base learning rate at `step` (cosine decay)."""
        t = min(step, self.decay_steps) / self.decay_steps
        return self.final_lr_scale + (1 - self.final_lr_scale) * 0.5 * (1 + math.cos(math.pi * t))

    def shards_at(self, step: int) -> int:
        """Shards in use at `step`: first_shards, then one more every steps_per_shard steps."""
        return min(self.total_shards, self.first_shards + step // self.steps_per_shard)


STAGES: dict[str, PretrainConfig] = {
    "l1": PretrainConfig(),
    "perceptual": PretrainConfig(w_lpips=1.0, lr=5e-4, decay_steps=2_400, first_shards=16, total_shards=16,
                                 save_every=100),
}
"""Named runs. `l1` made the first prior (24,000 steps from random weights). `perceptual` continues a finished
model (`init_from`) with LPIPS-VGG next to the L1 terms, from a lower learning rate than `l1` started at (the
continued model is at the end of its decay). It uses the first 16 shards (1,024 people, 4,096 photos) from its
first step: a LPIPS-VGG step at 128^2 costs ~5x an L1 step on a CPU, so a run sees each photo a few times."""


def new_generator(cfg: PretrainConfig) -> TriPlaneGenerator:
    """A seeded random generator of cfg.preset, or the weights of cfg.init_from (which must be that preset)."""
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        G = TriPlaneGenerator(preset(cfg.preset))
    if not cfg.init_from:
        return calibrate_random_init(G)
    start = load_model_dir(cfg.init_from)
    if start.cfg != G.cfg:
        raise ValueError(f"init_from {cfg.init_from}: its generator is not the {cfg.preset!r} preset")
    G.load_state_dict(start.state_dict())
    return G


def config_from_json(text: str) -> PretrainConfig:
    """The config a checkpoint was saved with; fields added since then take their defaults (the values every
    older run had), so older checkpoints keep resuming and exporting."""
    saved = json.loads(text)
    saved["betas"] = tuple(saved["betas"])
    known = {f.name for f in fields(PretrainConfig)}
    unknown = sorted(set(saved) - known)
    if unknown:
        raise ValueError(f"checkpoint config has fields this code does not know: {unknown}")
    return PretrainConfig(**saved)


def make_optimizer(G: TriPlaneGenerator, cfg: PretrainConfig) -> torch.optim.Adam:
    mapping = [p for n, p in G.named_parameters() if n.startswith("backbone.mapping.")]
    rest = [p for n, p in G.named_parameters() if not n.startswith("backbone.mapping.")]
    return torch.optim.Adam([{"params": rest, "lr": cfg.lr},
                             {"params": mapping, "lr": cfg.lr * cfg.mapping_lr_scale}], betas=cfg.betas)


def targets(batch: dict[str, torch.Tensor], raw_res: int) -> dict[str, torch.Tensor]:
    """Float targets of a uint8 batch: final image, raw image, raw depth and coverage at the raw resolution."""
    image = batch["image"].float() / 127.5 - 1
    mask = batch["mask"].float() / 255
    depth = batch["depth"].float()
    k = image.shape[-1] // raw_res
    raw = F.avg_pool2d(image, k)
    cover = F.avg_pool2d(mask, k)
    depth_raw = F.avg_pool2d(depth * mask, k) / cover.clamp_min(1e-6)
    return {"image": image, "raw": raw, "depth": depth_raw, "inside": (cover > 0.99).float(),
            "outside": (cover < 0.01).float()}


def losses(out: dict, t: dict, cfg: PretrainConfig, lpips=None) -> dict[str, torch.Tensor]:
    """The weighted sum and its parts; `lpips` (an LPIPS module) is needed when cfg.w_lpips > 0."""
    l_img = (out["image"] - t["image"]).abs().mean()
    l_raw = (out["image_raw"] - t["raw"]).abs().mean()
    d = out["image_depth"]
    l_depth = ((d - t["depth"]).abs() * t["inside"]).sum() / t["inside"].sum().clamp_min(1)
    l_bg = ((d - BACKGROUND_DEPTH).abs() * t["outside"]).sum() / t["outside"].sum().clamp_min(1)
    total = l_img + cfg.w_raw * l_raw + cfg.w_depth * l_depth + cfg.w_bg_depth * l_bg
    parts = {"image": l_img, "raw": l_raw, "depth": l_depth, "bg_depth": l_bg}
    if cfg.w_lpips > 0:
        parts["lpips"] = lpips(out["image"], t["image"]).mean()
        total = total + cfg.w_lpips * parts["lpips"]
    return {"loss": total, **parts}


def _frozen_lpips():
    from perception.lpips import LPIPS
    return LPIPS("vgg").eval().requires_grad_(False)


def latents(G: TriPlaneGenerator, params: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    filler = torch.randn(len(params), G.z_dim - N_PARAMS, generator=rng)
    return params_to_z(params, G.z_dim, filler)


def _save(run: Path, G, opt, step: int, rng: torch.Generator, cfg: PretrainConfig) -> None:
    tmp = run / (CHECKPOINT + ".tmp")
    torch.save({"G": G.state_dict(), "opt": opt.state_dict(), "step": step, "rng": rng.get_state(),
                "config": json.dumps(asdict(cfg))}, tmp)
    os.replace(tmp, run / CHECKPOINT)


def load_checkpoint(run: Path) -> dict:
    return torch.load(Path(run) / CHECKPOINT, weights_only=True)


def _wait_for_shards(folder: Path, n: int, log) -> None:
    while not all(shard_path(folder, k).exists() for k in range(n)):
        log(f"waiting for shard {n - 1} in {folder}")
        time.sleep(20)


def train(cfg: PretrainConfig, run: Path, minutes: float, max_steps: int, export_to: Path | None = None,
          log=lambda m: print(m, flush=True)) -> int:
    """Train (or resume) until `max_steps` or `minutes` of wall time; returns the step reached."""
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    G = new_generator(cfg).train()
    opt = make_optimizer(G, cfg)
    rng = torch.Generator().manual_seed(cfg.seed)
    step = 0
    if (run / CHECKPOINT).exists():
        ck = load_checkpoint(run)
        saved = config_from_json(ck["config"])
        if saved != cfg:
            raise ValueError(f"{run / CHECKPOINT}: made with config {asdict(saved)}, not {asdict(cfg)}")
        G.load_state_dict(ck["G"])
        opt.load_state_dict(ck["opt"])
        rng.set_state(ck["rng"])
        step = int(ck["step"])
        log(f"resumed from step {step}")
    base_lrs = [cfg.lr, cfg.lr * cfg.mapping_lr_scale]
    lpips = _frozen_lpips() if cfg.w_lpips > 0 else None
    data_dir = run / "data"
    in_use, data = 0, None
    start = time.time()
    raw_res = G.neural_rendering_resolution
    while step < max_steps and (time.time() - start) < minutes * 60:
        want = cfg.shards_at(step)
        if want != in_use:
            _wait_for_shards(data_dir, want, log)
            data = load_shards(data_dir, want)
            in_use = want
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # the stochastic depth jitter draws from the global RNG
        idx = torch.randint(len(data["image"]), (cfg.batch,), generator=rng)
        batch = {k: v[idx] for k, v in data.items()}
        z = latents(G, batch["params"], rng)
        c = batch["label"]
        ws = G.mapping(z, c)
        out = G.synthesis(ws, c, sampling="stochastic", noise_mode="const")
        parts = losses(out, targets(batch, raw_res), cfg, lpips)
        for group, base in zip(opt.param_groups, base_lrs):
            group["lr"] = base * cfg.lr_scale(step)
        opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        opt.step()
        step += 1
        if step % cfg.log_every == 0:
            rec = {"step": step, "shards": in_use, "time": round(time.time() - start, 1),
                   **{k: round(float(v.detach()), 5) for k, v in parts.items()}}
            with open(run / LOG, "a") as f:
                f.write(json.dumps(rec) + "\n")
            log(json.dumps(rec))
        if step % cfg.save_every == 0:
            _save(run, G, opt, step, rng, cfg)
            if export_to is not None:
                export_generator(G, export_to, step, cfg)
            log(f"saved step {step}")
    _save(run, G, opt, step, rng, cfg)
    if export_to is not None:
        export_generator(G, export_to, step, cfg)
    log(f"stopped at step {step}")
    return step


@torch.no_grad()
def export_generator(G: TriPlaneGenerator, out: Path, step: int, cfg: PretrainConfig) -> Path:
    """Write a model directory; w_avg is set to the mean w of 4096 random z (truncation then pulls toward it)."""
    G = G.eval()
    z = torch.from_numpy(np.random.RandomState(123).randn(4096, G.z_dim).astype("float32"))
    c = torch.zeros(len(z), G.c_dim)
    G.backbone.mapping.w_avg.copy_(G.mapping(z, c)[:, 0].mean(0))
    source = {"kind": "pretrained on the head world", "script": "scripts/pretrain_heads.py", "step": step,
              "config": asdict(cfg), "doc": "docs/HEADS.md"}
    save_model_dir(G, out, source=source, overwrite=True)
    G.train()
    return Path(out)


def export_checkpoint(run: Path, out: Path) -> Path:
    ck = load_checkpoint(run)
    cfg = replace(config_from_json(ck["config"]), init_from="")  # the checkpoint holds the weights
    G = new_generator(cfg)
    G.load_state_dict(ck["G"])
    return export_generator(G, out, int(ck["step"]), cfg)
