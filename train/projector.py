"""W inversion of photos with their cameras fixed (paper §3.1: anchors w_i), the StyleGAN2 projector scheme.

Per photo (x, c): start at w_avg, the mean of `w_avg_samples` mapping outputs conditioned on the photo's own
camera c (as EG3D-projector does); optimise one w (broadcast to every synthesis layer; `w_plus` optimises
one per layer) with Adam under the projectors' schedule (linear ramp-up, cosine ramp-down, Gaussian noise on
w that decays over the first 75%); the loss is LPIPS (VGG16) between G.synthesis(w, c)['image'] and x, both
area-downsampled to 256 (official) - see `ProjectorConfig.lpips_size` - plus, with `pixel_weight` > 0, their
mean squared difference at that size (not in the official projectors; LPIPS alone barely sees colour). With
`space='z'` the optimised variable is the mapping's input z instead (no w noise), and the result is
w = mapping(z, c). With `optimize_noise` (default, as both projectors) the backbone's noise maps are optimised
too, one set per photo, under the StyleGAN2 noise regulariser; they are swapped into G only for the run
(`_noise_maps_swapped`, G's own buffers are restored) and discarded afterwards, as the projectors discard them:
an anchor is fully described by w and renders with G's fixed 'const' noise.

Several photos are inverted in one batch: the loss is a sum of per-photo terms and Adam is element-wise, so
each w follows its own trajectory, with its own noise stream seeded by `seed` (the same as inverting it
alone, up to float rounding of batched convolutions).

Results are cached per photo under `cache_dir` (one safetensors file each, written atomically), keyed by the
image bytes, camera, model fingerprint (base weights + any attached adapter), all projector settings, the seed
and PROJECTOR_VERSION, so re-running `train` does not invert again.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from generator.adapter_file import base_fingerprint
from formats.atomic import atomic_file
from generator.lora import attachment_of
from generator.model_dir import weights_fingerprint
from perception.lpips import LPIPS
from train.config import PROJECTOR_VERSION, ProjectorConfig
from train.losses import lpips_distance, lpips_features

CACHE_META_KEY = "my3dgen_projection"


def model_fingerprint(G: torch.nn.Module) -> str:
    """Fingerprint of what G computes now: base weights (or merged weights) plus any attached adapter(s)."""
    attached = attachment_of(G)
    if attached is None:
        return base_fingerprint(G)
    if attached.merged:
        return weights_fingerprint(G.state_dict())
    h = hashlib.sha256(base_fingerprint(G).encode())
    if attached.index is not None:
        h.update(attached.index.cpu().numpy().tobytes())
    seen = set()
    for adapter in attached.adapters:
        if id(adapter) not in seen:
            seen.add(id(adapter))
            h.update(weights_fingerprint(adapter.file_tensors()).encode())
    return "sha256:" + h.hexdigest()


@torch.no_grad()
def w_stats(G: torch.nn.Module, c: torch.Tensor, samples: int = 10000, seed: int = 123,
            chunk: int = 2000) -> tuple[torch.Tensor, float]:
    """(w_avg [w_dim], w_std) of mapping(z, c) for z = RandomState(seed).randn(samples, z_dim), c fixed."""
    z_all = torch.from_numpy(np.random.RandomState(seed).randn(samples, G.z_dim).astype(np.float32))
    device = c.device
    ws = []
    for i in range(0, samples, chunk):
        z = z_all[i:i + chunk].to(device)
        ws.append(G.mapping(z, c.reshape(1, -1).expand(len(z), -1))[:, 0].double())
    ws = torch.cat(ws)
    w_avg = ws.mean(0)
    w_std = float(((ws - w_avg).square().sum() / samples).sqrt())
    return w_avg.float(), w_std


def cache_key(G_fingerprint: str, image: torch.Tensor, c: torch.Tensor, config: ProjectorConfig, seed: int) -> str:
    """Hex key of one inversion: sha256 over the image bytes, camera bytes, model, settings, seed and version."""
    h = hashlib.sha256()
    h.update(image.detach().float().contiguous().cpu().numpy().tobytes())
    h.update(c.detach().float().contiguous().cpu().numpy().tobytes())
    h.update(json.dumps({"model": G_fingerprint, "config": config.to_dict(), "seed": int(seed),
                         "version": PROJECTOR_VERSION}, sort_keys=True).encode())
    return h.hexdigest()


def _cache_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / f"w_{key[:32]}.safetensors"


def _read_cached(path: Path, key: str, shape: tuple[int, ...]) -> torch.Tensor | None:
    """The cached w, or None if missing, unreadable, from another key, mis-shaped or non-finite."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(CACHE_META_KEY, "{}"))
            w = f.get_tensor("w")
    except Exception:  # a corrupt cache file is recomputed, never trusted
        return None
    if meta.get("key") != key or tuple(w.shape) != shape or not torch.isfinite(w).all():
        return None
    return w.float()


def _write_cached(path: Path, key: str, w: torch.Tensor, info: dict) -> None:
    with atomic_file(path) as tmp:
        save_file({"w": w.detach().float().contiguous().cpu()}, str(tmp),
                  metadata={CACHE_META_KEY: json.dumps({"key": key, **info})})


def _check_inputs(G, images: torch.Tensor, cameras: torch.Tensor) -> None:
    s = G.img_resolution
    if images.ndim != 4 or tuple(images.shape[1:]) != (3, s, s):
        raise ValueError(f"images must be [N, 3, {s}, {s}] in [-1, 1] (the generator's output size), "
                         f"got {tuple(images.shape)}")
    if cameras.ndim != 2 or tuple(cameras.shape) != (images.shape[0], 25):
        raise ValueError(f"cameras must be [{images.shape[0]}, 25] EG3D labels, got {tuple(cameras.shape)}")


def project_batch(G: torch.nn.Module, images: torch.Tensor, cameras: torch.Tensor,
                  config: ProjectorConfig | None = None, seed: int = 0, cache_dir: str | Path | None = None,
                  lpips: LPIPS | None = None, progress: bool = False, desc: str = "W inversion",
                  chunk: int = 4, echo: Callable[[str], None] | None = None) -> torch.Tensor:
    """Invert photos [N, 3, S, S] in [-1, 1] at cameras [N, 25] -> W latents [N, w_dim] ([N, num_ws, w_dim] in W+).

    Cached results are reused; the rest are optimised together, `chunk` photos at a time (an ffhq512-128
    render with gradients needs ~2-3 GB per photo). G is not modified (its parameters get no gradients; its
    train/eval mode is restored).
    """
    config = (config or ProjectorConfig()).validate()
    _check_inputs(G, images, cameras)
    device = next(G.parameters()).device
    images = images.detach().float().to(device)
    cameras = cameras.detach().float().to(device)
    n = images.shape[0]
    shape = (G.num_ws, G.w_dim) if config.w_plus else (G.w_dim,)
    out = torch.empty((n,) + shape)
    todo = list(range(n))
    keys = paths = None
    if cache_dir is not None:
        fp = model_fingerprint(G)
        keys = [cache_key(fp, images[i], cameras[i], config, seed) for i in range(n)]
        paths = [_cache_path(Path(cache_dir), k) for k in keys]
        todo = []
        for i in range(n):
            w = _read_cached(paths[i], keys[i], shape)
            if w is None:
                todo.append(i)
            else:
                out[i] = w
    if todo and lpips is None:
        with torch.random.fork_rng(devices=[]):  # layer init draws from the global RNG: keep the caller's
            lpips = LPIPS("vgg")
    chunk = max(1, int(chunk))
    batches = -(-len(todo) // chunk)
    if echo is not None and todo:
        echo(f"{config.describe()}: {len(todo)} photo(s) to invert ({n - len(todo)} cached): {config.steps} "
             f"steps x {batches} batch(es) of up to {chunk} (--inversion-steps sets the steps)")

    def estimate(step_seconds: float) -> None:
        echo(f"{config.describe()}: {step_seconds:.2f} s/step measured; {config.steps} steps x {batches} "
             f"batch(es): about {duration(step_seconds * config.steps * batches)}")
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        label = desc if len(todo) <= chunk else f"{desc} [{start + 1}-{start + len(part)} of {len(todo)}]"
        ws, final = _optimise(G, images[part], cameras[part], config, seed, lpips, progress, label,
                              estimate if echo is not None and start == 0 else None)
        for j, i in enumerate(part):
            out[i] = ws[j]
            if cache_dir is not None:
                _write_cached(paths[i], keys[i], ws[j], {"lpips": final[j], "steps": config.steps, "seed": seed,
                                                         "w_plus": config.w_plus, "version": PROJECTOR_VERSION})
    return out


def project_w(G: torch.nn.Module, image: torch.Tensor, c: torch.Tensor, steps: int = 500, seed: int = 0, *,
              w_plus: bool | None = None, config: ProjectorConfig | None = None,
              cache_dir: str | Path | None = None, lpips: LPIPS | None = None,
              progress: bool = False) -> torch.Tensor:
    """Invert one photo [3, S, S] in [-1, 1] at camera c [25] -> w [w_dim] (or [num_ws, w_dim] in W+).

    `steps` overrides `config.steps`; `w_plus` overrides `config.w_plus` when given (True/False). The rest of
    the schedule comes from `config` (default `ProjectorConfig()`).
    """
    config = config or ProjectorConfig()
    config = dataclasses.replace(config, steps=int(steps),
                                 w_plus=config.w_plus if w_plus is None else bool(w_plus))
    if image.ndim != 3:
        raise ValueError(f"image must be [3, H, W], got {tuple(image.shape)}")
    c = torch.as_tensor(c).reshape(1, -1)
    return project_batch(G, image[None], c, config=config, seed=seed, cache_dir=cache_dir, lpips=lpips,
                         progress=progress)[0]


def noise_layers(G: torch.nn.Module) -> list[torch.nn.Module]:
    """The backbone synthesis layers that own a 'noise_const' map (the maps the projectors optimise)."""
    return [m for m in G.backbone.synthesis.modules() if "noise_const" in getattr(m, "_buffers", {})]


@contextlib.contextmanager
def _noise_maps_swapped(layers: list[torch.nn.Module], maps: list[torch.Tensor]):
    """Render with `maps` ([N, 1, H, W], one per photo) in place of the layers' 'noise_const' buffers; the
    original buffer objects are put back on exit, whatever happened."""
    saved = [layer._buffers["noise_const"] for layer in layers]
    try:
        for layer, noise in zip(layers, maps):
            layer._buffers["noise_const"] = noise
        yield
    finally:
        for layer, buffer in zip(layers, saved):
            layer._buffers["noise_const"] = buffer


def noise_regularization(maps: list[torch.Tensor]) -> torch.Tensor:
    """Per-photo StyleGAN2 noise regulariser [N]: for every map and every level of its 2x average-pool pyramid
    (down to 8x8), the squared mean of the map times itself rolled one pixel along x, and along y."""
    total = maps[0].new_zeros(maps[0].shape[0])
    for noise in maps:
        while True:
            total = total + (noise * torch.roll(noise, shifts=1, dims=3)).mean(dim=(1, 2, 3)) ** 2
            total = total + (noise * torch.roll(noise, shifts=1, dims=2)).mean(dim=(1, 2, 3)) ** 2
            if noise.shape[2] <= 8:
                break
            noise = F.avg_pool2d(noise, kernel_size=2)
    return total


@torch.no_grad()
def _normalize_noise(maps: list[torch.Tensor]) -> None:
    """Each photo's map back to zero mean and unit variance (after every step, as the projectors do)."""
    for noise in maps:
        noise -= noise.mean(dim=(1, 2, 3), keepdim=True)
        noise *= noise.square().mean(dim=(1, 2, 3), keepdim=True).rsqrt()


def _downsample(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] > size:
        return F.interpolate(images, size=(size, size), mode="area")
    return images


ESTIMATE_AFTER = 3
"""Steps timed before a phase's time estimate is printed (the first includes warm-up, so the median is used)."""


def duration(seconds: float) -> str:
    """'2 h 31 min', '4 min', '40 s': a time estimate as people read it."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    return f"{max(1, round(seconds / 60))} min" if seconds >= 90 else f"{max(1, round(seconds))} s"


def _optimise(G, images, cameras, config: ProjectorConfig, seed: int, lpips: LPIPS, progress: bool,
              desc: str, estimate: Callable[[float], None] | None = None) -> tuple[torch.Tensor, list[float]]:
    from tqdm import tqdm

    device = images.device
    n = images.shape[0]
    lp = lpips.to(device)
    size = config.lpips_size(G.img_resolution)
    was_training = G.training
    G.eval()
    try:
        gens = [torch.Generator().manual_seed(int(seed)) for _ in range(n)]
        w_std = None
        if config.space == "z":  # a random point of the sphere |z| = sqrt(z_dim), where normalized z lives
            z = torch.stack([torch.randn(G.z_dim, generator=g) for g in gens])
            latent = (z * (G.z_dim ** 0.5) / z.norm(dim=1, keepdim=True)).to(device).requires_grad_(True)
        else:
            stats: dict[bytes, tuple[torch.Tensor, float]] = {}
            starts, stds = [], []
            for c in cameras:
                k = c.cpu().numpy().tobytes()
                if k not in stats:
                    stats[k] = w_stats(G, c, config.w_avg_samples, config.w_avg_seed)
                starts.append(stats[k][0])
                stds.append(stats[k][1])
            w_start = torch.stack(starts).to(device)
            w_std = torch.tensor(stds, device=device)
            if config.w_plus:
                w_start = w_start[:, None, :].repeat(1, G.num_ws, 1)
            latent = w_start.clone().requires_grad_(True)
        layers = noise_layers(G) if config.optimize_noise else []
        maps = [torch.stack([torch.randn((1,) + tuple(layer.noise_const.shape), generator=g) for g in gens])
                .to(device).requires_grad_(True) for layer in layers]
        opt = torch.optim.Adam([latent] + maps, lr=config.lr, betas=tuple(config.betas))
        with torch.no_grad():
            target_small = _downsample(images, size)
            target_feats = lpips_features(lp, target_small)
        dist = None
        bar = tqdm(range(config.steps), desc=desc, unit="step", disable=not progress, leave=False,
                   dynamic_ncols=True)
        seconds = []
        for step in bar:
            t0 = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = config.lr_at(step)
            ws = _latent_ws(G, latent, cameras, config, step, w_std, gens)
            with _noise_maps_swapped(layers, maps):
                synth = G.synthesis(ws, cameras, noise_mode="const")["image"]
            synth_small = _downsample(synth, size)
            dist = lpips_distance(lp, lpips_features(lp, synth_small), target_feats)
            loss = dist.sum()
            if config.pixel_weight:
                loss = loss + config.pixel_weight * (synth_small - target_small).square().mean((1, 2, 3)).sum()
            if maps:
                loss = loss + config.regularize_noise_weight * noise_regularization(maps).sum()
            grads = torch.autograd.grad(loss, [latent] + maps)
            for tensor, grad in zip([latent] + maps, grads):
                tensor.grad = grad
            opt.step()
            for tensor in [latent] + maps:
                tensor.grad = None
            if maps:
                _normalize_noise(maps)
            if progress:
                bar.set_postfix(lpips=f"{float(dist.detach().mean()):.4f}")
            seconds.append(time.perf_counter() - t0)
            if estimate is not None and len(seconds) == ESTIMATE_AFTER:
                estimate(statistics.median(seconds))
        bar.close()
        if config.space == "z":
            with torch.no_grad():
                latent = G.mapping(latent, cameras)[:, 0]
    finally:
        G.train(was_training)
    return latent.detach().cpu(), [float(d) for d in dist.detach().cpu()]


def _latent_ws(G, latent: torch.Tensor, cameras: torch.Tensor, config: ProjectorConfig, step: int,
               w_std: torch.Tensor | None, gens: list[torch.Generator]) -> torch.Tensor:
    """ws [n, num_ws, w_dim] of the optimised latent: mapping(z, c) in z space; in W (W+), w plus the schedule's
    decaying Gaussian noise of scale w_std, broadcast to every layer (one per layer)."""
    if config.space == "z":
        return G.mapping(latent, cameras)
    n = latent.shape[0]
    noise = torch.stack([torch.randn(tuple(latent.shape[1:]), generator=g) for g in gens]).to(latent.device)
    w = latent + noise * (w_std * config.noise_factor_at(step)).reshape((n,) + (1,) * (latent.ndim - 1))
    return w if config.w_plus else w[:, None, :].expand(-1, G.num_ws, -1)
