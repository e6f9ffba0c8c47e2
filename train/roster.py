"""Personalize a whole roster of people on Ray: one task per person, failures isolated, retries resume.

A roster is a folder of people, one sub-folder each, named as the model store names people (A-Z a-z 0-9 _ -):
either a folder of photos (preprocessed first, `preprocess.preprocess_folder`) or a preprocessed dataset folder
with `dataset.json` (trained on as it is). Each person becomes one Ray task that calls the `train` command's own
entry function (`train.commands.train`) with the roster's options, so every person is trained exactly as
`cli.py train` would train them, in a work folder of their own:

    <work>/<person>/data/                 the preprocessed photos (photo folders only)
    <work>/<person>/train/                train's resumable checkpoint, inversion cache, log.jsonl, preview.png
    <work>/<person>/adapter.safetensors   train's output
    <work>/<person>/train.log             everything train printed, every attempt
    <work>/<person>/attempts.jsonl        one line per attempt (run id, pid, start time, checkpoint step found)

`<work>` defaults to `<store>/.train-many/<model name>/` (hidden, so the serving side never lists it). A task
whose worker dies (killed, out of memory, node lost) is retried by Ray (`max_retries`) and resumes from its
checkpoint; an error inside a task (bad photos, bad data) is not retried: it is returned and reported while the
other people go on. A finished adapter is copied into `<store>/people/<model name>/<person>.safetensors` with
one rename (the layout `cli.py people add` and the TorchServe handler use), so a running server never sees half
a file. People already in the store are skipped unless `overwrite`.

Ray is an optional dependency, imported only when a roster runs (`require_ray`).
"""
from __future__ import annotations

import contextlib
import errno
import inspect
import json
import os
import stat
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from formats.atomic import copy_file, write_text
from formats.names import NAME_RULE, check_name, is_valid_name

RAY_INSTALL_HINT = ("train-many needs Ray, an optional dependency: pip install 'my3dgen[ray]' "
                    "(or: pip install -c constraints.txt 'ray==2.60.*')")
WORK_DIR_NAME = ".train-many"
PER_PERSON_TRAIN_OPTIONS = ("data", "out", "checkpoint_dir")
"""Options of `train` that train-many sets per person; every other `train` option applies to the whole roster."""
DATA_DIR, TRAIN_DIR, ADAPTER_FILE, LOG_FILE, ATTEMPTS_FILE = (
    "data", "train", "adapter.safetensors", "train.log", "attempts.jsonl")
SUMMARY_FILE = "summary.json"
SUMMARY_FORMAT, SUMMARY_VERSION = "my3dgen-train-many-summary", 1


class RosterError(ValueError):
    """A roster or setting that cannot run at all; the message names the folder or value."""


def require_ray():
    """The `ray` module, or RosterError with one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RosterError(RAY_INSTALL_HINT) from None
    return ray


# ------------------------------------------------------------------------------------------ the roster
@dataclass
class PersonSource:
    """One sub-folder of the roster."""

    name: str
    path: Path
    kind: str
    """'dataset' (has dataset.json: trained on as it is) or 'photos' (preprocessed first)."""


def discover_roster(roster: str | os.PathLike) -> tuple[list[PersonSource], list["PersonOutcome"]]:
    """(people to train, failures found already): every non-hidden sub-folder of `roster`, sorted by name.

    A sub-folder whose name is not a valid person name is a failure of its own (the store could not hold it);
    any other entry (a file, a dangling symlink, a symlink loop) is a 'skipped' row saying why, so the summary
    accounts for every entry; hidden entries (`.name`) are ignored."""
    from formats.dataset import DATASET_JSON

    roster = Path(roster)
    if not roster.is_dir():
        raise RosterError(f"roster {roster}: not a folder (expected one sub-folder of photos or of preprocessed "
                          f"data per person)")
    people, invalid = [], []
    for entry in sorted(roster.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            invalid.append(PersonOutcome(person=entry.name, status="skipped", source=str(entry),
                                         error=why_not_a_person(entry)))
            continue
        if not is_valid_name(entry.name):
            invalid.append(PersonOutcome(person=entry.name, status="failed", source=str(entry),
                                         error=f"{entry}: the folder name is not a valid person name ({NAME_RULE})"))
            continue
        kind = "dataset" if (entry / DATASET_JSON).is_file() else "photos"
        people.append(PersonSource(entry.name, entry, kind))
    if not people and not any(o.status == "failed" for o in invalid):
        skipped = "".join(f"; skipped {o.error}" for o in invalid)
        raise RosterError(f"roster {roster}: no person folders in it{skipped}")
    return people, invalid


def why_not_a_person(entry: Path) -> str:
    """Why roster entry `entry`, which is not a folder, is no person, in words."""
    try:
        mode = entry.stat().st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            return f"{entry}: a symlink loop (it leads back to itself), not a person folder"
        if entry.is_symlink():
            return f"{entry}: a dangling symlink (to {os.readlink(entry)}, which does not exist), not a person folder"
        return f"{entry}: unreadable ({e.strerror}), not a person folder"
    if stat.S_ISREG(mode):
        return f"{entry}: a file, not a person folder (a person is a folder of photos or a dataset)"
    return f"{entry}: not a folder, so not a person"


# ------------------------------------------------------------------------------------------ train's options
def train_entry() -> Callable[..., Any]:
    """The `train` command's function: the one code path that trains a person, whatever calls it."""
    from train.commands import train
    return train


def train_option_defaults() -> dict[str, Any]:
    """Every `train` option that applies to a whole roster, with the default `cli.py train` gives it."""
    out = {}
    for name, p in inspect.signature(train_entry(), eval_str=True).parameters.items():
        if name in PER_PERSON_TRAIN_OPTIONS:
            continue
        default = p.default
        default = getattr(default, "default", default)  # typer.Option(...) objects carry the real default
        out[name] = None if default is Ellipsis else default
    return out


def train_options(**overrides: Any) -> dict[str, Any]:
    """`train_option_defaults()` with `overrides`; an unknown or per-person option is an error naming it."""
    options = train_option_defaults()
    per_person = sorted(k for k in overrides if k in PER_PERSON_TRAIN_OPTIONS)
    unknown = sorted(k for k in overrides if k not in options and k not in PER_PERSON_TRAIN_OPTIONS)
    if per_person:
        raise RosterError(f"train options {', '.join(per_person)}: set per person by train-many, not for a roster")
    if unknown:
        raise RosterError(f"train options {', '.join(unknown)}: not options of train (known: "
                          f"{', '.join(sorted(options))})")
    options.update(overrides)
    return options


# ------------------------------------------------------------------------------------------ settings
@dataclass
class RosterSettings:
    """How a roster is run (train's own options travel separately, as `train_options`)."""

    model_name: str
    """The store's model name: adapters go to <store>/people/<model_name>/<person>.safetensors."""
    work_dir: Optional[Path] = None
    """Per-person work folders (checkpoints etc.); None: <store>/.train-many/<model_name>/."""
    cpus_per_person: float = 1.0
    """Ray CPUs reserved by each person's task; torch in the task uses max(1, int(this)) threads."""
    gpus_per_person: float = 0.0
    """Ray GPUs reserved by each person's task (train's --device auto then picks the GPU Ray assigns)."""
    workers: Optional[int] = None
    """People trained at once by a local Ray (its CPUs = workers x cpus_per_person); None: as many as the CPUs
    of this machine allow. Ignored with `address` (the cluster's resources decide)."""
    address: Optional[str] = None
    """Join this Ray cluster (`ray start --head`, KubeRay; 'auto' finds a local one) instead of starting one."""
    max_retries: int = 2
    """Times Ray re-runs a person whose worker process died; each retry resumes from the checkpoint."""
    overwrite: bool = False
    """Retrain people who already have an adapter in the store (default: skip them)."""
    preprocess_backend: str = "dlib"
    """Face backend for photo folders: dlib (offline) | insightface (needs insightface_models)."""
    insightface_models: Optional[Path] = None
    """Folder with the insightface buffalo_l ONNX files, for preprocess_backend='insightface'."""

    def validate(self) -> "RosterSettings":
        from serve.package import RESERVED_NAMES
        check_name(self.model_name, "model")
        if self.model_name in RESERVED_NAMES:
            raise RosterError(f"model name {self.model_name!r} is reserved by the model store ({RESERVED_NAMES})")
        checks = [(self.cpus_per_person > 0, "cpus_per_person", "must be > 0"),
                  (self.gpus_per_person >= 0, "gpus_per_person", "must be >= 0"),
                  (self.workers is None or self.workers >= 1, "workers", "must be >= 1"),
                  (self.max_retries >= 0, "max_retries", "must be >= 0"),
                  (self.preprocess_backend in ("dlib", "insightface"), "preprocess_backend",
                   "must be 'dlib' or 'insightface'")]
        for ok, name, why in checks:
            if not ok:
                raise RosterError(f"train-many {name}={getattr(self, name)!r}: {why}")
        return self

    def threads(self) -> int:
        return max(1, int(self.cpus_per_person))


# ------------------------------------------------------------------------------------------ one person
@dataclass
class PersonTask:
    """Everything one person's task needs (plain data: it is pickled to a Ray worker)."""

    person: str
    source: Path
    kind: str
    work: Path
    store_file: Path
    train_options: dict[str, Any]
    preprocess_backend: str
    insightface_models: Optional[Path]
    threads: int
    run_id: str


@dataclass
class PersonOutcome:
    """One row of the summary."""

    person: str
    status: str
    """'done', 'failed' or 'skipped' (already in the store)."""
    source: str = ""
    steps: Optional[int] = None
    wall_seconds: Optional[float] = None
    """From the start of this run's first attempt to the adapter landing in the store (retries included)."""
    train_seconds: Optional[float] = None
    inversion_seconds: Optional[float] = None
    final_losses: dict[str, float] = field(default_factory=dict)
    adapter: Optional[str] = None
    """The adapter file in the store."""
    error: Optional[str] = None
    attempts: int = 0
    """Attempts of this run (> 1: the worker died and Ray retried)."""
    resumed_from: Optional[int] = None
    """Checkpoint step the last attempt started from (None: from scratch)."""
    photos: Optional[dict] = None
    """For photo folders: photos kept / skipped by preprocessing."""
    work_dir: Optional[str] = None
    log: Optional[str] = None


class _Capture:
    """A text stream that appends to a log file and keeps the last characters written (for error messages)."""

    def __init__(self, handle, keep: int = 4000):
        self.handle, self.keep, self.tail = handle, keep, ""

    def write(self, text: str) -> int:
        self.handle.write(text)
        self.tail = (self.tail + text)[-self.keep:]
        return len(text)

    def flush(self) -> None:
        self.handle.flush()

    def isatty(self) -> bool:
        return False


def _attempt(task: PersonTask, resume_step: Optional[int]) -> tuple[int, float]:
    """Record this attempt in attempts.jsonl; (attempt number in this run, start time of the run's first)."""
    path = task.work / ATTEMPTS_FILE
    previous = []
    if path.is_file():
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("run") == task.run_id:
                    previous.append(record)
    now = time.time()
    record = {"run": task.run_id, "attempt": len(previous) + 1, "pid": os.getpid(), "started": now,
              "resume_step": resume_step}
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    return record["attempt"], (previous[0]["started"] if previous else now)


def _checkpoint_step(train_dir: Path) -> Optional[int]:
    from train.checkpoint import CHECKPOINT_FILE, CheckpointError, load_checkpoint
    path = train_dir / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        return load_checkpoint(path).step
    except CheckpointError:
        return None  # train itself reports an unusable checkpoint


def _prepare_data(task: PersonTask, echo: Callable[[str], None]) -> tuple[Path, Optional[dict]]:
    """The dataset folder to train on: the person's own, or their photos preprocessed (once) into data/."""
    from formats.dataset import DATASET_JSON
    from preprocess import REPORT_JSON, PreprocessConfig, preprocess_folder

    if task.kind == "dataset":
        return task.source, None
    data = task.work / DATA_DIR
    if (data / DATASET_JSON).is_file() and (data / REPORT_JSON).is_file():
        echo(f"reusing the preprocessed photos in {data}")  # preprocess_folder commits atomically
    else:
        config = PreprocessConfig(backend=task.preprocess_backend, insightface_model_dir=task.insightface_models,
                                  overwrite=True)
        echo(preprocess_folder(task.source, data, config).summary())
    report = json.loads((data / REPORT_JSON).read_text())
    skipped = report.get("skipped", [])
    if not report.get("num_kept"):
        reasons = "; ".join(f"{s.get('source')}: {s.get('reason')}" for s in skipped[:5])
        more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
        raise RosterError(f"{task.source}: no usable photo ({len(skipped)} skipped: {reasons}{more}; "
                          f"details in {data / REPORT_JSON})")
    return data, {"kept": report["num_kept"], "skipped": report.get("num_skipped", len(skipped))}


def _error_text(exc: BaseException, printed: str) -> str:
    """One line saying why a person failed: the exception, or the `error:` line train printed before exiting."""
    import typer

    if isinstance(exc, typer.Exit):
        lines = [ln.strip() for ln in printed.splitlines() if ln.strip().startswith("error:")]
        return lines[-1] if lines else f"train exited with code {exc.exit_code}"
    text = exc.format_message() if hasattr(exc, "format_message") else str(exc).strip()  # click usage errors
    return f"{type(exc).__name__}: {text}"


def run_person(task: PersonTask) -> PersonOutcome:
    """One person, in whatever process runs it: preprocess if needed, `train` (resuming), publish the adapter.

    Errors of the person's data or options come back as a 'failed' outcome; only a dying process escapes
    (Ray then retries the task, which resumes from the checkpoint)."""
    import torch

    from formats.adapter_file import read_adapter_meta

    task.work.mkdir(parents=True, exist_ok=True)
    train_dir, adapter = task.work / TRAIN_DIR, task.work / ADAPTER_FILE
    resume_step = _checkpoint_step(train_dir)
    attempt, first_start = _attempt(task, resume_step)
    outcome = PersonOutcome(person=task.person, status="failed", source=str(task.source), attempts=attempt,
                            resumed_from=resume_step, work_dir=str(task.work), log=str(task.work / LOG_FILE))
    options = dict(task.train_options)
    if attempt > 1:
        options["restart"] = False  # --restart applies to the first attempt only: a retry must resume
    threads = torch.get_num_threads()
    torch.set_num_threads(task.threads)
    try:
        with open(task.work / LOG_FILE, "a") as handle:
            capture = _Capture(handle)
            echo = lambda msg: print(msg, file=capture)  # noqa: E731
            echo(f"=== {task.person}: attempt {attempt} of run {task.run_id} (pid {os.getpid()}, checkpoint "
                 f"step {resume_step}) ===")
            try:
                with contextlib.redirect_stdout(capture), contextlib.redirect_stderr(capture):
                    data, outcome.photos = _prepare_data(task, echo)
                    train_entry()(data=data, out=adapter, checkpoint_dir=train_dir, **options)
                extra = read_adapter_meta(adapter).get("extra", {})
                copy_file(adapter, task.store_file)
            except Exception as e:  # noqa: BLE001 - any failure of one person is reported, the roster goes on
                outcome.error = _error_text(e, capture.tail)
                echo(f"FAILED: {outcome.error}")
                return outcome
        outcome.status, outcome.adapter = "done", str(task.store_file)
        outcome.steps, outcome.final_losses = extra.get("steps"), dict(extra.get("final_losses", {}))
        outcome.train_seconds, outcome.inversion_seconds = extra.get("train_seconds"), extra.get("inversion_seconds")
        return outcome
    finally:
        outcome.wall_seconds = round(time.time() - first_start, 3)
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------ the roster run
@dataclass
class RosterSummary:
    """What a train-many run did, person by person."""

    roster: str
    store: str
    model_name: str
    work_dir: str
    people: list[PersonOutcome]
    wall_seconds: float
    ray: dict
    train_options: dict

    def counts(self) -> dict[str, int]:
        out = {"done": 0, "failed": 0, "skipped": 0}
        for p in self.people:
            out[p.status] = out.get(p.status, 0) + 1
        return out

    def people_per_hour(self) -> float:
        return 3600.0 * self.counts()["done"] / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {"format": SUMMARY_FORMAT, "format_version": SUMMARY_VERSION, "roster": self.roster,
                "store": self.store, "model_name": self.model_name, "work_dir": self.work_dir,
                "wall_seconds": round(self.wall_seconds, 3), "counts": self.counts(),
                "people_per_hour": round(self.people_per_hour(), 2), "ray": self.ray,
                "train_options": {k: (str(v) if isinstance(v, Path) else v) for k, v in self.train_options.items()},
                "people": [asdict(p) for p in self.people]}

    def table(self) -> str:
        """A fixed-width table: person, status, steps, wall time, final losses, adapter path or error."""
        rows = [("person", "status", "steps", "wall s", "attempts", "final losses", "adapter / error")]
        for p in self.people:
            losses = " ".join(f"{k} {v:.4f}" for k, v in p.final_losses.items() if k in ("loss", "rec", "sym"))
            rows.append((p.person, p.status, "" if p.steps is None else str(p.steps),
                         "" if p.wall_seconds is None else f"{p.wall_seconds:.1f}", str(p.attempts), losses,
                         p.adapter or p.error or ""))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows)


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def _init_ray(ray, settings: RosterSettings) -> dict:
    """Start a local Ray, or join `settings.address`; returns what was started (for the summary). Ray failing to
    start or join is a RosterError of one line: what Ray said, and what to try."""
    pythonpath = os.pathsep.join(p for p in (str(_repo_root()), os.environ.get("PYTHONPATH", "")) if p)
    try:
        if settings.address is not None:
            ray.init(address=settings.address, log_to_driver=False)
            return {"mode": "cluster", "address": settings.address}
        cpus = os.cpu_count() or 1
        num_cpus = settings.cpus_per_person * (settings.workers or max(1, int(cpus // settings.cpus_per_person)))
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
        return {"mode": "local", "num_cpus": num_cpus}
    except Exception as e:  # noqa: BLE001 - Ray raises many types (ConnectionError, RuntimeError, its own) here
        raise RosterError(ray_start_help(e, settings.address)) from e


def ray_start_help(error: BaseException, address: str | None) -> str:
    """One line: Ray did not start (what it said), and what to try."""
    said = " ".join(str(error).split())[:300]
    said = f"{type(error).__name__}: {said}" if said else type(error).__name__
    if address is not None:
        return (f"Ray could not join the cluster at --address {address} ({said}); check that it runs (`ray status "
                f"--address {address}`), or leave out --address to start a local Ray")
    return (f"the local Ray did not start ({said}); try fewer --workers or --cpus-per-person, or start Ray yourself "
            f"(`ray start --head`) and pass --address auto")


def train_roster(roster: str | os.PathLike, store: str | os.PathLike, settings: RosterSettings,
                 options: dict[str, Any] | None = None, progress: bool = True,
                 echo: Callable[[str], None] | None = None) -> RosterSummary:
    """Train every person of `roster` on Ray (one task each) and publish their adapters in `store`.

    `options` are `train` options (`train_options(...)`); `settings` say how to run. Uses the Ray of this
    process if `ray.init` was already called (then leaves it running), else starts a local one or joins
    `settings.address` and shuts it down at the end. The summary is also written to <work>/summary.json."""
    from tqdm import tqdm

    from serve.package import people_dir

    settings = settings.validate()
    echo = echo or (lambda msg: None)
    options = {k: (Path(v).resolve() if isinstance(v, Path) else v)  # workers may start in another folder
               for k, v in train_options(**(options or {})).items()}
    people, outcomes = discover_roster(roster)
    store = Path(store).resolve()
    work_root = (Path(settings.work_dir) if settings.work_dir is not None
                 else store / WORK_DIR_NAME / settings.model_name).resolve()
    target_dir = people_dir(store, settings.model_name)
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    tasks = []
    for p in people:
        dest = target_dir / f"{p.name}.safetensors"
        if dest.exists() and not settings.overwrite:
            outcomes.append(PersonOutcome(person=p.name, status="skipped", source=str(p.path), adapter=str(dest),
                                          error="already in the store (overwrite to retrain)"))
            continue
        tasks.append(PersonTask(person=p.name, source=p.path.resolve(), kind=p.kind, work=work_root / p.name,
                                store_file=dest, train_options=options,
                                preprocess_backend=settings.preprocess_backend,
                                insightface_models=(Path(settings.insightface_models).resolve()
                                                    if settings.insightface_models is not None else None),
                                threads=settings.threads(),
                                run_id=run_id))
    t0 = time.perf_counter()
    ray_info: dict = {"mode": "none (nothing to train)"}
    if tasks:
        ray = require_ray()
        started = not ray.is_initialized()
        ray_info = _init_ray(ray, settings) if started else {"mode": "existing"}
        ray_info.update(start_seconds=round(time.perf_counter() - t0, 3), cpus_per_person=settings.cpus_per_person,
                        gpus_per_person=settings.gpus_per_person, max_retries=settings.max_retries,
                        ray_version=ray.__version__)
        echo(f"{len(tasks)} people to train on Ray ({ray_info['mode']}), {len(outcomes)} skipped or invalid; "
             f"work folders in {work_root}")
        try:
            outcomes += _run_tasks(ray, tasks, settings, progress, tqdm)
        finally:
            if started:
                ray.shutdown()
    summary = RosterSummary(roster=str(Path(roster).resolve()), store=str(store), model_name=settings.model_name,
                            work_dir=str(work_root), people=sorted(outcomes, key=lambda o: o.person),
                            wall_seconds=time.perf_counter() - t0, ray=ray_info, train_options=options)
    write_text(work_root / SUMMARY_FILE, json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary


def _run_tasks(ray, tasks: list[PersonTask], settings: RosterSettings, progress: bool, tqdm) -> list[PersonOutcome]:
    """Submit one task per person, collect outcomes as they finish, a progress bar over people."""
    remote = ray.remote(run_person).options(num_cpus=settings.cpus_per_person, num_gpus=settings.gpus_per_person,
                                           max_retries=settings.max_retries, retry_exceptions=False)
    pending = {remote.remote(t): t for t in tasks}
    outcomes = []
    bar = tqdm(total=len(tasks), desc="people", unit="person", disable=not progress, file=sys.stderr)
    counts = {"done": 0, "failed": 0}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            task = pending.pop(ready[0])
            try:
                outcome = ray.get(ready[0])
            except Exception as e:  # noqa: BLE001 - the worker died more often than max_retries allows
                outcome = PersonOutcome(person=task.person, status="failed", source=str(task.source),
                                        error=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}",
                                        attempts=settings.max_retries + 1, work_dir=str(task.work),
                                        log=str(task.work / LOG_FILE))
            outcomes.append(outcome)
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
            bar.set_postfix(last=f"{outcome.person} {outcome.status}", **counts, refresh=False)
            bar.update(1)
    finally:
        bar.close()
    return outcomes
