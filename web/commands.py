"""`cli.py web`: the web page for the people of a folder (see web/server.py); ranges and defaults from
web/settings.py (torch-free, so `--help` and bad values answer without importing torch).

What renders (web/sources.py): the generator of `--model DIR` / `--preset NAME` (eager torch), or an export
directory (`--export DIR`) served by a runtime.Runtime on `--backend` (auto, the default, measures at start-up;
onnxruntime | torch | tensorrt) at `--precision`. The choices are checked where they are parsed (one-line usage
errors), and so is the rule that exactly one of --export, --model and --preset is given, with --backend and
--precision only beside --export.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer

from cli_options import ModelDir, PresetName, Truncation, build_model_source
from runtime.backend import BACKENDS, PRECISIONS
from web.settings import ServerOptions, WebLimits, check_page_source

Backend = Literal[BACKENDS]  # typer offers these choices and refuses any other value where it parses it
Precision = Literal[PRECISIONS]


def _range(settings: type, name: str) -> dict:
    """typer.Option keywords of setting `name`: its range in `settings.RANGES`."""
    lo, hi = settings.RANGES[name]
    return {"min": lo, "max": hi}


def web(model: ModelDir = None, preset: PresetName = None,
        export: Optional[Path] = typer.Option(None, "--export", file_okay=False,
                                              help="Export folder (from `cli.py export`) to serve through the "
                                                   "runtime, instead of --model / --preset."),
        backend: Optional[Backend] = typer.Option(None, "--backend",
                                                  help="With --export: what runs the model: auto (the default: "
                                                       "torch or onnxruntime, whichever renders faster here at "
                                                       "start-up) | onnxruntime | torch | tensorrt."),
        precision: Optional[Precision] = typer.Option(None, "--precision",
                                                      help="With --export: fp32 (the default) | bf16 (torch: CUDA, "
                                                           "or CPUs with native bf16) | fp16 (torch on CUDA)."),
        people: Optional[Path] = typer.Option(None, "--people", file_okay=False,
                                              help="Folder of adapter files NAME.safetensors (the people to show)."),
        host: str = typer.Option(ServerOptions.host, help="Address to listen on; anything but loopback needs a "
                                                          "token."),
        port: int = typer.Option(ServerOptions.port, **_range(ServerOptions, "port"),
                                 help="Port (0: any free port)."),
        token: Optional[str] = typer.Option(None, envvar="MY3DGEN_WEB_TOKEN",
                                            help="Token the page and API require (>= 16 characters); generated "
                                                 "when --host is not loopback and none is given."),
        truncation: Truncation = 0.7,
        view_budget: float = typer.Option(WebLimits.view_budget_s, "--view-budget",
                                          **_range(WebLimits, "view_budget_s"),
                                          help="Seconds a view may take, waiting for the model included (503 "
                                               "when it cannot)."),
        video_budget: float = typer.Option(WebLimits.video_budget_s, "--video-budget",
                                           **_range(WebLimits, "video_budget_s"),
                                           help="Seconds a video may take (503 when the estimate is over, 504 "
                                                "when it runs out midway)."),
        mesh_budget: float = typer.Option(WebLimits.mesh_budget_s, "--mesh-budget",
                                          **_range(WebLimits, "mesh_budget_s"), help="Seconds a mesh may take."),
        max_jobs: int = typer.Option(WebLimits.max_jobs, "--max-jobs", **_range(WebLimits, "max_jobs"),
                                     help="Videos and meshes made at once (views go on beside them)."),
        read_timeout: float = typer.Option(ServerOptions.read_timeout_s, "--read-timeout",
                                           **_range(ServerOptions, "read_timeout_s"),
                                           help="Seconds a connection may stay silent before it is closed."),
        max_connections: int = typer.Option(ServerOptions.max_connections, "--max-connections",
                                            **_range(ServerOptions, "max_connections"),
                                            help="Connections served at once (one more gets 503).")):
    """A web page to play with a person: choose a person, drag yaw/pitch, interpolate anchors, download a
    video or a mesh. Serves until Ctrl-C."""
    try:
        check_page_source(export, model, preset, backend, precision)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    limits = WebLimits(view_budget_s=view_budget, video_budget_s=video_budget, mesh_budget_s=mesh_budget,
                       max_jobs=max_jobs)
    options = ServerOptions(host=host, port=port, token=token, read_timeout_s=read_timeout,
                            max_connections=max_connections)
    from web.app import WebApp
    from web.server import WebServer
    if export is not None:
        from runtime import Runtime
        from web.sources import RuntimeSource
        rt = Runtime(export, people, backend=backend or "auto", precision=precision or "fp32")
        app = WebApp(RuntimeSource(rt, truncation), limits=limits)
        typer.echo(f"backend {rt.backend.name} ({rt.backend.precision}): {rt.backend_reason}")
    else:
        app = WebApp(build_model_source(model, preset), people, limits=limits, truncation=truncation)
    server = WebServer(app, options)
    typer.echo(f"serving {server.url} (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("stopped")
    finally:
        server.httpd.server_close()
