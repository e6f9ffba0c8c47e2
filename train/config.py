"""Typed configuration of `cli.py train`: the W projector (paper §3.1) and the personalization (§3.2-3.4).

Where a value comes from is stated per field. Sources read (clean room: facts only):
* the paper, `../shared/paper/My3DGen.txt` §3.4 (loss weights, 500 projector iterations, pose ranges);
* the authors' code, github luchaoqi/my3dgen (commit 94efeb2): `eg3d/train.py` (optimizer), `eg3d/training/
  training_loop.py` (lazy-regularization phases), `eg3d/training/loss.py` (losses, symmetric poses), README
  (example `--batch=4 --kimg=500 --lora=1 --lora_alpha=1`);
* oneThousand1000/EG3D-projector `eg3d/projector/w_projector.py` (the inversion the My3DGen README says the
  authors used) and StyleGAN2-ADA's `projector.py` (the schedule both follow);
* google/mystyle `hyperparams.py` (tune_steps=1000 epochs, tune_lr=3e-4) for the default length of training.

`RECIPES` names two complete settings (`cli.py train --recipe paper|authors`): the paper's §3 values, or the
defaults of the authors' code where it differs from the paper. Facts behind `authors` (luchaoqi/my3dgen,
eg3d/ folder, commit 94efeb2): `train.py` declares `--lora_alpha` with default 16 (the README example passes 1)
and `--kimg` with default 25000 (a GAN-training default; the README's personalization example uses
`--kimg=500 --batch=4`); `training_loop.py` builds G with `requires_grad_(False)` and its LoRA wrappers
re-enable only LoRA tensors, biases, noise strengths and the const, so the OSG decoder stays frozen; the
symmetry term is its own phase `Gsym_reg` run every `G_reg_interval` = `--density_reg_every` (default 4)
iterations with its own Adam step on the shared optimizer, and `loss.py` sets `gain = 1` for it (weight 1,
not 4); its symmetric cameras come from `get_lookat_pose_sampler_pair`: frame i ~ randint(0, 60) of a
120-frame orbit and frame 119 - i, yaw pi/2 + 0.35 sin(2 * 3.14 * i / 120) (written with 3.14), polar angle
3.14/2 - 0.05 + 0.25 cos(2 * 3.14 * i / 120), radius 2.7, looking at (0, 0, 0), one pair per step for the
whole batch. Their default LoRA layout (`original_conv_lora=False`, A [r*k, in*k*k], B [out, r*k]) is not
one of this project's layouts (`generator.lora.LAYOUTS`), so `authors` keeps the loralib layout.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from types import MappingProxyType

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
    space: str = "w"
    """Where the inversion searches. 'w' (both official projectors): w itself, from w_avg. 'z': the mapping
    network's input, from a seeded random z, so every candidate is a w the mapping produces (anchors are still
    w = mapping(z, c)). For generators trained without an adversary, whose W space is untrained off the mapping's
    image (the head world's `heads`), 'w' steps off it into blur; 'z' stays on it. Not combinable with w_plus."""
    pixel_weight: float = 0.0
    """Weight of the mean squared pixel error (images in [-1, 1], at the LPIPS resolution) added to LPIPS. Both
    official projectors use LPIPS alone (0). LPIPS normalises each feature channel and barely sees colour: on the
    head world an LPIPS-only inversion keeps w_avg's skin and hair colour for every person (docs/HEADS.md)."""
    w_plus: bool = False
    """Optimise one w per synthesis layer (W+, [num_ws, w_dim]) instead of one w broadcast to all (W)."""
    optimize_noise: bool = True
    """Optimise the backbone's per-layer noise maps alongside w, as both projectors do: each map starts as
    N(0, 1), is regularised towards white noise and renormalised after every step. The maps only help w
    converge: like the official projectors' result, the anchor is w alone and renders with the fixed 'const'
    noise. Part of the inversion cache key."""
    regularize_noise_weight: float = 1e5
    """Weight of the noise regulariser (both projectors: 1e5): squared autocorrelation of each map with itself
    shifted by one pixel in x and in y, summed over a pyramid of 2x average-pooled maps down to 8x8."""

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
        if self.space not in ("w", "z"):
            raise ValueError(f"projector space={self.space!r}: must be 'w' or 'z'")
        if self.space == "z" and self.w_plus:
            raise ValueError("projector space='z' with w_plus: a z maps to one w for every layer; use one of them")
        if not (math.isfinite(self.pixel_weight) and 0 <= self.pixel_weight <= 1e4):
            raise ValueError(f"projector pixel_weight={self.pixel_weight}: must be a finite number in [0, 1e4]")
        if self.regularize_noise_weight < 0:
            raise ValueError(f"projector regularize_noise_weight={self.regularize_noise_weight}: must be >= 0")
        return self

    def describe(self) -> str:
        """'W inversion', 'W+ inversion' or 'inversion in z', for messages."""
        if self.space == "z":
            return "inversion in z"
        return "W+ inversion" if self.w_plus else "W inversion"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        for name, official in (("pixel_weight", 0.0), ("space", "w")):
            if d[name] == official:
                del d[name]  # the official projectors' setting, as before the field existed: cache keys stay valid
        return d


Z_SPACE_LR = 0.1
"""Default peak learning rate of an inversion in z (`--inversion-space z`): z lives on a sphere of radius
sqrt(z_dim), so it travels ~10x further than w does at EG3D-projector's 0.01 (StyleGAN2-ADA's projector value)."""


def projector_for(space: str, steps: int) -> ProjectorConfig:
    """The inversion of `steps` steps per photo in `space`: 'w', the official projectors' (LPIPS alone at lr 0.01);
    'z', the head world's (`train --inversion-space z --inversion-pixel-weight 1`: Z_SPACE_LR, LPIPS + pixel MSE
    of weight 1, docs/HEADS.md)."""
    if space not in ("w", "z"):
        raise ValueError(f"inversion space {space!r}: must be 'w' or 'z'")
    extra = {"space": "z", "lr": Z_SPACE_LR, "pixel_weight": 1.0} if space == "z" else {}
    return dataclasses.replace(ProjectorConfig(), steps=int(steps), **extra).validate()


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
    125k steps, an upper bound). 2500 steps x batch 4 = 10k image visits is where the error on true unseen views
    stopped improving on the built-in head model (docs/TRAINING_LENGTH.md: LPIPS 0.098 at 1k, 0.090 at 2.5k,
    0.095 at 5k steps: overfitting past it)."""
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
    sym_poses: str = "uniform"
    """How the mirrored camera pairs are drawn, one of SYM_POSES: 'uniform' (per sample, yaw and pitch uniform
    in the ranges above, exactly mirrored; the paper's §3.4 ranges) or 'orbit' (the authors' loss.py: one pair
    per step, frames i and 119 - i of a 120-frame orbit looking at the origin)."""
    sym_step: str = "joint"
    """'joint': lambda_sym * L_sym is added to L_rec in the same optimizer step (paper eq. 3); 'separate': the
    authors' code, a second Adam step on L_sym alone (their `Gsym_reg` phase) after the reconstruction step."""
    recipe: str = "paper"
    """Name of the recipe these settings started from (RECIPES); stored in the adapter's metadata."""
    recipe_overrides: tuple[str, ...] = ()
    """Fields the user set explicitly on top of the recipe (stored with it)."""
    id_crop: str = "full"
    """Face crop of the identity network `cli.py train` builds: 'full' = the whole image pooled to 112, as the
    authors' PersonIdentifier.get_feature; 'psp' / 'arcface_ffhq' are tighter crops (perception.identity).
    Renders are clamped to [-1, 1] before it in every case, as the authors do."""
    stochastic_render: bool = False
    """Render training images stochastically (random depth jitter, as official EG3D training) instead of the
    deterministic sampling that inference, export and the runtime use. Default off: train what is served."""
    lora_fc_after_gain: bool = True
    """LoRA deltas of fully connected layers (the style affines) act after the layer's gain, as in the authors'
    code (adapter format 2). False trains with adapter format 1's rule (delta before the gain, ~sqrt(w_dim) times
    smaller steps) and writes a format-1 adapter: only for comparing the two (scripts/training_length.py)."""
    precision: str = "fp32"
    """Arithmetic of the generator's convolutions in training: 'fp32' (exact), 'bf16' or 'fp16' (autocast of the
    tri-plane backbone and the super-resolution; the ray march, LPIPS, the identity network, the LoRA parameters
    and Adam's state stay fp32; fp16 scales the loss against underflow). Changes results a little."""
    checkpointing: str = "auto"
    """Gradient checkpointing (generator/checkpointing.py): 'on', 'off', or 'auto' = on for CUDA devices, where
    activation memory decides the batch that fits; on a CPU `train` turns it on only when its memory plan says the
    step without it needs more than half the available RAM, since the recomputation costs time
    (train/memory_plan.py `choose_plan`; a `Trainer` built without a plan takes the CUDA rule). Exact: gradients
    are the same to float rounding, so it is not part of a run's identity and may change on resume."""
    compile: bool = False
    """torch.compile the ray-march chunk and the super-resolution for the step (the first steps compile, minutes on
    a CPU). Exact to float rounding; not part of a run's identity."""
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
                   "must be within [0, 1.5] radians"),
                  (self.sym_weight >= 0, "sym_weight", "must be >= 0"),
                  (self.sym_poses in SYM_POSES, "sym_poses", f"must be one of {SYM_POSES}"),
                  (self.sym_step in SYM_STEPS, "sym_step", f"must be one of {SYM_STEPS}"),
                  (self.recipe in RECIPES, "recipe", f"must be one of {tuple(RECIPES)}"),
                  (self.precision in TRAIN_PRECISIONS, "precision", f"must be one of {TRAIN_PRECISIONS}"),
                  (self.checkpointing in CHECKPOINTING, "checkpointing", f"must be one of {CHECKPOINTING}")]
        for ok, name, why in checks:
            if not ok:
                raise ValueError(f"train config {name}={getattr(self, name, None)!r}: {why}")
        self.projector.validate()
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        d["recipe_overrides"] = list(self.recipe_overrides)
        d["projector"] = self.projector.to_dict()
        return d

    @property
    def kimg(self) -> float:
        """Training length in thousands of photos shown (EG3D's unit): iterations x batch / 1000."""
        return self.iterations * self.batch / 1000.0

    def resume_key(self) -> dict:
        """The fields a checkpoint must agree on to be resumed (the run length and checkpoint cadence may change;
        the recipe's name is a label, its values are compared field by field)."""
        d = self.to_dict()
        for k in ("iterations", "checkpoint_every", "recipe", "recipe_overrides", "checkpointing", "compile"):
            d.pop(k)
        return d


TRAIN_PRECISIONS = ("fp32", "bf16", "fp16")
CHECKPOINTING = ("auto", "on", "off")
SYM_POSES = ("uniform", "orbit")
SYM_STEPS = ("joint", "separate")


@dataclass(frozen=True)
class Recipe:
    """A named set of TrainConfig values (`cli.py train --recipe NAME`); explicit options override it."""

    name: str
    summary: str
    values: MappingProxyType
    """TrainConfig field -> value. 'alpha' may be the string 'rank' (alpha = r, i.e. delta scale 1)."""

    def settings(self, rank: int) -> dict:
        """The values with 'rank' resolved, ready for TrainConfig(**...)."""
        return {k: (float(rank) if v == "rank" else v) for k, v in self.values.items()}


def iterations_for_kimg(kimg: float, batch: int) -> int:
    """Steps that show `kimg` thousand photos at `batch` photos per step (rounded up, at least 1)."""
    if kimg <= 0 or batch < 1:
        raise ValueError(f"kimg={kimg} and batch={batch}: kimg must be > 0 and batch >= 1")
    return max(1, math.ceil(kimg * 1000.0 / batch))


RECIPES = {
    "paper": Recipe("paper", "My3DGen paper §3: W = W0 + BA (alpha = r), decoder fine-tuned, lambda_sym 4 every "
                    "4 steps in the same step as L_rec (eq. 3), symmetric views uniform in yaw +-0.35 / pitch "
                    "+-0.25; the paper gives no training length: 10 kimg (2,500 steps at batch 4), where held-out error "
                    "stopped improving (docs/TRAINING_LENGTH.md)",
                    MappingProxyType({"alpha": "rank", "train_decoder": True, "sym_weight": 4.0, "sym_every": 4,
                                      "sym_poses": "uniform", "sym_step": "joint", "iterations": 2500,
                                      "batch": 4})),
    "authors": Recipe("authors", "the authors' code (luchaoqi/my3dgen eg3d/): lora_alpha 16, decoder frozen, "
                      "L_sym with gain 1 in its own Adam step every 4 steps, symmetric views from their 120-frame "
                      "orbit; 500 kimg at batch 4 (their README example) = 125,000 steps",
                      MappingProxyType({"alpha": 16.0, "train_decoder": False, "sym_weight": 1.0, "sym_every": 4,
                                        "sym_poses": "orbit", "sym_step": "separate", "iterations": 125000,
                                        "batch": 4})),
}
"""The recipes `cli.py train --recipe` offers (see the module docstring for where each value comes from)."""

RECIPE_FIELDS = ("alpha", "train_decoder", "sym_weight", "sym_every", "sym_poses", "sym_step", "iterations", "batch")
"""The TrainConfig fields a recipe sets."""


def config_from_recipe(recipe: str, explicit: dict | None = None, **fields) -> TrainConfig:
    """TrainConfig = the recipe's values, then `explicit` (options the user gave, which win and are recorded as
    overrides), then the remaining `fields` (options no recipe sets, e.g. rank, mode, lr, seed), validated."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe {recipe!r}: expected one of {tuple(RECIPES)}")
    explicit = {k: v for k, v in (explicit or {}).items() if v is not None}
    unknown = sorted(set(explicit) - set(RECIPE_FIELDS))
    if unknown:
        raise ValueError(f"explicit recipe overrides {unknown}: a recipe sets only {RECIPE_FIELDS}")
    clash = sorted(set(explicit) & set(fields))
    if clash:
        raise ValueError(f"{clash} given both as a recipe override and as a plain field")
    values = RECIPES[recipe].settings(int(fields.get("rank", TrainConfig.rank)))
    values.update(explicit)
    overrides = tuple(k for k in RECIPE_FIELDS if k in explicit)
    return TrainConfig(**values, **fields, recipe=recipe, recipe_overrides=overrides).validate()


def describe_recipe(config: TrainConfig) -> str:
    """One line for the console: the recipe, the values it set (as used) and which ones options overrode."""
    parts = [f"alpha {config.alpha:g}", f"decoder {'trained' if config.train_decoder else 'frozen'}",
             f"L_sym weight {config.sym_weight:g} every {config.sym_every} steps ({config.sym_step} step, "
             f"{config.sym_poses} poses)" if config.sym else "L_sym off",
             f"{config.iterations:,} steps x batch {config.batch} = {config.kimg:g} kimg"]
    text = f"recipe {config.recipe}: " + ", ".join(parts)
    if config.recipe_overrides:
        text += f" (set by options: {', '.join(config.recipe_overrides)})"
    return text


QUICK = {"iterations": 200, "inversion_steps": 50}
"""`cli.py train --quick`: a run of minutes on a CPU to try things (what scripts/demo.sh trains); explicit
--iterations / --inversion-steps win. The default length (2,500 steps, 500 inversion steps per photo) is where the
error on unseen views stops improving (docs/TRAINING_LENGTH.md)."""

DEMO_SCALE = {"iterations": 150, "inversion_steps": 100}
"""Defaults `cli.py train` uses with `--preset` (random-weight generators: smoke tests and demos on a CPU)
unless --iterations / --inversion-steps are given; announced on the console when applied."""
