"""`cli.py train`: a preprocessed dataset folder -> one person's adapter file (My3DGen §3).

Heavy modules are imported inside the command so that `cli.py --help` stays fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli_defaults import field_default, field_option, module_constant
from cli_options import (ALPHA_RANGE, RANK_RANGE, SEED_RANGE, ModelDir, PresetName, check_limit, one_model_source,
                         up_to)

RANDOM_ID_PREFIX = "random:"
TRAIN, PROJECTOR = "train.config:TrainConfig", "train.config:ProjectorConfig"
"""The configs whose fields give the options their defaults (cli_defaults.py)."""


def build_identity(id_weights: Optional[Path], id_network: Optional[str], crop: str):
    """(IdentityEncoder, description) from --id-weights or --id-network random:ARCH; (None, None) if neither."""
    from perception.identity import ARCHS, IdentityEncoder
    if id_weights is not None and id_network is not None:
        raise typer.BadParameter("give either --id-weights PATH or --id-network random:ARCH, not both")
    if id_weights is not None:
        if not id_weights.is_file():
            raise typer.BadParameter(f"--id-weights {id_weights}: no such file")
        from perception.heads_identity import is_heads_identity_file, load_heads_identity
        if is_heads_identity_file(id_weights):
            return load_heads_identity(id_weights), f"head-world identity network from {id_weights}"
        encoder = IdentityEncoder.from_file(id_weights, crop=crop)
        return encoder, f"{encoder.arch} from {id_weights} (crop {crop})"
    if id_network is not None:
        if not id_network.startswith(RANDOM_ID_PREFIX) or id_network[len(RANDOM_ID_PREFIX):] not in ARCHS:
            raise typer.BadParameter(f"--id-network {id_network!r}: expected random:ARCH with ARCH one of "
                                     f"{', '.join(ARCHS)} (random weights, smoke tests only); real networks "
                                     f"are given with --id-weights PATH")
        arch = id_network[len(RANDOM_ID_PREFIX):]
        return IdentityEncoder.random(arch, seed=0, crop=crop), f"{arch} with RANDOM weights (smoke test only)"
    return None, None


def model_identity(model: Path):
    """(encoder, description) of the --model directory's own identity network (its identity.safetensors,
    formats.model_dir.IDENTITY_FILE), the default when no identity option is given; (None, None) if it has none.
    A file there that is not an identity network is an error naming it."""
    from perception.heads_identity import load_model_identity
    found = load_model_identity(model)
    if found is None:
        return None, None
    encoder, path = found
    return encoder, f"head-world identity network from {path} (the model directory's)"


def train(
    data: Path = typer.Option(..., "--data", help="Dataset folder made by `cli.py preprocess` (dataset.json with "
                                                   "camera labels + aligned crops)."),
    out: Path = typer.Option(..., "--out", help="Adapter file to write (safetensors)."),
    model: ModelDir = None,
    preset: PresetName = None,
    mode: str = field_option(TRAIN, "mode"),
    rank: int = field_option(TRAIN, "rank", **RANK_RANGE),
    layout: str = field_option(TRAIN, "layout", help="LoRA conv layout: loralib (the paper's budget) | flat (PEFT's "
                                                     "convention; needed by `adapters --export-peft`)."),
    recipe: str = field_option(TRAIN, "recipe", help="Start from a named recipe: paper (My3DGen §3: alpha = r, "
                               "decoder trained, lambda_sym 4 every 4 steps in the same step, uniform symmetric "
                               "poses, 10 kimg) | authors (their code's defaults: alpha 16, decoder frozen, L_sym "
                               "weight 1 in its own step every 4, orbit poses, 500 kimg). Options below override it."),
    # The fields a recipe sets (alpha, iterations, batch, train_decoder, sym_weight, sym_every, sym_poses,
    # sym_step) default to None, the recipe's value; every other option defaults to its TrainConfig field.
    alpha: Optional[float] = typer.Option(None, **ALPHA_RANGE, help="LoRA alpha (recipe paper: the rank, i.e. scale 1; "
                                                     "authors: 16)."),
    iterations: Optional[int] = typer.Option(None, "--iterations", "--steps", **up_to("max_steps"),
                                             help="Training steps (recipe paper: 2500, authors: 125000; 150 with "
                                                  "--preset)."),
    quick: bool = typer.Option(False, "--quick", help="A short run to try things: 200 training steps and 50 "
                                                      "inversion steps per photo (train.config.QUICK) unless given; "
                                                      "the default length is ~10x longer."),
    kimg: Optional[float] = typer.Option(None, min=0.001, max=100_000.0,
                                         help="Training length in thousands of photos shown, EG3D's unit (steps = "
                                              "kimg x 1000 / batch, at most max_steps); instead of --steps."),
    batch: Optional[int] = typer.Option(None, **up_to("max_batch"),
                                        help="Photos per step (both recipes: 4). The memory plan printed at the "
                                             "start gives the peak and the batch that fits the device."),
    lr: float = field_option(TRAIN, "lr", min=1e-6, max=1.0, help="Adam learning rate of the adapter."),
    train_decoder: Optional[bool] = typer.Option(None, "--train-decoder/--no-train-decoder",
                                                 help="Fine-tune the OSG decoder (recipe paper: yes, authors: no)."),
    sym: bool = field_option(TRAIN, "sym", "--sym/--no-sym",
                             help="Symmetry loss (paper §3.3); --no-sym is the ablation."),
    sym_weight: Optional[float] = typer.Option(None, min=0.0, max=1000.0,
                                               help="lambda_sym (recipe paper: 4, authors: 1)."),
    sym_every: Optional[int] = typer.Option(None, **up_to("max_steps"),
                                            help="Apply the symmetry loss every N steps (both recipes: 4)."),
    sym_poses: Optional[str] = typer.Option(None, help="Symmetric camera pairs: uniform (per sample, yaw +-0.35, "
                                                       "pitch +-0.25; recipe paper) | orbit (the authors' 120-frame "
                                                       "orbit)."),
    sym_step: Optional[str] = typer.Option(None, help="joint (L_sym in the reconstruction step, paper eq. 3) | "
                                                      "separate (its own optimizer step, the authors' code)."),
    id_weights: Optional[Path] = typer.Option(None, "--id-weights", help="Identity network for the symmetry "
                                              "loss: IR-SE50 model_ir_se50.pth, arcface_torch .pth, "
                                              "insightface w600k_r50.onnx or a head-world identity network. "
                                              "Default: the --model directory's identity.safetensors if it has "
                                              "one (models/heads does); else this or --id-network is needed."),
    id_network: Optional[str] = typer.Option(None, "--id-network", help="random:ir_se50 (or another arch): a "
                                             "RANDOMLY initialised identity network, for smoke tests only."),
    id_crop: str = field_option(TRAIN, "id_crop", help="Face crop of the identity network: full (the authors) | psp "
                                                       "| arcface_ffhq."),
    lpips_net: str = field_option(TRAIN, "lpips_net", help="LPIPS trunk of the reconstruction loss: alex (the "
                                                           "authors) | vgg."),
    # None: ProjectorConfig.steps, or DEMO_SCALE's with --preset.
    inversion_steps: Optional[int] = typer.Option(None, **up_to("max_steps"),
                                                  help=f"W-inversion steps per photo (default "
                                                       f"{field_default(PROJECTOR, 'steps')}; 100 with --preset)."),
    inversion_lr: Optional[float] = typer.Option(None, min=1e-6, max=1.0,
                                                 help=f"Peak learning rate of the inversion (default "
                                                      f"{field_default(PROJECTOR, 'lr')} in w, EG3D-projector's; "
                                                      f"{module_constant('train.config', 'Z_SPACE_LR')} in z)."),
    inversion_space: str = field_option(PROJECTOR, "space", help="Where the inversion searches: w (both official "
                                        "projectors) | z (the mapping's input, so every candidate is a w the "
                                        "mapping makes: for generators trained without an adversary, whose W "
                                        "off the mapping renders blur, such as models/heads). Anchors are w "
                                        "either way."),
    inversion_pixel_weight: float = field_option(PROJECTOR, "pixel_weight", min=0.0, max=1e4,
                                                 help="Weight of a pixel MSE next to the inversion's LPIPS (0: "
                                                      "LPIPS alone, as the official projectors; LPIPS barely sees "
                                                      "colour: models/heads wants 1)."),
    inversion_batch: int = typer.Option(4, **up_to("max_batch"),
                                        help="Photos inverted together (memory: ~2-3 GB each at 512x512)."),
    w_plus: bool = field_option(PROJECTOR, "w_plus", help="Invert to W+ (one w per layer) instead of W."),
    projector_noise: bool = field_option(PROJECTOR, "optimize_noise", "--projector-noise/--no-projector-noise",
                                         help="Optimise and regularise the noise maps during the W inversion, as "
                                              "the StyleGAN2 projector does (part of the inversion cache key)."),
    stochastic_render: bool = field_option(TRAIN, "stochastic_render"),
    seed: int = field_option(TRAIN, "seed", **SEED_RANGE, help="Seed of batch sampling, symmetric poses, LoRA init "
                                                               "and inversion noise."),
    checkpoint_dir: Optional[Path] = typer.Option(None, help="Checkpoints, inversion cache, log.jsonl and "
                                                             "preview.png (default: <out stem>_train/ beside --out)."),
    checkpoint_every: int = field_option(TRAIN, "checkpoint_every", **up_to("max_steps")),
    restart: bool = typer.Option(False, help="Discard an existing checkpoint instead of resuming from it."),
    fp16: bool = typer.Option(False, help="Store the adapter in float16 (half the file size)."),
    preview: bool = typer.Option(True, help="Write preview.png (photos / base / personalized / novel views)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    precision: str = field_option(TRAIN, "precision", help="Arithmetic of the generator's convolutions: fp32 "
                                  "(exact) | bf16 | fp16 (loss-scaled); LoRA weights, Adam and the losses stay "
                                  "fp32. On a CPU without AVX512-BF16/AMX bf16 is emulated (slower than fp32)."),
    checkpointing: str = field_option(TRAIN, "checkpointing", help="Gradient checkpointing, exact: on | off | "
                                      "auto (on for CUDA; on a CPU when the step would need over half the free "
                                      "RAM). ffhq512-128 at 512^2, batch 1: ~17 GiB of GPU memory off, ~4 GiB on "
                                      "(the memory plan printed at the start says which and why)."),
    compile_step: bool = field_option(TRAIN, "compile", "--compile", help="torch.compile the ray march and the "
                                      "super-resolution of the step (the first steps compile: minutes on a CPU)."),
):
    """Personalize the base model to the person in --data: invert each photo to W, train a LoRA adapter."""
    import time

    import torch

    from generator.model_dir import build_generator
    from train.config import DEMO_SCALE, QUICK, ProjectorConfig, TrainConfig, config_from_recipe, describe_recipe
    from train.config import Z_SPACE_LR, iterations_for_kimg
    from train.trainer import identity_network_help, personalize

    one_model_source(model, preset)
    defaults = TrainConfig()
    if kimg is not None:
        if iterations is not None:
            raise typer.BadParameter("give either --kimg or --steps/--iterations, not both")
        try:
            iterations = iterations_for_kimg(kimg, batch or defaults.batch)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--kimg") from None
        check_limit(iterations, "max_steps", "--kimg", "steps")
    if quick and kimg is not None:
        raise typer.BadParameter("--quick sets the length: not with --kimg (give --iterations to change it)")
    scale = QUICK if quick else DEMO_SCALE if preset is not None else None
    if scale is not None:
        applied = []
        if iterations is None:
            iterations = scale["iterations"]
            applied.append(f"--iterations {iterations}")
        if inversion_steps is None:
            inversion_steps = scale["inversion_steps"]
            applied.append(f"--inversion-steps {inversion_steps}")
        if applied and quick:
            typer.echo(f"--quick: {' '.join(applied)} (a short run to try things; the default is "
                       f"{defaults.iterations} steps and {defaults.projector.steps} inversion steps per photo)")
        elif applied:
            typer.echo(f"--preset {preset} has random weights (demo/smoke test): using demo-scale "
                       f"{' '.join(applied)} (pass them to change)")
    inversion_steps = defaults.projector.steps if inversion_steps is None else inversion_steps
    if inversion_lr is None:
        inversion_lr = Z_SPACE_LR if inversion_space == "z" else defaults.projector.lr
    explicit = {"alpha": alpha, "iterations": iterations, "batch": batch, "train_decoder": train_decoder,
                "sym_weight": sym_weight, "sym_every": sym_every, "sym_poses": sym_poses, "sym_step": sym_step}
    try:
        config = config_from_recipe(
            recipe, explicit, mode=mode, rank=rank, layout=layout, lr=lr, sym=sym, id_crop=id_crop, lpips_net=lpips_net,
            stochastic_render=stochastic_render, seed=seed, checkpoint_every=checkpoint_every,
            precision=precision, checkpointing=checkpointing, compile=compile_step,
            projector=ProjectorConfig(steps=inversion_steps, lr=inversion_lr, w_plus=w_plus,
                                      optimize_noise=projector_noise, space=inversion_space,
                                      pixel_weight=inversion_pixel_weight))
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    typer.echo(describe_recipe(config))
    identity, identity_name = (None, None)
    if sym:
        identity, identity_name = build_identity(id_weights, id_network, id_crop)
        if identity is None and model is not None:
            identity, identity_name = model_identity(model)
        if identity is None and preset is not None:
            identity, identity_name = build_identity(None, "random:ir_se50", id_crop)
            typer.echo("no --id-weights: --preset generators have random weights, so the symmetry loss uses a "
                       "RANDOM IR-SE50 here (smoke test). With --model this is an error (unless the model "
                       "directory has its own identity network).")
        if identity is None:
            typer.echo(f"error: {identity_network_help()}", err=True)
            raise typer.Exit(2)
        typer.echo(f"identity network: {identity_name}")
    elif id_weights is not None or id_network is not None:
        typer.echo("note: --no-sym given, the identity network is not used")

    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    if dev.type == "cpu" and config.precision != "fp32":
        from generator.precision import cpu_has_fast_bf16
        if config.precision == "fp16" or not cpu_has_fast_bf16():
            typer.echo(f"note: --precision {config.precision} on this CPU is emulated (no native "
                       f"{'fp16' if config.precision == 'fp16' else 'AVX512-BF16/AMX'} kernels): slower than fp32; "
                       "use it here to check results, and on a GPU for speed")
    G = build_generator(model=model, preset_name=preset).to(dev)
    policy = config.policy()
    typer.echo(f"base: {model or preset} ({G.img_resolution}x{G.img_resolution}, raw "
               f"{G.neural_rendering_resolution}x{G.neural_rendering_resolution}) on {dev}; {policy.mode} "
               f"rank {policy.rank}; {config.iterations} steps x batch {config.batch}; "
               f"symmetry {'on' if config.sym else 'off'}")
    t0 = time.perf_counter()
    try:
        result = personalize(G, data, out, config, checkpoint_dir=checkpoint_dir, identity=identity,
                             dtype=torch.float16 if fp16 else torch.float32, progress=True, restart=restart,
                             preview=preview, identity_name=identity_name, inversion_batch=inversion_batch,
                             echo=typer.echo)
    except KeyboardInterrupt:
        raise typer.Exit(130)
    except torch.OutOfMemoryError as e:
        saved = f"; checkpoints so far are in {checkpoint_dir} and the same command resumes" if checkpoint_dir else ""
        switches = "--checkpointing on, " if config.checkpointing == "off" or (
            config.checkpointing == "auto" and dev.type != "cuda") else ""
        switches += "--precision bf16, " if config.precision == "fp32" else ""
        typer.echo(f"error: out of {dev.type.upper()} memory with batch {config.batch} and inversion batch "
                   f"{inversion_batch} ({str(e).splitlines()[0][:160]}). To fit: {switches}a smaller --batch (the "
                   f"memory plan printed at the start gives the batch that fits), and --inversion-batch 1 if it "
                   f"failed while inverting{saved}.", err=True)
        raise typer.Exit(2)
    total = time.perf_counter() - t0
    losses = ", ".join(f"{k} {v:.4f}" for k, v in result.train.losses.items())
    size = result.adapter_path.stat().st_size
    typer.echo(f"wrote {result.adapter_path} ({size / 1e6:.2f} MB, {result.train.adapter.num_parameters():,} "
               f"trainable parameters, {len(result.anchors.names)} anchors)")
    typer.echo(f"final losses (mean of last steps): {losses}")
    typer.echo(f"time: inversion {result.inversion_seconds:.1f} s, training {result.train.seconds:.1f} s, "
               f"total {total:.1f} s")
    typer.echo(f"log: {result.log_path}")
    if result.preview_path is not None:
        typer.echo(f"preview: {result.preview_path}")
