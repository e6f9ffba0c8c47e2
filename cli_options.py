"""Options and parsers shared by the `cli.py` commands of several packages.

Every command that takes a base model offers the same pair, `--model DIR | --preset NAME`, declared once here as
`ModelDir` and `PresetName` and checked by `one_model_source`. This module imports only typer, so the command
modules that use it (and `cli.py --help`) stay fast; torch is imported by `build_model_source` when a command runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

ModelDir = Annotated[Optional[Path], typer.Option(
    "--model", help="Base model directory (from `cli.py convert`).")]
PresetName = Annotated[Optional[str], typer.Option(
    "--preset", help="Random-weight preset instead of --model (demos, smoke tests): tiny | ffhq512-128.")]


def one_model_source(model: Optional[Path], preset: Optional[str]) -> None:
    """Refuse a command line that gives both or neither of --model and --preset."""
    if (model is None) == (preset is None):
        raise typer.BadParameter("give exactly one of --model DIR or --preset NAME")


def build_model_source(model: Optional[Path], preset: Optional[str]):
    """The `TriPlaneGenerator` named by --model or --preset."""
    from generator.model_dir import build_generator
    one_model_source(model, preset)
    return build_generator(model=model, preset_name=preset)


def parse_floats(text: str, option: str) -> tuple[float, ...]:
    """'-0.4,0,0.4' -> (-0.4, 0.0, 0.4); an empty list or a non-number is a usage error naming `option`."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"{option} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise typer.BadParameter(f"{option} is empty")
    return values
