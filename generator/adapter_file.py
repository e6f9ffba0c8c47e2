"""Save and load adapter files (format: formats.adapter_file) as PersonAdapter modules for a base generator.

The file schema, the LoRA shape rule and the checked reader are torch-free (formats.adapter_file, shared with the
runtime); this module adds what needs the model: the base fingerprint, the policy and the target list of G.
"""
from __future__ import annotations

import dataclasses
import json
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from formats.adapter_file import (FORMAT_VERSION, META_KEY, adapter_metadata, lora_fc_after_gain, read_adapter,
                                 read_adapter_meta)
from formats.atomic import atomic_file
from formats.errors import AdapterFileError
from generator.lora import AdapterPolicy, PersonAdapter, base_state_dict, plan
from generator.model_dir import weights_fingerprint

__all__ = ["AdapterFileError", "Anchors", "base_fingerprint", "save_adapter", "read_adapter_meta", "load_adapter",
           "policy_of"]


@dataclass
class Anchors:
    """A person's anchors: the W latents of their photos and the cameras they were taken from."""

    ws: torch.Tensor
    """[K, w_dim] (W) or [K, num_ws, w_dim] (W+)."""
    c: torch.Tensor
    """[K, 25] camera labels."""
    names: list[str] = field(default_factory=list)
    """One name per anchor (usually the photo's file name)."""

    def __post_init__(self):
        if self.ws.shape[0] != self.c.shape[0]:
            raise ValueError(f"anchors: {self.ws.shape[0]} latents but {self.c.shape[0]} cameras")
        if not self.names:
            self.names = [f"anchor{i}" for i in range(self.ws.shape[0])]
        if len(self.names) != self.ws.shape[0]:
            raise ValueError(f"anchors: {len(self.names)} names for {self.ws.shape[0]} latents")

    def ws_plus(self, num_ws: int) -> torch.Tensor:
        """[K, num_ws, w_dim]."""
        return self.ws if self.ws.ndim == 3 else self.ws.unsqueeze(1).repeat(1, num_ws, 1)

    def index(self, name_or_index: str | int) -> int:
        if isinstance(name_or_index, int) or (str(name_or_index).isascii() and str(name_or_index).isdecimal()):
            i = int(name_or_index)
            if not 0 <= i < len(self.names):
                raise KeyError(f"anchor index {i} out of range (0..{len(self.names) - 1})")
            return i
        if name_or_index not in self.names:
            raise KeyError(f"unknown anchor {name_or_index!r}; known: {', '.join(self.names)}")
        return self.names.index(name_or_index)


_FINGERPRINTS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, str]]" = weakref.WeakKeyDictionary()


def base_fingerprint(G: torch.nn.Module) -> str:
    """Fingerprint of G's base weights (an adapter merged into G does not count), cached until a tensor changes."""
    sd = base_state_dict(G)
    stamp = tuple((t.data_ptr(), t._version) for t in sd.values())
    cached = _FINGERPRINTS.get(G)
    if cached is None or cached[0] != stamp:
        cached = (stamp, weights_fingerprint(sd))
        _FINGERPRINTS[G] = cached
    return cached[1]


def save_adapter(path: str | os.PathLike, adapter: PersonAdapter, G: torch.nn.Module, anchors: Anchors | None = None,
                 dtype: torch.dtype = torch.float32, extra: dict | None = None) -> Path:
    """Write the adapter atomically; `dtype=torch.float16` halves the file (loading casts back to fp32)."""
    if dtype not in (torch.float32, torch.float16):
        raise ValueError(f"dtype={dtype}: adapters are stored as float32 or float16")
    tensors = {k: v.detach().to(dtype).contiguous().cpu() for k, v in adapter.file_tensors().items()}
    if anchors is not None:
        tensors["anchors.ws"] = anchors.ws.detach().to(dtype).contiguous().cpu()
        tensors["anchors.c"] = anchors.c.detach().float().contiguous().cpu()  # cameras stay fp32: tiny, precise
    policy = adapter.policy
    meta = adapter_metadata(rank=policy.rank, alpha=policy.alpha, layout=policy.layout,
                            policy=dataclasses.asdict(policy),
                            targets=[[t.key, t.kind, list(t.shape)] for t in adapter.targets.values()],
                            base_fingerprint=base_fingerprint(G), dtype=str(dtype).replace("torch.", ""),
                            anchor_names=anchors.names if anchors is not None else [], extra=extra,
                            format_version=FORMAT_VERSION if adapter.fc_after_gain else 1)
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)})
    return Path(path)


def policy_of(record: dict) -> AdapterPolicy:
    """The validated AdapterPolicy of a JSON record (an adapter file's or a keep-LoRA manifest's 'policy');
    TypeError / ValueError when it is not one."""
    return AdapterPolicy(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items()}).validate()


def load_adapter(path: str | os.PathLike, G: torch.nn.Module, check_base: bool = True
                 ) -> tuple[PersonAdapter, Anchors | None, dict]:
    """Load an adapter for base model G: the file is checked by formats.adapter_file.read_adapter (format, fields,
    tensor names, shapes, finiteness, anchors), then against G (base fingerprint, policy, target list)."""
    data = read_adapter(path, w_dim=getattr(G, "w_dim", None))
    where, meta = str(data.path), data.meta
    if check_base and meta["base_fingerprint"] != base_fingerprint(G):
        raise AdapterFileError(where, f"made for a different base model (adapter base "
                                      f"{meta['base_fingerprint'][:19]}..., this model {base_fingerprint(G)[:19]}...)")
    try:
        policy = policy_of(meta["policy"])
    except (KeyError, TypeError, ValueError) as e:
        raise AdapterFileError(where, f"metadata field 'policy' is invalid ({e})") from None
    targets = plan(G, policy)
    listed = [(x[0], x[1], tuple(x[2])) for x in meta["targets"]]
    if listed != [(t.key, t.kind, tuple(t.shape)) for t in targets]:
        raise AdapterFileError(where, f"its target list does not match this base model's architecture "
                                      f"({len(listed)} targets in the file, {len(targets)} expected)")
    adapter = PersonAdapter(targets, policy, fc_after_gain=lora_fc_after_gain(meta["format_version"]))
    with torch.no_grad():
        for name, param in adapter.file_tensors().items():
            param.copy_(torch.from_numpy(data.tensors[name]).to(param.dtype))
    anchors = None
    if data.anchor_ws is not None:
        anchors = Anchors(torch.from_numpy(data.anchor_ws), torch.from_numpy(data.anchor_c), data.anchor_names)
    return adapter, anchors, meta
