"""Pivotal Tuning Inversion (PTI, Roich et al. 2022) of one photo into a model, with the camera fixed.

Stage 1 (latent): the photo is projected into W with the project's StyleGAN2-style projector
(`train.projector.project_w`, 600 steps by default as My3DGen §3.4 says for PTI), with the starting model
(the base, or the base plus a person's adapter) attached.

Stage 2 (tuning): the latent stays fixed (the "pivot") and the generator's weights are tuned for 350 steps to
reproduce the photo at its camera, with PTI's losses and hyper-parameters (danielroich/PTI
`configs/hyperparameters.py`; the EG3D port oneThousand1000/EG3D-projector uses the same values):

    loss = l2_lambda * MSE(G(w, c), x) + lpips_lambda * LPIPS_alex(G(w, c), x),   Adam lr 3e-4,

optionally stopping early when the LPIPS term falls to `lpips_threshold` (`--pti-stop-lpips`; PTI's code does:
`LPIPS_value_threshold = 0.06` in the EG3D port oneThousand1000/EG3D-projector `eg3d/projector/PTI/configs/
hyperparameters.py`, 0.07 in danielroich/PTI's `configs/hyperparameters.py`, checked there; the loop stops
before the step whose loss is at or under it. Off by default because My3DGen §3.4 states 350 tuning
iterations). PTI's
locality regularisation (keep renders of nearby latents unchanged) is available and off by default, as in the
EG3D port.

The base model is never modified: the tuned weights live in an adapter. `tune='full'` (PTI as published: every
synthesis, super-resolution and decoder tensor is tuned) starts a full-mode `PersonAdapter` from the starting
model's tensors (base tensors, or base + the person's LoRA deltas / personal copies); `tune='adapter'` tunes a
copy of the person's own adapter (a LoRA person stays a small LoRA file). `save_pti_adapter` writes the result
as an ordinary adapter file whose single anchor is the pivot latent and the photo's camera.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from generator.lora import AdapterPolicy, PersonAdapter, attach, detach

TUNE_MODES = ("full", "adapter")
EG3D_PTI_STOP_LPIPS = 0.06
"""The early-stop LPIPS of PTI as ported to EG3D (EG3D-projector's LPIPS_value_threshold)."""


@dataclass
class PTIConfig:
    """PTI of one photo. Defaults: My3DGen §3.4 for the step counts, PTI's hyper-parameters for the rest."""

    latent_steps: int = 600
    """Stage 1: W projector steps (My3DGen §3.4: 'we optimize the latent code for 600 iterations')."""
    tune_steps: int = 350
    """Stage 2: generator tuning steps (My3DGen §3.4: 350; PTI max_pti_steps = 350)."""
    lr: float = 3e-4
    """Adam learning rate of the tuned tensors (PTI pti_learning_rate)."""
    l2_lambda: float = 1.0
    """Weight of the mean squared error (PTI pt_l2_lambda)."""
    lpips_lambda: float = 1.0
    """Weight of LPIPS (PTI pt_lpips_lambda)."""
    lpips_net: str = "alex"
    """LPIPS trunk of the tuning loss (PTI lpips_type = 'alex')."""
    lpips_threshold: float | None = None
    """Stop tuning once LPIPS <= this. None (default): run all `tune_steps`, as My3DGen §3.4 states (350
    iterations). PTI's code stops early (EG3D-projector's port: 0.06; PTI: 0.07), which on simple images can
    mean no tuning at all."""
    tune: str = "full"
    """'full': tune every synthesis/SR/decoder tensor (PTI as published); 'adapter': tune a copy of the
    person's adapter (or, with no person, a fresh LoRA adapter of `lora_policy`)."""
    lora_policy: AdapterPolicy = field(default_factory=AdapterPolicy)
    """Policy of the fresh adapter for tune='adapter' without a starting person."""
    locality_regularization: bool = False
    """PTI's locality regulariser (off in EG3D-projector's PTI, on in the original StyleGAN PTI)."""
    locality_alpha: float = 30.0
    """Distance from the pivot, along a sampled latent's direction, of the regularised latent (PTI: 30)."""
    locality_l2_lambda: float = 0.1
    """Weight of the regulariser's MSE term (PTI regulizer_l2_lambda)."""
    locality_lpips_lambda: float = 0.1
    """Weight of the regulariser's LPIPS term (PTI regulizer_lpips_lambda)."""
    locality_psi: float = 0.5
    """Truncation of the sampled latents (PTI: 0.5)."""
    seed: int = 0
    """Seed of the projector's noise, a fresh adapter's LoRA init and the regulariser's latents."""
    projector: dict = field(default_factory=dict)
    """`train.config.ProjectorConfig` fields for stage 1 other than its defaults (e.g. {'lr': 0.01});
    `steps` comes from latent_steps and `seed` from seed."""

    def validate(self) -> "PTIConfig":
        if self.latent_steps < 1:
            raise ValueError(f"PTI latent_steps={self.latent_steps}: must be >= 1")
        if self.tune_steps < 0:
            raise ValueError(f"PTI tune_steps={self.tune_steps}: must be >= 0")
        if self.lr <= 0:
            raise ValueError(f"PTI lr={self.lr}: must be > 0")
        if self.tune not in TUNE_MODES:
            raise ValueError(f"PTI tune={self.tune!r}: expected one of {TUNE_MODES}")
        if self.lpips_threshold is not None and not self.lpips_threshold > 0:
            raise ValueError(f"PTI lpips_threshold={self.lpips_threshold}: must be > 0 (None: no early stop)")
        if self.lpips_net not in ("alex", "vgg"):
            raise ValueError(f"PTI lpips_net={self.lpips_net!r}: expected 'alex' or 'vgg'")
        if "steps" in self.projector:
            raise ValueError("PTI projector options must not set 'steps' (use latent_steps)")
        self.lora_policy.validate()
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class PTIResult:
    """What one PTI run produced."""

    w: torch.Tensor
    """The pivot latent from stage 1: [w_dim] (or [num_ws, w_dim] for a W+ projector)."""
    ws: torch.Tensor
    """The pivot broadcast to every synthesis layer: [1, num_ws, w_dim]."""
    c: torch.Tensor
    """The photo's camera label [25]."""
    adapter: PersonAdapter
    """The tuned weights (detached from the generator when returned)."""
    image_latent: torch.Tensor
    """Render of the pivot by the starting model, at the photo's camera [3, S, S] (stage 1 result)."""
    image: torch.Tensor
    """Render of the pivot by the tuned model, at the photo's camera [3, S, S] (the reconstruction)."""
    tune_steps_run: int
    """Optimizer steps taken in stage 2 (fewer than configured when LPIPS reached the threshold)."""
    history: dict[str, list[float]]
    """Per tuning step: 'lpips', 'l2' (and 'locality' when on), before each step's update."""
    seconds: dict[str, float]
    """Wall time of 'latent' and 'tune'."""
    notes: list[str] = field(default_factory=list)
    """Anything a reader of the result should know (e.g. person tensors a full-mode adapter cannot carry)."""


@contextlib.contextmanager
def frozen(module: torch.nn.Module):
    """Switch off gradients of a module's own parameters for the duration (restored afterwards)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def broadcast_ws(G, w: torch.Tensor) -> torch.Tensor:
    """[w_dim] or [num_ws, w_dim] -> [1, num_ws, w_dim]."""
    if w.ndim == 1:
        return w.reshape(1, 1, -1).repeat(1, G.num_ws, 1)
    if w.ndim == 2 and w.shape[0] == G.num_ws:
        return w.unsqueeze(0)
    raise ValueError(f"latent of shape {tuple(w.shape)}: expected [w_dim] or [{G.num_ws}, w_dim]")


def full_adapter_from(G, person: PersonAdapter | None) -> tuple[PersonAdapter, list[str]]:
    """A full-mode adapter holding the starting model's tensors: the base's, with the person's applied.

    Returns the adapter and the person's target keys it cannot carry (tensors outside synthesis, SR and the
    decoder, e.g. mapping LoRA: they do not affect rendering a fixed latent, which is all PTI does).
    """
    adapter = PersonAdapter.create(G, AdapterPolicy(mode="full"))
    dropped = []
    if person is not None:
        base = dict(G.named_parameters())
        with torch.no_grad():
            for key in person.targets:
                mk = key.replace(".", "__")
                if mk in adapter.full:
                    adapter.full[mk].copy_(person.tensor_for(key, base[key]))
                else:
                    dropped.append(key)
    return adapter, dropped


def start_adapter(G, person: PersonAdapter | None, config: PTIConfig) -> tuple[PersonAdapter, list[str]]:
    """The adapter PTI tunes (a new object; `person` is never modified)."""
    if config.tune == "full":
        return full_adapter_from(G, person)
    if person is not None:
        return copy.deepcopy(person), []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return PersonAdapter.create(G, config.lora_policy), []


def _render(G, ws: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return G.synthesis(ws, c.reshape(1, -1), noise_mode="const")["image"]


def _check_photo(G, image: torch.Tensor, c: torch.Tensor) -> None:
    size = G.img_resolution
    if tuple(image.shape) != (3, size, size):
        raise ValueError(f"photo has shape {tuple(image.shape)}; this generator needs [3, {size}, {size}] in [-1, 1] "
                         f"(resize it first, see evaluation.protocol.load_photos)")
    if c.numel() != 25:
        raise ValueError(f"camera label has {c.numel()} numbers, expected 25")


def project_pivot(G, image: torch.Tensor, c: torch.Tensor, config: PTIConfig, cache_dir: str | Path | None = None,
                  lpips=None, progress: bool = False) -> torch.Tensor:
    """Stage 1: the pivot latent, by `train.projector.project_w` with G as it is attached now."""
    from train.config import ProjectorConfig
    from train.projector import project_w
    projector = ProjectorConfig(**config.projector)
    return project_w(G, image, c, steps=config.latent_steps, seed=config.seed, config=projector,
                     cache_dir=cache_dir, lpips=lpips, progress=progress).detach()


def pti_invert(G, image: torch.Tensor, c: torch.Tensor, person: PersonAdapter | None = None,
               config: PTIConfig | None = None, pivot: torch.Tensor | None = None,
               progress: Callable[[str, int, int, dict], None] | None = None, cache_dir: str | Path | None = None,
               tune_lpips=None, projector_lpips=None, projector_progress: bool = False) -> PTIResult:
    """PTI of `image` [3, S, S] in [-1, 1] taken from camera `c` [25] into G (+ `person`'s adapter).

    `pivot` skips stage 1 with a latent computed earlier (same model, same photo); `cache_dir` lets the
    projector reuse inversions it cached there. G's base tensors are never written; G is left detached.
    `progress(stage, step, total, values)` is called as tuning steps run. `tune_lpips` / `projector_lpips`:
    LPIPS modules to reuse (AlexNet for tuning, VGG16 for the projector), built here when not given.
    `projector_progress` shows the projector's own progress bar.
    """
    from perception.lpips import LPIPS
    config = (config or PTIConfig()).validate()
    image, c = image.detach().float(), torch.as_tensor(c, dtype=torch.float32).reshape(25)
    _check_photo(G, image, c)
    seconds = {}
    with frozen(G):
        attach(G, person)
        try:
            t0 = time.perf_counter()
            w = (pivot.detach().float() if pivot is not None
                 else project_pivot(G, image, c, config, cache_dir=cache_dir, lpips=projector_lpips,
                                    progress=projector_progress))
            seconds["latent"] = time.perf_counter() - t0
            ws = broadcast_ws(G, w)
            with torch.no_grad():
                image_latent = _render(G, ws, c)[0]
            adapter, notes = start_adapter(G, person, config)
            notes = [f"person tensor {k} is outside synthesis/SR/decoder and is not part of the full-mode "
                     f"PTI adapter (rendering a fixed latent does not use it)" for k in notes]
            t0 = time.perf_counter()
            lpips = tune_lpips if tune_lpips is not None else LPIPS(net=config.lpips_net)
            steps_run, history = _tune(G, adapter, person, ws, image, c, config, lpips, progress)
            seconds["tune"] = time.perf_counter() - t0
            attach(G, adapter)
            with torch.no_grad():
                final = _render(G, ws, c)[0]
        finally:
            detach(G)
    adapter.requires_grad_(False)
    return PTIResult(w=w, ws=ws, c=c, adapter=adapter, image_latent=image_latent, image=final,
                     tune_steps_run=steps_run, history=history, seconds=seconds, notes=notes)


def _tune(G, adapter: PersonAdapter, person: PersonAdapter | None, ws: torch.Tensor, target: torch.Tensor,
          c: torch.Tensor, config: PTIConfig, lpips, progress) -> tuple[int, dict[str, list[float]]]:
    """Stage 2: Adam on the adapter's tensors with PTI's loss; returns (steps taken, per-step losses)."""
    adapter.requires_grad_(True)
    optimizer = torch.optim.Adam(adapter.parameters(), lr=config.lr)
    target = target.unsqueeze(0)
    history: dict[str, list[float]] = {"lpips": [], "l2": []}
    if config.locality_regularization:
        history["locality"] = []
    gen = torch.Generator().manual_seed(config.seed + 1)
    steps_run = 0
    for step in range(config.tune_steps):
        attach(G, adapter)
        img = _render(G, ws, c)
        l2 = F.mse_loss(img, target)
        lp = lpips(img, target).mean()
        loss = config.l2_lambda * l2 + config.lpips_lambda * lp
        history["l2"].append(float(l2.detach()))
        history["lpips"].append(float(lp.detach()))
        if config.lpips_threshold is not None and history["lpips"][-1] <= config.lpips_threshold:
            break
        if config.locality_regularization:
            reg = _locality_loss(G, adapter, person, ws, c, config, lpips, gen)
            history["locality"].append(float(reg.detach()))
            loss = loss + reg
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps_run += 1
        if progress is not None:
            progress("tune", step + 1, config.tune_steps,
                     {"lpips": history["lpips"][-1], "l2": history["l2"][-1]})
    adapter.requires_grad_(False)
    return steps_run, history


def _locality_loss(G, adapter, person, ws, c, config: PTIConfig, lpips, gen: torch.Generator) -> torch.Tensor:
    """PTI's ball-holder loss: a latent `alpha` away from the pivot (towards a sampled w) should render as the
    starting model renders it."""
    z = torch.randn(1, G.z_dim, generator=gen)
    attach(G, person)
    with torch.no_grad():
        w_sample = G.mapping(z, c.reshape(1, -1), truncation_psi=config.locality_psi)
        direction = w_sample - ws
        w_reg = ws + config.locality_alpha * direction / direction.norm().clamp_min(1e-8)
        old = _render(G, w_reg, c)
    attach(G, adapter)
    new = _render(G, w_reg, c)
    return (config.locality_l2_lambda * F.mse_loss(new, old)
            + config.locality_lpips_lambda * lpips(new, old).mean())


def save_pti_adapter(path: str | Path, result: PTIResult, G, name: str = "photo",
                     source_adapter: str | None = None, extra: dict | None = None,
                     config: PTIConfig | None = None) -> Path:
    """Write the tuned weights as an adapter file; its one anchor is the pivot latent and the photo's camera."""
    from generator.adapter_file import Anchors, save_adapter
    anchors = Anchors(ws=result.w.unsqueeze(0).float(), c=result.c.reshape(1, 25).float(), names=[name])
    meta = {"pti": {
        "config": config.to_dict() if config is not None else None,
        "photo": name,
        "source_adapter": source_adapter,
        "tune_steps_run": result.tune_steps_run,
        "final_lpips": result.history["lpips"][-1] if result.history["lpips"] else None,
        "final_l2": result.history["l2"][-1] if result.history["l2"] else None,
        "seconds": result.seconds,
        "notes": result.notes,
    }}
    meta.update(extra or {})
    return save_adapter(path, result.adapter, G, anchors=anchors, extra=meta)


def reconstruction_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared error between two images (a simple number tests and logs compare)."""
    return float(F.mse_loss(a.float(), b.float()))
