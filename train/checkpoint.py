"""Resumable training checkpoints: one safetensors file (tensors) + JSON metadata, written atomically.

A checkpoint holds everything that decides the rest of a run, so a killed run that resumes ends with the same
adapter as one that never stopped: the adapter's tensors, Adam's state, the step, the anchors, and every RNG
state (torch's global CPU (and CUDA) generator, the trainer's own sampling generator, numpy's and Python's
global generators). Loading executes no code: tensors come from safetensors, the rest from JSON.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from formats.atomic import atomic_file
from formats.errors import FormatError
from formats.tensors import read_header
from formats.versioned_json import parse_versioned_json

FORMAT = "my3dgen-train-checkpoint"
FORMAT_VERSION = 2
"""Version 2: the recorded config has 'lora_fc_after_gain' (adapter format 2's rule); a version-1 checkpoint,
which has no such field, was trained with format 1's rule, and resuming it needs lora_fc_after_gain=False."""
READABLE_VERSIONS = (1, 2)
META_KEY = "my3dgen_checkpoint"
CHECKPOINT_FILE = "checkpoint.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed; the message names the file and the reason."""


@dataclass
class RngStates:
    """Every random generator a training step may draw from."""

    torch_cpu: torch.Tensor
    sampler: torch.Tensor
    numpy: tuple
    python: tuple
    torch_cuda: list[torch.Tensor] = field(default_factory=list)

    @classmethod
    def capture(cls, sampler: torch.Generator) -> "RngStates":
        cuda = [torch.cuda.get_rng_state(i) for i in range(torch.cuda.device_count())] \
            if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        return cls(torch.get_rng_state(), sampler.get_state(), np.random.get_state(), random.getstate(), cuda)

    def install(self, sampler: torch.Generator) -> None:
        torch.set_rng_state(self.torch_cpu)
        sampler.set_state(self.sampler)
        np.random.set_state(self.numpy)
        random.setstate(self.python)
        for i, state in enumerate(self.torch_cuda):
            if i < torch.cuda.device_count():
                torch.cuda.set_rng_state(state, i)


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    step: int
    adapter_state: dict[str, torch.Tensor]
    optimizer_state: dict
    rng: RngStates
    anchors_ws: torch.Tensor
    anchors_c: torch.Tensor
    meta: dict


def save_checkpoint(path: str | Path, *, step: int, adapter: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    rng: RngStates, anchors_ws: torch.Tensor, anchors_c: torch.Tensor, meta: dict) -> Path:
    """Write the checkpoint atomically (a crash mid-write leaves the previous one intact)."""
    tensors: dict[str, torch.Tensor] = {}
    for k, v in adapter.state_dict().items():
        tensors[f"adapter.{k}"] = v.detach().contiguous().cpu()
    opt = optimizer.state_dict()
    scalars: dict[str, dict] = {}
    for idx, state in opt["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in opt["param_groups"]]
    tensors["rng.torch"] = rng.torch_cpu.contiguous()
    tensors["rng.sampler"] = rng.sampler.contiguous()
    for i, s in enumerate(rng.torch_cuda):
        tensors[f"rng.cuda.{i}"] = s.contiguous().cpu()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = rng.numpy
    tensors["rng.numpy_keys"] = torch.from_numpy(np.asarray(np_keys, dtype=np.int64))
    tensors["anchors.ws"] = anchors_ws.detach().float().contiguous().cpu()
    tensors["anchors.c"] = anchors_c.detach().float().contiguous().cpu()
    py_version, py_state, py_gauss = rng.python
    record = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "step": int(step),
        "optimizer": {"param_groups": groups, "scalars": scalars, "num_state": len(opt["state"])},
        "rng": {"numpy": [np_name, int(np_pos), int(np_has_gauss), float(np_cached)],
                "python": [py_version, list(py_state), py_gauss], "num_cuda": len(rng.torch_cuda)},
        **meta,
    }
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(record)})
    return Path(path)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`; CheckpointError names the file and what is wrong.

    The header is read and checked first (formats.tensors.read_header: a regular file, sizes within
    formats.limits), so a crafted file is refused before any tensor is allocated; the step must be an int >= 0."""
    path = Path(path)
    read_header(path, _checkpoint_error)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several error types for damaged files
        raise CheckpointError(f"{path}: not a readable checkpoint ({e})") from None
    if raw is None:
        raise CheckpointError(f"{path}: no '{META_KEY}' metadata (not a my3dgen training checkpoint)")
    try:
        meta = parse_versioned_json(raw, str(path), FORMAT, READABLE_VERSIONS, what=f"metadata '{META_KEY}'")
    except FormatError as e:
        raise CheckpointError(str(e)) from None
    step = meta.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{path}: field 'step' is {step!r}: expected an integer >= 0")
    try:
        adapter_state = {k[len("adapter."):]: v for k, v in tensors.items() if k.startswith("adapter.")}
        opt_meta = meta["optimizer"]
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, name = k.split(".", 2)
                state.setdefault(int(idx), {})[name] = v
        for idx, values in opt_meta["scalars"].items():
            state.setdefault(int(idx), {}).update(values)
        if len(state) != opt_meta["num_state"]:
            raise KeyError(f"optimizer state for {len(state)} of {opt_meta['num_state']} parameters")
        groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in opt_meta["param_groups"]]
        np_name, np_pos, np_has_gauss, np_cached = meta["rng"]["numpy"]
        np_state = (np_name, tensors["rng.numpy_keys"].numpy().astype(np.uint32), np_pos, np_has_gauss, np_cached)
        py_version, py_state, py_gauss = meta["rng"]["python"]
        cuda = [tensors[f"rng.cuda.{i}"] for i in range(meta["rng"]["num_cuda"])]
        rng = RngStates(tensors["rng.torch"], tensors["rng.sampler"], np_state,
                        (py_version, tuple(py_state), py_gauss), cuda)
        return Checkpoint(int(meta["step"]), adapter_state, {"state": state, "param_groups": groups}, rng,
                          tensors["anchors.ws"], tensors["anchors.c"], meta)
    except (KeyError, ValueError, TypeError, IndexError, AttributeError, OverflowError) as e:
        raise CheckpointError(f"{path}: incomplete or inconsistent checkpoint ({type(e).__name__}: {e})") from None


def _checkpoint_error(path: str, reason: str) -> CheckpointError:
    return CheckpointError(f"{path}: {reason}")


def read_checkpoint_record(path: str | Path) -> dict:
    """The checked JSON record of a checkpoint, reading only its header (what `load_checkpoint` checks first)."""
    meta, _ = read_header(path, _checkpoint_error)
    try:
        return parse_versioned_json(meta.get(META_KEY), str(path), FORMAT, READABLE_VERSIONS,
                                    what=f"metadata '{META_KEY}'")
    except FormatError as e:
        raise CheckpointError(str(e)) from None
