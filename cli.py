"""my3dgen command line. Each command is also a Python API; this file only assembles them.

Every command is a plain function with typer-annotated parameters, written in the package it belongs to
(`train/commands.py`, `export/commands.py`, ...; the commands of `generator/`, whose `__init__` imports torch, are
written below), and registered in one place: the `COMMANDS` table. Command modules import their heavy
dependencies inside the function, so `cli.py --help` stays fast.

Options: every number a user sets is finite and within a range stated in `--help` (cli_options.py: typer's
`min=`/`max=`, or a `formats.limits.Limits` field for counts and sizes), checked by `build_app` for every command
before any work starts. An option that sets a config field (`train --rank` -> TrainConfig.rank) takes its default,
and often its help, from the field (cli_defaults.py), so each default is written once.

Errors: an expected failure (a bad input file, value or name: `EXPECTED_ERRORS`) prints one line `error: ...` and
exits with code 2, and so does a usage error (a bad or missing option); anything else is a bug and keeps its
traceback. `--debug` (or `MY3DGEN_DEBUG=1`) shows the traceback of expected failures too.
"""
from __future__ import annotations

import contextlib
import os
import sys

if "--help" in sys.argv and not sys.stdout.isatty() and not {"COLUMNS", "TERMINAL_WIDTH"} & set(os.environ):
    os.environ["TERMINAL_WIDTH"] = "120"  # piped --help (less, a file): the help's 120 columns, not rich's 80

if __name__ == "__main__":  # re-execute under jemalloc before the command modules load, not after (entry())
    from launch.allocator import preload
    preload()
from pathlib import Path
from typing import Callable, Optional

import typer
from typer.core import TyperGroup

try:  # recent typer carries its own copy of click
    from typer._click.exceptions import UsageError
except ImportError:
    from click.exceptions import UsageError

from cli_options import (ALPHA_RANGE, ENDPOINT_FORMS, PITCH_RANGE, RANK_RANGE, SEED_RANGE, YAW_RANGE, Endpoint,
                         ModelDir, PresetName, Truncation, TruncationCutoff, bounded_numbers, build_model_source,
                         check_limit, check_truncation_cutoff, parse_endpoint, parse_floats, parse_seeds, up_to)
from cli_defaults import field_option
from evaluation import commands as evaluation_commands
from export import commands as export_commands
from formats.errors import FormatError
from preprocess import commands as preprocess_commands
from serve import commands as serve_commands
from train import commands as train_commands
from train import many_command as train_many_command
from web import commands as web_commands

DEBUG_ENV = "MY3DGEN_DEBUG"

MESH, POLICY = "generator.mesh:MeshConfig", "generator.lora_targets:AdapterPolicy"
"""The configs whose fields give `mesh`'s and `adapters`' options their defaults (cli_defaults.py)."""

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (FormatError, ValueError, OSError)
"""Exceptions that mean bad input (a file not in its format, a bad value or name, a missing or unreadable file),
not a bug: shown as one line, exit code 2. A KeyError, TypeError, ... is a bug and keeps its traceback."""
EXPECTED_ERRORS_BY_MODULE = {"serve.server": "ServerError", "export.tensorrt_build": "TensorRTBuildError",
                             "runtime.trt": "TensorRTUnavailable", "preprocess.detect": "BackendUnavailable",
                             "runtime.errors": "RuntimeErrorBase"}
"""Other expected errors (missing optional software, the runtime's deliberate refusals); each is looked up only
once its module is imported, so cli.py imports none of them."""


def convert(pkl: Path = typer.Argument(..., exists=True, dir_okay=False, help="Official EG3D network pickle."),
            out: Path = typer.Option(..., "--out", help="Model directory to write."),
            overwrite: bool = typer.Option(False, help="Replace an existing model directory.")):
    """Official EG3D pickle (e.g. ffhq512-128.pkl) -> model directory, without executing the pickle's code."""
    from generator.convert import convert_official_pickle
    from generator.model_dir import IDENTITY_FILE, read_config
    path = convert_official_pickle(pkl, out, overwrite=overwrite)
    cfg, raw = read_config(path)
    typer.echo(f"wrote {path} (neural rendering {cfg.neural_rendering_resolution}^2, "
               f"{cfg.rendering.depth_resolution}+{cfg.rendering.depth_resolution_importance} samples, "
               f"fingerprint {raw['fingerprint'][:23]}...)")
    if (path / IDENTITY_FILE).is_file():
        typer.echo(f"kept the directory's identity network {path / IDENTITY_FILE} (train and eval use it by "
                   f"default; delete it if it does not fit this model)")


def _subject(G, adapter: Optional[Path], anchor: Optional[str], seed: int, truncation: float,
             truncation_cutoff: Optional[int]):
    """Attach --adapter to G (if given) and return (ws [1, num_ws, w_dim] of --anchor or of --seed, its anchors)."""
    from generator.adapter_file import load_adapter
    from generator.lora import attach
    from generator.views import anchor_latent
    check_truncation_cutoff(truncation_cutoff, G.num_ws)
    anchors = None
    if adapter is not None:
        person, anchors, _ = load_adapter(adapter, G)
        attach(G, person)
    if anchor is not None:
        if anchors is None:
            raise typer.BadParameter("--anchor needs an --adapter file that stores anchors")
        return anchor_latent(G, anchors, anchor)[0], anchors
    return _seed_latent(G, seed, truncation, truncation_cutoff), anchors


def _seed_latent(G, seed: int, truncation: float, truncation_cutoff: Optional[int]):
    """ws [1, num_ws, w_dim] of a seed's z (numpy RandomState, as the official gen_samples.py), frontal camera."""
    from generator.views import seed_latent
    return seed_latent(G, seed, truncation, truncation_cutoff)


def _interpolation_ends(video: Optional[str], start: Optional[str], to: Optional[str], anchor: Optional[str],
                        adapter: Optional[Path]) -> Optional[tuple[Endpoint, Endpoint]]:
    """The two ends of `render --video interpolate`, parsed before any work: --from (else --anchor, the first end
    before --from existed) and --to, an anchor only with an --adapter; None for any other render, which must not
    give --from or --to."""
    from media.frames import VIDEO_KINDS
    if video is not None and video not in VIDEO_KINDS:
        raise typer.BadParameter(f"{video!r}: expected one of {', '.join(VIDEO_KINDS)}", param_hint="'--video'")
    if video != "interpolate":
        for option, value in (("--from", start), ("--to", to)):
            if value is not None:
                raise typer.BadParameter(f"{option} is for --video interpolate")
        return None
    if start is not None and anchor is not None:
        raise typer.BadParameter("--video interpolate starts at --from or at --anchor, not both")
    if (start is None and anchor is None) or to is None:
        raise typer.BadParameter(f"--video interpolate needs --from (or --anchor) and --to, each {ENDPOINT_FORMS}")
    ends = (parse_endpoint(start, "--from") if start is not None else Endpoint("--anchor", "anchor", anchor),
            parse_endpoint(to, "--to"))
    for end in ends:
        if end.kind == "anchor" and adapter is None:
            raise typer.BadParameter(f"{end.value!r} is an anchor, which needs --adapter; otherwise give "
                                     f"{ENDPOINT_FORMS}", param_hint=f"'{end.option}'")
    return ends


def render(model: ModelDir = None, preset: PresetName = None,
           adapter: Optional[Path] = typer.Option(None, "--adapter", help="A person's adapter file."),
           anchor: Optional[str] = typer.Option(None, help="Render this anchor of the adapter (name or index) "
                                                           "instead of a seed (--video interpolate: the first "
                                                           "frame)."),
           seed: int = typer.Option(0, **SEED_RANGE, help="Seed of z (numpy RandomState, as official "
                                                          "gen_samples.py)."),
           seeds: Optional[str] = typer.Option(None, help="Seeds and inclusive ranges, e.g. 0-3,7 (as EG3D's "
                                                          "gen_samples.py): one picture per seed, "
                                                          "OUTDIR/seedNNNN.png (at most max_seeds in "
                                                          "MY3DGEN_LIMITS, 1000 by default)."),
           yaw: float = typer.Option(0.0, **YAW_RANGE, help="Camera yaw offset from frontal, radians."),
           pitch: float = typer.Option(0.0, **PITCH_RANGE, help="Camera pitch offset from frontal, radians."),
           grid_yaws: Optional[str] = typer.Option(None, help="Comma-separated yaws, each in --yaw's range: render "
                                                              "a grid instead (at most max_views views in "
                                                              "MY3DGEN_LIMITS, 100 by default)."),
           grid_pitches: Optional[str] = typer.Option(None, help="Comma-separated pitches for the grid rows, each "
                                                                 "in --pitch's range."),
           truncation: Truncation = 0.7,
           truncation_cutoff: TruncationCutoff = None,
           stochastic: bool = typer.Option(False, help="Official stochastic sampling (random noise and depth "
                                                       "jitter) instead of the deterministic default."),
           depth: bool = typer.Option(False, help="Add depth maps under the images."),
           video: Optional[str] = typer.Option(None, help="turntable (EG3D's orbit, of --seed or --anchor) | "
                                                          "interpolate (from --from to --to): a video (.mp4, or "
                                                          ".gif) instead of a PNG."),
           start: Optional[str] = typer.Option(None, "--from", help="--video interpolate: the first frame's latent: "
                                               "seed:N (z of seed N, mapped as --seed maps it, with --truncation), "
                                               "anchor:NAME (an anchor of --adapter, name or index) or a .npz "
                                               "(array 'w', as EG3D's projected_w.npz) or .npy latent file "
                                               "(shape 1 x num_ws x w_dim, num_ws x w_dim, or a W of w_dim). An "
                                               "anchor is seen from its own photo's camera, a seed or file from "
                                               "--yaw/--pitch (frontal by default); the camera moves between the "
                                               "two ends. "
                                               "--anchor A is the same as --from anchor:A."),
           to: Optional[str] = typer.Option(None, "--to", help="--video interpolate: the last frame's latent, as "
                                                               "--from; a bare NAME is an anchor of --adapter."),
           frames: int = typer.Option(60, **up_to("max_video_frames"), help="--video: number of frames."),
           fps: float = typer.Option(30.0, **up_to("max_fps", 1.0, float), help="--video: frames per second."),
           size: Optional[int] = typer.Option(None, **up_to("max_image_size", 16),
                                              help="--video: frame side in pixels, even (default: the model's)."),
           precision: str = typer.Option("fp32", help="fp32 (exact, the default) | bf16: the super-resolution "
                                                      "in bf16 on CPUs with AVX512-BF16/AMX (1.3-1.5x faster "
                                                      "than fp32 on AVX512-BF16), image within ~1e-2."),
           compile_model: bool = typer.Option(False, "--compile", help="torch.compile the renderer and "
                                              "super-resolution: faster views, but the first call compiles for "
                                              "1-2 min (cached in $TORCHINDUCTOR_CACHE_DIR)."),
           out: Optional[Path] = typer.Option(None, "--out", help="Picture to write: .png or .jpg (.mp4 or .gif "
                                                                  "with --video)."),
           outdir: Optional[Path] = typer.Option(None, "--outdir", help="--seeds: the folder for the pictures.")):
    """Render one view, or a yaw x pitch grid, of a model or a preset (optionally a person's adapter) to a PNG;
    or a turntable or an interpolation video (between seeds, anchors and latent files, in any pairing)."""
    from generator.precision import PRECISIONS, inference_precision
    if precision not in PRECISIONS:
        raise typer.BadParameter(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if video is not None and precision != "fp32":
        raise typer.BadParameter("--precision bf16 renders still images only (videos are fp32)")
    one_file = out is not None and seeds is None and outdir is None
    per_seed = out is None and seeds is not None and outdir is not None
    if not (one_file or per_seed):
        raise typer.BadParameter("give --out FILE, or --seeds LIST --outdir DIR (one picture per seed)")
    if seeds is not None and (anchor is not None or video is not None):
        raise typer.BadParameter("--seeds renders seeds' latents as pictures: not with --anchor or --video")
    ends = _interpolation_ends(video, start, to, anchor, adapter)
    seed_list = parse_seeds(seeds) if seeds is not None else (seed,)
    yaws = parse_floats(grid_yaws, "--grid-yaws", YAW_RANGE) if grid_yaws else (yaw,)
    pitches = parse_floats(grid_pitches, "--grid-pitches", PITCH_RANGE) if grid_pitches else (pitch,)
    check_limit(len(yaws) * len(pitches), "max_views", "--grid-yaws x --grid-pitches", "views")
    views = [(y, p) for p in pitches for y in yaws]
    from generator.imaging import image_format, save_image
    from generator.views import render_views, views_picture
    if out is not None and video is None:
        image_format(out)  # a bad suffix is refused before any work
    G = build_model_source(model, preset)
    ws, anchors = _subject(G, adapter, anchor, seed_list[0], truncation, truncation_cutoff)
    if compile_model:
        G.compile_for_inference()
    if video is not None:
        from generator.video import interpolation_end, render_video_command
        pair = None if ends is None else tuple(
            interpolation_end(G, end, anchors, (yaw, pitch), truncation, truncation_cutoff) for end in ends)
        typer.echo(render_video_command(G, video, ws, pair, out, frames, fps, size,
                                        grid=bool(grid_yaws or grid_pitches or depth or stochastic)))
        return
    targets = [(s, outdir / f"seed{s:04d}.png") for s in seed_list] if outdir is not None else [(seed, out)]
    if outdir is not None:
        outdir.mkdir(parents=True, exist_ok=True)
    for s, path in targets:
        if s != seed_list[0]:
            ws = _seed_latent(G, s, truncation, truncation_cutoff)
        with inference_precision(precision):
            outs = render_views(G, ws, views, sampling="stochastic" if stochastic else "deterministic",
                                noise_mode="random" if stochastic else "const")
        outs = [{k: v.float() for k, v in o.items()} for o in outs]
        save_image(views_picture(outs, cols=len(yaws), with_depth=depth), path)
        typer.echo(f"wrote {path} ({len(views)} view(s), {G.img_resolution}x{G.img_resolution} each)")


def mesh(model: ModelDir = None, preset: PresetName = None,
         adapter: Optional[Path] = typer.Option(None, "--adapter", help="A person's adapter file."),
         anchor: Optional[str] = typer.Option(None, help="Mesh this anchor of the adapter (name or index) "
                                                         "instead of a seed."),
         seed: int = typer.Option(0, **SEED_RANGE, help="Seed of z (numpy RandomState, as official "
                                                        "gen_samples.py)."),
         truncation: Truncation = 0.7,
         truncation_cutoff: TruncationCutoff = None,
         resolution: int = field_option(MESH, "resolution", **up_to("max_mesh_resolution", 8),
                                        help="Density grid side N (N^3 samples; EG3D uses 512)."),
         level: float = field_option(MESH, "level", min=-1000.0, max=1000.0, help="Iso-level on the raw density "
                                                                                   "(EG3D's is 10)."),
         trim: float = field_option(MESH, "trim", min=0.0, max=0.49, help="Border fraction of the box cut off "
                                                                           "(EG3D: 30/256)."),
         chunk: int = field_option(MESH, "chunk", **up_to("max_mesh_chunk"), help="Points per decoder call "
                                                                                   "(bounds memory)."),
         mrc: Optional[Path] = typer.Option(None, "--mrc", help="Also write the density volume as EG3D's .mrc."),
         out: Path = typer.Option(..., "--out", help="Mesh to write: .ply or .obj, with vertex colours.")):
    """The density field on a cube grid over the tri-plane box, marching cubes, a coloured .ply/.obj mesh."""
    from generator.mesh import MeshConfig, write_mesh_files
    cfg = MeshConfig(resolution=resolution, level=level, trim=trim, chunk=chunk).validate()
    G = build_model_source(model, preset)
    ws, _ = _subject(G, adapter, anchor, seed, truncation, truncation_cutoff)
    typer.echo(write_mesh_files(G, ws, out, mrc, cfg))


def adapters(model: ModelDir = None, preset: PresetName = None,
             rank: int = field_option(POLICY, "rank", **RANK_RANGE, help="LoRA rank r."),
             # None: alpha = the rank given (scale 1); the policy's default alpha 4.0 is that only at rank 4.
             alpha: Optional[float] = typer.Option(None, **ALPHA_RANGE, help="LoRA alpha (default: rank, i.e. "
                                                                             "scale 1)."),
             layout: str = field_option(POLICY, "layout", help="loralib (paper budget) | flat (PEFT convention)."),
             decoder: bool = field_option(POLICY, "train_decoder", help="Fine-tune the OSG decoder."),
             biases: bool = field_option(POLICY, "train_biases", help="Train biases, noise strengths and the const."),
             mapping: bool = typer.Option(False, help="Also put LoRA on the mapping network."),
             mode: str = field_option(POLICY, "mode", help="lora | full (full fine-tuning baseline)."),
             file: Optional[Path] = typer.Option(None, "--file", help="Describe this adapter file instead (or "
                                                                      "export it with --export-peft)."),
             export_peft: Optional[Path] = typer.Option(None, "--export-peft", help="Write the --file adapter as "
                                                        "the PEFT folder DIR (adapter_config.json + "
                                                        "adapter_model.safetensors); 'flat' layout only. With "
                                                        "--model/--preset it must fit that model."),
             import_peft: Optional[Path] = typer.Option(None, "--import-peft", help="Read the PEFT folder DIR back "
                                                        "into the adapter file --out. A folder without my3dgen "
                                                        "metadata needs --model/--preset (its base model)."),
             out: Optional[Path] = typer.Option(None, "--out", help="Adapter file --import-peft writes."),
             overwrite: bool = typer.Option(False, help="Let --export-peft / --import-peft replace an existing "
                                                        "folder / file.")):
    """Show what a person trains: a table of LoRA targets and parameter counts (or an adapter file's metadata);
    convert an adapter file to and from a PEFT adapter folder."""
    import json
    if export_peft is not None or import_peft is not None or out is not None:
        return _adapters_peft(model, preset, file, export_peft, import_peft, out, overwrite)
    from generator.adapter_file import read_adapter_meta
    from generator.lora import AdapterPolicy, count_table, plan
    if file is not None:
        meta = read_adapter_meta(file)
        meta["targets"] = f"{len(meta['targets'])} tensors"
        typer.echo(json.dumps(meta, indent=2))
        return
    G = build_model_source(model, preset)
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


def _adapters_peft(model: Optional[Path], preset: Optional[str], file: Optional[Path], export_peft: Optional[Path],
                   import_peft: Optional[Path], out: Optional[Path], overwrite: bool) -> None:
    """`adapters --export-peft` / `--import-peft` (generator/peft_folder.py); the model is optional for both."""
    if (export_peft is None) == (import_peft is None):
        raise typer.BadParameter("give one of --export-peft DIR (with --file) and --import-peft DIR (with --out)")
    if export_peft is not None and (file is None or out is not None):
        raise typer.BadParameter("--export-peft DIR takes the adapter as --file F (and no --out)")
    if import_peft is not None and (out is None or file is not None):
        raise typer.BadParameter("--import-peft DIR writes the adapter file --out F (and takes no --file)")
    from generator.peft_folder import export_peft as export, import_peft as import_
    G = build_model_source(model, preset) if model is not None or preset is not None else None
    if export_peft is not None:
        s = export(file, export_peft, overwrite=overwrite, G=G)
        typer.echo(f"wrote {export_peft} (PEFT LoRA folder: {s['lora_modules']} LoRA modules, {s['whole_tensors']} "
                   f"whole tensors, {s['anchors']} anchors; r={s['r']}, lora_alpha={s['lora_alpha']:g})")
        return
    s = import_(import_peft, out, overwrite=overwrite, G=G)
    typer.echo(f"wrote {out} (from {import_peft}: {s['lora_modules']} LoRA modules, {s['whole_tensors']} whole "
               f"tensors, {s['anchors']} anchors; rank {s['rank']}, alpha {s['alpha']:g}; {s['how']})")


COMMANDS: tuple[tuple[str, Callable], ...] = (
    ("convert", convert),
    ("render", render),
    ("mesh", mesh),
    ("adapters", adapters),
    ("preprocess", preprocess_commands.preprocess),
    ("train", train_commands.train),
    ("train-many", train_many_command.train_many),
    ("invert", evaluation_commands.invert),
    ("eval", evaluation_commands.eval_command),
    ("export", export_commands.export),
    ("build-engine", export_commands.build_engine),
    ("package", serve_commands.package),
    ("people add", serve_commands.people_add),
    ("people remove", serve_commands.people_remove),
    ("people list", serve_commands.people_list),
    ("serve", serve_commands.serve),
    ("web", web_commands.web),
)
"""Every command of the CLI: "NAME" or "GROUP NAME" -> the function that implements it, in `--help` order."""

GROUPS = {"people": "Add, remove or list the people (adapter files) of a packaged model; a running server picks "
                    "the change up at its next request."}
"""Help text of each command group named in COMMANDS."""


@contextlib.contextmanager
def _one_line_usage_errors():
    """Report a usage error as one line `error: ...` and exit code 2 (typer.Exit) instead of click's usage block;
    the help that a bare group prints (NoArgsIsHelpError) passes through."""
    try:
        yield
    except UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":
            raise
        typer.echo(f"error: {' '.join(e.format_message().split())}", err=True)
        raise typer.Exit(e.exit_code) from None


class _OneLineUsageErrors(TyperGroup):
    """The root command group: a bad or missing option or argument, or an unknown command, anywhere below it is
    one line `error: ...` with exit code 2, as `main` reports the other expected errors (a script or a test reads
    one line, whichever way the command runs: main(), app() or typer's CliRunner)."""

    def make_context(self, info_name, args, parent=None, **extra):
        with _one_line_usage_errors():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx):
        with _one_line_usage_errors():
            return super().invoke(ctx)


class _Settings:
    """Options of the whole command line, set by the root callback before a command runs."""

    debug = False


def _root_options(debug: bool = typer.Option(False, "--debug", envvar=DEBUG_ENV,
                                             help=f"Show the traceback of every error (also {DEBUG_ENV}=1).")):
    """Personalized 3D face generators (EG3D + LoRA, the My3DGen method): convert, render, train, export, serve."""
    _Settings.debug = debug


def build_app() -> typer.Typer:
    """The typer application with every command of COMMANDS (groups created on first use), each with its numbers
    finite and bounded (cli_options.bounded_numbers: a command whose numeric option states no range fails here),
    usage errors in one line (_OneLineUsageErrors)."""
    root = typer.Typer(cls=_OneLineUsageErrors, add_completion=False, no_args_is_help=True,
                       pretty_exceptions_enable=False)
    root.callback()(_root_options)
    groups: dict[str, typer.Typer] = {}
    for path, function in COMMANDS:
        *group, name = path.split()
        parent = root
        if group:
            if group[0] not in groups:
                groups[group[0]] = typer.Typer(add_completion=False, no_args_is_help=True, help=GROUPS[group[0]])
                root.add_typer(groups[group[0]], name=group[0])
            parent = groups[group[0]]
        parent.command(name=name)(bounded_numbers(function, path))
    return root


app = build_app()


def is_expected(error: BaseException) -> bool:
    """True when `error` reports bad input (EXPECTED_ERRORS or EXPECTED_ERRORS_BY_MODULE), not a bug."""
    if isinstance(error, EXPECTED_ERRORS):
        return True
    for module, name in EXPECTED_ERRORS_BY_MODULE.items():
        error_type = getattr(sys.modules.get(module), name, None)
        if error_type is not None and isinstance(error, error_type):
            return True
    return False


def main() -> None:
    """Run the CLI in this process: expected failures print one line and exit 2; bugs (and --debug) keep their
    traceback."""
    try:
        app()
    except Exception as e:
        if _Settings.debug or not is_expected(e):
            raise
        typer.echo(f"error: {e}", err=True)
        raise SystemExit(2) from None


def entry() -> None:
    """The program's entry point (`python cli.py`, the `my3dgen` script): re-execute once under jemalloc/tcmalloc
    when installed (MY3DGEN_ALLOCATOR=system opts out; launch/allocator.py), then `main()`. Only an entry point
    may re-execute the process: `main()` is also called inside other programs (tests)."""
    from launch.allocator import preload
    preload()
    main()


if __name__ == "__main__":
    entry()
