"""Latent files: one W or W+ latent saved with numpy, the way EG3D's projector saves its result.

EG3D's `projector.py` writes `projected_w.npz` with one array 'w' of shape [1, num_ws, w_dim]; a bare `.npy` holds
the array itself. Accepted shapes: [1, num_ws, w_dim], W+ [num_ws, w_dim] and W [w_dim] (repeated to every ws);
dtype float16, float32 or float64; every value finite once in float32.

A latent file is untrusted input (a user passes someone else's projection): it is read without pickle
(`np.load(allow_pickle=False)`), from a regular file of at most `Limits.max_latent_file_bytes`, and the array's
header (shape, dtype) is checked before its data is read, so neither an object array, a header claiming a huge
shape, nor a zip member that inflates without end can run code or allocate more than the file's limit.
"""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np

from formats.errors import FormatError
from formats.limits import Limits, current_limits, raise_hint
from formats.tensors import open_regular

LATENT_SUFFIXES = (".npz", ".npy")
"""The file names of a latent file (case-insensitive)."""
NPZ_KEY = "w"
"""The array of a .npz latent file, as EG3D's projected_w.npz names it."""
FLOAT_BYTES = (2, 4, 8)
"""Bytes per element of the accepted float dtypes (float16, float32, float64)."""


class LatentFileError(FormatError):
    """A latent file (.npz / .npy) that is missing, too large, not numpy's format, or not a latent of the model."""


def is_latent_path(text: str | os.PathLike) -> bool:
    """True when `text` names a latent file by its suffix (.npz or .npy, any case)."""
    return str(text).lower().endswith(LATENT_SUFFIXES)


def _bounded_read(f, limit: int, where: str, what: str) -> bytes:
    """At most `limit` bytes of stream `f`; more is a LatentFileError naming the limit."""
    data = f.read(limit + 1)
    if len(data) > limit:
        raise LatentFileError(where, f"{what} exceeds the limit max_latent_file_bytes={limit}; "
                                     + raise_hint("max_latent_file_bytes"))
    return data


def _npz_member(data: bytes, where: str, limit: int) -> bytes:
    """The bytes of the .npy member 'w' of a .npz file's bytes, read at most to `limit` bytes."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = z.namelist()
            if f"{NPZ_KEY}.npy" not in names:
                held = ", ".join(repr(n.removesuffix(".npy")[:40]) for n in names[:10]) or "nothing"
                raise LatentFileError(where, f"has no array {NPZ_KEY!r} (EG3D's projected_w.npz keeps the latent "
                                             f"there); it holds {held}")
            with z.open(f"{NPZ_KEY}.npy") as member:
                return _bounded_read(member, limit, where, f"array {NPZ_KEY!r} unpacked")
    except LatentFileError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError, OSError,
            ValueError) as e:  # not a zip, an unsupported or encrypted member, a corrupt stream
        raise LatentFileError(where, f"not a readable .npz file ({type(e).__name__}: {e})") from None


def _check_header(array: bytes, where: str, num_ws: int, w_dim: int) -> None:
    """Refuse an .npy stream whose header states a dtype other than a float or a shape other than a latent's."""
    stream = io.BytesIO(array)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"numpy format version {version[0]}.{version[1]} (a latent is 1.0 or 2.0)")
    except (ValueError, EOFError) as e:
        raise LatentFileError(where, f"not a readable numpy array ({e})") from None
    if dtype.kind != "f" or dtype.itemsize not in FLOAT_BYTES:
        pickled = " (an object array, which would need pickle, is never read)" if dtype.hasobject else ""
        raise LatentFileError(where, f"dtype {dtype}: a latent is float16, float32 or float64{pickled}")
    if shape not in ((1, num_ws, w_dim), (num_ws, w_dim), (w_dim,)):
        raise LatentFileError(where, f"shape {list(shape)}: this model's latent is [1, {num_ws}, {w_dim}] (EG3D's "
                                     f"projected_w.npz), W+ [{num_ws}, {w_dim}] or W [{w_dim}]")


def read_latent(path: str | os.PathLike, num_ws: int, w_dim: int, limits: Limits | None = None) -> np.ndarray:
    """W+ [num_ws, w_dim] float32 of latent file `path` (see the module docstring); anything else is a
    LatentFileError naming the file and what is wrong."""
    where, lim = str(path), current_limits(limits)
    if not is_latent_path(path):
        raise LatentFileError(where, f"a latent file ends in {' or '.join(LATENT_SUFFIXES)}")
    f, size = open_regular(path, LatentFileError, limits, "latent file")
    with f:
        if size > lim.max_latent_file_bytes:
            raise LatentFileError(where, f"{size} bytes exceed the limit max_latent_file_bytes="
                                         f"{lim.max_latent_file_bytes}; " + raise_hint("max_latent_file_bytes"))
        data = _bounded_read(f, lim.max_latent_file_bytes, where, "the file")
    array = _npz_member(data, where, lim.max_latent_file_bytes) if Path(where).suffix.lower() == ".npz" else data
    _check_header(array, where, num_ws, w_dim)
    try:
        w = np.load(io.BytesIO(array), allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:  # data shorter than the header says, ...
        raise LatentFileError(where, f"not a readable numpy array ({e})") from None
    with np.errstate(over="ignore"):
        w = np.asarray(w, dtype=np.float32)
    if not np.isfinite(w).all():
        raise LatentFileError(where, "has non-finite values (NaN or infinity, or beyond float32)")
    if w.ndim == 1:
        return np.repeat(w[None], num_ws, axis=0)
    return np.ascontiguousarray(w.reshape(num_ws, w_dim))
