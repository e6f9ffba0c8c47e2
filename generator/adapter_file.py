"""Adapter files: one safetensors file per person with the adapter tensors, the person's anchors and JSON metadata.

Tensors: '<module>.lora_A' / '<module>.lora_B' for LoRA pairs, base key names for full personal tensors (biases,
decoder, ...), 'anchors.ws' ([K, w_dim] W latents or [K, num_ws, w_dim] W+) and 'anchors.c' ([K, 25] cameras).
Metadata key 'my3dgen_adapter' holds JSON: format version, rank, alpha, layout, the policy, the target list, the
base model's weights fingerprint and anchor names. Loading checks all of it against the base model.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from generator.atomic import atomic_file
from generator.lora import AdapterPolicy, PersonAdapter, plan
from generator.model_dir import weights_fingerprint

FORMAT = "my3dgen-adapter"
FORMAT_VERSION = 1
META_KEY = "my3dgen_adapter"


class AdapterFileError(ValueError):
    """An adapter file that cannot be used with this base model; the message says which file and why."""


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
        if isinstance(name_or_index, int) or str(name_or_index).isdigit():
            i = int(name_or_index)
            if not 0 <= i < len(self.names):
                raise KeyError(f"anchor index {i} out of range (0..{len(self.names) - 1})")
            return i
        if name_or_index not in self.names:
            raise KeyError(f"unknown anchor {name_or_index!r}; known: {', '.join(self.names)}")
        return self.names.index(name_or_index)


def base_fingerprint(G: torch.nn.Module) -> str:
    """Fingerprint of the base weights (cached on G; G's base tensors never change while adapters are attached)."""
    fp = getattr(G, "_base_fingerprint", None)
    if fp is None:
        fp = weights_fingerprint(G.state_dict())
        G._base_fingerprint = fp
    return fp


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
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "rank": policy.rank,
        "alpha": policy.alpha,
        "layout": policy.layout,
        "policy": dataclasses.asdict(policy),
        "targets": [[t.key, t.kind, list(t.shape)] for t in adapter.targets.values()],
        "base_fingerprint": base_fingerprint(G),
        "dtype": str(dtype).replace("torch.", ""),
        "anchor_names": anchors.names if anchors is not None else [],
        "extra": extra or {},
    }
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)})
    return Path(path)


def read_adapter_meta(path: str | os.PathLike) -> dict:
    """The adapter's JSON metadata, without loading tensors."""
    path = Path(path)
    if not path.is_file():
        raise AdapterFileError(f"{path}: no such adapter file")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except Exception as e:
        raise AdapterFileError(f"{path}: not a readable safetensors file ({e})") from None
    if raw is None:
        raise AdapterFileError(f"{path}: no '{META_KEY}' metadata (not a my3dgen adapter file)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise AdapterFileError(f"{path}: metadata is not valid JSON ({e})") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise AdapterFileError(f"{path}: format {meta.get('format')!r} version {meta.get('format_version')!r} "
                               f"is not {FORMAT!r} version {FORMAT_VERSION}")
    return meta


def load_adapter(path: str | os.PathLike, G: torch.nn.Module, check_base: bool = True
                 ) -> tuple[PersonAdapter, Anchors | None, dict]:
    """Load an adapter for base model G: checks the fingerprint, the target list and every tensor's shape."""
    path = Path(path)
    meta = read_adapter_meta(path)
    if check_base and meta.get("base_fingerprint") != base_fingerprint(G):
        raise AdapterFileError(f"{path}: made for a different base model (adapter base "
                               f"{str(meta.get('base_fingerprint'))[:19]}..., this model {base_fingerprint(G)[:19]}...)")
    try:
        policy = AdapterPolicy(**{k: tuple(v) if isinstance(v, list) else v
                                  for k, v in meta["policy"].items()}).validate()
    except (KeyError, TypeError, ValueError) as e:
        raise AdapterFileError(f"{path}: metadata field 'policy' is invalid ({e})") from None
    targets = plan(G, policy)
    listed = [tuple(x[:2]) for x in meta.get("targets", [])]
    if listed != [(t.key, t.kind) for t in targets]:
        raise AdapterFileError(f"{path}: its target list does not match this base model's architecture "
                               f"({len(listed)} targets in the file, {len(targets)} expected)")
    adapter = PersonAdapter(targets, policy)
    expected = {k: tuple(v.shape) for k, v in adapter.file_tensors().items()}
    with safe_open(str(path), framework="pt") as f:
        found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        problems = []
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected) - {"anchors.ws", "anchors.c"})
        shaped = sorted(f"{k} {found[k]} (expected {expected[k]})" for k in set(expected) & set(found)
                        if found[k] != expected[k])
        for label, items in (("missing", missing), ("unexpected", extra), ("mis-shaped", shaped)):
            if items:
                problems.append(f"{label} tensors: " + ", ".join(items[:6]) +
                                (f", ... ({len(items)} in all)" if len(items) > 6 else ""))
        if problems:
            raise AdapterFileError(f"{path}: " + "; ".join(problems))
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    bad = sorted(k for k, v in tensors.items() if not torch.isfinite(v.float()).all())
    if bad:
        raise AdapterFileError(f"{path}: non-finite values in {', '.join(bad[:6])}")
    with torch.no_grad():
        for name, param in adapter.file_tensors().items():
            param.copy_(tensors[name].to(param.dtype))
    anchors = None
    if "anchors.ws" in tensors:
        try:
            anchors = Anchors(tensors["anchors.ws"].float(), tensors["anchors.c"].float(), meta.get("anchor_names", []))
        except (KeyError, ValueError) as e:
            raise AdapterFileError(f"{path}: anchors are inconsistent ({e})") from None
    return adapter, anchors, meta
