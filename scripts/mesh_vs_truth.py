"""How close is a generator's mesh to the true head? Chamfer distance on the procedural head world.

    python scripts/mesh_vs_truth.py --model models/heads [--seed 1000000] [--adapter A --anchor 0]
        [--resolution 96] [--levels 5,10,20]

The person (identity `--seed`, neutral appearance) is both rendered truth and generator latent: the `heads`
generator's z is the world's parameter code (headworld/latent.py), so z = params_to_z(identity, appearance)
is that person under the base model; `--adapter/--anchor` meshes a personalized person's anchor instead.
The true surface is headworld.sdf.head_sdf's zero set, cut by marching cubes on the same grid as the
generator's density (generator/mesh.py); the Chamfer distance is between the two meshes' vertices, in world
units and in mm (1 unit ~ 0.43 m, headworld/sdf.py). Levels are iso-levels on the generator's raw density
(EG3D's is 10): the table shows how the surface moves with it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from generator.mesh import MeshConfig, extract_mesh, grid_axis, mesh_of_latent, trimmed  # noqa: E402
from media.chamfer import Chamfer, chamfer  # noqa: E402
from media.mesh_io import Mesh  # noqa: E402

MM_PER_UNIT = 430.0
"""headworld/sdf.py: 1 world unit is about 0.43 m."""


@torch.no_grad()
def true_sdf_volume(G, identity, appearance, resolution: int) -> np.ndarray:
    """head_sdf of the person on the generator's N^3 grid, [N, N, N] indexed [x, y, z] as generator/mesh.py."""
    from headworld.params import APPEARANCE_PARAMS, IDENTITY_PARAMS, stack_params
    from headworld.sdf import gather, head_sdf, layout
    L = layout(stack_params([identity], IDENTITY_PARAMS), stack_params([appearance], APPEARANCE_PARAMS))
    axis = torch.from_numpy(grid_axis(G, resolution)).float()
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    points = torch.stack([x, y, z], -1).reshape(-1, 3)
    out = torch.empty(len(points))
    for s in range(0, len(points), 1 << 18):
        p = points[s:s + (1 << 18)]
        out[s:s + len(p)] = head_sdf(p, gather(L, torch.zeros(len(p), dtype=torch.long)))
    return out.reshape(resolution, resolution, resolution).numpy()


def true_mesh(G, identity, appearance, resolution: int) -> Mesh:
    """The true surface (sdf = 0) as a mesh on the same grid and trim as the generator's (grey vertices)."""
    volume = trimmed(-true_sdf_volume(G, identity, appearance, resolution))
    planes = torch.zeros(1, 3, G.cfg.plane_features, 2, 2)  # colours are not compared; any planes will do
    mesh = extract_mesh(G, planes, volume, level=0.0)
    mesh.colors[:] = 160
    return mesh


def person_latent(G, seed: int) -> torch.Tensor:
    """W+ of identity `seed` under the neutral appearance: the world's parameter code as z, then the mapping."""
    from headworld.latent import params_to_z
    from headworld.params import Appearance, Identity
    u = torch.tensor([list(Identity.from_seed(seed).values) + list(Appearance.neutral().values)])
    filler = torch.randn(1, G.z_dim - u.shape[1], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return G.mapping(params_to_z(u, G.z_dim, filler), torch.zeros(1, G.c_dim))


def compare(G, ws: torch.Tensor, truth: Mesh, resolution: int, level: float) -> tuple[Mesh, Chamfer]:
    """The generator's mesh of ws at `level` and its Chamfer distance to `truth` (vertices, world units)."""
    mesh, _ = mesh_of_latent(G, ws, MeshConfig(resolution=resolution, level=level))
    return mesh, chamfer(mesh.vertices, truth.vertices)


def main(argv: list[str] | None = None) -> int:
    from generator.model_dir import build_generator
    from headworld.params import DEMO_PERSON_SEED, Appearance, Identity
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REPO / "models/heads")
    ap.add_argument("--seed", type=int, default=DEMO_PERSON_SEED, help="identity seed of the true person")
    ap.add_argument("--adapter", type=Path, help="a personalized adapter of that person (else the base model)")
    ap.add_argument("--anchor", default="0")
    ap.add_argument("--resolution", type=int, default=96)
    ap.add_argument("--levels", default="5,10,20")
    ap.add_argument("--out", type=Path, help="also write the generator's mesh at the best level (.ply/.obj)")
    args = ap.parse_args(argv)
    G = build_generator(model=args.model).eval()
    if args.adapter is not None:
        from generator.adapter_file import load_adapter
        from generator.lora import attach
        from generator.views import anchor_latent
        person, anchors, _ = load_adapter(args.adapter, G)
        attach(G, person)
        ws = anchor_latent(G, anchors, args.anchor)[0]
    else:
        ws = person_latent(G, args.seed)
    truth = true_mesh(G, Identity.from_seed(args.seed), Appearance.neutral(), args.resolution)
    print(f"true surface: {len(truth.vertices):,d} vertices on a {args.resolution}^3 grid")
    print("| level | vertices | mesh->truth mm | truth->mesh mm | Chamfer mm | mesh->truth p90 mm |")
    print("|---:|---:|---:|---:|---:|---:|")
    best = None
    for level in (float(v) for v in args.levels.split(",")):
        try:
            mesh, c = compare(G, ws, truth, args.resolution, level)
        except ValueError as e:
            print(f"| {level:g} | - | {e} | | | |")
            continue
        print(f"| {level:g} | {len(mesh.vertices):,d} | {c.a_to_b * MM_PER_UNIT:.1f} | {c.b_to_a * MM_PER_UNIT:.1f} | "
              f"{c.distance * MM_PER_UNIT:.1f} | {c.a_to_b_p90 * MM_PER_UNIT:.1f} |")
        if best is None or c.distance < best[1].distance:
            best = (mesh, c)
    if args.out is not None and best is not None:
        from media.mesh_io import write_mesh
        write_mesh(best[0], args.out)
        print(f"wrote {args.out}")
    return 0 if best is not None else 2


if __name__ == "__main__":
    raise SystemExit(main())
