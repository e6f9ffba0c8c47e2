"""`cli.py export` and `cli.py build-engine`: ONNX graphs (merged or keep-LoRA), TensorRT checks and engines."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli_options import ALPHA_RANGE, RANK_RANGE, ModelDir, PresetName, one_model_source, up_to


def export(model: ModelDir = None, preset: PresetName = None,
           legacy_model: Optional[Path] = typer.Argument(None, hidden=True, metavar="MODEL_DIR",
                                                       help="Deprecated: use --model."),
           adapter: Optional[Path] = typer.Option(None, "--adapter", help="A person's adapter file."),
           merge_lora: bool = typer.Option(False, "--merge-lora", help="Bake the adapter into the weights: the "
                                                                       "export serves that person only."),
           keep_lora: bool = typer.Option(False, "--keep-lora", help="Adapter tensors become graph inputs: one "
                                                                     "export serves every adapter of this policy."),
           base: bool = typer.Option(False, "--base", help="The base model alone, with no person in it (one of "
                                                           "--keep-lora, --merge-lora, --base is needed)."),
           person: Optional[str] = typer.Option(None, help="Name of the merged person (default: adapter file stem)."),
           rank: int = typer.Option(4, **RANK_RANGE, help="--keep-lora without --adapter: LoRA rank of the policy."),
           alpha: Optional[float] = typer.Option(None, **ALPHA_RANGE, help="--keep-lora without --adapter: LoRA "
                                                                           "alpha (default rank)."),
           layout: str = typer.Option("loralib", help="--keep-lora without --adapter: loralib | flat."),
           fp16: bool = typer.Option(False, "--fp16", help="float16 weights and tri-planes (compute stays float32 "
                                                           "in onnxruntime CPU)."),
           opset: int = typer.Option(18, min=18, max=20, help="ONNX opset (the exporter supports 18..20)."),
           trt: bool = typer.Option(False, "--trt", help="Also build fp16 TensorRT engines (needs TensorRT)."),
           trt_check: bool = typer.Option(False, "--trt-check", help="Print the TensorRT operator-support report."),
           max_batch: int = typer.Option(8, **up_to("max_batch"), help="Largest batch of the TensorRT engines."),
           mixed_batch: int = typer.Option(0, "--mixed-batch", **up_to("max_batch", 0),
                                           help="--keep-lora: also export static-batch-N graphs that render N "
                                                "requests of N different people in one run (0: none)."),
           verify: bool = typer.Option(True, help="Compare onnxruntime with eager PyTorch after exporting."),
           overwrite: bool = typer.Option(False, help="Replace an existing export directory."),
           out: Path = typer.Option(..., "--out", help="Export directory to write.")):
    """Export ONNX graphs (mapping, tri-plane synthesis, render + super-resolution) with a manifest."""
    from export.exporter import export_model
    from export.options import ExportError, ExportOptions
    from export.manifest import read_manifest
    from generator.lora import AdapterPolicy
    if legacy_model is not None:
        if model is not None:
            raise typer.BadParameter("give the model directory once, as --model DIR")
        typer.echo("warning: `export MODEL_DIR` is deprecated; use `export --model MODEL_DIR`", err=True)
        model = legacy_model
    one_model_source(model, preset)
    chosen = [flag for flag, on in (("--merge-lora", merge_lora), ("--keep-lora", keep_lora), ("--base", base)) if on]
    if len(chosen) != 1:
        raise ExportError(f"{'choose one of ' + ' and '.join(chosen) if chosen else 'say what to export'}: "
                          f"--keep-lora (adapters as graph inputs: one export serves every person), --merge-lora "
                          f"--adapter FILE (one person baked into the weights), or --base (the base model alone)")
    mode = "merge" if merge_lora else "keep" if keep_lora else "base"
    policy = None
    if keep_lora and adapter is None:
        policy = AdapterPolicy(rank=rank, alpha=float(alpha if alpha is not None else rank), layout=layout)
    opts = ExportOptions(mode=mode, fp16=fp16, opset=opset, trt=trt, max_batch=max_batch, verify=verify,
                         person=person, policy=policy, overwrite=overwrite, mixed_batch=mixed_batch)
    path = export_model(out, model=model, preset=preset, adapter=adapter, options=opts)
    m = read_manifest(path)
    a = m["adapter"]
    what = {"none": "base model", "merged": f"merged person {a.get('person')!r}",
            "keep-lora": f"keep-LoRA ({len(a.get('inputs', []))} adapter inputs, rank {a.get('rank')})"}[a["mode"]]
    typer.echo(f"wrote {path}: {what}, {m['precision']}, opset {m['opset']}")
    if m.get("verification"):
        v = m["verification"]
        diffs = ", ".join(f"{k} {d:.1e}" for k, d in v["max_abs_diff"].items())
        typer.echo(f"  onnxruntime vs eager PyTorch (max abs diff, tolerance {v['tolerance']}): {diffs}")
    checks = m["tensorrt"]["check"]
    typer.echo("  TensorRT op check: " + ", ".join(f"{g} {'OK' if c['ok'] else 'BLOCKED'}" for g, c in checks.items()))
    if trt_check:
        _print_reports(path, m)


def _print_reports(path: Path, manifest: dict) -> bool:
    from export.trt_support import check_onnx_for_tensorrt, format_report
    ok = True
    for name, g in manifest["graphs"].items():
        report = check_onnx_for_tensorrt(path / g["file"])
        typer.echo(format_report(report))
        ok &= report.ok
    return ok


def build_engine(export_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="Export directory."),
                 check_only: bool = typer.Option(False, "--check-only", help="Only print the operator report."),
                 max_batch: int = typer.Option(8, **up_to("max_batch"),
                                              help="Largest batch of the engines' optimization profile."),
                 fp16: bool = typer.Option(True, help="FP16 engines: TensorRT 10.x enables FP16 kernels on any "
                                                      "graph; 11.x (strongly typed only) needs graphs that compute "
                                                      "in FP16, so --no-fp16 builds FP32 engines there."),
                 refittable: bool = typer.Option(False, "--refittable", help="Refittable engines: other merged "
                                                 "people's exports can then reuse them with --refit-from."),
                 refit_from: Optional[Path] = typer.Option(None, "--refit-from", exists=True, file_okay=False,
                                                           help="Instead of building, refit the refittable engines "
                                                                "of this export (same model, another merged person) "
                                                                "with this export's weights: seconds, not minutes.")):
    """Print the TensorRT operator-support report of an export's graphs, then build (or refit) TensorRT engines."""
    from export.exporter import build_engines
    from export.manifest import read_manifest, write_manifest
    m = read_manifest(export_dir)
    ok = _print_reports(export_dir, m)
    if not ok:
        raise ValueError(f"{export_dir}: a graph has operators TensorRT's parser rejects (see the report above)")
    if check_only:
        return
    if refit_from is not None:
        from export.tensorrt_build import refit_engines_from
        source = read_manifest(refit_from)["tensorrt"]["engines"]
        if not source:
            raise ValueError(f"{refit_from}: has no TensorRT engines to refit (build them with --refittable first)")
        m["tensorrt"]["engines"] = refit_engines_from(refit_from, source, export_dir, m["graphs"])
    else:
        m["tensorrt"]["engines"] = build_engines(export_dir, max_batch=max_batch, fp16=fp16, refit=refittable)
    write_manifest(export_dir, m)
    verb = "refitted" if refit_from is not None else "built"
    for name, e in m["tensorrt"]["engines"].items():
        typer.echo(f"{verb} {export_dir / e['file']} ({e['size_bytes'] / 1e6:.1f} MB, {e['build_seconds']} s)")
