"""Package an exported model as a TorchServe archive `model_store/<name>.mar`, written atomically.

The archive is self-contained: the exported graphs (`export/`, with the model directory the torch backend loads),
the torch-free `runtime`, `formats` and `media` packages (the runtime reads every file through `formats`; videos
come from `media`), the `generator` package (imported only by the torch backend, where torch is installed), the
handler with
`serve/requests.py` and `serve/metrics.py`, and a `model-config.yaml` (workers, batching, timeouts, the handler's
limits). TorchServe puts
the extracted archive first on the worker's PYTHONPATH, so the worker imports the `runtime` shipped with the model
rather than whatever is installed: the archive keeps working when the repository moves or changes. People's
adapters are not in the archive: they live in `model_store/people/<name>/` and come and go without a restart.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from formats.atomic import copy_file
from formats.names import NAME_RULE, is_valid_name

ARCHIVE_FORMATS = ("default", "zip-store", "no-archive")
"""torch-model-archiver formats: `default` (zip, `<name>.mar`), `zip-store` (uncompressed zip, faster to extract,
`<name>.mar`), `no-archive` (a folder `<name>/`)."""

RESERVED_NAMES = ("people",)
"""Names that would collide with the model store's own folders."""

SERVE_FILES = ("__init__.py", "requests.py", "metrics.py", "worker_env.py", "handler.py")
"""The files of this package that the worker needs."""


@dataclass
class PackageConfig:
    """What goes into the archive and its model-config.yaml."""

    name: str
    """Model name: `/predictions/<name>`, `<name>.mar`, `people/<name>/`."""
    model_store: Path = Path("model_store")
    """Folder the archive is written to."""
    version: str = "1.0"
    """Model version recorded in the manifest."""
    min_workers: int = 1
    """TorchServe minWorkers: worker processes started with the model."""
    max_workers: int = 1
    """TorchServe maxWorkers."""
    batch_size: int = 1
    """TorchServe batchSize: requests handed to one handle() call (their novel views share graph runs)."""
    max_batch_delay_ms: int = 50
    """TorchServe maxBatchDelay: how long the frontend waits to fill a batch."""
    response_timeout_s: int = 60
    """TorchServe responseTimeout: a worker silent for longer is killed and restarted."""
    startup_timeout_s: int = 120
    """TorchServe startupTimeout: time allowed for loading the model in a worker."""
    device: str = "cpu"
    """TorchServe deviceType: cpu or gpu."""
    default_budget_ms: Optional[float] = None
    """Deadline for requests without `budget_ms` (None: 80% of the response timeout)."""
    max_budget_ms: Optional[float] = None
    """Largest `budget_ms` a request may ask for (None: 80% of the response timeout)."""
    max_frames: int = 16
    """Most frames per interpolation request."""
    backend: str = "auto"
    """What runs the model in the workers (runtime.backend.BACKENDS; 'auto' measures at start-up)."""
    precision: str = "fp32"
    """fp32, bf16 or fp16 (the torch backend's; serve/handler.HandlerConfig.precision)."""
    compile: bool = False
    """torch backend: torch.compile each stage at its first run."""
    providers: str = "auto"
    """onnxruntime providers: "auto" or comma-separated provider names."""
    plane_cache_size: int = 64
    """Tri-plane cache entries per worker."""
    plane_cache_mb: float = 1024.0
    """Tri-plane cache bytes per worker, in MiB."""
    adapter_cache_size: int = 16
    """Loaded adapters kept per worker."""
    threads: Optional[int] = None
    """onnxruntime intra-op threads per worker (None: the serving machine's cores / max_workers, at least 1)."""
    archive_format: str = "default"
    """One of ARCHIVE_FORMATS."""
    overwrite: bool = False
    """Replace an existing archive of the same name."""
    check: bool = True
    """Load the export with the runtime before packaging (a broken export fails here, not in the server)."""

    def validate(self) -> "PackageConfig":
        if not is_valid_name(self.name) or self.name in RESERVED_NAMES:
            raise ValueError(f"name={self.name!r}: use {NAME_RULE} "
                             f"(and not {', '.join(RESERVED_NAMES)})")
        if self.archive_format not in ARCHIVE_FORMATS:
            raise ValueError(f"archive_format={self.archive_format!r}: one of {', '.join(ARCHIVE_FORMATS)}")
        if not 1 <= self.min_workers <= self.max_workers:
            raise ValueError(f"workers: need 1 <= min_workers ({self.min_workers}) <= max_workers "
                             f"({self.max_workers})")
        if self.batch_size < 1 or self.max_batch_delay_ms < 0 or self.max_frames < 2:
            raise ValueError("batch_size must be >= 1, max_batch_delay_ms >= 0 and max_frames >= 2")
        if self.response_timeout_s < 1 or self.startup_timeout_s < 1:
            raise ValueError("response_timeout_s and startup_timeout_s must be >= 1")
        if self.device not in ("cpu", "gpu"):
            raise ValueError(f"device={self.device!r}: cpu or gpu")
        from serve.handler import HandlerConfig
        HandlerConfig.from_dict(self.model_config()["handler"], environ={})  # the workers' checks, now
        limit = self.response_timeout_s * 1000.0
        for field in ("default_budget_ms", "max_budget_ms"):
            v = getattr(self, field)
            if v is not None and not 0 < v < limit:
                raise ValueError(f"{field}={v}: must be in (0, {limit:g}) ms, below the response timeout")
        return self

    def model_config(self) -> dict:
        """The model-config.yaml content (TorchServe keys plus the handler's own section)."""
        cap = round(self.response_timeout_s * 1000.0 * 0.8, 1)
        providers = self.providers if self.providers == "auto" else [
            p.strip() for p in self.providers.split(",") if p.strip()]
        return {
            "minWorkers": self.min_workers,
            "maxWorkers": self.max_workers,
            "batchSize": self.batch_size,
            "maxBatchDelay": self.max_batch_delay_ms,
            "responseTimeout": self.response_timeout_s,
            "startupTimeout": self.startup_timeout_s,
            "deviceType": self.device,
            "handler": {
                "export_subdir": "export",
                "default_budget_ms": self.default_budget_ms if self.default_budget_ms is not None else cap,
                "max_budget_ms": self.max_budget_ms if self.max_budget_ms is not None else cap,
                "max_frames": self.max_frames,
                "providers": providers,
                "backend": self.backend,
                "precision": self.precision,
                "compile": self.compile,
                "plane_cache_size": self.plane_cache_size,
                "plane_cache_mb": self.plane_cache_mb,
                "adapter_cache_size": self.adapter_cache_size,
                "threads": self.threads,
            },
        }


def archive_path(model_store: Path, name: str, archive_format: str = "default") -> Path:
    """Where the archive of `name` lives in the store."""
    return Path(model_store) / (name if archive_format == "no-archive" else f"{name}.mar")


def check_export(export_dir: Path, backend: str = "onnxruntime", precision: str = "fp32") -> None:
    """Load the export with the runtime on `backend` (a named one as the worker will; 'auto' checks onnxruntime,
    which it can always fall back to, without its start-up timing); raises ValueError naming the folder."""
    from runtime import Runtime
    try:
        Runtime(export_dir, people_dir=None, backend="onnxruntime" if backend == "auto" else backend,
                precision=precision)
    except Exception as e:  # noqa: BLE001 - any failure means the archive would not serve
        raise ValueError(f"{export_dir}: the runtime cannot load this export ({type(e).__name__}: {e})") from e


def _ignore(_dir: str, names: list) -> list:
    return [n for n in names if n == "__pycache__" or n.endswith((".pyc", ".pyo"))]


def package_model(export_dir: str | os.PathLike, cfg: PackageConfig) -> Path:
    """Exported model folder -> `<model_store>/<name>.mar` (+ an empty `people/<name>/`); returns the archive."""
    import yaml

    import formats
    import generator
    import media
    import runtime
    cfg.validate()
    export_dir = Path(export_dir).resolve()
    if not export_dir.is_dir():
        raise FileNotFoundError(f"{export_dir}: no such export folder")
    store = Path(cfg.model_store).resolve()
    store.mkdir(parents=True, exist_ok=True)
    target = archive_path(store, cfg.name, cfg.archive_format)
    existing = [p for p in (store / f"{cfg.name}.mar", store / cfg.name) if p.exists()]
    if existing and not cfg.overwrite:
        raise FileExistsError(f"{existing[0]} exists (pass overwrite / --overwrite to replace it)")
    if cfg.check:
        check_export(export_dir, cfg.backend, cfg.precision)
    runtime_dir = Path(runtime.__file__).resolve().parent
    serve_dir = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory(prefix=f".{cfg.name}.", suffix=".tmp", dir=store) as tmp:
        tmp = Path(tmp)
        payload = tmp / "payload"
        shutil.copytree(export_dir, payload / "export", ignore=_ignore)
        shutil.copytree(runtime_dir, payload / "runtime", ignore=_ignore)
        shutil.copytree(Path(formats.__file__).resolve().parent, payload / "formats", ignore=_ignore)
        shutil.copytree(Path(media.__file__).resolve().parent, payload / "media", ignore=_ignore)
        shutil.copytree(Path(generator.__file__).resolve().parent, payload / "generator", ignore=_ignore)
        (payload / "serve").mkdir()
        for name in SERVE_FILES:
            shutil.copy2(serve_dir / name, payload / "serve" / name)
        config_file = tmp / "model-config.yaml"
        config_file.write_text(yaml.safe_dump(cfg.model_config(), sort_keys=False))
        (tmp / "out").mkdir()
        (tmp / "scratch").mkdir()
        cmd = [sys.executable, "-m", "model_archiver.model_packaging", "--model-name", cfg.name,
               "--version", cfg.version, "--handler", str(payload / "serve" / "handler.py"),
               "--extra-files", str(payload), "--config-file", str(config_file),
               "--export-path", str(tmp / "out"), "--archive-format", cfg.archive_format, "--force"]
        # the archiver stages files in $TMPDIR/<name>: a private TMPDIR keeps concurrent packagings apart
        env = dict(os.environ, TMPDIR=str(tmp / "scratch"))
        proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True)
        built = archive_path(tmp / "out", cfg.name, cfg.archive_format)
        if proc.returncode != 0 or not built.exists():
            raise RuntimeError(f"torch-model-archiver failed (exit {proc.returncode}) for {cfg.name}: "
                               f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
        for i, p in enumerate(existing):  # the other format's artifact of this name goes too: one model, one archive
            if p.is_dir() or p != target:
                os.replace(p, tmp / f"old{i}")
        os.replace(built, target)
    (store / "people" / cfg.name).mkdir(parents=True, exist_ok=True)
    return target


# ---------------------------------------------------------------- people of a packaged model
def people_dir(model_store: str | os.PathLike, name: str) -> Path:
    """`<model_store>/people/<name>/`: the adapters the server of model `name` renders."""
    if not is_valid_name(name):
        raise ValueError(f"model name {name!r}: use {NAME_RULE}")
    return Path(model_store).resolve() / "people" / name


def list_people(model_store: str | os.PathLike, name: str) -> list:
    """Names of the people of model `name` (adapter files `<person>.safetensors`)."""
    d = people_dir(model_store, name)
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.safetensors") if is_valid_name(p.stem) and p.is_file())


def _find_archive(model_store: str | os.PathLike, name: str) -> Optional[Path]:
    """The packaged archive of model `name` in the store (`<name>.mar`, or the folder `<name>/` of a no-archive
    packaging), or None."""
    store = Path(model_store).resolve()
    return next((p for p in (store / f"{name}.mar", store / name) if p.exists()), None)


def _extract_export(archive: Path, dest: Path) -> Path:
    """The `export/` folder of an archive (a `.mar` zip or a no-archive folder), extracted under `dest`."""
    import zipfile
    if archive.is_dir():
        return archive / "export"
    with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
            parts = Path(info.filename).parts
            if not parts or parts[0] != "export" or info.filename.startswith("/") or ".." in parts:
                continue
            z.extract(info, dest)
    return dest / "export"


def add_person(model_store: str | os.PathLike, name: str, person: str, adapter_file: str | os.PathLike,
               overwrite: bool = False, check: bool = True) -> Path:
    """Add `person` to the packaged model `name`: `people/<name>/<person>.safetensors` and its native onnxruntime
    adapter files (a running server sees them at its next request); returns the adapter's path there.

    The export is extracted from the archive once, and the person is added through the runtime's one route,
    `runtime.people.PeopleStore.add` (the adapter read and checked against the export, copied, its native files
    written), into a throwaway people folder; with `check`, a Runtime of the export adds it there and renders its
    first anchor (when it has anchors). Only then are the files copied into the people folder, each atomically,
    the adapter last (`_install`): a failed add leaves the people folder as it was. A model with no archive in the
    store takes the file unchecked with `check=False` (there is no export to check it against or to derive native
    files from), and is refused with `check`."""
    if not is_valid_name(person):
        raise ValueError(f"person {person!r}: use {NAME_RULE}")
    src = Path(adapter_file)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such adapter file")
    if not src.is_file():
        raise ValueError(f"{src}: not a regular file (a directory, FIFO, device or socket): refused")
    dest_dir = people_dir(model_store, name)
    dest = dest_dir / f"{person}.safetensors"
    if dest.exists() and not overwrite:
        raise FileExistsError(f"{dest} exists (pass overwrite / --overwrite to replace it)")
    archive = _find_archive(model_store, name)
    if archive is None:
        if check:
            raise FileNotFoundError(f"{Path(model_store).resolve()}: no archive for model {name!r} (package it "
                                    f"first)")
        return copy_file(src, dest)  # the temp file is '.<person>.safetensors.*.tmp': never listed half-written
    with tempfile.TemporaryDirectory(prefix="my3dgen-add-") as tmp:
        tmp = Path(tmp)
        export = _extract_export(archive, tmp)
        staged = tmp / "people"
        staged.mkdir()
        if check:
            written = _add_and_render(export, staged, name, person, src)
        else:
            from formats.export_manifest import ExportManifest
            from runtime.people import PeopleStore
            written = PeopleStore(ExportManifest.read(export), staged).add(person, src)
        return _install(written, dest_dir, person)


def _add_and_render(export: Path, staged: Path, name: str, person: str, src: Path) -> list:
    """Add `person` to the people folder `staged` with a Runtime of `export` (Runtime.add_person ->
    PeopleStore.add) and render their first anchor; returns the files written. Any failure is a ValueError naming
    the adapter file and the model."""
    from runtime import Runtime
    try:
        rt = Runtime(export, people_dir=staged)
        written = rt.add_person(person, src)
        if rt.person_info(person).get("anchors"):
            rt.novel_view(person, anchor=0)
        return written
    except Exception as e:  # noqa: BLE001 - report any failure as a bad adapter for this model
        raise ValueError(f"{src}: not a usable adapter for model {name!r} ({type(e).__name__}: {e})") from e


def _install(written: list, dest_dir: Path, person: str) -> Path:
    """Copy the files PeopleStore.add wrote (the adapter, then its native adapter files) into the people folder,
    each atomically: the person's earlier native files out, the new ones in, the adapter last, so a server
    reading the folder meanwhile renders the old version (with numpy feeds once its native files are gone) or the
    new one with all its native files. Returns the adapter's path."""
    from runtime.native_adapters import remove_native_adapters
    adapter, natives = written[0], written[1:]
    remove_native_adapters(dest_dir, person)
    for f in natives:
        copy_file(f, dest_dir / f.name)
    return copy_file(adapter, dest_dir / adapter.name)


def remove_person(model_store: str | os.PathLike, name: str, person: str) -> bool:
    """Delete `people/<name>/<person>.safetensors`; False when there was none."""
    if not is_valid_name(person):
        raise ValueError(f"person {person!r}: use {NAME_RULE}")
    path = people_dir(model_store, name) / f"{person}.safetensors"
    from runtime.native_adapters import remove_native_adapters
    try:
        path.unlink()
        remove_native_adapters(path.parent, person)
        return True
    except FileNotFoundError:
        return False
