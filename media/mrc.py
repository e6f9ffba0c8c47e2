"""A density volume as an MRC2014 file (mode 2, float32), as EG3D's gen_samples.py --shapes writes for ChimeraX.

The 1024-byte header (MRC2014, little-endian), words numbered from 1:
  1-3 NX NY NZ (columns, rows, sections) | 4 MODE = 2 (float32) | 5-7 NXSTART.. = 0 | 8-10 MX MY MZ = NX NY NZ
  11-13 cell lengths (Angstrom; we store voxel size x count) | 14-16 cell angles 90 | 17-19 MAPC/R/S = 1 2 3
  20-22 DMIN DMAX DMEAN | 23 ISPG = 1 (a single volume) | 24 NSYMBT = 0 | 25-49 EXTRA (27 EXTTYP, 28 NVERSION
  = 20140) | 50-52 ORIGIN | 53 'MAP ' | 54 MACHST 0x44 0x44 0 0 (little-endian) | 55 RMS | 56 NLABL | 57-256 labels.
Then the data, NZ sections of NY rows of NX float32, the last array axis fastest: an array [a, b, c] is written
with NZ = a, NY = b, NX = c, exactly as mrcfile writes `mrc.data[:] = array`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from formats.atomic import atomic_file

HEADER_BYTES = 1024


def mrc_header(shape: tuple[int, int, int], data: np.ndarray, cell: tuple[float, float, float],
               label: str = "") -> bytes:
    """The MRC2014 header of a float32 volume of array shape (NZ, NY, NX); see the module docstring."""
    nz, ny, nx = shape
    ints = np.zeros(256, "<i4")
    floats = ints.view("<f4")
    ints[0:3] = nx, ny, nz
    ints[3] = 2
    ints[7:10] = nx, ny, nz
    floats[10:13] = cell
    floats[13:16] = 90.0
    ints[16:19] = 1, 2, 3
    floats[19:22] = data.min(), data.max(), data.mean(dtype=np.float64)
    ints[22] = 1
    ints[27] = 20140
    raw = bytearray(ints.tobytes())
    raw[208:212] = b"MAP "
    raw[212:216] = bytes([0x44, 0x44, 0, 0])
    raw[216:220] = np.float32(data.std(dtype=np.float64)).tobytes()
    text = label.encode("ascii", "replace")[:80]
    raw[220:224] = np.int32(1 if text else 0).tobytes()
    raw[224:224 + len(text)] = text
    return bytes(raw)


def write_mrc(volume: np.ndarray, path: str | os.PathLike, voxel_size: float = 1.0, label: str = "") -> Path:
    """Write a [NZ, NY, NX] volume as float32 MRC (voxel_size: the world distance between samples), atomically."""
    data = np.ascontiguousarray(volume, dtype="<f4")
    if data.ndim != 3 or 0 in data.shape:
        raise ValueError(f"an MRC volume must be a non-empty 3-D array, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError("an MRC volume must be finite")
    nz, ny, nx = data.shape
    header = mrc_header(data.shape, data, (voxel_size * nx, voxel_size * ny, voxel_size * nz), label)
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(header)
        f.write(data.tobytes())
    return Path(path)
