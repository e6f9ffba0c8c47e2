"""Adapter files: one safetensors file per person. The schema, the LoRA shape rule and the checked reader.

Tensors: '<module>.lora_A' / '<module>.lora_B' for each LoRA target (shapes from `lora_shapes`), the base key name
for each full personal tensor (biases, decoder, ...), and optionally the person's anchors: 'anchors.ws' ([K, w_dim]
W or [K, num_ws, w_dim] W+ latents) and 'anchors.c' ([K, 25] camera labels, always float32). Tensors are float32
or float16. Nothing in the file is executed.

Metadata key 'my3dgen_adapter' holds JSON (`adapter_metadata` writes it, `read_adapter` checks it):

    format, format_version   'my3dgen-adapter', 2 (1 still reads; see FORMAT_VERSION)
    rank, alpha, layout      the LoRA rank, its alpha (scale = alpha / rank) and 'loralib' or 'flat'
    policy                   the full adapter policy (generator.lora.AdapterPolicy as a dict)
    targets                  [[base key, 'lora' | 'full', base shape], ...] in the model's order
    base_fingerprint         weights fingerprint of the base model it was trained on (formats.fingerprint)
    dtype                    'float32' or 'float16'
    anchor_names             one name per anchor (usually the photo's file name)
    extra                    free-form provenance

Writers: generator.adapter_file.save_adapter (training, inversion). Readers: generator.adapter_file.load_adapter
(torch, onto a base model) and the runtime (`read_adapter` here, no torch).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from formats.errors import AdapterFileError
from formats.fingerprint import sha256_bytes
from formats.limits import Limits, current_limits, raise_hint
from formats.tensors import parse_safetensors, read_file_bytes, read_header, shape_problems
from formats.versioned_json import parse_versioned_json

FORMAT = "my3dgen-adapter"
FORMAT_VERSION = 2
"""Version 2: the LoRA delta of a fully connected layer (the style affines; the mapping's FCs) acts after the
layer's equalized-lr weight gain, W0 * gain + (alpha / r) * B @ A, as in the authors' code, instead of before it
(version 1: (W0 + (alpha / r) * B @ A) * gain, which moved the style layers ~sqrt(w_dim) times less per step).
Convolution deltas are the same in both. Version-1 files keep their own rule (`lora_fc_after_gain`)."""
READABLE_VERSIONS = (1, 2)


def lora_fc_after_gain(format_version: int) -> bool:
    """Whether an adapter of `format_version` adds its fully connected LoRA deltas after the layer's gain."""
    return format_version >= 2

META_KEY = "my3dgen_adapter"
ANCHOR_KEYS = ("anchors.ws", "anchors.c")
LAYOUTS = ("loralib", "flat")
DTYPES = ("float32", "float16")


def lora_shapes(shape: tuple[int, ...] | list[int], rank: int, layout: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """(A, B) shapes of the LoRA pair of a weight [out, in] or [out, in, k, k].

    'loralib' (Hu et al.'s convolution layout, the paper's budget): A [r*k, in*k], B [out*k, r*k] for k > 1;
    'flat' (PEFT's): A [r, in*k*k], B [out, r]. For a 2-D weight both are A [r, in], B [out, r].
    """
    out_f, in_f = shape[0], shape[1]
    k = shape[2] if len(shape) == 4 else 1
    if layout == "loralib" and k > 1:
        return (rank * k, in_f * k), (out_f * k, rank * k)
    return (rank, in_f * k * k), (out_f, rank)


def lora_tensor_names(key: str) -> tuple[str, str]:
    """File names of the LoRA pair of base weight `key`: '<module>.lora_A', '<module>.lora_B'."""
    module = key.rsplit(".", 1)[0]
    return f"{module}.lora_A", f"{module}.lora_B"


def adapter_metadata(*, rank: int, alpha: float, layout: str, policy: dict[str, Any], targets: list[list],
                     base_fingerprint: str, dtype: str, anchor_names: list[str], extra: dict | None = None,
                     format_version: int = FORMAT_VERSION) -> dict[str, Any]:
    """The 'my3dgen_adapter' JSON object of a new adapter file (fields in their documented order).

    `format_version` 1 is only for re-saving an adapter that was read from a version-1 file (its fully connected
    deltas keep the version-1 rule)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: adapters are stored as {' or '.join(DTYPES)}")
    if format_version not in READABLE_VERSIONS:
        raise ValueError(f"format_version={format_version!r}: expected one of {READABLE_VERSIONS}")
    return {"format": FORMAT, "format_version": format_version, "rank": rank, "alpha": alpha, "layout": layout,
            "policy": policy, "targets": targets, "base_fingerprint": base_fingerprint, "dtype": dtype,
            "anchor_names": list(anchor_names), "extra": extra or {}}


def expected_shapes(meta: dict[str, Any], where: str) -> dict[str, tuple[int, ...]]:
    """File tensor name -> shape that checked metadata implies (anchors excluded)."""
    expected: dict[str, tuple[int, ...]] = {}
    for i, t in enumerate(meta["targets"]):
        if not (isinstance(t, list) and len(t) == 3 and isinstance(t[0], str) and t[1] in ("lora", "full")
                and isinstance(t[2], list) and all(isinstance(s, int) and s > 0 for s in t[2])):
            raise AdapterFileError(where, f"metadata field 'targets'[{i}] is malformed: {str(t)[:80]}")
        key, kind, shape = t
        if kind == "lora":
            if len(shape) not in (2, 4):
                raise AdapterFileError(where, f"LoRA target {key} has shape {shape}: expected 2-D or 4-D")
            name_a, name_b = lora_tensor_names(key)
            expected[name_a], expected[name_b] = lora_shapes(shape, meta["rank"], meta["layout"])
        else:
            expected[key] = tuple(shape)
    return expected


def check_metadata(raw: str | None, where: str, limits: Limits | None = None) -> dict[str, Any]:
    """Parse and check the 'my3dgen_adapter' JSON, the one validator of adapter metadata every reader uses: format,
    version, and the type and range of every field (rank an int in [1, max_rank], alpha a finite number with
    |alpha| <= max_alpha, a known layout and dtype, well-formed targets, at most max_anchors string anchor names)."""
    lim = current_limits(limits)
    if raw is None:
        raise AdapterFileError(where, f"no '{META_KEY}' metadata (not a my3dgen adapter file)")
    if len(raw) > lim.max_metadata_bytes:
        raise AdapterFileError(where, f"metadata '{META_KEY}' of {len(raw)} bytes exceeds the limit "
                                      f"max_metadata_bytes={lim.max_metadata_bytes}; "
                                      + raise_hint("max_metadata_bytes"))
    meta = parse_versioned_json(raw, where, FORMAT, READABLE_VERSIONS, AdapterFileError, what=f"metadata '{META_KEY}'")
    for key, kind in (("rank", int), ("alpha", (int, float)), ("layout", str), ("policy", dict), ("targets", list),
                      ("base_fingerprint", str)):
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise AdapterFileError(where, f"metadata field '{key}' is missing or not a "
                                          f"{getattr(kind, '__name__', 'number')} (got {_shown(meta.get(key))})")
    if not 1 <= meta["rank"] <= lim.max_rank:
        raise AdapterFileError(where, f"metadata field 'rank' is {meta['rank']}: expected 1..{lim.max_rank}")
    alpha = float(meta["alpha"])
    if not math.isfinite(alpha) or abs(alpha) > lim.max_alpha:
        raise AdapterFileError(where, f"metadata field 'alpha' is {meta['alpha']!r}: expected a finite number with "
                                      f"|alpha| <= max_alpha={lim.max_alpha:g}")
    if meta["layout"] not in LAYOUTS:
        raise AdapterFileError(where, f"metadata field 'layout' is {_shown(meta['layout'])}, expected one of "
                                      f"{LAYOUTS}")
    if "dtype" in meta and meta["dtype"] not in DTYPES:
        raise AdapterFileError(where, f"metadata field 'dtype' is {_shown(meta['dtype'])}, expected one of {DTYPES}")
    if len(meta["targets"]) > lim.max_tensors:
        raise AdapterFileError(where, f"metadata field 'targets' lists {len(meta['targets'])} targets, more than "
                                      f"max_tensors={lim.max_tensors}")
    names = meta.get("anchor_names")
    if names is not None:
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise AdapterFileError(where, f"metadata field 'anchor_names' must be a list of strings, got "
                                          f"{_shown(names)}")
        if len(names) > lim.max_anchors:
            raise AdapterFileError(where, f"metadata field 'anchor_names' has {len(names)} names, more than "
                                          f"max_anchors={lim.max_anchors}; " + raise_hint("max_anchors"))
        if any(not 1 <= len(n) <= lim.max_anchor_name_chars or any(ord(ch) < 32 for ch in n) for n in names):
            raise AdapterFileError(where, f"metadata field 'anchor_names' has a name that is empty, longer than "
                                          f"{lim.max_anchor_name_chars} characters or holds control characters")
    if "extra" in meta and not isinstance(meta["extra"], dict):
        raise AdapterFileError(where, f"metadata field 'extra' must be an object, got {_shown(meta['extra'])}")
    return meta


def _shown(value: Any, n: int = 40) -> str:
    text = f"{type(value).__name__} {value!r}"
    return text if len(text) <= n else text[:n] + "..."


def check_tensor_header(entries: dict[str, tuple[str, tuple[int, ...]]], meta: dict[str, Any], where: str,
                        limits: Limits | None = None) -> None:
    """Check an adapter's tensor names, shapes and dtypes (float32/float16 only) and its anchor count from the
    safetensors header, before any tensor is read."""
    lim = current_limits(limits)
    for k, (dtype, _) in entries.items():
        if dtype not in ("F32", "F16"):
            raise AdapterFileError(where, f"tensor '{k[:80]}' has dtype {dtype} (float32/16 expected)")
    problems = shape_problems(expected_shapes(meta, where),
                              {k: shape for k, (_, shape) in entries.items() if k not in ANCHOR_KEYS}, shown=5)
    if problems:
        raise AdapterFileError(where, "; ".join(problems))
    for key in ANCHOR_KEYS:
        if key in entries and entries[key][1] and entries[key][1][0] > lim.max_anchors:
            raise AdapterFileError(where, f"tensor '{key}' holds {entries[key][1][0]} anchors, more than "
                                          f"max_anchors={lim.max_anchors}; " + raise_hint("max_anchors"))


def read_adapter_meta(path: str | os.PathLike, limits: Limits | None = None) -> dict[str, Any]:
    """The checked metadata of an adapter file, reading only its header."""
    meta_raw, entries = read_header(path, AdapterFileError, limits)
    meta = check_metadata(meta_raw.get(META_KEY), str(path), limits)
    check_tensor_header(entries, meta, str(path), limits)
    return meta


@dataclass
class AdapterData:
    """A parsed, checked adapter file."""

    path: Path
    """Where it was read from."""
    sha256: str
    """'sha256:<hex>' of the file bytes: its identity in caches and manifests."""
    meta: dict[str, Any]
    """The 'my3dgen_adapter' metadata."""
    tensors: dict[str, np.ndarray]
    """Adapter tensors by file name, as float32 (fp16 files are widened exactly), anchors excluded."""
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


def read_adapter(path: str | os.PathLike, w_dim: int | None = None, num_ws: int | None = None,
                 limits: Limits | None = None) -> AdapterData:
    """Read and check an adapter file: format, metadata fields, the tensors its targets imply (names, shapes,
    dtypes, finiteness) and its anchors; `w_dim`/`num_ws` (when given) are checked against the anchors.

    The header is read and checked first (`read_adapter_meta`: metadata, tensor names, shapes, dtypes, anchor
    count within `limits`); then the file is read once into memory, so its hash and its tensors describe the same
    bytes (which are checked again, in case the file changed in between).
    """
    path = Path(path)
    where = str(path)
    read_adapter_meta(path, limits)  # header first: nothing of the body is read before it passes
    data = read_file_bytes(path, AdapterFileError, limits, "adapter file")
    meta_raw, raw = parse_safetensors(data, where, AdapterFileError, limits)
    meta = check_metadata(meta_raw.get(META_KEY), where, limits)
    check_tensor_header({k: ({np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}.get(v.dtype, str(v.dtype)),
                              tuple(v.shape)) for k, v in raw.items()}, meta, where, limits)
    tensors = {}
    for k, v in raw.items():
        if v.dtype not in (np.float32, np.float16):
            raise AdapterFileError(where, f"tensor '{k}' has dtype {v.dtype} (float32/16 expected)")
        v = v.astype(np.float32)
        if not np.isfinite(v).all():
            raise AdapterFileError(where, f"tensor '{k}' has non-finite values")
        tensors[k] = v
    anchor_ws, anchor_c = tensors.pop("anchors.ws", None), tensors.pop("anchors.c", None)
    names = _check_anchors(anchor_ws, anchor_c, meta.get("anchor_names") or [], where, w_dim, num_ws)
    return AdapterData(path=path, sha256=sha256_bytes(data), meta=meta, tensors=tensors, anchor_ws=anchor_ws,
                       anchor_c=anchor_c, anchor_names=names, file_bytes=len(data))


def _check_anchors(ws: np.ndarray | None, c: np.ndarray | None, names: Any, where: str, w_dim: int | None,
                   num_ws: int | None) -> list[str]:
    if ws is None and c is None:
        return []
    if ws is None or c is None:
        raise AdapterFileError(where, "has only one of 'anchors.ws' and 'anchors.c'")
    k = ws.shape[0] if ws.ndim else 0
    if ws.ndim not in (2, 3) or k < 1:
        raise AdapterFileError(where, f"tensor 'anchors.ws' has shape {ws.shape}: expected [K, w_dim] or "
                                      f"[K, num_ws, w_dim]")
    if w_dim is not None and ws.shape[-1] != w_dim:
        raise AdapterFileError(where, f"tensor 'anchors.ws' has w_dim {ws.shape[-1]}, the model's is {w_dim}")
    if num_ws is not None and ws.ndim == 3 and ws.shape[1] != num_ws:
        raise AdapterFileError(where, f"tensor 'anchors.ws' has {ws.shape[1]} ws, the model has {num_ws}")
    if c.shape != (k, 25):
        raise AdapterFileError(where, f"tensor 'anchors.c' has shape {c.shape}: expected ({k}, 25)")
    names = names or [f"anchor{i}" for i in range(k)]
    if len(names) != k:
        raise AdapterFileError(where, f"metadata field 'anchor_names' has {len(names)} names for {k} anchors")
    return list(names)
