"""sha256 fingerprints, all written as 'sha256:<hex>': of a file's bytes, and of a set of named weight tensors."""
from __future__ import annotations

import hashlib
import os
import stat
from typing import Iterable, Mapping

import numpy as np

PREFIX = "sha256:"


def sha256_bytes(data: bytes | memoryview) -> str:
    return PREFIX + hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Fingerprint of a regular file's bytes (read in 1 MiB chunks); a device or FIFO is a ValueError (reading
    /dev/zero would never end)."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError(f"{path}: not a regular file: refused")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return PREFIX + h.hexdigest()


def weights_fingerprint(entries: Iterable[tuple[str, str, tuple[int, ...], bytes | memoryview]]) -> str:
    """Fingerprint of named tensors given as (name, dtype label, shape, raw bytes), in name order.

    Each tensor contributes 'name|dtype|shape|' then its bytes. The dtype label is spelled as torch spells it
    ('torch.float32'), because model directories and adapter files written since the first version record
    fingerprints made that way; `weights_fingerprint_of` does the same for numpy arrays.
    """
    h = hashlib.sha256()
    for name, dtype, shape, data in sorted(entries, key=lambda e: e[0]):
        h.update(f"{name}|{dtype}|{tuple(int(s) for s in shape)}|".encode())
        h.update(data)
    return PREFIX + h.hexdigest()


def weights_fingerprint_of(arrays: Mapping[str, np.ndarray]) -> str:
    """`weights_fingerprint` of numpy arrays (C-contiguous bytes; dtype labelled 'torch.<numpy dtype name>')."""
    return weights_fingerprint((k, f"torch.{a.dtype.name}", a.shape, np.ascontiguousarray(a).tobytes())
                               for k, a in arrays.items())
