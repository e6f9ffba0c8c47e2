"""`cli.py train-many ROSTER --out STORE`: personalize every person of a roster on Ray (train/roster.py).

The command takes its own options (roster, store, Ray) plus every option of `cli.py train` except the
per-person ones (--data, --out, --checkpoint-dir), read from the `train` command's signature, so the two
commands always accept the same training options with the same defaults and help. Ray is imported only when
the command runs; without it, or when Ray does not start, the command prints one line saying what to do. Roster
entries that are not person folders (files, dangling symlinks, symlink loops) are reported as skipped, with why.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from cli_options import up_to
from train.roster import PER_PERSON_TRAIN_OPTIONS, train_entry


def _train_many(
    roster: Annotated[Path, typer.Argument(help="Folder of people: one sub-folder per person (named A-Z a-z 0-9 "
                                                "_ -), holding photos or a preprocessed dataset (dataset.json).")],
    out: Annotated[Path, typer.Option("--out", help="Model store: adapters go to STORE/people/NAME/PERSON."
                                                    "safetensors (the layout of `people add`).")],
    name: Annotated[Optional[str], typer.Option("--name", help="Model name in the store (default: the --preset "
                                                               "name or the --model folder's name).")] = None,
    work_dir: Annotated[Optional[Path], typer.Option("--work-dir", help="Per-person checkpoints, logs and "
                                                     "preprocessed photos (default: STORE/.train-many/NAME/); "
                                                     "run again to resume.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", **up_to("max_workers"),
                                                   help="People trained at once by the local Ray (default: CPUs / "
                                                        "--cpus-per-person).")] = None,
    cpus_per_person: Annotated[float, typer.Option("--cpus-per-person", min=0.01, max=1024.0,
                                                   help="Ray CPUs per person (torch threads in the task).")] = 1.0,
    gpus_per_person: Annotated[float, typer.Option("--gpus-per-person", min=0.0, max=64.0,
                                                   help="Ray GPUs per person (0: CPU workers).")] = 0.0,
    address: Annotated[Optional[str], typer.Option("--address", help="Join this Ray cluster (ray start --head, "
                                                   "KubeRay; 'auto') instead of a local Ray; ROSTER and STORE "
                                                   "must then be on storage every node sees.")] = None,
    max_retries: Annotated[int, typer.Option("--max-retries", min=0, max=100,
                                             help="Retries of a person whose worker died; a retry resumes from the "
                                                  "checkpoint.")] = 2,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Retrain people already in the store (default: "
                                            "skip them).")] = False,
    preprocess_backend: Annotated[str, typer.Option("--preprocess-backend", help="Face backend for photo "
                                                    "folders: dlib | insightface.")] = "dlib",
    insightface_models: Annotated[Optional[Path], typer.Option("--insightface-models", help="Folder with the "
                                                               "insightface buffalo_l ONNX files.")] = None,
    summary: Annotated[Optional[Path], typer.Option("--summary", help="Also write the summary JSON here "
                                                    "(always written to WORK_DIR/summary.json).")] = None,
    **train_kwargs: Any,
):
    """Personalize every person of ROSTER (one Ray task each, same options as `train`) into the model store."""
    import json

    from formats.atomic import write_text
    from train.roster import SUMMARY_FILE, RosterError, RosterSettings, require_ray, train_roster

    try:
        require_ray()
    except RosterError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    model, preset = train_kwargs.get("model"), train_kwargs.get("preset")
    if (model is None) == (preset is None):
        raise typer.BadParameter("give exactly one of --model DIR or --preset NAME")
    settings = RosterSettings(model_name=name or (preset if preset is not None else Path(model).name),
                              work_dir=work_dir, cpus_per_person=cpus_per_person, gpus_per_person=gpus_per_person,
                              workers=workers, address=address, max_retries=max_retries, overwrite=overwrite,
                              preprocess_backend=preprocess_backend, insightface_models=insightface_models)
    try:
        result = train_roster(roster, out, settings, train_kwargs, progress=True, echo=typer.echo)
    except RosterError as e:  # the roster, a setting, or Ray's start: one line saying what to do
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(result.table())
    counts = result.counts()
    typer.echo(f"{counts['done']} done, {counts['failed']} failed, {counts['skipped']} skipped in "
               f"{result.wall_seconds:.1f} s ({result.people_per_hour():.1f} people/hour); summary: "
               f"{Path(result.work_dir) / SUMMARY_FILE}")
    if summary is not None:
        write_text(summary, json.dumps(result.to_dict(), indent=2) + "\n")
    if counts["failed"]:
        raise typer.Exit(1)


def _with_train_options(func):
    """`func`'s own parameters followed by every roster-wide option of `train` (same names, types, defaults,
    help), as the signature typer reads; the train options reach `func` as **train_kwargs."""
    own = [p for p in inspect.signature(func, eval_str=True).parameters.values() if p.kind != p.VAR_KEYWORD]
    train_params = [p.replace(kind=p.KEYWORD_ONLY)
                    for n, p in inspect.signature(train_entry(), eval_str=True).parameters.items()
                    if n not in PER_PERSON_TRAIN_OPTIONS]
    clash = {p.name for p in own} & {p.name for p in train_params}
    if clash:
        raise RuntimeError(f"train-many options {sorted(clash)} clash with options of train: rename them")
    params = [p.replace(kind=p.KEYWORD_ONLY) for p in own] + train_params

    def train_many(**kwargs):
        return func(**kwargs)

    train_many.__doc__ = func.__doc__
    train_many.__signature__ = inspect.Signature(params)
    train_many.__annotations__ = {p.name: p.annotation for p in params}
    return train_many


train_many = _with_train_options(_train_many)
"""The `train-many` command: register with `app.command(name="train-many")(train_many)`."""
