"""Adapter files read without torch: safetensors parsed with `safetensors.numpy`, metadata as JSON, every field checked.

An adapter file (written by generator.adapter_file.save_adapter) holds the person's LoRA A/B pairs and full personal
tensors, their anchors ('anchors.ws' W or W+ latents, 'anchors.c' cameras) and JSON metadata under the key
'my3dgen_adapter' (rank, alpha, layout, policy, targets, base_fingerprint, anchor_names). Nothing in it is executed.
The file is read once into memory, so its hash and its tensors always describe the same bytes.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import AdapterInvalid

META_KEY = "my3dgen_adapter"
FORMAT = "my3dgen-adapter"
FORMAT_VERSION = 1
ANCHOR_KEYS = ("anchors.ws", "anchors.c")
MAX_HEADER_BYTES = 64 << 20


@dataclass
class AdapterData:
    """A parsed, checked adapter file."""

    path: Path
    """Where it was read from."""
    sha256: str
    """'sha256:<hex>' of the file bytes: the identity used in cache keys."""
    meta: dict[str, Any]
    """The 'my3dgen_adapter' metadata."""
    tensors: dict[str, np.ndarray]
    """Adapter tensors by file name (float32), anchors excluded."""
    anchor_ws: np.ndarray | None = None
    """[K, w_dim] or [K, num_ws, w_dim] float32, or None when the file has no anchors."""
    anchor_c: np.ndarray | None = None
    """[K, 25] float32 camera labels."""
    anchor_names: list[str] = field(default_factory=list)
    """One name per anchor."""
    file_bytes: int = 0
    """Size of the file."""

    @property
    def num_parameters(self) -> int:
        return int(sum(t.size for t in self.tensors.values()))


def expected_lora_shapes(shape: list[int], rank: int, layout: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """(A, B) shapes of a weight [out, in] or [out, in, k, k] (the same rule as generator.lora.lora_shapes)."""
    out_f, in_f = shape[0], shape[1]
    k = shape[2] if len(shape) == 4 else 1
    if layout == "loralib" and k > 1:
        return (rank * k, in_f * k), (out_f * k, rank * k)
    return (rank, in_f * k * k), (out_f, rank)


def parse_safetensors(data: bytes, where: str) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """(metadata, tensors) of safetensors bytes; any malformation is an AdapterInvalid naming `where`."""
    from safetensors.numpy import load
    if len(data) < 8:
        raise AdapterInvalid(where, f"not a safetensors file ({len(data)} bytes)")
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or n > min(len(data) - 8, MAX_HEADER_BYTES):
        raise AdapterInvalid(where, f"not a safetensors file (header length {n} for a {len(data)}-byte file)")
    try:
        header = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AdapterInvalid(where, f"safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise AdapterInvalid(where, "safetensors header is not a JSON object")
    meta = header.get("__metadata__") or {}
    try:
        tensors = load(data)
    except Exception as e:  # safetensors raises several types for bad offsets / dtypes
        raise AdapterInvalid(where, f"not a readable safetensors file ({type(e).__name__}: {e})") from None
    return meta, tensors


def _need(cond: bool, where: str, reason: str) -> None:
    if not cond:
        raise AdapterInvalid(where, reason)


def read_adapter(path: str | os.PathLike, w_dim: int | None = None, num_ws: int | None = None) -> AdapterData:
    """Read and check an adapter file: format, metadata fields, tensors named by its targets, shapes, finiteness,
    anchors. `w_dim`/`num_ws` (when given) are checked against the anchors."""
    path = Path(path)
    where = str(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise AdapterInvalid(where, f"cannot be read ({e.strerror or e})") from None
    meta_raw, raw = parse_safetensors(data, where)
    _need(META_KEY in meta_raw, where, f"no '{META_KEY}' metadata (not a my3dgen adapter file)")
    try:
        meta = json.loads(meta_raw[META_KEY])
    except json.JSONDecodeError as e:
        raise AdapterInvalid(where, f"metadata '{META_KEY}' is not valid JSON ({e})") from None
    _need(isinstance(meta, dict), where, f"metadata '{META_KEY}' is not a JSON object")
    _need(meta.get("format") == FORMAT and meta.get("format_version") == FORMAT_VERSION, where,
          f"metadata field 'format' is {meta.get('format')!r} version {meta.get('format_version')!r}, "
          f"expected {FORMAT!r} version {FORMAT_VERSION}")
    for key, kind in (("rank", int), ("alpha", (int, float)), ("layout", str), ("policy", dict), ("targets", list),
                      ("base_fingerprint", str)):
        _need(isinstance(meta.get(key), kind) and not isinstance(meta.get(key), bool), where,
              f"metadata field '{key}' is missing or not a {getattr(kind, '__name__', 'number')}")
    rank, layout = meta["rank"], meta["layout"]
    _need(rank >= 1 and math.isfinite(float(meta["alpha"])), where,
          f"metadata fields 'rank'/'alpha' are invalid ({rank}, {meta['alpha']})")

    expected: dict[str, tuple[int, ...]] = {}
    for i, t in enumerate(meta["targets"]):
        _need(isinstance(t, list) and len(t) == 3 and isinstance(t[0], str) and t[1] in ("lora", "full")
              and isinstance(t[2], list) and all(isinstance(s, int) and s > 0 for s in t[2]), where,
              f"metadata field 'targets'[{i}] is malformed: {str(t)[:80]}")
        key, kind, shape = t
        if kind == "lora":
            _need(len(shape) in (2, 4), where, f"LoRA target {key} has shape {shape}: expected 2-D or 4-D")
            a, b = expected_lora_shapes(shape, rank, layout)
            module = key.rsplit(".", 1)[0]
            expected[f"{module}.lora_A"], expected[f"{module}.lora_B"] = a, b
        else:
            expected[key] = tuple(shape)
    found = {k: tuple(v.shape) for k, v in raw.items() if k not in ANCHOR_KEYS}
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    shaped = sorted(f"{k} {found[k]} (expected {expected[k]})" for k in set(expected) & set(found)
                    if found[k] != expected[k])
    problems = [f"{label} tensors: " + ", ".join(items[:5]) + (f", ... ({len(items)} in all)" if len(items) > 5
                                                                 else "")
                for label, items in (("missing", missing), ("unexpected", extra), ("mis-shaped", shaped)) if items]
    _need(not problems, where, "; ".join(problems))
    tensors = {}
    for k, v in raw.items():
        _need(v.dtype in (np.float32, np.float16), where, f"tensor '{k}' has dtype {v.dtype} (float32/16 expected)")
        v = v.astype(np.float32)
        _need(bool(np.isfinite(v).all()), where, f"tensor '{k}' has non-finite values")
        tensors[k] = v
    anchor_ws, anchor_c = tensors.pop("anchors.ws", None), tensors.pop("anchors.c", None)
    names = meta.get("anchor_names") or []
    if anchor_ws is not None or anchor_c is not None:
        _need(anchor_ws is not None and anchor_c is not None, where, "has only one of 'anchors.ws' and 'anchors.c'")
        k = anchor_ws.shape[0]
        _need(anchor_ws.ndim in (2, 3) and k >= 1, where, f"tensor 'anchors.ws' has shape {anchor_ws.shape}: "
                                                         f"expected [K, w_dim] or [K, num_ws, w_dim]")
        if w_dim is not None:
            _need(anchor_ws.shape[-1] == w_dim, where, f"tensor 'anchors.ws' has w_dim {anchor_ws.shape[-1]}, "
                                                       f"the model's is {w_dim}")
        if num_ws is not None and anchor_ws.ndim == 3:
            _need(anchor_ws.shape[1] == num_ws, where, f"tensor 'anchors.ws' has {anchor_ws.shape[1]} ws, the "
                                                       f"model has {num_ws}")
        _need(anchor_c.shape == (k, 25), where, f"tensor 'anchors.c' has shape {anchor_c.shape}: expected ({k}, 25)")
        if not names:
            names = [f"anchor{i}" for i in range(k)]
        _need(isinstance(names, list) and len(names) == k and all(isinstance(n, str) for n in names), where,
              f"metadata field 'anchor_names' has {len(names)} names for {k} anchors")
    else:
        names = []
    return AdapterData(path=path, sha256="sha256:" + hashlib.sha256(data).hexdigest(), meta=meta, tensors=tensors,
                       anchor_ws=anchor_ws, anchor_c=anchor_c, anchor_names=list(names), file_bytes=len(data))


def file_stamp(path: Path) -> tuple:
    """What identifies a file's current version cheaply (for cache keys): path, inode, size, mtime."""
    st = path.stat()
    return str(path), st.st_ino, st.st_size, st.st_mtime_ns
