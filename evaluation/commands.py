"""`cli.py invert` (PTI of one photo) and `cli.py eval` (the paper's protocol over several models).

Heavy modules are imported inside the commands so `cli.py --help` stays fast.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import List, Optional

import typer

from cli_defaults import field_option
from cli_options import (PITCH_RANGE, SEED_RANGE, YAW_RANGE, ModelDir, PresetName, build_model_source, check_limit,
                         parse_floats, up_to)

EVAL, PTI = "evaluation.protocol:EvalConfig", "evaluation.pti:PTIConfig"
"""The configs whose fields give the options their defaults (cli_defaults.py)."""

QUICK = {"pairs": 2, "views": 4, "weights": 3, "latent_steps": 30, "tune_steps": 20, "anchor_steps": 30,
         "max_test_photos": 2, "inversion_yaws": (-0.35, 0.0, 0.35), "inversion_pitches": (0.0,)}
"""`eval --quick`: a smoke-sized run (CI, trying the command); options given explicitly still win."""

NOVEL_YAWS = (-0.35, -0.175, 0.0, 0.175, 0.35)
NOVEL_PITCHES = (-0.25, 0.0, 0.25)


def _command_line() -> str:
    return "python cli.py " + shlex.join(sys.argv[1:])


def _photo_camera(photo: Path, camera_from: Optional[Path], yaw: Optional[float], pitch: Optional[float], G):
    """The photo's 25-d camera: its dataset.json label, or a look-at camera from --yaw/--pitch."""
    import numpy as np
    import torch
    from generator.views import camera_batch
    from formats.dataset import read_dataset_json
    if yaw is not None or pitch is not None:
        if camera_from is not None:
            raise typer.BadParameter("give either --camera-from or --yaw/--pitch, not both")
        return camera_batch(G, [(yaw or 0.0, pitch or 0.0)])[0], f"look-at yaw {yaw or 0.0} pitch {pitch or 0.0}"
    source = camera_from
    if source is None and (photo.parent / "dataset.json").is_file():
        source = photo.parent
    if source is None:
        raise typer.BadParameter(f"no camera for {photo}: there is no dataset.json beside it; give --camera-from "
                                 f"DATASET (a folder or dataset.json from `cli.py preprocess`) or --yaw/--pitch")
    folder = source.parent if source.is_file() else source
    entries = dict(read_dataset_json(folder))
    try:
        rel = photo.resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        rel = photo.name
    if rel not in entries:
        raise typer.BadParameter(f"{folder / 'dataset.json'} has no label for {rel!r} "
                                 f"({len(entries)} entries, e.g. {', '.join(list(entries)[:3])})")
    return torch.from_numpy(np.asarray(entries[rel], dtype=np.float32)), f"{folder / 'dataset.json'}: {rel}"


def invert(photo: Path = typer.Argument(..., exists=True, dir_okay=False, help="Aligned square photo (a crop "
                                                                               "from `cli.py preprocess`)."),
           model: ModelDir = None, preset: PresetName = None,
           adapter: Optional[Path] = typer.Option(None, "--adapter", exists=True, dir_okay=False,
                                                  help="Start from this person's adapter (a tuned copy is saved; "
                                                       "the file itself is not changed)."),
           camera_from: Optional[Path] = typer.Option(None, "--camera-from", exists=True,
                                                      help="Dataset folder or dataset.json holding the photo's "
                                                           "camera (default: the dataset.json beside the photo)."),
           yaw: Optional[float] = typer.Option(None, **YAW_RANGE, help="Camera yaw from frontal, radians (instead "
                                                                       "of a label)."),
           pitch: Optional[float] = typer.Option(None, **PITCH_RANGE, help="Camera pitch from frontal, radians."),
           latent_steps: int = field_option(PTI, "latent_steps", **up_to("max_steps")),
           tune_steps: int = field_option(PTI, "tune_steps", **up_to("max_steps", 0)),
           tune: str = field_option(PTI, "tune", help="full: tune all synthesis/SR/decoder weights (PTI); adapter: "
                                                      "tune a copy of the person's adapter (a LoRA person stays "
                                                      "small)."),
           # 0 stands for PTIConfig.lpips_threshold's None (no early stop): a float option has no None to type.
           lpips_threshold: float = typer.Option(0.0, "--pti-stop-lpips", "--lpips-threshold", min=0.0, max=1.0,
                                                 help="Stop tuning once LPIPS <= this (PTI as the EG3D port runs "
                                                      "it: 0.06); 0 runs every tuning step (My3DGen: 350)."),
           seed: int = field_option(PTI, "seed", **SEED_RANGE),
           out: Path = typer.Option(..., "--out", help="Output folder.")):
    """PTI-invert one photo: reconstruction.png, comparison.png, novel_views.png, pti_adapter.safetensors."""
    import json
    from evaluation.metrics import ImageMetrics
    from evaluation.protocol import render_poses
    from evaluation.pti import PTIConfig, frozen, pti_invert, save_pti_adapter
    from generator.adapter_file import load_adapter
    from formats.atomic import atomic_file
    from generator.imaging import grid, save_png, to_uint8
    from generator.lora import attach, detach
    from preprocess import load_photo
    from train.data import image_to_tensor

    G = build_model_source(model, preset)
    image = image_to_tensor(load_photo(photo), G.img_resolution, str(photo))
    c, camera_source = _photo_camera(photo, camera_from, yaw, pitch, G)
    person = load_adapter(adapter, G)[0] if adapter is not None else None
    config = PTIConfig(latent_steps=latent_steps, tune_steps=tune_steps, tune=tune, seed=seed,
                       lpips_threshold=lpips_threshold if lpips_threshold > 0 else None).validate()
    typer.echo(f"PTI of {photo.name} (camera: {camera_source}): {latent_steps} latent + {tune_steps} tuning steps")
    from tqdm import tqdm
    bars = []

    def progress(stage, step, total, values):
        if not bars:  # created at the first tuning step, after the projector's own bar is gone
            bars.append(tqdm(total=total, desc="PTI tuning", dynamic_ncols=True, leave=False))
        bars[0].update(1)
        bars[0].set_postfix(lpips=f"{values['lpips']:.4f}", refresh=False)

    try:
        result = pti_invert(G, image, c, person=person, config=config, progress=progress, projector_progress=True)
    finally:
        for bar in bars:
            bar.close()
    out.mkdir(parents=True, exist_ok=True)
    save_png(to_uint8(result.image), out / "reconstruction.png")
    save_png(grid([to_uint8(image), to_uint8(result.image_latent), to_uint8(result.image)], cols=3),
             out / "comparison.png")
    poses = [(y, p) for p in NOVEL_PITCHES for y in NOVEL_YAWS]
    with frozen(G):
        attach(G, result.adapter)
        try:
            views = render_poses(G, result.ws, poses)
        finally:
            detach(G)
    save_png(grid([to_uint8(v) for v in views], cols=len(NOVEL_YAWS)), out / "novel_views.png")
    path = save_pti_adapter(out / "pti_adapter.safetensors", result, G, name=photo.name, config=config,
                            source_adapter=str(adapter) if adapter else None)
    metrics = ImageMetrics()
    numbers = {"photo": str(photo), "camera": camera_source,
               "lpips_latent_only": float(metrics.lpips(result.image_latent[None], image[None])[0]),
               "lpips": float(metrics.lpips(result.image[None], image[None])[0]),
               "dists": float(metrics.dists(result.image[None], image[None])[0]),
               "tune_steps_run": result.tune_steps_run, "seconds": result.seconds, "notes": result.notes}
    with atomic_file(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(numbers, indent=2) + "\n")
    for note in result.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"LPIPS {numbers['lpips_latent_only']:.4f} after the latent stage -> {numbers['lpips']:.4f} after "
               f"{result.tune_steps_run} tuning steps (DISTS {numbers['dists']:.4f})")
    typer.echo(f"wrote {out}/reconstruction.png, comparison.png (photo | latent only | PTI), novel_views.png, "
               f"metrics.json and {path}")


def eval_command(
        model: ModelDir = None, preset: PresetName = None,
        test_data: Path = typer.Option(..., "--test-data", exists=True, file_okay=False,
                                       help="Dataset folder of held-out test photos (dataset.json + crops)."),
        reference_data: Path = typer.Option(..., "--reference-data", exists=True, file_okay=False,
                                            help="Dataset folder of the person's training photos: the ID "
                                                 "reference set and the training anchors."),
        models: List[str] = typer.Option(..., "--models", "-m",
                                         help="NAME=ADAPTER_FILE or NAME=pretrained; repeat (or comma-separate) "
                                              "for each table row, in order."),
        identity: Optional[str] = typer.Option(None, "--identity", help="Identity backend of the ID scores: "
                                               "arcface:PATH (ArcFace weights you bring: the paper's score) | heads "
                                               "(the built-in head world's identity network, "
                                               "models/heads/identity.safetensors) | dlib (labelled 'not ArcFace') "
                                               "| random:ARCH[:SEED] (smoke test only). Default: the --model "
                                               "directory's identity.safetensors if it has one (models/heads does); "
                                               "else required (nothing else is picked for you)."),
        identity_crop: str = typer.Option("full", help="Face crop for ArcFace-family networks: full | psp | "
                                                       "arcface_ffhq."),
        # pairs, views, weights, latent_steps, tune_steps, anchor_steps: None is their EvalConfig / PTIConfig
        # field's default, or --quick's (QUICK) with --quick. The help states the paper's value.
        pairs: Optional[int] = typer.Option(None, **up_to("max_eval_count"),
                                            help="Anchor pairs per synthesis table (paper: 10)."),
        views: Optional[int] = typer.Option(None, **up_to("max_eval_count"),
                                            help="Random views per interpolation weight (paper: 20)."),
        weights: Optional[int] = typer.Option(None, **up_to("max_eval_count", 2),
                                              help="Interpolation weights in [0, 1] (paper: 10)."),
        seed: int = field_option(EVAL, "seed", **SEED_RANGE),
        latent_steps: Optional[int] = typer.Option(None, **up_to("max_steps"),
                                                   help="PTI stage 1 steps (paper: 600)."),
        tune_steps: Optional[int] = typer.Option(None, **up_to("max_steps", 0),
                                                 help="PTI stage 2 steps (paper: 350)."),
        anchor_steps: Optional[int] = typer.Option(None, **up_to("max_steps"),
                                                   help="Projector steps for training anchors an adapter does not "
                                                        "store (paper: 500)."),
        tune: str = field_option(PTI, "tune", help="PTI tuning: full | adapter."),
        # 0 stands for PTIConfig.lpips_threshold's None (no early stop): a float option has no None to type.
        lpips_threshold: float = typer.Option(0.0, "--pti-stop-lpips", "--lpips-threshold", min=0.0, max=1.0,
                                              help="PTI early stop once LPIPS <= this (PTI as the EG3D port runs it: "
                                                   "0.06); 0 runs every tuning step (My3DGen: 350)."),
        max_test_photos: Optional[int] = field_option(EVAL, "max_test_photos", **up_to("max_eval_count")),
        # None: EvalConfig's pose grid, or --quick's (QUICK) with --quick.
        inversion_yaws: Optional[str] = typer.Option(None, help="Inversion ID poses: comma-separated yaws, each in "
                                                                "invert's --yaw range (at most max_views poses in "
                                                                "MY3DGEN_LIMITS, 100 by default)."),
        inversion_pitches: Optional[str] = typer.Option(None, help="Inversion ID poses: comma-separated pitches, "
                                                                   "each in invert's --pitch range."),
        cross_view: bool = field_option(EVAL, "cross_view", "--cross-view"),
        quick: bool = typer.Option(False, "--quick", help="Smoke-sized run (2 pairs, 4 views, 3 weights, 30+20 "
                                                          "PTI steps, 2 test photos); explicit options win."),
        cache_dir: Optional[Path] = typer.Option(None, help="Cache of W projections (default OUT/projections); "
                                                            "reused when model, photo, settings and seed match."),
        markdown: Optional[Path] = typer.Option(None, help="Write the markdown here instead of OUT/eval.md."),
        plot: Optional[Path] = typer.Option(None, help="Write the plot here instead of OUT/id_vs_t.png."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the JSON here instead of "
                                                                     "OUT/eval.json."),
        inversions_png: Optional[Path] = typer.Option(None, "--inversions-png", help="Write the reconstructions "
                                                      "picture here instead of OUT/inversions.png."),
        title: str = typer.Option("Evaluation (My3DGen §4.1 protocol)", help="Markdown title."),
        preamble: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                                help="Markdown file inserted after the command line."),
        out: Path = typer.Option(..., "--out", help="Output folder.")):
    """The paper's evaluation (§4.1): Tables 1-3 as markdown, all raw numbers as JSON, Figure 3 as a PNG."""
    from evaluation.identity_score import IdentityBackendUnavailable, make_identity_backend, model_identity_backend
    from evaluation.protocol import EvalConfig, ModelSpec, Protocol, load_photos
    from evaluation.pti import PTIConfig
    from evaluation.report import plot_id_vs_t, write_json, write_report
    from generator.imaging import grid, save_png, to_uint8

    def given(**options):
        """The options given, else --quick's values (QUICK); the others are left to their config fields' defaults."""
        values = {key: QUICK.get(key) if value is None and quick else value for key, value in options.items()}
        return {key: value for key, value in values.items() if value is not None}

    specs = [ModelSpec.parse(item) for entry in models for item in entry.split(",") if item.strip()]
    yaws = parse_floats(inversion_yaws, "--inversion-yaws", YAW_RANGE) if inversion_yaws else None
    pitches = parse_floats(inversion_pitches, "--inversion-pitches", PITCH_RANGE) if inversion_pitches else None
    pti = PTIConfig(**given(latent_steps=latent_steps, tune_steps=tune_steps),
                    tune=tune, seed=seed, lpips_threshold=lpips_threshold if lpips_threshold > 0 else None)
    config = EvalConfig(**given(pairs=pairs, views=views, weights=weights, anchor_steps=anchor_steps,
                                max_test_photos=max_test_photos, inversion_yaws=yaws, inversion_pitches=pitches),
                        seed=seed, cross_view=cross_view, pti=pti)
    check_limit(len(config.inversion_yaws) * len(config.inversion_pitches), "max_views",
                "--inversion-yaws x --inversion-pitches", "poses")
    G = build_model_source(model, preset)
    config.validate()
    try:
        backend = model_identity_backend(model) if not identity and model is not None else None
        backend = backend or make_identity_backend(identity, crop=identity_crop)
    except (ValueError, FileNotFoundError, IdentityBackendUnavailable) as e:
        raise typer.BadParameter(str(e), param_hint="--identity") from None
    if not identity:
        typer.echo(f"identity network: head-world identity network from {backend.weights} (the model directory's)")
    test = load_photos(test_data, G.img_resolution)
    reference = load_photos(reference_data, G.img_resolution)
    out.mkdir(parents=True, exist_ok=True)
    protocol = Protocol(G, test, reference, backend, config, cache_dir=cache_dir or out / "projections",
                        log=typer.echo)
    if protocol.scorer.reference_no_face:
        typer.echo(f"note: no face found in {len(protocol.scorer.reference_no_face)} reference photo(s); they are "
                   f"not used as references: {', '.join(protocol.scorer.reference_no_face)}")
    typer.echo(f"{len(specs)} model(s), {len(protocol.test)} test photo(s), {len(reference)} reference photo(s), "
               f"identity: {backend.label}")
    result = protocol.run(specs)
    command = _command_line()
    md_path = markdown or out / "eval.md"
    plot_path = plot_id_vs_t(result, plot or out / "id_vs_t.png")
    json_path = write_json(result, json_out or out / "eval.json", command=command)
    recon_path = inversions_png or out / "inversions.png"
    tiles = []
    for i in range(len(protocol.test)):
        tiles.append(to_uint8(protocol.test.images[i]))
        tiles += [to_uint8(protocol.reconstructions[s.name][i]) for s in specs]
    save_png(grid(tiles, cols=1 + len(specs)), recon_path)
    write_report(result, md_path, plot_path, json_path, recon_path, command, title,
                 preamble.read_text() if preamble else None)
    typer.echo(f"wrote {md_path}, {json_path}, {plot_path}, {recon_path} ({result['seconds']:.0f} s)")
