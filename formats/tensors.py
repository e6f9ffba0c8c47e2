"""safetensors files read with numpy (nothing executed), and the report of tensors that do not match expectations."""
from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO, Mapping

import numpy as np

from formats.errors import FormatError
from formats.limits import Limits, current_limits, raise_hint

DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
"""Bytes per element of each safetensors dtype name."""


def header_length(prefix: bytes, size: int, where: str, error: type[FormatError], limits: Limits | None = None) -> int:
    """The JSON header length from a file's first 8 bytes, checked against the file size and `max_header_bytes`
    (a corrupt length must not make us allocate gigabytes)."""
    if size < 8 or len(prefix) < 8:
        raise error(where, f"not a readable safetensors file ({size} bytes)")
    n = int.from_bytes(prefix[:8], "little")
    cap = current_limits(limits).max_header_bytes
    if n <= 0 or n > size - 8:
        raise error(where, f"not a readable safetensors file (header length {n} for a {size}-byte file)")
    if n > cap:
        raise error(where, f"safetensors header of {n} bytes exceeds the limit max_header_bytes={cap}; "
                           + raise_hint("max_header_bytes"))
    return n


def parse_header(raw: bytes, where: str, error: type[FormatError]) -> dict[str, Any]:
    """The safetensors JSON header (tensor entries and '__metadata__')."""
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise error(where, f"not a readable safetensors file (header is not valid JSON: {e})") from None
    if not isinstance(header, dict):
        raise error(where, "not a readable safetensors file (header is not a JSON object)")
    return header


def check_header(header: dict[str, Any], body_bytes: int, where: str, error: type[FormatError],
                 limits: Limits | None = None) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Validate a parsed header before any tensor is read: string metadata within `max_metadata_bytes`, at most
    `max_tensors` entries, each a known dtype with a shape of non-negative ints whose byte size equals its data
    offsets inside the body. Returns name -> (dtype name, shape)."""
    lim = current_limits(limits)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise error(where, "not a readable safetensors file ('__metadata__' is not an object of strings)")
    meta_bytes = sum(len(k.encode("utf-8", "replace")) + len(v.encode("utf-8", "replace")) for k, v in meta.items())
    if meta_bytes > lim.max_metadata_bytes:
        raise error(where, f"metadata of {meta_bytes} bytes exceeds the limit max_metadata_bytes="
                           f"{lim.max_metadata_bytes}; " + raise_hint("max_metadata_bytes"))
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    if len(entries) > lim.max_tensors:
        raise error(where, f"{len(entries)} tensors exceed the limit max_tensors={lim.max_tensors}; "
                           + raise_hint("max_tensors"))
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, e in entries.items():
        ok = (isinstance(e, dict) and e.get("dtype") in DTYPE_BYTES and isinstance(e.get("shape"), list)
              and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in e["shape"])
              and isinstance(e.get("data_offsets"), list) and len(e["data_offsets"]) == 2
              and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in e["data_offsets"]))
        if not ok:
            raise error(where, f"tensor '{name[:80]}' has a malformed header entry (dtype, shape, data_offsets)")
        count = math.prod(e["shape"])
        start, stop = e["data_offsets"]
        if stop < start or stop > body_bytes or stop - start != count * DTYPE_BYTES[e["dtype"]]:
            raise error(where, f"tensor '{name[:80]}' of shape {e['shape']} ({e['dtype']}) does not fit its data "
                               f"offsets {e['data_offsets']} in a {body_bytes}-byte body")
        out[name] = (e["dtype"], tuple(e["shape"]))
    return out


def open_regular(path: str | os.PathLike, error: type[FormatError] = FormatError, limits: Limits | None = None,
                 what: str = "file") -> tuple[BinaryIO, int]:
    """Open a regular file for reading: (file object, size). FIFOs, devices, sockets and directories are refused
    before they are opened (reading /dev/zero never ends; opening a FIFO blocks), and so is a file larger than
    `max_file_bytes`. A missing or unreadable file is `error(path, ...)`."""
    path, lim = str(path), current_limits(limits)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise error(path, f"is not a regular {what} (a directory, FIFO, device or socket): refused")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise error(path, f"no such {what}") from None
    except OSError as e:
        raise error(path, f"cannot be read ({e.strerror or e})") from None
    f = os.fdopen(fd, "rb")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # replaced between the stat and the open
        f.close()
        raise error(path, f"is not a regular {what}: refused")
    if st.st_size > lim.max_file_bytes:
        f.close()
        raise error(path, f"{st.st_size} bytes exceed the limit max_file_bytes={lim.max_file_bytes}; "
                          + raise_hint("max_file_bytes"))
    return f, st.st_size


def read_header(path: str | os.PathLike, error: type[FormatError] = FormatError, limits: Limits | None = None
                ) -> tuple[dict[str, str], dict[str, tuple[str, tuple[int, ...]]]]:
    """(metadata, name -> (dtype, shape)) of a safetensors file, reading and checking only its header."""
    f, size = open_regular(path, error, limits)
    with f:
        n = header_length(f.read(8), size, str(path), error, limits)
        header = parse_header(f.read(n), str(path), error)
    entries = check_header(header, size - 8 - n, str(path), error, limits)
    return header.get("__metadata__") or {}, entries


def read_metadata(path: str | os.PathLike, error: type[FormatError] = FormatError,
                  limits: Limits | None = None) -> dict[str, str]:
    """The '__metadata__' strings of a safetensors file, reading only its header."""
    return read_header(path, error, limits)[0]


def read_file_bytes(path: str | os.PathLike, error: type[FormatError] = FormatError, limits: Limits | None = None,
                    what: str = "file") -> bytes:
    """The bytes of a regular file within `max_file_bytes` (special files refused; see `open_regular`)."""
    f, size = open_regular(path, error, limits, what)
    with f:
        data = f.read(size + 1)
    if len(data) != size:
        raise error(str(path), f"changed size while being read ({size} -> {len(data)} bytes)")
    return data


def parse_safetensors(data: bytes, where: str, error: type[FormatError] = FormatError, limits: Limits | None = None
                      ) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """(metadata, tensors) of safetensors bytes; the header is checked (`check_header`) before any tensor is
    built, and any malformation is `error(where, reason)`."""
    from safetensors.numpy import load
    n = header_length(data[:8], len(data), where, error, limits)
    header = parse_header(data[8:8 + n], where, error)
    check_header(header, len(data) - 8 - n, where, error, limits)
    try:
        tensors = load(data)
    except Exception as e:  # safetensors raises several types for bad offsets / dtypes
        raise error(where, f"not a readable safetensors file ({type(e).__name__}: {e})") from None
    return header.get("__metadata__") or {}, tensors


def read_safetensors(path: str | os.PathLike, error: type[FormatError] = FormatError, limits: Limits | None = None
                     ) -> tuple[dict[str, str], dict[str, np.ndarray], bytes]:
    """(metadata, tensors, file bytes) of a safetensors file: header first (checked), then the bounded body."""
    read_header(path, error, limits)
    data = read_file_bytes(path, error, limits)
    meta, tensors = parse_safetensors(data, str(path), error, limits)
    return meta, tensors, data


def save_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: dict[str, str]) -> Path:
    """Write numpy tensors (made C-contiguous) and string metadata as a safetensors file, atomically."""
    from safetensors.numpy import save_file

    from formats.atomic import atomic_file
    with atomic_file(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return Path(path)


def shape_problems(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]],
                   shown: int = 6) -> list[str]:
    """'missing tensors: ...', 'unexpected tensors: ...', 'mis-shaped tensors: k (found) (expected (e))' lines
    (empty when the two sets of names and shapes agree); each lists at most `shown` names and the count."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    shaped = sorted(f"{k} {tuple(found[k])} (expected {tuple(expected[k])})" for k in set(expected) & set(found)
                    if tuple(found[k]) != tuple(expected[k]))
    return [f"{label} tensors: " + ", ".join(items[:shown]) + (f", ... ({len(items)} in all)"
                                                              if len(items) > shown else "")
            for label, items in (("missing", missing), ("unexpected", extra), ("mis-shaped", shaped)) if items]
