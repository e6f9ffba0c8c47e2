"""my3dgen command line: convert, render, (personalize, export, serve). Each command is also a Python API."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Personalized 3D face generators (EG3D + LoRA, the My3DGen method): convert, render, "
                       "train, export, serve.")


def _floats(text: str, name: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{name} must be comma-separated numbers, got {text!r}") from None


@app.command()
def convert(pkl: Path = typer.Argument(..., exists=True, dir_okay=False, help="Official EG3D network pickle."),
            out: Path = typer.Option(..., "--out", help="Model directory to write."),
            overwrite: bool = typer.Option(False, help="Replace an existing model directory.")):
    """Official EG3D pickle (e.g. ffhq512-128.pkl) -> model directory, without executing the pickle's code."""
    from generator.convert import convert_official_pickle
    from generator.model_dir import read_config
    path = convert_official_pickle(pkl, out, overwrite=overwrite)
    cfg, raw = read_config(path)
    typer.echo(f"wrote {path} (neural rendering {cfg.neural_rendering_resolution}^2, "
               f"{cfg.rendering.depth_resolution}+{cfg.rendering.depth_resolution_importance} samples, "
               f"fingerprint {raw['fingerprint'][:23]}...)")


@app.command()
def render(model: Optional[Path] = typer.Option(None, "--model", help="Model directory (from `convert`)."),
           preset: Optional[str] = typer.Option(None, "--preset", help="Random-weight preset: tiny | ffhq512-128."),
           adapter: Optional[Path] = typer.Option(None, "--adapter", help="A person's adapter file."),
           anchor: Optional[str] = typer.Option(None, help="Render this anchor of the adapter (name or index) "
                                                           "instead of a seed."),
           seed: int = typer.Option(0, help="Seed of z (numpy RandomState, as official gen_samples.py)."),
           yaw: float = typer.Option(0.0, help="Camera yaw offset from frontal, radians."),
           pitch: float = typer.Option(0.0, help="Camera pitch offset from frontal, radians."),
           grid_yaws: Optional[str] = typer.Option(None, help="Comma-separated yaws: render a grid instead."),
           grid_pitches: Optional[str] = typer.Option(None, help="Comma-separated pitches for the grid rows."),
           truncation: float = typer.Option(0.7, help="Truncation psi."),
           truncation_cutoff: Optional[int] = typer.Option(None, help="Truncate only the first N ws."),
           stochastic: bool = typer.Option(False, help="Official stochastic sampling (random noise and depth "
                                                       "jitter) instead of the deterministic default."),
           depth: bool = typer.Option(False, help="Add depth maps under the images."),
           out: Path = typer.Option(..., "--out", help="PNG file to write.")):
    """Render one view, or a yaw x pitch grid, of a model or a preset (optionally a person's adapter) to a PNG."""
    import torch
    from generator.adapter_file import load_adapter
    from generator.imaging import save_png
    from generator.lora import attach
    from generator.views import camera_batch, latent_from_seed, render_views, views_picture
    G = _source(model, preset)
    yaws = _floats(grid_yaws, "--grid-yaws") if grid_yaws else [yaw]
    pitches = _floats(grid_pitches, "--grid-pitches") if grid_pitches else [pitch]
    views = [(y, p) for p in pitches for y in yaws]
    anchors = None
    if adapter is not None:
        person, anchors, _ = load_adapter(adapter, G)
        attach(G, person)
    if anchor is not None:
        if anchors is None:
            raise typer.BadParameter("--anchor needs an --adapter file that stores anchors")
        ws = anchors.ws_plus(G.num_ws)[anchors.index(anchor)].unsqueeze(0)
    else:
        with torch.no_grad():
            ws = G.mapping(latent_from_seed(G, seed), camera_batch(G, [(0.0, 0.0)]), truncation_psi=truncation,
                           truncation_cutoff=truncation_cutoff)
    outs = render_views(G, ws, views, sampling="stochastic" if stochastic else "deterministic",
                        noise_mode="random" if stochastic else "const")
    save_png(views_picture(outs, cols=len(yaws), with_depth=depth), out)
    typer.echo(f"wrote {out} ({len(views)} view(s), {G.img_resolution}x{G.img_resolution} each)")


def _source(model: Optional[Path], preset: Optional[str]):
    from generator.model_dir import build_generator
    if (model is None) == (preset is None):
        raise typer.BadParameter("give exactly one of --model DIR or --preset NAME")
    return build_generator(model=model, preset_name=preset)


@app.command()
def adapters(model: Optional[Path] = typer.Option(None, "--model", help="Model directory."),
             preset: Optional[str] = typer.Option(None, "--preset", help="Preset: tiny | ffhq512-128."),
             rank: int = typer.Option(4, help="LoRA rank r."),
             alpha: Optional[float] = typer.Option(None, help="LoRA alpha (default: rank, i.e. scale 1)."),
             layout: str = typer.Option("loralib", help="loralib (paper budget) | flat (PEFT convention)."),
             decoder: bool = typer.Option(True, help="Fine-tune the OSG decoder."),
             biases: bool = typer.Option(True, help="Train biases, noise strengths and the const."),
             mapping: bool = typer.Option(False, help="Also put LoRA on the mapping network."),
             mode: str = typer.Option("lora", help="lora | full (full fine-tuning baseline)."),
             file: Optional[Path] = typer.Option(None, "--file", help="Describe this adapter file instead.")):
    """Show what a person trains: a table of LoRA targets and parameter counts (or an adapter file's metadata)."""
    import json
    from generator.adapter_file import read_adapter_meta
    from generator.lora import AdapterPolicy, count_table, plan
    if file is not None:
        meta = read_adapter_meta(file)
        meta["targets"] = f"{len(meta['targets'])} tensors"
        typer.echo(json.dumps(meta, indent=2))
        return
    G = _source(model, preset)
    policy = AdapterPolicy(rank=rank, alpha=float(alpha if alpha is not None else rank), layout=layout,
                           train_decoder=decoder, train_biases=biases, mode=mode,
                           parts=("synthesis", "superresolution") + (("mapping",) if mapping else ()))
    rows = count_table(plan(G, policy))
    total = sum(r[2] for r in rows)
    base = sum(p.numel() for p in G.parameters())
    width = max(len(r[0]) for r in rows)
    typer.echo(f"{'target':{width}}  tensors  parameters")
    for name, tensors, count in rows:
        typer.echo(f"{name:{width}}  {tensors:7d}  {count:10,d}")
    typer.echo(f"{'total trainable':{width}}  {sum(r[1] for r in rows):7d}  {total:10,d}  "
               f"({base / total:.1f}x fewer than the {base:,d} of the generator)")


@app.command()
def preprocess(photos: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of photos."),
               out: Path = typer.Option(..., "--out", help="Dataset folder to write."),
               backend: str = typer.Option("dlib", help="dlib (offline) | insightface (models you provide)."),
               insightface_models: Optional[Path] = typer.Option(None, help="Folder with det_10g.onnx etc."),
               mirror: bool = typer.Option(True, help="Also write mirrored crops with mirrored cameras."),
               size: int = typer.Option(512, help="Crop size."),
               overwrite: bool = typer.Option(False, help="Replace an existing dataset folder.")):
    """Photos -> aligned crops + EG3D camera labels (dataset.json); skipped photos are listed in report.json."""
    from preprocess import PreprocessConfig, preprocess_folder
    cfg = PreprocessConfig(backend=backend, insightface_model_dir=insightface_models, mirror=mirror, size=size,
                           overwrite=overwrite)
    report = preprocess_folder(photos, out, cfg)
    typer.echo(report.summary())


# Commands implemented in their own packages (each imports its heavy dependencies inside the command).
# registered-commands-begin
from serve.commands import register as _register_serve; _register_serve(app)  # package, serve, people
from evaluation.commands import invert as _invert, eval_command as _eval; app.command(name="invert")(_invert); app.command(name="eval")(_eval)  # noqa: E702
from export.commands import export as _export, build_engine as _build_engine; app.command(name="export")(_export); app.command(name="build-engine")(_build_engine)  # noqa: E702
from train.commands import train as _train; app.command(name="train")(_train)  # noqa: E702
# registered-commands-end

def main() -> None:
    """Run the CLI; expected failures (bad input files, values, names) print one line instead of a traceback."""
    try:
        app()
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        typer.echo(f"error: {message}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
