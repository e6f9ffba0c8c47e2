"""CLI commands `package`, `serve` and `people add|remove|list` (registered in cli.py's COMMANDS table).

Failures of the serving code (ValueError, OSError, ServerError) propagate: cli.py prints them as one line.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli_options import up_to
from serve.server import DEFAULT_PORTS

MAX_PORT = 65535
STORE_HELP = "Model store folder (default ./model_store, in the current directory; printed in full)."
"""The largest TCP port."""


def package(export_dir: Path = typer.Argument(..., exists=True, file_okay=False,
                                              help="Export folder (from `cli.py export`)."),
            name: str = typer.Option(..., "--name", help="Model name: /predictions/NAME, NAME.mar."),
            model_store: Path = typer.Option(Path("model_store"), "--model-store", help=STORE_HELP),
            workers: int = typer.Option(1, **up_to("max_workers"), help="TorchServe min/max workers."),
            batch_size: int = typer.Option(1, **up_to("max_batch"), help="TorchServe batchSize."),
            max_batch_delay_ms: int = typer.Option(50, min=0, max=60_000, help="TorchServe maxBatchDelay (ms)."),
            response_timeout: int = typer.Option(60, min=1, max=86_400, help="TorchServe responseTimeout (s); a "
                                                 "worker silent for longer is restarted."),
            device: str = typer.Option("cpu", help="TorchServe deviceType: cpu | gpu."),
            default_budget_ms: Optional[float] = typer.Option(None, min=1.0, max=86_400_000.0,
                                                              help="Deadline of requests without budget_ms (default: "
                                                                   "80% of the response timeout, which it must stay "
                                                                   "below)."),
            max_frames: int = typer.Option(16, **up_to("max_video_frames", 2),
                                           help="Most frames per interpolation request."),
            backend: str = typer.Option("auto", help="What runs the model: auto (torch or onnxruntime, whichever "
                                                     "renders faster on the serving box at start-up) | onnxruntime "
                                                     "| torch | tensorrt."),
            precision: str = typer.Option("fp32", help="fp32 | bf16 (torch: CUDA, or CPUs with native bf16) | fp16 "
                                                       "(torch on CUDA)."),
            compile: bool = typer.Option(False, "--compile", help="torch backend: torch.compile each stage at its "
                                                                  "first run (slow start-up)."),
            providers: str = typer.Option("auto", help="onnxruntime providers: auto or comma-separated names."),
            threads: Optional[int] = typer.Option(None, **up_to("max_workers"),
                                                  help="Threads per worker (default: the serving machine's cores / "
                                                       "workers)."),
            plane_cache_size: int = typer.Option(64, **up_to("max_cache_entries", 0),
                                                 help="Tri-plane cache entries per worker."),
            plane_cache_mb: float = typer.Option(1024.0, **up_to("max_plane_cache_mb", 0.0, float),
                                                 help="Tri-plane cache MiB per worker (an ffhq512-128 latent: 24)."),
            archive_format: str = typer.Option("default", help="default (.mar zip) | zip-store | no-archive."),
            overwrite: bool = typer.Option(False, help="Replace an existing archive."),
            check: bool = typer.Option(True, help="Load the export with the runtime before packaging.")):
    """Package an exported model as MODEL_STORE/NAME.mar (handler + runtime + graphs + model-config.yaml)."""
    from serve.package import PackageConfig, package_model
    cfg = PackageConfig(name=name, model_store=model_store, min_workers=workers, max_workers=workers,
                        batch_size=batch_size, max_batch_delay_ms=max_batch_delay_ms,
                        response_timeout_s=response_timeout, device=device, default_budget_ms=default_budget_ms,
                        max_frames=max_frames, backend=backend, precision=precision, compile=compile,
                        providers=providers, threads=threads, plane_cache_size=plane_cache_size,
                        plane_cache_mb=plane_cache_mb, archive_format=archive_format,
                        overwrite=overwrite, check=check)
    path = package_model(export_dir, cfg)
    size = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    people = (model_store / "people" / name).resolve()
    typer.echo(f"wrote {path.resolve()} ({size / 1e6:.1f} MB); people go in {people}/ "
               f"(`cli.py people add {name} PERSON ADAPTER`)")


def parse_ports(items: list[str]) -> dict[str, int]:
    """['metrics=9102', ...] -> {'metrics': 9102}: known roles, ports 1..65535, each role once; else a usage
    error naming the item."""
    ports: dict[str, int] = {}
    for item in items:
        role, eq, value = item.partition("=")
        role = role.strip()
        if not eq or role not in DEFAULT_PORTS:
            raise typer.BadParameter(f"{item!r}: expected ROLE=PORT with ROLE one of {', '.join(DEFAULT_PORTS)}",
                                     param_hint="--port")
        if role in ports:
            raise typer.BadParameter(f"{role} given twice", param_hint="--port")
        try:
            number = int(value.strip())
        except ValueError:
            number = 0
        if not 1 <= number <= MAX_PORT:
            raise typer.BadParameter(f"{item!r}: the port must be an integer in 1..{MAX_PORT}", param_hint="--port")
        ports[role] = number
    return ports


def serve(model_store: Path = typer.Option(Path("model_store"), "--model-store", help=STORE_HELP),
          models: str = typer.Option("all", "--models", help="Comma-separated model names, or all."),
          host: str = typer.Option("127.0.0.1", "--host", help="Address of every listener. Anything but "
                                                               "loopback exposes the server to the network."),
          port_offset: int = typer.Option(0, "--port-offset", min=0, max=MAX_PORT - max(DEFAULT_PORTS.values()),
                                          help="Added to every default port (8080/8081/8082, gRPC 7070/7071, "
                                               "workers 9000+, distribution 29500)."),
          port: Optional[list[str]] = typer.Option(None, "--port",
                                                   help="ROLE=PORT, repeatable: bind one listener explicitly "
                                                        f"(roles: {', '.join(DEFAULT_PORTS)}); TorchServe cannot "
                                                        "turn its gRPC listeners off, only move them."),
          enable_model_api: bool = typer.Option(False, "--enable-model-api",
                                                help="Allow registering/deleting models over HTTP (local model "
                                                     "store archives only)."),
          run_dir: Path = typer.Option(Path("logs/torchserve"), "--run-dir",
                                       help="Folder for config, pid, key file and logs (relative to the current "
                                            "directory; printed in full at start)."),
          token_expiration_min: int = typer.Option(60, min=1, max=525_600,
                                                   help="Lifetime of the API keys in minutes (up to a year)."),
          stop: bool = typer.Option(False, "--stop", help="Stop the server started from --run-dir and wait."),
          foreground: bool = typer.Option(False, "--foreground", help="Stay attached; Ctrl-C stops the server."),
          timeout: float = typer.Option(300.0, min=1.0, max=86_400.0,
                                        help="Seconds to wait for the models to be ready."),
          backend: Optional[str] = typer.Option(None, help="Override every model's packaged backend: auto | "
                                                           "onnxruntime | torch | tensorrt."),
          precision: Optional[str] = typer.Option(None, help="Override every model's packaged precision: fp32 | "
                                                             "bf16 | fp16.")):
    """Start TorchServe on the model store with a generated config (loopback, token auth on, model API off)."""
    from serve.server import ServeConfig, curl_example, start_server, stop_server
    if stop:
        stopped = stop_server(run_dir)
        typer.echo("TorchServe stopped." if stopped else f"no TorchServe running from {run_dir}")
        return
    names = "all" if models.strip() == "all" else [m.strip() for m in models.split(",") if m.strip()]
    cfg = ServeConfig(model_store=model_store, models=names, host=host, port_offset=port_offset,
                      ports=parse_ports(port or []),
                      enable_model_api=enable_model_api, run_dir=run_dir, token_expiration_min=token_expiration_min,
                      backend=backend, precision=precision)
    info = start_server(cfg, wait=True, timeout_s=timeout)
    typer.echo(f"TorchServe pid {info.pid} serving {', '.join(info.models)} at {info.inference_url} "
               f"(management {info.management_url}, model API {'on' if enable_model_api else 'off'}, "
               f"metrics {info.metrics_url})")
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"WARNING: listening on {host}: reachable from other machines; keep the key file secret.")
    typer.echo("ports: " + ", ".join(f"{role} {p}" for role, p in info.ports.items()) + " (docs/SECURITY.md)")
    typer.echo(f"API keys (Authorization: Bearer <inference key>): {info.key_file}; /metrics takes no key "
               f"(TorchServe authorizes inference and management only)")
    typer.echo(f"model store: {Path(model_store).resolve()}\nlogs: {(info.run_dir / 'logs').resolve()}")
    typer.echo(f"example:\n{curl_example(info, info.models[0])}")
    typer.echo(f"stop: cli.py serve --stop --run-dir {info.run_dir}")
    if foreground:
        import time
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            stop_server(run_dir)
            typer.echo("TorchServe stopped.")


def people_add(name: str = typer.Argument(..., help="Model name (its NAME.mar is in the store)."),
               person: str = typer.Argument(..., help="Person name (A-Z a-z 0-9 _ -, up to 64)."),
               adapter_file: Path = typer.Argument(..., exists=True, dir_okay=False, help="Adapter .safetensors."),
               model_store: Path = typer.Option(Path("model_store"), "--model-store", help=STORE_HELP),
               overwrite: bool = typer.Option(False, help="Replace an existing person."),
               check: bool = typer.Option(True, help="Load and render the adapter against the packaged model "
                                                     "first.")):
    """Add a person to a packaged model (no server restart)."""
    from serve.package import add_person
    dest = add_person(model_store, name, person, adapter_file, overwrite=overwrite, check=check)
    typer.echo(f"added {person} -> {dest}")


def people_remove(name: str = typer.Argument(..., help="Model name."),
                  person: str = typer.Argument(..., help="Person name."),
                  model_store: Path = typer.Option(Path("model_store"), "--model-store", help=STORE_HELP)):
    """Remove a person from a packaged model (no server restart)."""
    from serve.package import remove_person
    removed = remove_person(model_store, name, person)
    typer.echo(f"removed {person}" if removed else f"{person}: not a person of {name}")


def people_list(name: str = typer.Argument(..., help="Model name."),
                model_store: Path = typer.Option(Path("model_store"), "--model-store", help=STORE_HELP)):
    """List the people of a packaged model."""
    from serve.package import list_people
    names = list_people(model_store, name)
    typer.echo("\n".join(names) if names else f"(no people for {name})")

