"""Save and load a model directory (format: formats.model_dir) as a TriPlaneGenerator.

Loading never executes code (safetensors + JSON) and checks every tensor against the configured architecture.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from formats.atomic import atomic_dir
from formats.errors import ModelDirError
from formats.fingerprint import weights_fingerprint as _fingerprint
from formats.model_dir import (CONFIG_FILE, IDENTITY_FILE, WEIGHTS_FILE, WEIGHTS_METADATA, check_identity_file,
                               config_record, identity_file, read_config_record)
from formats.tensors import read_header, shape_problems
from formats.versioned_json import dump_json
from generator.config import GeneratorConfig
from generator.presets import preset
from generator.triplane import TriPlaneGenerator

__all__ = ["ModelDirError", "weights_fingerprint", "save_model_dir", "read_config",
           "expected_state", "check_weights", "refuse_nonfinite", "load_model_dir", "build_generator",
           "calibrate_random_init", "CONFIG_FILE", "WEIGHTS_FILE", "IDENTITY_FILE"]


def _raw_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous().cpu()
    return (t if t.dtype != torch.bfloat16 else t.view(torch.int16)).numpy().tobytes()


def weights_fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """formats.fingerprint.weights_fingerprint of torch tensors: identifies the base weights an adapter was made for."""
    return _fingerprint((k, str(t.dtype), tuple(t.shape), _raw_bytes(t)) for k, t in state_dict.items())


def save_model_dir(G: TriPlaneGenerator, path: str | os.PathLike, source: dict[str, Any] | None = None,
                   overwrite: bool = False, identity: str | os.PathLike | None = None) -> Path:
    """Write G's base weights and config atomically (a temp dir renamed into place).

    The directory's identity network (IDENTITY_FILE) is never dropped by accident: `identity`, an identity network
    file (checked first), is copied in; without it, the identity file of the directory being overwritten is kept
    (checked too), so re-exporting a model (scripts/pretrain_heads.py) keeps its paired network. To drop one,
    delete the file."""
    if identity is not None:
        keep = check_identity_file(identity)
    else:
        keep = identity_file(path) if overwrite and Path(path).is_dir() else None
    state = {k: v.detach().contiguous().cpu() for k, v in G.state_dict().items()}
    config = config_record(G.cfg.to_dict(), weights_fingerprint(state), source)
    with atomic_dir(path, overwrite=overwrite) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata=dict(WEIGHTS_METADATA))
        (tmp / CONFIG_FILE).write_text(dump_json(config))
        if keep is not None:
            shutil.copyfile(keep, tmp / IDENTITY_FILE)
    return Path(path)


def read_config(path: str | os.PathLike) -> tuple[GeneratorConfig, dict[str, Any]]:
    """The GeneratorConfig and raw JSON of a model directory, with errors naming the file and field."""
    raw = read_config_record(path)
    try:
        cfg = GeneratorConfig.from_dict(raw["generator"])
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise ModelDirError(str(Path(path) / CONFIG_FILE), f"field 'generator' is invalid: {e}") from None
    return cfg, raw



def expected_state(cfg: GeneratorConfig) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """Name -> (dtype, shape) of every tensor of the generator `cfg` builds, from a generator on the 'meta' device
    (shapes only, no memory): what a file's tensors are checked against before a real network is built."""
    with torch.device("meta"):
        G = TriPlaneGenerator(cfg)
    return {k: (v.dtype, tuple(v.shape)) for k, v in G.state_dict().items()}


def check_weights(expected: dict[str, tuple[torch.dtype, tuple[int, ...]]], found: dict[str, tuple[int, ...]],
                  where: str) -> None:
    """Raise ModelDirError listing missing, unexpected and mis-shaped tensors (`expected` from `expected_state`)."""
    problems = shape_problems({k: shape for k, (_, shape) in expected.items()}, found, shown=8)
    if problems:
        raise ModelDirError(where, "; ".join(problems))


def refuse_nonfinite(state: dict[str, torch.Tensor], where: str) -> None:
    """ModelDirError naming the tensors that hold NaN or +-Inf (they render an all-black image, silently)."""
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if bad:
        raise ModelDirError(where, f"non-finite values (NaN/Inf) in tensor(s) {', '.join(bad[:8])}"
                                   + (f" ... ({len(bad)} in all)" if len(bad) > 8 else ""))


_TORCH_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                 "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "I8": torch.int8, "BOOL": torch.bool}


def load_model_dir(path: str | os.PathLike) -> TriPlaneGenerator:
    """Build the generator of a model directory and load its weights strictly, in eval mode.

    Order: config.json (sizes within formats.limits), the weights' safetensors header (bounded, regular file),
    the header's names, shapes and dtypes against the config's generator built on the 'meta' device; only then
    the real network and the tensors, which must be finite."""
    cfg, _ = read_config(path)
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file() and not weights.exists():
        raise ModelDirError(str(weights), "missing")
    _, entries = read_header(weights, ModelDirError)
    expected = expected_state(cfg)
    check_weights(expected, {k: shape for k, (_, shape) in entries.items()}, str(weights))
    bad_dtype = sorted(k for k, (dtype, _) in entries.items() if _TORCH_DTYPES.get(dtype) != expected[k][0])
    if bad_dtype:
        raise ModelDirError(str(weights), f"tensors with an unexpected dtype: {', '.join(bad_dtype[:8])}")
    try:
        with safe_open(str(weights), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for corrupt files
        raise ModelDirError(str(weights), f"not a readable safetensors file ({e})") from None
    refuse_nonfinite(state, str(weights))
    G = TriPlaneGenerator(cfg)
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
