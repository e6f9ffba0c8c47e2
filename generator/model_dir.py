"""A model directory: `model.safetensors` (official state-dict keys) + `config.json` (GeneratorConfig + provenance).

Loading never executes code (safetensors + JSON) and checks every tensor against the configured architecture.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from generator.atomic import atomic_dir
from generator.config import GeneratorConfig
from generator.presets import preset
from generator.triplane import TriPlaneGenerator

FORMAT = "my3dgen-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class ModelDirError(ValueError):
    """A model directory that cannot be loaded; the message names the file and what is wrong."""


def weights_fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over sorted key names, dtypes, shapes and bytes: identifies the base weights an adapter was made for."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().contiguous().cpu()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return "sha256:" + h.hexdigest()


def save_model_dir(G: TriPlaneGenerator, path: str | os.PathLike, source: dict[str, Any] | None = None,
                   overwrite: bool = False) -> Path:
    """Write G's base weights and config atomically (a temp dir renamed into place)."""
    state = {k: v.detach().contiguous().cpu() for k, v in G.state_dict().items()}
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "generator": G.cfg.to_dict(),
        "fingerprint": weights_fingerprint(state),
        "source": source or {},
    }
    with atomic_dir(path, overwrite=overwrite) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return Path(path)


def read_config(path: str | os.PathLike) -> tuple[GeneratorConfig, dict[str, Any]]:
    """The GeneratorConfig and raw JSON of a model directory, with errors naming the file and field."""
    cfg_path = Path(path) / CONFIG_FILE
    if not cfg_path.is_file():
        raise ModelDirError(f"{cfg_path}: missing (is {path} a model directory made by `cli.py convert`?)")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ModelDirError(f"{cfg_path}: not valid JSON ({e})") from None
    if raw.get("format") != FORMAT:
        raise ModelDirError(f"{cfg_path}: field 'format' is {raw.get('format')!r}, expected {FORMAT!r}")
    if raw.get("format_version") != FORMAT_VERSION:
        raise ModelDirError(f"{cfg_path}: format_version {raw.get('format_version')!r} is not supported "
                            f"(this version reads {FORMAT_VERSION})")
    try:
        cfg = GeneratorConfig.from_dict(raw["generator"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelDirError(f"{cfg_path}: field 'generator' is invalid: {e}") from None
    return cfg, raw


def check_state_dict(expected: dict[str, torch.Tensor], found: dict[str, tuple[int, ...]], where: str) -> None:
    """Raise ModelDirError listing missing, unexpected and mis-shaped tensors."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    shaped = sorted(f"{k} {tuple(found[k])} (expected {tuple(expected[k].shape)})"
                    for k in set(expected) & set(found) if tuple(found[k]) != tuple(expected[k].shape))
    problems = []
    for label, items in (("missing", missing), ("unexpected", extra), ("mis-shaped", shaped)):
        if items:
            shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
            problems.append(f"{label} tensors: {shown}")
    if problems:
        raise ModelDirError(f"{where}: " + "; ".join(problems))


def load_model_dir(path: str | os.PathLike) -> TriPlaneGenerator:
    """Build the generator of a model directory and load its weights strictly, in eval mode."""
    cfg, _ = read_config(path)
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelDirError(f"{weights}: missing")
    G = TriPlaneGenerator(cfg)
    expected = G.state_dict()
    try:
        with safe_open(str(weights), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            check_state_dict(expected, shapes, str(weights))
            state = {k: f.get_tensor(k) for k in f.keys()}
    except ModelDirError:
        raise
    except Exception as e:  # safetensors raises several types for corrupt headers
        raise ModelDirError(f"{weights}: not a readable safetensors file ({e})") from None
    bad_dtype = sorted(k for k, v in state.items() if v.dtype != expected[k].dtype)
    if bad_dtype:
        raise ModelDirError(f"{weights}: tensors with an unexpected dtype: {', '.join(bad_dtype[:8])}")
    G.load_state_dict(state, strict=True)
    return G.eval()


def build_generator(model: str | os.PathLike | None = None, preset_name: str | None = None,
                    seed: int = 0) -> TriPlaneGenerator:
    """A generator from a model directory, or a randomly initialised preset (seeded, so it is reproducible)."""
    if (model is None) == (preset_name is None):
        raise ValueError("give exactly one of a model directory or a preset name")
    if model is not None:
        return load_model_dir(model)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        G = TriPlaneGenerator(preset(preset_name))
    return calibrate_random_init(G).eval()


@torch.no_grad()
def calibrate_random_init(G: TriPlaneGenerator) -> TriPlaneGenerator:
    """Make a randomly initialised generator render something in range, like the official fixture does.

    A fresh EG3D has an almost empty volume (raw image ~ -1) and SR toRGB layers that blow the image up to
    |x| > 3. Raising the decoder's density bias by 3 (as the official fixture does) fills the volume, and
    scaling the SR toRGB weights by 0.1 keeps the final image close to the upsampled raw render.
    """
    G.decoder.net[2].bias[0] += 3.0
    for block in (G.superresolution.block0, G.superresolution.block1):
        block.torgb.weight.mul_(0.1)
    return G
