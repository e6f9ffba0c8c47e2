"""Typed configuration of `cli.py train`: the W projector (paper §3.1) and the personalization (§3.2-3.4).

Where a value comes from is stated per field. Sources read (clean room: facts only):
* the paper, `../shared/paper/My3DGen.txt` §3.4 (loss weights, 500 projector iterations, pose ranges);
* the authors' code, github luchaoqi/my3dgen (commit 94efeb2): `eg3d/train.py` (optimizer), `eg3d/training/
  training_loop.py` (lazy-regularization phases), `eg3d/training/loss.py` (losses, symmetric poses), README
  (example `--batch=4 --kimg=500 --lora=1 --lora_alpha=1`);
* oneThousand1000/EG3D-projector `eg3d/projector/w_projector.py` (the inversion the My3DGen README says the
  authors used) and StyleGAN2-ADA's `projector.py` (the schedule both follow);
* google/mystyle `hyperparams.py` (tune_steps=1000 epochs, tune_lr=3e-4) for the default length of training.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from generator.lora import AdapterPolicy

PROJECTOR_VERSION = 1
"""Bumped whenever the projector's arithmetic changes, so cached inversions from older code are not reused."""


@dataclass
class ProjectorConfig:
    """W inversion of one photo with its camera fixed (StyleGAN2 projector scheme, as in EG3D-projector)."""

    steps: int = 500
    """Adam steps per photo. Paper §3.4: '500 iterations following the StyleGAN optimization scheme'."""
    lr: float = 0.01
    """Peak learning rate of w. StyleGAN2-ADA's projector uses 0.1; EG3D-projector (the authors' inversion)
    uses initial_learning_rate=0.01, which we follow."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas of both projectors."""
    w_avg_samples: int = 10000
    """Mapping samples for the start point w_avg and the spread w_std (both projectors: 10000)."""
    w_avg_seed: int = 123
    """z of those samples = numpy RandomState(123).randn (both projectors)."""
    initial_noise_factor: float = 0.05
    """Gaussian noise added to w during the first part of the run: w_std * factor * ramp^2 (both projectors)."""
    noise_ramp_length: float = 0.75
    """Fraction of the run over which that noise decays to zero."""
    lr_rampdown_length: float = 0.25
    """Fraction of the run at the end over which the learning rate falls to zero (cosine)."""
    lr_rampup_length: float = 0.05
    """Fraction of the run at the start over which the learning rate rises linearly from zero."""
    lpips_resolution: int | None = None
    """Side length at which LPIPS (VGG16) compares images (area downsampling). None = auto: 256 for outputs
    larger than 256 (the official projectors downsample 512 -> 256), otherwise half the output size (keeps
    that 2x ratio for small test generators such as the `tiny` preset, 128 -> 64, and is 4x cheaper)."""
    w_plus: bool = False
    """Optimise one w per synthesis layer (W+, [num_ws, w_dim]) instead of one w broadcast to all (W)."""

    def lpips_size(self, img_resolution: int) -> int:
        if self.lpips_resolution is not None:
            return int(self.lpips_resolution)
        return 256 if img_resolution > 256 else max(img_resolution // 2, 32)

    def lr_at(self, step: int) -> float:
        """The projectors' schedule: linear ramp-up, flat, cosine ramp-down to 0 at the end."""
        t = step / self.steps
        ramp = min(1.0, (1.0 - t) / self.lr_rampdown_length)
        ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
        ramp *= min(1.0, t / self.lr_rampup_length)
        return self.lr * ramp

    def noise_factor_at(self, step: int) -> float:
        """Multiplier of w_std for the noise added to w at this step."""
        t = step / self.steps
        return self.initial_noise_factor * max(0.0, 1.0 - t / self.noise_ramp_length) ** 2

    def validate(self) -> "ProjectorConfig":
        if self.steps < 1:
            raise ValueError(f"projector steps={self.steps}: must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"projector lr={self.lr}: must be > 0")
        if self.w_avg_samples < 2:
            raise ValueError(f"projector w_avg_samples={self.w_avg_samples}: must be >= 2")
        if self.lpips_resolution is not None and self.lpips_resolution < 32:
            raise ValueError(f"projector lpips_resolution={self.lpips_resolution}: must be >= 32 (VGG16 pools 4x)")
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


@dataclass
class TrainConfig:
    """Personalization of one person's adapter (defaults: the paper where it says, else the authors' code)."""

    mode: str = "lora"
    """'lora' (the paper's method) or 'full' (baseline: personal copies of every synthesis/SR/decoder tensor)."""
    rank: int = 4
    """LoRA rank r (paper §3.2: r = 4 gives ~0.6M parameters)."""
    alpha: float = 4.0
    """LoRA alpha; delta scale alpha / r = 1, as the authors' README example (rank 1, alpha 1)."""
    layout: str = "loralib"
    """LoRA conv layout: 'loralib' (the paper's ~0.6M budget, eg3d-reference.md §5) or 'flat'."""
    train_decoder: bool = True
    """Fine-tune the whole OSG decoder (paper §3.2, Fig. 2)."""
    train_biases: bool = True
    """Train biases, noise strengths and the 4x4 const too (the authors' LoRA wrappers do)."""
    iterations: int = 2500
    """Optimizer steps. Neither the paper nor the authors' code fixes it (README example: --kimg=500 at batch 4,
    125k steps, an upper bound). Our choice: 2500 steps x batch 4 = 10k image visits, which is what MyStyle's
    hyperparams.tune_steps=1000 epochs of per-image steps amount to for 10 photos."""
    batch: int = 4
    """Photos per step (authors' README example `--batch=4`)."""
    lr: float = 0.002
    """Adam learning rate: EG3D train.py's G lr 0.0025 times the lazy-regularization ratio 4/5 that
    training_loop.py applies because G_reg_interval=4 (the authors' setting)."""
    betas: tuple[float, float] = (0.0, 0.99 ** 0.8)
    """Adam betas: train.py's (0, 0.99), with beta2 raised to the same 4/5 power by training_loop.py."""
    eps: float = 1e-8
    """Adam epsilon (train.py)."""
    lpips_net: str = "alex"
    """LPIPS trunk of L_rec: 'alex' as in the authors' loss.py (`lpips.LPIPS(net='alex')`), or 'vgg'."""
    lpips_weight: float = 1.0
    """lambda_lpips (paper §3.4: 1)."""
    l2_weight: float = 1.0
    """lambda_L2 (paper §3.4: 1); L2 is the mean squared error, as in the authors' loss.py."""
    sym: bool = True
    """Symmetry loss on (paper §3.3). Off = the paper's '-L_sym' ablation (`--no-sym`)."""
    sym_weight: float = 4.0
    """lambda_sym (paper §3.4: 4)."""
    sym_every: int = 4
    """Apply L_sym every this many steps (paper §3.3: every four iterations), on steps 0, 4, 8, ..."""
    sym_yaw_range: float = 0.35
    """Symmetric pairs: yaw ~ U(-range, range) and its mirror -yaw (paper §3.4 / loss.py yaw_range 0.35)."""
    sym_pitch_range: float = 0.25
    """Symmetric pairs: one pitch ~ U(-range, range) for both views (paper §3.4 / loss.py pitch_range 0.25)."""
    id_crop: str = "full"
    """Face crop of the identity network `cli.py train` builds: 'full' = the whole image pooled to 112, as the
    authors' PersonIdentifier.get_feature; 'psp' / 'arcface_ffhq' are tighter crops (perception.identity).
    Renders are clamped to [-1, 1] before it in every case, as the authors do."""
    stochastic_render: bool = False
    """Render training images stochastically (random depth jitter, as official EG3D training) instead of the
    deterministic sampling that inference, export and the runtime use. Default off: train what is served."""
    seed: int = 0
    """Seed of batch sampling, symmetric poses, the adapter's LoRA A init and stochastic rendering."""
    checkpoint_every: int = 100
    """Write a resumable checkpoint every this many steps (and at the end, and on Ctrl-C)."""
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    """How anchors are inverted before training."""

    def policy(self) -> AdapterPolicy:
        return AdapterPolicy(rank=self.rank, alpha=float(self.alpha), layout=self.layout,
                             train_decoder=self.train_decoder, train_biases=self.train_biases,
                             mode=self.mode).validate()

    def validate(self) -> "TrainConfig":
        self.policy()
        checks = [(self.iterations >= 1, "iterations", "must be >= 1"), (self.batch >= 1, "batch", "must be >= 1"),
                  (self.lr > 0, "lr", "must be > 0"), (self.sym_every >= 1, "sym_every", "must be >= 1"),
                  (self.lpips_net in ("alex", "vgg"), "lpips_net", "must be 'alex' or 'vgg'"),
                  (self.id_crop in ("full", "psp", "arcface_ffhq"), "id_crop",
                   "must be 'full', 'psp' or 'arcface_ffhq'"),
                  (self.checkpoint_every >= 1, "checkpoint_every", "must be >= 1"),
                  (0 <= self.sym_yaw_range <= 1.5 and 0 <= self.sym_pitch_range <= 1.5, "sym ranges",
                   "must be within [0, 1.5] radians")]
        for ok, name, why in checks:
            if not ok:
                raise ValueError(f"train config {name}={getattr(self, name, None)!r}: {why}")
        self.projector.validate()
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        d["projector"] = self.projector.to_dict()
        return d

    def resume_key(self) -> dict:
        """The fields a checkpoint must agree on to be resumed (the run length and checkpoint cadence may change)."""
        d = self.to_dict()
        for k in ("iterations", "checkpoint_every"):
            d.pop(k)
        return d


DEMO_SCALE = {"iterations": 150, "inversion_steps": 100}
"""Defaults `cli.py train` uses with `--preset` (random-weight generators: smoke tests and demos on a CPU)
unless --iterations / --inversion-steps are given; announced on the console when applied."""
