"""`cli.py web`: the web page for the people of a folder (see web/server.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli_options import ModelDir, PresetName, build_model_source


def web(model: ModelDir = None, preset: PresetName = None,
        people: Optional[Path] = typer.Option(None, "--people", file_okay=False,
                                              help="Folder of adapter files NAME.safetensors (the people to show)."),
        host: str = typer.Option("127.0.0.1", help="Address to listen on; anything but loopback needs a token."),
        port: int = typer.Option(8765, help="Port (0: any free port)."),
        token: Optional[str] = typer.Option(None, envvar="MY3DGEN_WEB_TOKEN",
                                            help="Token the page and API require (>= 16 characters); generated "
                                                 "when --host is not loopback and none is given."),
        truncation: float = typer.Option(0.7, help="Truncation psi of the base model's seed latents.")):
    """A web page to play with a person: choose a person, drag yaw/pitch, interpolate anchors, download a
    video or a mesh. Serves until Ctrl-C."""
    from web.app import WebApp
    from web.server import ServerOptions, WebServer
    G = build_model_source(model, preset)
    server = WebServer(WebApp(G, people, truncation=truncation), ServerOptions(host=host, port=port, token=token))
    typer.echo(f"serving {server.url} (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("stopped")
    finally:
        server.httpd.server_close()
