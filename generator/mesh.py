"""A generator's surface as a mesh: its density field on a cube grid, marching cubes, colours at the vertices.

As EG3D's gen_samples.py --shapes: the decoder's raw density sigma is sampled at N^3 points spaced
box_warp / (N - 1) over the tri-plane box [-box_warp/2, box_warp/2]^3 (array axes x, y, z), a border of
30/256 of the side is set to -1000 (it cuts the box's walls off and closes the surface), and the surface is
the iso-level sigma = 10. The volume is sampled in chunks of `chunk` points, so memory stays bounded at any N
(the N^3 float32 volume itself aside). Vertex colours are the decoder's first three colour features (the raw
image's RGB) at the vertices. `eg3d_mrc_volume` is the array gen_samples.py writes to its .mrc file.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from generator.rendering import flat_planes, plane_features
from generator.triplane import TriPlaneGenerator
from media.mesh_io import Mesh

EG3D_LEVEL = 10.0
EG3D_TRIM = 30 / 256
EG3D_PAD_VALUE = -1000.0


@dataclass(frozen=True)
class MeshConfig:
    """Grid resolution N (EG3D uses 512), the iso-level on raw density, the border trim and the chunk size."""

    resolution: int = 128
    level: float = EG3D_LEVEL
    trim: float = EG3D_TRIM
    chunk: int = 1 << 18

    def validate(self) -> "MeshConfig":
        if not 8 <= self.resolution <= 512:
            raise ValueError(f"mesh resolution must be within 8..512 (EG3D uses 512), got {self.resolution}")
        if not 0 <= self.trim < 0.5:
            raise ValueError(f"mesh trim must be within [0, 0.5), got {self.trim}")
        if self.chunk < 1:
            raise ValueError(f"mesh chunk must be positive, got {self.chunk}")
        return self


def grid_axis(G: TriPlaneGenerator, resolution: int) -> np.ndarray:
    """World coordinates of the N grid samples along each axis: linspace(-box_warp/2, box_warp/2, N)."""
    half = G.cfg.rendering.box_warp / 2
    return np.linspace(-half, half, resolution)


@torch.no_grad()
def decode_points(G: TriPlaneGenerator, planes: torch.Tensor, points: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour features [M, C] and raw density [M] of world points [M, 3] of one latent's planes [1, 3, C, H, W]:
    the tri-plane lookup and the decoder, as the renderer runs them on ray samples."""
    rgb, sigma = G.decoder(plane_features(flat_planes(planes), points.unsqueeze(0), G.cfg.rendering.box_warp))
    return rgb[0], sigma[0, :, 0]


@torch.no_grad()
def density_volume(G: TriPlaneGenerator, planes: torch.Tensor, resolution: int, chunk: int = 1 << 18) -> np.ndarray:
    """Raw density on the N^3 grid, float32 [N, N, N] indexed [x, y, z], computed `chunk` points at a time."""
    n = resolution
    axis = torch.from_numpy(grid_axis(G, n)).float()
    out = np.empty(n ** 3, np.float32)
    for start in range(0, n ** 3, chunk):
        idx = torch.arange(start, min(start + chunk, n ** 3))
        points = torch.stack([axis[idx // (n * n)], axis[(idx // n) % n], axis[idx % n]], dim=-1)
        out[start:start + len(idx)] = decode_points(G, planes, points)[1].numpy()
    return out.reshape(n, n, n)


def trimmed(volume: np.ndarray, trim: float = EG3D_TRIM, pad_value: float = EG3D_PAD_VALUE) -> np.ndarray:
    """A copy with a border of round-down(trim * N) samples on every face set to `pad_value` (as EG3D)."""
    out = volume.copy()
    pad = int(trim * volume.shape[0])
    if pad:
        for axis in range(3):
            index = [slice(None)] * 3
            index[axis] = slice(0, pad)
            out[tuple(index)] = pad_value
            index[axis] = slice(volume.shape[axis] - pad, None)
            out[tuple(index)] = pad_value
    return out


def eg3d_mrc_volume(volume: np.ndarray) -> np.ndarray:
    """The array gen_samples.py writes to its .mrc: the [x, y, z] volume flipped along x (already trimmed)."""
    return np.ascontiguousarray(np.flip(volume, 0))


@torch.no_grad()
def extract_mesh(G: TriPlaneGenerator, planes: torch.Tensor, volume: np.ndarray, level: float = EG3D_LEVEL,
                 chunk: int = 1 << 18) -> Mesh:
    """Marching cubes of a trimmed density volume at `level`, in world coordinates, coloured by the decoder.

    Faces wind counter-clockwise seen from outside (normals point to lower density). A level the volume never
    crosses is a ValueError that gives the volume's range.
    """
    try:
        from skimage import measure
    except ImportError as e:
        raise ImportError("meshes need scikit-image's marching cubes: pip install scikit-image") from e
    n = volume.shape[0]
    inner = volume[volume > EG3D_PAD_VALUE]
    lo, hi = (float(inner.min()), float(inner.max())) if inner.size else (EG3D_PAD_VALUE, EG3D_PAD_VALUE)
    if not lo < level < hi:
        raise ValueError(f"no surface at density level {level:g}: the density inside the trim spans "
                         f"[{lo:.3g}, {hi:.3g}]; choose a level within it")
    axis = grid_axis(G, n)
    spacing = float(axis[1] - axis[0])
    verts, faces, _, _ = measure.marching_cubes(volume, level=level, spacing=(spacing,) * 3,
                                                gradient_direction="ascent")
    verts = verts + axis[0]
    colors = []
    points = torch.from_numpy(verts).float()
    for start in range(0, len(points), chunk):
        rgb = decode_points(G, planes, points[start:start + chunk])[0][:, :3]
        colors.append((rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy())
    colors = np.concatenate(colors) if colors else np.zeros((0, 3), np.uint8)
    return Mesh(verts.astype(np.float32), faces.astype(np.int32), colors)


@torch.no_grad()
def mesh_of_latent(G: TriPlaneGenerator, ws: torch.Tensor, cfg: MeshConfig = MeshConfig()
                   ) -> tuple[Mesh, np.ndarray]:
    """The mesh of latent ws [1, num_ws, w_dim] and the trimmed density volume it was cut from."""
    cfg.validate()
    planes = G.planes(ws)
    volume = trimmed(density_volume(G, planes, cfg.resolution, cfg.chunk), cfg.trim)
    return extract_mesh(G, planes, volume, cfg.level, cfg.chunk), volume


def write_mesh_files(G: TriPlaneGenerator, ws: torch.Tensor, out, mrc=None, cfg: MeshConfig = MeshConfig()) -> str:
    """`cli.py mesh`: the mesh of ws to `out` (.ply or .obj) and, if asked, EG3D's .mrc volume; returns a summary."""
    from pathlib import Path

    from media.mesh_io import MESH_SUFFIXES, write_mesh
    from media.mrc import write_mrc
    if Path(out).suffix.lower() not in MESH_SUFFIXES:
        raise ValueError(f"{out}: a mesh must end in {' or '.join(MESH_SUFFIXES)}")
    if mrc is not None and Path(mrc).suffix.lower() != ".mrc":
        raise ValueError(f"{mrc}: the volume file must end in .mrc")
    mesh, volume = mesh_of_latent(G, ws, cfg)
    write_mesh(mesh, out)
    text = f"wrote {out} ({len(mesh.vertices):,d} vertices, {len(mesh.faces):,d} faces, {cfg.resolution}^3 grid)"
    if mrc is not None:
        axis = grid_axis(G, cfg.resolution)
        write_mrc(eg3d_mrc_volume(volume), mrc, voxel_size=float(axis[1] - axis[0]), label="my3dgen density sigma")
        text += f" and {mrc}"
    return text
