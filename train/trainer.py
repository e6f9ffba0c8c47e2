"""Personalization (paper §3.1-3.4): train one person's adapter on their photos and W anchors.

Each step draws `batch` photos, renders their anchors w_i at their cameras c_i through the attached adapter and
minimises L_rec (LPIPS + lambda_L2 * MSE, on the final and the raw image); every `sym_every`-th step it also
renders each w_i at a mirrored camera pair (`sym_poses`: uniform per sample, or the authors' orbit) and adds
lambda_sym * L_sym (ArcFace features of one view vs the flipped other). By default both terms go into the same
step (`sym_step='joint'`, eq. 3 of the paper); `sym_step='separate'` takes a second Adam step on L_sym alone
after the reconstruction step, as the authors' code does (EG3D's lazy-regularization phases, one optimizer).

The tri-planes of a step are computed once and rendered at all of its cameras. The generator runs in train
mode (non-fused modulated convs, as EG3D's 'inference_only' default does during training) with 'const' noise;
rendering is deterministic unless `stochastic_render`. Base weights never change (they get no gradients).

Runs are resumable: a checkpoint (checkpoint.py) every `checkpoint_every` steps and at the end; Ctrl-C stops
after the current step and checkpoints first. A resumed run produces the same adapter as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from generator.adapter_file import Anchors, base_fingerprint, save_adapter
from generator.checkpointing import gradient_checkpointing_of, set_gradient_checkpointing
from generator.precision import inference_precision
from formats.atomic import atomic_file
from generator.lora import PersonAdapter, attach, detach
from perception.identity import IdentityEncoder
from perception.lpips import LPIPS
from train.checkpoint import CHECKPOINT_FILE, CheckpointError, RngStates, load_checkpoint, save_checkpoint
from train.config import TrainConfig
from train.data import TrainingSet, load_training_set, one_sided_warning
from train.memory_plan import MemoryPlan, choose_plan, resolve_checkpointing
from train.projector import ESTIMATE_AFTER, duration
from train.losses import (
    orbit_symmetric_cameras,
    reconstruction_losses,
    resize_antialiased,
    symmetric_cameras,
    symmetry_term,
)

LOG_FILE = "log.jsonl"
PREVIEW_FILE = "preview.png"
INVERSION_DIR = "inversions"
RECENT = 10
"""Final losses are the mean over the last RECENT steps (L_sym over the steps in that window that had it)."""


class IdentityNetworkRequired(ValueError):
    """The symmetry loss is on but no identity network was given."""


def identity_network_help() -> str:
    """What `train` says when the symmetry loss has no identity network: every way to give one."""
    return ("the symmetry loss (on by default, paper §3.3) needs a face-identity network. A --model directory "
            "that holds one (identity.safetensors, as models/heads does) provides it; otherwise give one of:\n"
            "  --id-weights PATH               IR-SE50 `model_ir_se50.pth` (what the authors use), an arcface_torch "
            "IResNet .pth, insightface buffalo_l `w600k_r50.onnx`, or a head-world identity network\n"
            "  --id-network random:ir_se50     a RANDOMLY initialised IR-SE50: smoke tests only, the loss is then "
            "meaningless\n"
            "  --no-sym                        train without the symmetry loss (the paper's ablation)")


@dataclass
class TrainResult:
    """What a training run produced."""

    adapter: PersonAdapter
    """The trained adapter (attached to nothing)."""
    step: int
    """Steps completed in total (including those before a resume)."""
    losses: dict[str, float]
    """Mean of each loss term over the last RECENT steps."""
    seconds: float
    """Wall time spent in training steps, all runs of this checkpoint together."""
    resumed_from: int | None = None
    """Step the run resumed from, or None for a fresh run."""
    checkpoint_dir: Path | None = None


@contextlib.contextmanager
def _sigint_deferred(flag: dict):
    """Ctrl-C sets flag['stop'] (the loop stops after the current step); a second Ctrl-C interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if flag.get("stop"):
            raise KeyboardInterrupt
        flag["stop"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class Trainer:
    """One person's personalization run over a fixed training set and fixed anchors."""

    def __init__(self, G: torch.nn.Module, data: TrainingSet, anchors_ws: torch.Tensor, config: TrainConfig,
                 checkpoint_dir: str | Path | None = None, identity: IdentityEncoder | None = None,
                 lpips: LPIPS | None = None, progress: bool = False, restart: bool = False,
                 echo: Callable[[str], None] | None = None, checkpointing: bool | None = None):
        self.config = config.validate()
        self.G = G
        self.data = data
        self.echo = echo or (lambda msg: None)
        if config.sym and identity is None:
            raise IdentityNetworkRequired(identity_network_help())
        n = len(data)
        if not (tuple(anchors_ws.shape) == (n, G.w_dim) or tuple(anchors_ws.shape) == (n, G.num_ws, G.w_dim)):
            raise ValueError(f"anchors must be [{n}, {G.w_dim}] (W) or [{n}, {G.num_ws}, {G.w_dim}] (W+), "
                             f"got {tuple(anchors_ws.shape)}")
        if tuple(data.images.shape[-2:]) != (G.img_resolution, G.img_resolution):
            raise ValueError(f"training images are {tuple(data.images.shape[-2:])}, the generator renders "
                             f"{G.img_resolution}x{G.img_resolution}")
        self.device = next(G.parameters()).device
        self.anchors_ws = anchors_ws.detach().float().cpu()
        self.images = data.images.to(self.device)
        self.raw_targets = resize_antialiased(self.images, G.neural_rendering_resolution)
        self.cameras = data.cameras.to(self.device)
        self.ws = self.anchors_ws.to(self.device)
        self.identity = identity.to(self.device) if identity is not None and config.sym else None
        self.lp = (lpips or _lpips(config)).to(self.device)
        # `personalize` passes the memory plan's decision; alone, 'auto' is on for CUDA only
        self.checkpointing = resolve_checkpointing(config.checkpointing, self.device) if checkpointing is None \
            else bool(checkpointing)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.progress = progress
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.sampler = torch.Generator()
        self.data_digest = data.digest()
        self._fresh_state()
        self.resumed_from = None
        self.saved_step: int | None = None
        self.recent: deque = deque(maxlen=RECENT)
        if self.checkpoint_dir is not None:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            if restart:
                for name in (CHECKPOINT_FILE, LOG_FILE):
                    (self.checkpoint_dir / name).unlink(missing_ok=True)
            if (self.checkpoint_dir / CHECKPOINT_FILE).is_file():
                self._resume(self.checkpoint_dir / CHECKPOINT_FILE)
            self._truncate_log()

    # -- state ---------------------------------------------------------------------------------------------
    def _fresh_state(self) -> None:
        cfg = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.adapter = PersonAdapter.create(self.G, cfg.policy()).to(self.device)
        self.adapter.fc_after_gain = cfg.lora_fc_after_gain
        self.optimizer = torch.optim.Adam(self.adapter.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
        self.sampler.manual_seed(cfg.seed)
        with _global_rng_scope():
            torch.manual_seed(cfg.seed)
            np.random.seed(cfg.seed)
            random.seed(cfg.seed)
            self.rng = RngStates.capture(self.sampler)
        self.step = 0
        self.elapsed = 0.0

    def _meta(self) -> dict:
        meta = {"config": self.config.resume_key(), "base_fingerprint": base_fingerprint(self.G),
                "data": self.data_digest, "elapsed": self.elapsed, "iterations": self.config.iterations}
        if self.scaler.is_enabled():  # fp16's loss scale is state: a resumed run continues with it
            meta["grad_scaler"] = self.scaler.state_dict()
        return meta

    def _resume(self, path: Path) -> None:
        try:
            ck = load_checkpoint(path)
        except CheckpointError as e:
            raise CheckpointError(f"{e}. Pass --restart to discard it, or use another --checkpoint-dir.") from None
        expected = self._meta()
        problems = []
        if ck.meta.get("base_fingerprint") != expected["base_fingerprint"]:
            problems.append("it was trained on a different base model")
        if ck.meta.get("data") != expected["data"]:
            problems.append("the training photos or cameras differ")
        if ck.anchors_ws.shape != self.anchors_ws.shape or not torch.equal(ck.anchors_ws, self.anchors_ws) \
                or not torch.equal(ck.anchors_c, self.data.cameras.float().cpu()):
            problems.append("the anchors (inverted latents) differ")
        saved = dict(ck.meta.get("config", {}))
        saved.setdefault("lora_fc_after_gain", False)  # checkpoints of format 1 trained with adapter format 1's rule
        saved.setdefault("precision", "fp32")  # checkpoints written before mixed precision trained in fp32
        old, new = _flatten(saved), _flatten(expected["config"])
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            problems.append("settings changed: " + ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in changed))
        if ck.step > self.config.iterations:
            problems.append(f"it is already at step {ck.step}, beyond --iterations {self.config.iterations}")
        if problems:
            raise CheckpointError(f"{path}: cannot resume: " + "; ".join(problems) +
                                  ". Pass --restart to discard it, or use another --checkpoint-dir.")
        try:
            self.adapter.load_state_dict({k: v.to(self.device) for k, v in ck.adapter_state.items()}, strict=True)
            self.optimizer.load_state_dict(ck.optimizer_state)
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: adapter/optimizer state does not fit this configuration ({e})") from None
        if self.scaler.is_enabled() and isinstance(ck.meta.get("grad_scaler"), dict):
            self.scaler.load_state_dict(ck.meta["grad_scaler"])
        self.rng = ck.rng
        self.sampler.set_state(ck.rng.sampler)
        self.step = ck.step
        self.elapsed = float(ck.meta.get("elapsed", 0.0))
        self.resumed_from = self.saved_step = ck.step
        self.echo(f"resuming from {path} at step {ck.step}")

    def save(self) -> Path | None:
        if self.checkpoint_dir is None:
            return None
        self.saved_step = self.step
        return save_checkpoint(self.checkpoint_dir / CHECKPOINT_FILE, step=self.step, adapter=self.adapter,
                               optimizer=self.optimizer, rng=self.rng, anchors_ws=self.anchors_ws,
                               anchors_c=self.data.cameras, meta=self._meta())

    @property
    def log_path(self) -> Path | None:
        return self.checkpoint_dir / LOG_FILE if self.checkpoint_dir is not None else None

    def _truncate_log(self) -> None:
        """Keep the log lines of completed (checkpointed) steps only; refill the recent-loss window from them."""
        path = self.log_path
        if path is None or not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= self.step:
                kept.append(rec)
        with atomic_file(path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self.recent.extend(kept[-RECENT:])

    # -- training ------------------------------------------------------------------------------------------
    def _draw_indices(self) -> torch.Tensor:
        n, b = len(self.data), self.config.batch
        perms = [torch.randperm(n, generator=self.sampler) for _ in range(math.ceil(b / n))]
        return torch.cat(perms)[:b]

    def _symmetric_pair(self, b: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mirrored cameras [b, 25] x 2 for L_sym, drawn from the sampler (so a resumed run draws the same)."""
        cfg, r = self.config, self.G.cfg.rendering
        if cfg.sym_poses == "orbit":
            c1, c2, _ = orbit_symmetric_cameras(b, self.sampler, cfg.sym_yaw_range, cfg.sym_pitch_range,
                                                radius=r.avg_camera_radius)
        else:
            c1, c2, _ = symmetric_cameras(b, self.sampler, cfg.sym_yaw_range, cfg.sym_pitch_range,
                                          radius=r.avg_camera_radius, pivot=tuple(r.avg_camera_pivot))
        return c1.to(like), c2.to(like)

    def _render(self, ws: torch.Tensor, cams: torch.Tensor) -> dict[str, torch.Tensor]:
        """Renders of ws [b, num_ws, w_dim] at cams [k * b, 25] (tri-planes computed once, reused k times)."""
        b = len(ws)
        copies = len(cams) // b
        precision, device = self.config.precision, self.device.type
        with _autocast(precision, device):  # the backbone's convolutions (fp32: no autocast)
            planes = self.G.planes(ws, noise_mode="const").float()  # the ray march reads fp32 planes
        with inference_precision(precision, device):  # the super-resolution's (generator/precision.py)
            out = self.G.render_planes(torch.cat([planes] * copies), torch.cat([ws] * copies), cams,
                                       sampling="stochastic" if self.config.stochastic_render else "deterministic")
        return {k: v.float() for k, v in out.items()}  # the losses run in fp32

    def _apply(self, loss: torch.Tensor) -> None:
        """One Adam step on `loss` (non-finite gradients zeroed/clipped, as EG3D's training loop does)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # fp16: scaled against underflow; otherwise as is
        self.scaler.unscale_(self.optimizer)
        for p in self.adapter.parameters():
            if p.grad is not None:
                torch.nan_to_num_(p.grad, nan=0.0, posinf=1e5, neginf=-1e5)
        self.scaler.step(self.optimizer)  # fp16: skipped when the scaled gradients overflowed
        self.scaler.update()

    def _sym_loss(self, out_images: torch.Tensor) -> torch.Tensor:
        """L_sym of renders [2b, ...] at (c1, c2): renders clamped to [-1, 1] as the authors' get_feature does."""
        views = out_images.clamp(-1.0, 1.0)
        b = len(views) // 2
        return symmetry_term(self.identity, views[:b], views[b:])

    def _train_step(self, step: int) -> dict[str, float]:
        cfg, G = self.config, self.G
        idx = self._draw_indices().to(self.device)
        b = len(idx)
        ws = self.ws[idx]
        ws = ws if ws.ndim == 3 else ws[:, None, :].expand(-1, G.num_ws, -1)
        cams = self.cameras[idx]
        do_sym = cfg.sym and step % cfg.sym_every == 0
        joint = do_sym and cfg.sym_step == "joint"
        if do_sym:
            c1, c2 = self._symmetric_pair(b, cams)
        out = self._render(ws, torch.cat([cams, c1, c2]) if joint else cams)
        own = {k: v[:b] for k, v in out.items()}
        terms = reconstruction_losses(own, self.images[idx], self.raw_targets[idx], self.lp,
                                      cfg.lpips_weight, cfg.l2_weight)
        loss = terms["rec"]
        if joint:
            terms["sym"] = self._sym_loss(out["image"][b:])
            loss = loss + cfg.sym_weight * terms["sym"]
        self._apply(loss)
        del out, own  # the reconstruction's renders: nothing of them is needed by the symmetry pass below
        if do_sym and not joint:  # the authors' separate Gsym_reg phase: its own step, after the main one
            terms["sym"] = self._sym_loss(self._render(ws, torch.cat([c1, c2]))["image"])
            self._apply(cfg.sym_weight * terms["sym"])
            loss = loss.detach() + cfg.sym_weight * terms["sym"].detach()
        terms["loss"] = loss
        return {k: float(v.detach()) for k, v in terms.items()}

    @contextlib.contextmanager
    def _training_mode(self):
        G = self.G
        was_training = G.training
        requires = [p.requires_grad for p in G.parameters()]
        G.requires_grad_(False)
        G.train()
        attach(G, self.adapter)
        was_checkpointing = gradient_checkpointing_of(G)
        set_gradient_checkpointing(G, self.checkpointing)
        compiled = G.compile_renderer() if self.config.compile else None
        try:
            with _global_rng_scope():
                self.rng.install(self.sampler)
                try:
                    yield
                finally:
                    self.rng = RngStates.capture(self.sampler)
        finally:
            if compiled is not None:
                compiled()
            set_gradient_checkpointing(G, was_checkpointing)
            detach(G)
            G.train(was_training)
            for p, r in zip(G.parameters(), requires):
                p.requires_grad_(r)

    def run(self, stop_at: int | None = None) -> TrainResult:
        """Train until `config.iterations` (or `stop_at`, for tests that simulate an interrupted run)."""
        from tqdm import tqdm

        cfg = self.config
        end = cfg.iterations if stop_at is None else min(int(stop_at), cfg.iterations)
        log = open(self.log_path, "a") if self.log_path is not None else None
        bar = tqdm(total=end, initial=self.step, desc="training", disable=not self.progress, dynamic_ncols=True)
        flag: dict = {}
        timed: list[float] = []
        try:
            with self._training_mode(), _sigint_deferred(flag):
                while self.step < end:
                    t0 = time.perf_counter()
                    terms = self._train_step(self.step)
                    self.step += 1
                    dt = time.perf_counter() - t0
                    self.elapsed += dt
                    record = {"step": self.step, **terms, "lr": self.optimizer.param_groups[0]["lr"],
                              "seconds": round(dt, 4)}
                    self.recent.append(record)
                    if log is not None:
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                    bar.update(1)
                    bar.set_postfix(_postfix(record, self.recent), refresh=False)
                    timed.append(dt)
                    if len(timed) == ESTIMATE_AFTER and self.step < end:
                        step_s = statistics.median(timed)
                        self.echo(f"training: {step_s:.2f} s/step measured; {end - self.step} steps left: about "
                                  f"{duration(step_s * (end - self.step))} (--iterations sets the steps)")
                    last = self.step == end
                    if self.step % cfg.checkpoint_every == 0 or last or flag.get("stop"):
                        self.rng = RngStates.capture(self.sampler)
                        self.save()
                    if flag.get("stop") and not last:
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            if self.checkpoint_dir is not None:
                saved = self.saved_step if self.saved_step is not None else "none yet"
                self.echo(f"\ninterrupted at step {self.step}; last checkpoint: step {saved} in "
                          f"{self.checkpoint_dir}; run the same command again to resume")
            raise
        finally:
            bar.close()
            if log is not None:
                log.close()
        return TrainResult(self.adapter, self.step, recent_losses(self.recent), self.elapsed, self.resumed_from,
                           self.checkpoint_dir)


def _flatten(d: dict, prefix: str = "") -> dict:
    """{'projector': {'steps': 5}} -> {'projector.steps': 5} (for naming changed settings)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _lpips(config: TrainConfig) -> LPIPS:
    with torch.random.fork_rng(devices=[]):  # layer init draws from the global RNG: keep the caller's
        return LPIPS(config.lpips_net)


def memory_advice(plan: MemoryPlan) -> str:
    """What makes a step fit: the switches not yet used, and the batch that fits with them where known."""
    tips = []
    if not plan.checkpointing:
        tips.append("--checkpointing on (exact, ~2-4x less activation memory)")
    if plan.precision == "fp32":
        tips.append("--precision bf16 (or fp16 on GPUs without bf16)")
    largest = plan.largest_batch(plan.capacity) if plan.capacity else 0
    tips.append(f"--batch {largest} (the largest that fits as configured)" if largest else "a smaller --batch")
    return "try " + ", ".join(tips)


def _autocast(precision: str, device: str):
    """Autocast at a reduced training precision; nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@contextlib.contextmanager
def _global_rng_scope():
    """Restore the caller's global torch/numpy/python RNG states on exit, whatever happened inside."""
    saved = RngStates.capture(torch.Generator())
    try:
        yield
    finally:
        saved.install(torch.Generator())


def recent_losses(records) -> dict[str, float]:
    keys = sorted({k for r in records for k in r if k not in ("step", "lr", "seconds")})
    out = {}
    for k in keys:
        values = [r[k] for r in records if r.get(k) is not None]
        if values:
            out[k] = float(np.mean(values))
    return out


def _postfix(record: dict, recent) -> dict:
    avg = recent_losses(recent)
    post = {"loss": f"{record['loss']:.4f}", "rec": f"{avg.get('rec', float('nan')):.4f}"}
    if "sym" in avg:
        post["sym"] = f"{avg['sym']:.4f}"
    return post


@dataclass
class PersonalizeResult:
    """Outputs of the whole `train` pipeline."""

    adapter_path: Path
    anchors: Anchors
    train: TrainResult
    inversion_seconds: float
    checkpoint_dir: Path
    log_path: Path
    preview_path: Path | None = None
    extra: dict = field(default_factory=dict)


def default_checkpoint_dir(out: str | Path) -> Path:
    """`adapter.safetensors` -> `adapter_train/` beside it."""
    out = Path(out)
    return out.parent / f"{out.stem}_train"


def personalize(G: torch.nn.Module, dataset_dir: str | Path, out: str | Path, config: TrainConfig | None = None,
                checkpoint_dir: str | Path | None = None, identity: IdentityEncoder | None = None,
                dtype: torch.dtype = torch.float32, progress: bool = False, restart: bool = False,
                preview: bool = True, identity_name: str | None = None, inversion_batch: int = 4,
                echo: Callable[[str], None] | None = None, inversion_cache_dir: str | Path | None = None
                ) -> PersonalizeResult:
    """Dataset folder -> adapter file: invert every photo (cached), train, save adapter + anchors, preview grid.

    The inversion cache is CHECKPOINT_DIR/inversions unless `inversion_cache_dir` names one to share (entries are
    keyed by model, photo, camera and projector settings, so runs of several configurations can share it)."""
    from train.preview import save_preview
    from train.projector import project_batch

    config = (config or TrainConfig()).validate()
    echo = echo or (lambda msg: None)
    if config.sym and identity is None:
        raise IdentityNetworkRequired(identity_network_help())
    data = load_training_set(dataset_dir, G.img_resolution)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else default_checkpoint_dir(out)
    echo(f"{len(data)} photo(s) from {dataset_dir}; checkpoints, inversion cache and log in {ckpt}")
    warning = one_sided_warning(data.yaws(), config.sym)
    if warning:
        echo(warning)
    echo(f"plan: {config.projector.describe()} of each photo ({config.projector.steps} steps, --inversion-steps), then "
         f"{config.iterations} training steps of batch {config.batch} (--iterations); a time estimate follows "
         f"the first steps of each")
    lp = _lpips(config)
    memory = choose_plan(G, config, lp, identity, len(data), next(G.parameters()).device)
    echo(memory.describe())
    if not memory.fits():
        echo(f"warning: the step is estimated not to fit in this device's memory; {memory_advice(memory)}")
    t0 = time.perf_counter()
    ws = project_batch(G, data.images, data.cameras, config.projector, seed=config.seed,
                       cache_dir=Path(inversion_cache_dir) if inversion_cache_dir is not None else ckpt / INVERSION_DIR,
                       progress=progress, chunk=inversion_batch,
                       desc=f"{config.projector.describe()} of {len(data)} photo(s)", echo=echo)
    inversion_seconds = time.perf_counter() - t0
    trainer = Trainer(G, data, ws, config, ckpt, identity=identity, lpips=lp, progress=progress, restart=restart,
                      echo=echo, checkpointing=memory.checkpointing)
    result = trainer.run()
    anchors = Anchors(ws, data.cameras, list(data.names))
    extra = {
        "train_config": config.to_dict(),
        "final_losses": result.losses,
        "steps": result.step,
        "train_seconds": round(result.seconds, 3),
        "inversion_seconds": round(inversion_seconds, 3),
        "num_photos": len(data),
        "dataset": str(dataset_dir),
        "identity_network": identity_name if config.sym else None,
        "trainable_parameters": result.adapter.num_parameters(),
    }
    path = save_adapter(out, result.adapter, G, anchors=anchors, dtype=dtype, extra=extra)
    preview_path = None
    if preview:
        preview_path = save_preview(G, result.adapter, data, ws, ckpt / PREVIEW_FILE)
    return PersonalizeResult(path, anchors, result, inversion_seconds, ckpt, ckpt / LOG_FILE, preview_path, extra)
