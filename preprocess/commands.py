"""`cli.py preprocess`: a folder of photos -> an EG3D dataset folder (crops + camera labels + report).

Heavy modules are imported inside the command so that `cli.py --help` stays fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli_options import up_to


def preprocess(photos: Path = typer.Argument(..., exists=True, file_okay=False,
                                             help="Folder of photos, or a folder already holding a dataset.json "
                                                  "with camera labels (e.g. EG3D's preprocess_in_the_wild.py "
                                                  "output), which is copied unchanged."),
               out: Path = typer.Option(..., "--out", help="Dataset folder to write."),
               crop: str = typer.Option("eg3d", help="Face framing: eg3d (EG3D's own, Deep3DFaceRecon align_img "
                                                     "geometry: what the released models were trained on) | ffhq "
                                                     "(the original FFHQ recipe)."),
               padding: str = typer.Option("reflect", help="Fill where a crop leaves the photo: reflect (FFHQ's "
                                                           "blurred reflection) | black (as EG3D's in-the-wild "
                                                           "script)."),
               backend: str = typer.Option("dlib", help="dlib (offline) | insightface (models you provide)."),
               insightface_models: Optional[Path] = typer.Option(None, help="Folder with det_10g.onnx etc."),
               mirror: bool = typer.Option(True, help="Also write mirrored crops with mirrored cameras."),
               size: int = typer.Option(512, **up_to("max_image_size", 8), help="Crop size."),
               overwrite: bool = typer.Option(False, help="Replace an existing dataset folder.")):
    """Photos -> framed crops + EG3D camera labels (dataset.json); skipped photos are listed in report.json."""
    from preprocess import PreprocessConfig, preprocess_folder
    try:
        cfg = PreprocessConfig(backend=backend, insightface_model_dir=insightface_models, mirror=mirror, size=size,
                               crop=crop, padding=padding, overwrite=overwrite)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    report = preprocess_folder(photos, out, cfg)
    if report.accepted_existing:
        typer.echo(f"{photos} already holds {len(report.kept)} labelled image(s) (dataset.json): copied unchanged")
    else:
        typer.echo(f"crop: {crop} framing, {size}x{size}")
    typer.echo(report.summary())
