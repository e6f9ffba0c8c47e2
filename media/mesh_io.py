"""Triangle meshes with per-vertex colours as binary PLY and as OBJ.

PLY: binary little-endian, `vertex` (float x, y, z, uchar red, green, blue) and `face` (uchar count, int indices),
the layout trimesh, MeshLab and Blender read. OBJ has no standard vertex colour; we write the common extension
`v x y z r g b` with colours in [0, 1] (MeshLab, Blender and trimesh read it; others ignore the extra numbers).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from formats.atomic import atomic_file

MESH_SUFFIXES = (".ply", ".obj")


@dataclass
class Mesh:
    """vertices [V, 3] float32 (world units), faces [F, 3] int32 (counter-clockwise seen from outside),
    colors [V, 3] uint8."""

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray

    def __post_init__(self):
        self.vertices = np.ascontiguousarray(self.vertices, np.float32)
        self.faces = np.ascontiguousarray(self.faces, np.int32)
        self.colors = np.ascontiguousarray(self.colors, np.uint8)
        v = len(self.vertices)
        if self.vertices.ndim != 2 or self.vertices.shape[1] != 3 or self.colors.shape != (v, 3):
            raise ValueError(f"mesh: vertices {self.vertices.shape} and colors {self.colors.shape} must be [V, 3]")
        if self.faces.ndim != 2 or self.faces.shape[1] != 3:
            raise ValueError(f"mesh: faces must be [F, 3], got {self.faces.shape}")
        if self.faces.size and (self.faces.min() < 0 or self.faces.max() >= v):
            raise ValueError(f"mesh: face indices outside 0..{v - 1}")


def write_ply(mesh: Mesh, path: str | os.PathLike) -> Path:
    """Binary little-endian PLY with vertex colours, written atomically."""
    header = ("ply\nformat binary_little_endian 1.0\ncomment my3dgen mesh\n"
              f"element vertex {len(mesh.vertices)}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\n"
              f"element face {len(mesh.faces)}\nproperty list uchar int vertex_indices\nend_header\n")
    vertex = np.empty(len(mesh.vertices), dtype=[("xyz", "<f4", 3), ("rgb", "u1", 3)])
    vertex["xyz"], vertex["rgb"] = mesh.vertices, mesh.colors
    face = np.empty(len(mesh.faces), dtype=[("n", "u1"), ("idx", "<i4", 3)])
    face["n"], face["idx"] = 3, mesh.faces
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(vertex.tobytes())
        f.write(face.tobytes())
    return Path(path)


def write_obj(mesh: Mesh, path: str | os.PathLike) -> Path:
    """OBJ text: `v x y z r g b` (colours in [0, 1]) and 1-based `f a b c`, written atomically."""
    rgb = mesh.colors.astype(np.float64) / 255.0
    with atomic_file(path) as tmp, open(tmp, "w", encoding="ascii") as f:
        f.write("# my3dgen mesh: v x y z r g b (vertex colours in [0, 1])\n")
        np.savetxt(f, np.hstack([mesh.vertices.astype(np.float64), rgb]), fmt="v %.6f %.6f %.6f %.4f %.4f %.4f")
        np.savetxt(f, mesh.faces.astype(np.int64) + 1, fmt="f %d %d %d")
    return Path(path)


def write_mesh(mesh: Mesh, path: str | os.PathLike) -> Path:
    """Write by suffix: .ply or .obj (anything else is a ValueError naming the path)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".ply":
        return write_ply(mesh, path)
    if suffix == ".obj":
        return write_obj(mesh, path)
    raise ValueError(f"{path}: a mesh must end in {' or '.join(MESH_SUFFIXES)}")
