"""docs/HEADS.md's figures and numbers, from the committed head-world models (one command, re-runnable).

    python scripts/heads_figures.py person                    # (re)write samples/heads_person{,_novel}/
    python scripts/heads_figures.py all [--out docs/heads]     # every figure + numbers.json (~30 min on 2 cores)
    python scripts/heads_figures.py world|samples|fit|prior|personalize|identity   # one part
    python scripts/heads_figures.py compare --adapter A --png P  # an adapter's novel views next to the truth

Every number is measured against the head world's ground truth: true renders of the same person, appearance
and camera. Held-out people come from headworld.params.HELDOUT_SEEDS (never seen by pretraining or the identity
network). `prior`: inversion (train.projector) of one frontal photo per person, in z (the head world's setting,
`train.config.projector_for`) and in w (the official projectors'), then LPIPS (AlexNet) at the input pose, LPIPS
and PSNR at yaw +-0.35 and +-0.6, and the raw depth's mean absolute error inside the head (pixels fully covered
by it).
`fit`: training and held-out people rendered from their true latents (no inversion), to tell underfitting from
memorization. `personalize`: the demo person's 10 photos -> anchors (z inversion) + LoRA with the symmetry loss
(train.trainer.personalize, the identity network of perception/heads_identity.py), compared with the same anchors
on the base model on the true views at NOVEL_POSES, in LPIPS and in the fraction of views
that verify as the person (evaluation.verification, FAR 1e-2).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from evaluation.metrics import depth_error, psnr  # noqa: E402
from formats.atomic import write_text  # noqa: E402
from formats.cameras import lookat_label  # noqa: E402
from generator.imaging import depth_to_uint8, grid, save_png, to_uint8  # noqa: E402
from headworld.params import DEMO_PERSON_SEED, HELDOUT_SEEDS, Appearance, Identity  # noqa: E402
from headworld.photos import NOVEL_POSES, PERSON_POSES, write_person  # noqa: E402
from headworld.render import render  # noqa: E402

PRIOR_PEOPLE = tuple(range(HELDOUT_SEEDS.start + 1, HELDOUT_SEEDS.start + 5))
"""Held-out people of the prior-quality measurement (the demo person is HELDOUT_SEEDS.start)."""
PRIOR_YAWS = (0.0, -0.35, 0.35, -0.6, 0.6)
NUMBERS = "numbers.json"


def _lpips():
    from perception.lpips import LPIPS
    return LPIPS("alex")


def _depth_tile(depth: torch.Tensor, size: int = 128) -> np.ndarray:
    """A depth map as a size x size grey tile (nearest-neighbour upsampling of the raw 32^2 depth)."""
    from PIL import Image
    return np.asarray(Image.fromarray(depth_to_uint8(depth)).resize((size, size), Image.NEAREST))


def truth(seed: int, photo: int, poses) -> dict[str, torch.Tensor]:
    n = len(poses)
    return render([Identity.from_seed(seed)] * n, [Appearance.from_seed(seed, photo)] * n,
                  np.stack([lookat_label(y, p) for y, p in poses]), 128)


def _update_numbers(out: Path, key: str, value) -> None:
    path = out / NUMBERS
    numbers = json.loads(path.read_text()) if path.exists() else {}
    numbers[key] = value
    write_text(path, json.dumps(numbers, indent=2) + "\n")
    print(json.dumps({key: value}, indent=2), flush=True)


def cmd_person(out: Path) -> None:
    note = ("Held-out head-world person (seed DEMO_PERSON_SEED, never seen in pretraining): 10 photos, each with "
            "its own expression, light and background (Appearance.from_seed(seed, k)); regenerate with "
            "python scripts/heads_figures.py person")
    write_person(out, DEMO_PERSON_SEED, PERSON_POSES, list(range(len(PERSON_POSES))), overwrite=True, note=note)
    novel = out.with_name(out.name + "_novel")
    write_person(novel, DEMO_PERSON_SEED, NOVEL_POSES, [0] * len(NOVEL_POSES), overwrite=True,
                 note="True views of the same person under photo 0's appearance from cameras not among the 10 "
                      "photos' (headworld.photos.NOVEL_POSES): the ground truth of novel-view synthesis.")
    print(f"wrote {out} and {novel}")


def cmd_world(out: Path) -> None:
    seeds = [HELDOUT_SEEDS.start + 20 + i for i in range(12)]
    yaws = [(-0.5 + i * 0.09) for i in range(12)]
    out_t = render([Identity.from_seed(s) for s in seeds], [Appearance.from_seed(s, 1) for s in seeds],
                   np.stack([lookat_label(y, 0.05 * ((i % 3) - 1)) for i, y in enumerate(yaws)]), 128)
    tiles = [to_uint8(x) for x in out_t["image"]]
    save_png(grid(tiles, 6), out / "world_photos.png")
    depth = [depth_to_uint8(d) for d in out_t["depth"][:6]]
    save_png(grid(tiles[:6] + depth, 6), out / "world_depth.png")


@torch.no_grad()
def cmd_samples(out: Path, model: Path) -> None:
    from generator.model_dir import load_model_dir
    from generator.views import latent_from_seed, render_views
    G = load_model_dir(model)
    yaws = [(-0.5, 0.0), (-0.25, 0.0), (0.0, 0.0), (0.25, 0.0), (0.5, 0.0)]
    outs = []
    for seed in range(4):
        z = latent_from_seed(G, seed)
        ws = G.mapping(z, torch.zeros(1, G.c_dim), truncation_psi=0.8)
        outs += render_views(G, ws, yaws)
    save_png(grid([to_uint8(o["image"]) for o in outs], 5), out / "samples.png")


INVERSION_SPACES = ("z", "w")
"""How the figures invert photos (train.config.projector_for): z, the head world's setting, and w, the official
projectors'. The personalization figure and scripts/demo.sh use z."""


def _invert(G, images, cams, steps: int, space: str):
    from train.config import projector_for
    from train.projector import project_batch
    return project_batch(G, images, cams, config=projector_for(space, steps), chunk=len(images))


def cmd_prior(out: Path, model: Path, steps: int) -> None:
    from generator.model_dir import load_model_dir
    G = load_model_dir(model)
    lp = _lpips()
    poses = [(y, 0.0) for y in PRIOR_YAWS]
    truths = [truth(s, 0, poses) for s in PRIOR_PEOPLE]
    images = torch.stack([t["image"][0] for t in truths])
    cams = torch.from_numpy(np.stack([lookat_label(0.0, 0.0)] * len(PRIOR_PEOPLE)))
    results = {}
    for space in INVERSION_SPACES:
        t0 = time.time()
        ws = _invert(G, images, cams, steps, space)
        seconds = time.time() - t0
        per_yaw, tiles = _score_inversions(G, ws, truths, poses, lp)
        save_png(grid(tiles, len(poses)), out / ("prior_inversion.png" if space == "z" else "prior_inversion_w.png"))
        results[space] = {"inversion_seconds": round(seconds, 1), "per_yaw": per_yaw}
    _update_numbers(out, "prior", {"people": list(PRIOR_PEOPLE), "projector_steps": steps, **results})


def _score_inversions(G, ws, truths, poses, lp) -> tuple[dict, list]:
    """LPIPS, PSNR and depth error of each inverted latent against its person's truth at `poses` (per yaw), and
    the picture's tiles (truth row, then the latent's row, per person)."""
    per_yaw = {y: {"lpips": [], "psnr": [], "depth_mae": []} for y, _ in poses}
    tiles = []
    with torch.no_grad():
        for i, t in enumerate(truths):
            w = ws[i:i + 1]
            w = w if w.ndim == 3 else w[:, None].expand(1, G.num_ws, -1)
            c = torch.from_numpy(np.stack([lookat_label(y, p) for y, p in poses]))
            o = G.synthesis(w.expand(len(poses), -1, -1), c)
            d = lp(o["image"].clamp(-1, 1), t["image"])
            p = psnr(o["image"], t["image"])
            e = depth_error(o["image_depth"], t["depth"], t["mask"])
            for j, (y, _) in enumerate(poses):
                per_yaw[y]["lpips"].append(float(d[j]))
                per_yaw[y]["psnr"].append(float(p[j]))
                per_yaw[y]["depth_mae"].append(float(e[j]))
            tiles += [to_uint8(x) for x in t["image"]] + [to_uint8(x) for x in o["image"]]
    summary = {f"yaw {y:+.2f}": {k: round(float(np.mean(v)), 4) for k, v in m.items()} for y, m in per_yaw.items()}
    return summary, tiles


FIT_TRAIN_PEOPLE = tuple(range(0, 4096, 512))
"""Training people of the fit check: 8 of the 4,096 pretraining people (seeds 0-4,095, every stage saw 0-1,023)."""
FIT_HELDOUT_PEOPLE = tuple(range(HELDOUT_SEEDS.start + 1, HELDOUT_SEEDS.start + 9))
FIT_POSES = ((0.0, 0.0), (-0.35, 0.0), (0.35, 0.0), (0.6, 0.1))


@torch.no_grad()
def cmd_fit(out: Path, model: Path) -> None:
    """Underfitting or overfitting? Each person rendered from the latent of their true parameters (no inversion)
    against the truth, for training people and held-out people: equal errors mean the prior generalizes and its
    error is its fit; a lower error on training people means it memorized them."""
    from generator.model_dir import load_model_dir
    from headworld.latent import N_PARAMS, params_to_z
    G = load_model_dir(model)
    lp = _lpips()
    c = torch.from_numpy(np.stack([lookat_label(y, p) for y, p in FIT_POSES]))
    groups = {}
    for name, seeds in (("training", FIT_TRAIN_PEOPLE), ("held_out", FIT_HELDOUT_PEOPLE)):
        scores = []
        for seed in seeds:
            t = truth(seed, 0, FIT_POSES)
            u = torch.tensor([list(Identity.from_seed(seed).values) + list(Appearance.from_seed(seed, 0).values)],
                             dtype=torch.float32)
            filler = torch.randn(1, G.z_dim - N_PARAMS, generator=torch.Generator().manual_seed(seed))
            ws = G.mapping(params_to_z(u, G.z_dim, filler).expand(len(FIT_POSES), -1), c)
            scores += lp(G.synthesis(ws, c)["image"].clamp(-1, 1), t["image"]).tolist()
        groups[name] = {"people": len(seeds), "lpips": round(float(np.mean(scores)), 4),
                        "lpips_se": round(float(np.std(scores, ddof=1) / np.sqrt(len(scores))), 4)}
    _update_numbers(out, "fit", {"poses": FIT_POSES, **groups})


def _verification(work: Path, identity) -> tuple:
    """compare_views' `verify`: the identity network and its FAR 1e-2 threshold, calibrated once in WORK."""
    from evaluation.verification import cached_threshold
    return identity, cached_threshold(work / "threshold.json", identity)


def cmd_personalize(out: Path, model: Path, person: Path, iterations: int, steps: int, work: Path) -> None:
    from generator.adapter_file import load_adapter
    from generator.model_dir import load_model_dir
    from perception.heads_identity import load_heads_identity
    from train.config import TrainConfig, projector_for
    from train.trainer import personalize
    G = load_model_dir(model)
    identity = load_heads_identity()
    cfg = dataclasses.replace(TrainConfig(), iterations=iterations, projector=projector_for("z", steps))
    t0 = time.time()
    result = personalize(G, person, work / "person.safetensors", cfg, identity=identity,
                         identity_name="heads-identity", preview=False, inversion_batch=10)
    seconds = time.time() - t0
    adapter, anchors, _ = load_adapter(result.adapter_path, G)
    res = compare_views(G, adapter, anchors, json.loads((person / "truth.json").read_text()),
                        verify=_verification(work, identity))
    save_png(res.pop("picture"), out / "personalization.png")
    _update_numbers(out, "personalization", {"iterations": iterations, "projector_steps": steps, "inversion": "z",
                                             "seconds": round(seconds, 1), **res})


def compare_views(G, adapter, anchors, info: dict, poses=NOVEL_POSES, verify=None) -> dict:
    """LPIPS/PSNR against the truth of every anchor at `poses`, the anchors on the base model (the key
    'w_inversion', whichever space inverted them) vs personalized.

    Anchor k is photo k of the person in `info` (a truth.json); its truth at a pose is the world render of the
    same person under photo k's appearance. The picture shows anchor 0: truth, the anchor on the base model,
    personalized, then
    their depth maps (true depth, then the two models' raw depth). `verify` = (identity network, Threshold) adds
    the fraction of views that verify as the person against an enrolment photo (evaluation.verification), for
    the true views too (the ceiling the identity network allows).
    """
    from evaluation.verification import enrolment_photo, verifies
    from generator.lora import attach, detach
    lp = _lpips()
    poses = list(poses)
    c = torch.from_numpy(np.stack([lookat_label(y, p) for y, p in poses]))
    scores = {"w_inversion": [], "personalized": []}
    psnrs = {"w_inversion": [], "personalized": []}
    verified = {"truth": [], "w_inversion": [], "personalized": []}
    enrol = enrolment_photo(info["seed"]) if verify else None
    rows = []
    with torch.no_grad():
        for k, view in enumerate(info["views"]):
            t = truth(info["seed"], view["photo"], poses)
            w = anchors.ws[k:k + 1]
            w = (w if w.ndim == 3 else w[:, None].expand(1, G.num_ws, -1)).expand(len(poses), -1, -1)
            base = G.synthesis(w, c)
            attach(G, adapter)
            try:
                pers = G.synthesis(w, c)
            finally:
                detach(G)
            for name, o in (("w_inversion", base), ("personalized", pers)):
                scores[name] += lp(o["image"].clamp(-1, 1), t["image"]).tolist()
                psnrs[name] += psnr(o["image"], t["image"]).tolist()
            if verify:
                for name, image in (("truth", t["image"]), ("w_inversion", base["image"]),
                                    ("personalized", pers["image"])):
                    verified[name] += verifies(verify[0], image, enrol, verify[1]).tolist()
            if k == 0:
                rows = ([to_uint8(x) for x in t["image"]] + [to_uint8(x) for x in base["image"]]
                        + [to_uint8(x) for x in pers["image"]] + [depth_to_uint8(d) for d in t["depth"]]
                        + [_depth_tile(d) for d in base["image_depth"]] + [_depth_tile(d) for d in pers["image_depth"]])
    base_l, pers_l = float(np.mean(scores["w_inversion"])), float(np.mean(scores["personalized"]))
    return {"person_seed": info["seed"], "anchors": len(info["views"]), "novel_poses": poses,
            "lpips_w_inversion": round(base_l, 4), "lpips_personalized": round(pers_l, 4),
            "lpips_reduction": round(1 - pers_l / base_l, 4),
            "psnr_w_inversion": round(float(np.mean(psnrs["w_inversion"])), 2),
            "psnr_personalized": round(float(np.mean(psnrs["personalized"])), 2),
            **({"verified": {k: round(float(np.mean(v)), 4) for k, v in verified.items()},
                "verification_threshold": verify[1].to_dict()} if verify else {}),
            "picture": grid(rows, len(poses))}


def cmd_compare(model: Path, person: Path, adapter_path: Path, out_png: Path, verify_in: Path | None) -> None:
    """Novel views of an adapter next to the true views (the demo's step): picture + printed scores; with
    `verify_in` (a work folder) also the verification rates, the threshold calibrated once there."""
    from generator.adapter_file import load_adapter
    from generator.model_dir import load_model_dir
    from perception.heads_identity import load_heads_identity
    G = load_model_dir(model)
    adapter, anchors, _ = load_adapter(adapter_path, G)
    verify = None if verify_in is None else _verification(verify_in, load_heads_identity())
    res = compare_views(G, adapter, anchors, json.loads((person / "truth.json").read_text()), verify=verify)
    save_png(res.pop("picture"), out_png)
    print(json.dumps(res, indent=2))


def cmd_identity(out: Path) -> None:
    from perception.heads_identity import HEADS_IDENTITY_WEIGHTS, read_info
    _update_numbers(out, "identity", read_info(HEADS_IDENTITY_WEIGHTS))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("person", "all", "world", "samples", "fit", "prior", "personalize",
                                         "identity", "compare"))
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "heads")
    parser.add_argument("--model", type=Path, default=REPO / "models" / "heads")
    parser.add_argument("--person", type=Path, default=REPO / "samples" / "heads_person")
    parser.add_argument("--projector-steps", type=int, default=100, help="W inversion steps (prior)")
    parser.add_argument("--anchor-steps", type=int, default=50, help="W inversion steps of the 10 photos")
    parser.add_argument("--iterations", type=int, default=200, help="personalization steps")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "heads_figures",
                        help="personalize: the adapter, its checkpoints and inversion cache")
    parser.add_argument("--adapter", type=Path, help="compare: the person's adapter file")
    parser.add_argument("--png", type=Path, help="compare: the picture to write")
    parser.add_argument("--verify", action="store_true",
                        help="compare: also the fraction of views that verify as the person (threshold kept in --work)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.part == "person":
        cmd_person(args.person)
        return
    if args.part == "compare":
        cmd_compare(args.model, args.person, args.adapter, args.png, args.work if args.verify else None)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    parts = ("world", "samples", "identity", "fit", "prior", "personalize") if args.part == "all" else (args.part,)
    for part in parts:
        t0 = time.time()
        if part == "world":
            cmd_world(args.out)
        elif part == "samples":
            cmd_samples(args.out, args.model)
        elif part == "identity":
            cmd_identity(args.out)
        elif part == "fit":
            cmd_fit(args.out, args.model)
        elif part == "prior":
            cmd_prior(args.out, args.model, args.projector_steps)
        else:
            cmd_personalize(args.out, args.model, args.person, args.iterations, args.anchor_steps, args.work)
        print(f"{part}: {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
