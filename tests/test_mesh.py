"""Meshes and density volumes (generator/mesh.py, media/mesh_io.py, media/mrc.py) on the tiny preset."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from generator.mesh import (EG3D_PAD_VALUE, MeshConfig, decode_points, density_volume, eg3d_mrc_volume,
                            extract_mesh, grid_axis, mesh_of_latent, trimmed)
from generator.model_dir import build_generator
from media.mesh_io import Mesh, write_mesh
from media.mrc import HEADER_BYTES, write_mrc
from tests.helpers.cli import run_cli


@pytest.fixture(scope="module")
def G():
    return build_generator(preset_name="tiny")


@pytest.fixture(scope="module")
def planes_ws(G):
    with torch.no_grad():
        ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(2)), torch.zeros(1, 25))
        return G.planes(ws), ws


def read_binary_ply(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Our own reader of the PLY layout media/mesh_io writes (a check independent of trimesh)."""
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    assert header[:2] == ["ply", "format binary_little_endian 1.0"]
    nv = int(next(h for h in header if h.startswith("element vertex")).split()[-1])
    nf = int(next(h for h in header if h.startswith("element face")).split()[-1])
    vertex = np.frombuffer(data, [("xyz", "<f4", 3), ("rgb", "u1", 3)], nv, end)
    face = np.frombuffer(data, [("n", "u1"), ("idx", "<i4", 3)], nf, end + vertex.nbytes)
    assert (face["n"] == 3).all() and end + vertex.nbytes + face.nbytes == len(data)
    return vertex["xyz"], face["idx"], vertex["rgb"]


def test_density_volume_is_the_decoder_on_the_grid_whatever_the_chunk(G, planes_ws):
    planes, _ = planes_ws
    small = density_volume(G, planes, 12, chunk=100)
    whole = density_volume(G, planes, 12, chunk=12 ** 3)
    assert np.array_equal(small, whole)
    axis = grid_axis(G, 12)
    assert axis[0] == -G.cfg.rendering.box_warp / 2 and axis[-1] == G.cfg.rendering.box_warp / 2
    point = torch.tensor([[axis[3], axis[7], axis[10]]], dtype=torch.float32)
    assert small[3, 7, 10] == pytest.approx(decode_points(G, planes, point)[1].item(), abs=1e-6)


def test_mesh_of_the_tiny_model_loads_with_a_standard_reader_inside_the_box(G, planes_ws, tmp_path):
    planes, ws = planes_ws
    volume = trimmed(density_volume(G, planes, 32))
    level = float(np.median(volume[volume > EG3D_PAD_VALUE]))    # random weights: EG3D's 10 is never reached
    mesh, volume2 = mesh_of_latent(G, ws, MeshConfig(resolution=32, level=level))
    assert np.array_equal(volume, volume2) and len(mesh.faces) > 100
    half = G.cfg.rendering.box_warp / 2
    assert np.abs(mesh.vertices).max() < half * (1 - 2 * 3 / 32 * 0.99)    # inside the box, inside the trim
    rgb = decode_points(G, planes, torch.from_numpy(mesh.vertices[:5]))[0][:, :3]
    assert np.array_equal(mesh.colors[:5], (rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy())
    write_mesh(mesh, tmp_path / "m.ply")
    write_mesh(mesh, tmp_path / "m.obj")
    v, f, c = read_binary_ply(tmp_path / "m.ply")
    assert np.array_equal(v, mesh.vertices) and np.array_equal(f, mesh.faces) and np.array_equal(c, mesh.colors)
    trimesh = pytest.importorskip("trimesh")
    for name in ("m.ply", "m.obj"):
        loaded = trimesh.load(tmp_path / name, process=False)
        assert loaded.vertices.shape == mesh.vertices.shape and loaded.faces.shape == mesh.faces.shape
        assert np.allclose(loaded.vertices, mesh.vertices, atol=1e-5)
        assert np.array_equal(loaded.visual.vertex_colors[:, :3], mesh.colors)
        assert loaded.is_watertight and loaded.volume > 0        # closed by the trim, normals outward


def test_a_sphere_field_gives_a_closed_outward_sphere(G, planes_ws):
    axis = grid_axis(G, 48)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    radius, centre = 0.25, np.array([0.05, -0.02, 0.1])
    distance = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
    volume = (20 - 10 * distance / radius).astype(np.float32)    # density 10 exactly on the sphere
    mesh = extract_mesh(G, planes_ws[0], trimmed(volume), level=10.0)
    distance = np.linalg.norm(mesh.vertices - centre, axis=1)
    assert np.abs(distance - radius).max() < 2e-3
    a, b, c = (mesh.vertices[mesh.faces[:, i]].astype(np.float64) for i in range(3))
    signed_volume = np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6
    assert signed_volume == pytest.approx(4 / 3 * math.pi * radius ** 3, rel=0.03)


def test_a_level_outside_the_field_is_refused_with_its_range(G, planes_ws):
    with pytest.raises(ValueError, match=r"no surface at density level 10: the density inside the trim spans"):
        mesh_of_latent(G, planes_ws[1], MeshConfig(resolution=16, level=10.0))


def test_mrc_volume_is_eg3d_layout_and_a_valid_mrc2014_file(tmp_path):
    volume = np.random.default_rng(0).standard_normal((6, 6, 6)).astype(np.float32)
    flipped = eg3d_mrc_volume(trimmed(volume, trim=1 / 6))
    assert np.array_equal(flipped[0], trimmed(volume, trim=1 / 6)[-1]) and (flipped[0] == EG3D_PAD_VALUE).all()
    path = write_mrc(flipped, tmp_path / "v.mrc", voxel_size=0.1, label="test")
    raw = path.read_bytes()
    header = np.frombuffer(raw[:HEADER_BYTES], "<i4")
    assert list(header[:4]) == [6, 6, 6, 2] and header[27] == 20140 and raw[208:212] == b"MAP "
    assert np.array_equal(np.frombuffer(raw[HEADER_BYTES:], "<f4").reshape(6, 6, 6), flipped)
    mrcfile = pytest.importorskip("mrcfile")
    assert mrcfile.validate(str(path), print_file=open("/dev/null", "w"))
    with mrcfile.open(path) as m:
        assert np.array_equal(m.data, flipped) and m.voxel_size.x == pytest.approx(0.1)


def test_bad_meshes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="face indices"):
        Mesh(np.zeros((3, 3)), np.array([[0, 1, 3]]), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="must end in .ply or .obj"):
        write_mesh(Mesh(np.zeros((3, 3)), np.array([[0, 1, 2]]), np.zeros((3, 3))), tmp_path / "m.stl")


def test_cli_mesh_writes_obj_and_mrc_and_explains_a_bad_level(tmp_path):
    proc = run_cli("mesh", "--preset", "tiny", "--resolution", 24, "--level", 10, "--out", tmp_path / "m.ply",
                   check=False)
    assert proc.returncode == 2 and "no surface at density level 10" in proc.stderr
    lo, hi = (float(v) for v in proc.stderr.split("spans [")[1].split("]")[0].split(", "))
    proc = run_cli("mesh", "--preset", "tiny", "--resolution", 24, "--level", (lo + hi) / 2, "--out",
                   tmp_path / "m.obj", "--mrc", tmp_path / "m.mrc")
    assert "vertices" in proc.stdout and (tmp_path / "m.obj").stat().st_size > 0
    assert (tmp_path / "m.mrc").stat().st_size == HEADER_BYTES + 4 * 24 ** 3


def test_chamfer_distance_of_two_spheres_is_their_gap():
    from media.chamfer import chamfer
    rng = np.random.default_rng(0)
    d = rng.standard_normal((4000, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    assert chamfer(d, d).distance == 0.0
    c = chamfer(d * 0.30, d * 0.32)
    assert c.a_to_b == pytest.approx(0.02, abs=1e-9) and c.distance == pytest.approx(0.02, abs=1e-9)
    with pytest.raises(ValueError, match="point set b"):
        chamfer(d, np.zeros((0, 3)))


def test_true_head_surface_lies_on_the_head_world_sdf(G):
    pytest.importorskip("headworld")
    import importlib.util
    from pathlib import Path
    from headworld.params import APPEARANCE_PARAMS, IDENTITY_PARAMS, Appearance, Identity, stack_params
    from headworld.sdf import gather, head_sdf, layout
    path = Path(__file__).parents[1] / "scripts/mesh_vs_truth.py"
    spec = importlib.util.spec_from_file_location("mesh_vs_truth", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    identity, appearance = Identity.from_seed(7), Appearance.neutral()
    truth = script.true_mesh(G, identity, appearance, 40)
    L = layout(stack_params([identity], IDENTITY_PARAMS), stack_params([appearance], APPEARANCE_PARAMS))
    points = torch.from_numpy(truth.vertices)
    sdf = head_sdf(points, gather(L, torch.zeros(len(points), dtype=torch.long))).numpy()
    axis = grid_axis(G, 40)
    voxel = axis[1] - axis[0]
    inside_trim = np.abs(truth.vertices).max(1) < abs(axis[4]) - voxel / 4   # not on the trim's cut walls
    assert len(truth.vertices) > 500 and inside_trim.mean() > 0.8
    assert np.abs(sdf[inside_trim]).max() < voxel / 2
