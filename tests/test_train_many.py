"""`train-many` (train/roster.py, train/many_command.py): a roster on a local Ray, failures, a killed worker.

The Ray tests start Ray in a child process inside a private network namespace (`unshare -n`, loopback brought
up with `ip`): Ray binds its servers to every interface, and in the namespace there is only loopback
(../shared/docs/environment.md). They skip with the reason when Ray is not installed or the namespace cannot be
made. The same file is the child's driver script (`python tests/test_train_many.py DRIVER_ARGS`), so the test
hook that kills a worker lives here, not in the product: it is installed in Ray's workers through
`worker_process_setup_hook` and SIGKILLs the worker right after alice's checkpoint at step KILL_AFTER_STEP is
written, on the first attempt only. Ray retries the task, which must resume from that checkpoint and end with
the adapter an uninterrupted `train` writes (bit-exact: same code, same seeds, one torch thread each).
"""
from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PEOPLE_VIEWS = {"alice": range(0, 4), "bob": range(4, 8)}
"""Two tiny people: disjoint subsets of the bundled sample views (4 photos each: one inversion chunk)."""
TRAIN_ARGS = dict(preset="tiny", iterations=4, inversion_steps=2, batch=2, checkpoint_every=1, preview=False)
KILLED, KILL_AFTER_STEP = "alice", 2
RAY_TIMEOUT_S = 420


# ------------------------------------------------------------------------------------------ roster helpers
def make_roster(root: Path) -> Path:
    """alice and bob (preprocessed), broken (a photo folder whose three 'photos' are not images)."""
    from bench.train_many import make_sample_person
    for name, views in PEOPLE_VIEWS.items():
        make_sample_person(root / name, views)
    (root / "broken").mkdir()
    for i in range(3):
        (root / "broken" / f"photo_{i}.jpg").write_bytes(b"this is not a jpeg\n" * 4)
    return root


# ------------------------------------------------------------------------------------------ fast tests
def test_train_many_offers_every_train_option():
    """train-many's options = its own + every option of train but --data/--out/--checkpoint-dir, same defaults."""
    from train.commands import train
    from train.many_command import train_many
    from train.roster import PER_PERSON_TRAIN_OPTIONS, train_option_defaults

    many = inspect.signature(train_many).parameters
    trains = inspect.signature(train, eval_str=True).parameters
    for name, p in trains.items():
        if name in PER_PERSON_TRAIN_OPTIONS:
            assert name not in many or name == "out"  # train-many's --out is the store, not an adapter file
        else:
            assert name in many and many[name].default is p.default and many[name].annotation == p.annotation
    assert {"roster", "out", "address", "gpus_per_person", "cpus_per_person", "max_retries"} <= set(many)
    defaults = train_option_defaults()
    assert set(defaults) == set(trains) - set(PER_PERSON_TRAIN_OPTIONS)
    assert defaults["seed"] == 0 and defaults["sym"] is True and defaults["restart"] is False


def test_train_options_reject_unknown_and_per_person_names():
    from train.roster import RosterError, train_options
    assert train_options(seed=3)["seed"] == 3
    with pytest.raises(RosterError, match="no_such_option: not options of train"):
        train_options(no_such_option=1)
    with pytest.raises(RosterError, match="data: set per person"):
        train_options(data="x")


@pytest.mark.parametrize("field, value, message", [
    ("model_name", "people", "reserved"), ("model_name", "../x", "not valid"), ("cpus_per_person", 0, "must be > 0"),
    ("gpus_per_person", -1, "must be >= 0"), ("max_retries", -1, "must be >= 0"),
    ("preprocess_backend", "opencv", "dlib"),
])
def test_roster_settings_are_checked(field, value, message):
    from train.roster import RosterSettings
    settings = RosterSettings(model_name="tiny")
    setattr(settings, field, value)
    with pytest.raises(ValueError, match=message):
        settings.validate()


def test_discover_roster(tmp_path):
    from train.roster import RosterError, discover_roster
    make_roster(tmp_path / "r")
    (tmp_path / "r" / "bad.name").mkdir()
    (tmp_path / "r" / ".hidden").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("listed as skipped")
    people, invalid = discover_roster(tmp_path / "r")
    assert [(p.name, p.kind) for p in people] == [("alice", "dataset"), ("bob", "dataset"), ("broken", "photos")]
    assert [(o.person, o.status) for o in invalid] == [("bad.name", "failed"), ("notes.txt", "skipped")]
    assert "not a valid person name" in invalid[0].error and "a file, not a person folder" in invalid[1].error
    with pytest.raises(RosterError, match="not a folder"):
        discover_roster(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RosterError, match="no person folders"):
        discover_roster(tmp_path / "empty")


def test_run_person_returns_failures_with_their_reason(tmp_path):
    """A person's task (run here in-process) reports bad photos and bad options instead of raising."""
    import torch

    from train.roster import PersonTask, discover_roster, run_person, train_options
    people, _ = discover_roster(make_roster(tmp_path / "r"))
    by_name = {p.name: p for p in people}
    threads = torch.get_num_threads()

    def task(name, **options):
        p = by_name[name]
        return PersonTask(person=name, source=p.path, kind=p.kind, work=tmp_path / "work" / name,
                          store_file=tmp_path / "store" / f"{name}.safetensors",
                          train_options=train_options(**{**TRAIN_ARGS, **options}), preprocess_backend="dlib",
                          insightface_models=None, threads=1, run_id="test")
    broken = run_person(task("broken"))
    assert broken.status == "failed" and broken.attempts == 1 and broken.resumed_from is None
    assert broken.error.startswith(f"RosterError: {by_name['broken'].path}: no usable photo (3 skipped")
    assert "FAILED: RosterError" in (tmp_path / "work" / "broken" / "train.log").read_text()
    bad = run_person(task("alice", mode="sideways"))
    assert bad.status == "failed" and "sideways" in bad.error, bad.error
    assert not (tmp_path / "store").exists()                       # nothing reached the store
    assert torch.get_num_threads() == threads                        # the caller's thread count is restored


def test_without_ray_the_command_says_how_to_install_it(tmp_path, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from train.many_command import train_many
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    app = typer.Typer()
    app.command()(train_many)
    result = CliRunner().invoke(app, [str(tmp_path), "--out", str(tmp_path / "store"), "--preset", "tiny"])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "pip install" in lines[0] and "ray" in lines[0], result.output


def _train_many_cli(*args: str) -> tuple[int, list[str], str]:
    """`cli.py train-many ARGS` in this process: (exit code, non-empty output lines, output)."""
    from typer.testing import CliRunner

    import cli
    result = CliRunner().invoke(cli.app, ["train-many", *map(str, args)])
    return result.exit_code, [ln for ln in result.output.splitlines() if ln.strip()], result.output


def test_a_ray_that_does_not_start_is_one_error_line_saying_what_to_try(tmp_path, monkeypatch):
    """The attack run's case: Ray's own traceback when the local Ray cannot start. Simulated: ray.init raises."""
    ray = pytest.importorskip("ray")
    from bench.train_many import make_sample_person

    def does_not_start(*args, **kwargs):
        raise RuntimeError("Failed to start the GCS server.\nSee /tmp/ray/session_latest/logs/gcs_server.err")
    monkeypatch.setattr(ray, "init", does_not_start)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    roster = make_sample_person(tmp_path / "roster" / "alice", range(2)).parent
    code, lines, output = _train_many_cli(roster, "--out", tmp_path / "store", "--preset", "tiny")
    assert code == 2 and len(lines) == 1 and "Traceback" not in output, output
    for words in ("error: the local Ray did not start (RuntimeError: Failed to start the GCS server.", "--workers",
                  "`ray start --head`", "--address auto"):
        assert words in lines[0], lines[0]
    code, lines, _ = _train_many_cli(roster, "--out", tmp_path / "store", "--preset", "tiny", "--address",
                                     "10.1.2.3:6379")
    assert code == 2 and len(lines) == 1 and "could not join the cluster at --address 10.1.2.3:6379" in lines[0]
    assert "ray status --address 10.1.2.3:6379" in lines[0], lines[0]


def test_roster_entries_that_are_not_folders_are_reported_as_skipped(tmp_path):
    """A plain file, a dangling symlink and a symlink to itself were passed over in silence; now each is a
    'skipped' row saying why, in the printed table and in both summary files. alice is already in the store, so
    nothing is trained (no Ray started)."""
    pytest.importorskip("ray")
    from bench.train_many import make_sample_person
    roster, store = tmp_path / "roster", tmp_path / "store"
    make_sample_person(roster / "alice", range(2))
    (roster / "notes.txt").write_text("not a person")
    (roster / "gone").symlink_to(tmp_path / "nowhere")
    (roster / "loop").symlink_to(roster / "loop")
    (store / "people" / "tiny").mkdir(parents=True)
    (store / "people" / "tiny" / "alice.safetensors").write_bytes(b"already trained")
    code, lines, output = _train_many_cli(roster, "--out", store, "--preset", "tiny", "--summary",
                                          tmp_path / "summary.json")
    assert code == 0, output
    why = {"gone": "a dangling symlink", "loop": "a symlink loop", "notes.txt": "a file, not a person folder"}
    rows = {ln.split()[0]: ln for ln in lines[1:-1]}
    assert sorted(rows) == ["alice", "gone", "loop", "notes.txt"], output
    for name, reason in why.items():
        assert rows[name].split()[1] == "skipped" and reason in rows[name], rows[name]
    assert lines[-1].startswith("0 done, 0 failed, 4 skipped"), lines[-1]
    for summary_file in (tmp_path / "summary.json", store / ".train-many" / "tiny" / "summary.json"):
        summary = json.loads(summary_file.read_text())
        people = {p["person"]: p for p in summary["people"]}
        assert summary["counts"] == {"done": 0, "failed": 0, "skipped": 4}, summary_file
        for name, reason in why.items():
            assert people[name]["status"] == "skipped" and reason in people[name]["error"], people[name]
            assert people[name]["adapter"] is None and people[name]["source"] == str(roster / name)
    (roster / "alice").rename(tmp_path / "alice")
    code, lines, _ = _train_many_cli(roster, "--out", store, "--preset", "tiny")
    assert code == 2 and len(lines) == 1 and "no person folders" in lines[0] and "a symlink loop" in lines[0]


# ------------------------------------------------------------------------------------------ the Ray run
def _ray_skip_reason() -> str | None:
    try:
        import ray  # noqa: F401
    except ImportError:
        return "ray is not installed (pip install -c constraints.txt 'ray==2.60.*')"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip not found: cannot isolate Ray in a private network namespace"
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare -n not permitted here ({probe.stderr.strip()[:200]}): Ray must not listen on the network"
    return None


def _kill_hook_factory(person: str, step: int):
    """A Ray worker setup hook: SIGKILL the worker after `person`'s checkpoint at `step`, first attempt only."""
    def hook():
        import os
        import signal

        from train.trainer import Trainer
        original = Trainer.save

        def save_then_die(self):
            path = original(self)
            marker = self.checkpoint_dir.parent / "killed-by-test"
            if self.checkpoint_dir.parent.name == person and self.step == step and not marker.exists():
                marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
            return path
        Trainer.save = save_then_die
    return hook


def _driver(roster: str, store: str) -> None:
    """Child process (inside `unshare -n`): local Ray with 2 CPUs and the kill hook, then train_roster."""
    import ray

    from train.roster import RosterSettings, train_roster
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)},
                          "worker_process_setup_hook": _kill_hook_factory(KILLED, KILL_AFTER_STEP)})
    summary = train_roster(roster, store, RosterSettings(model_name="tiny", max_retries=2), TRAIN_ARGS,
                           progress=False)
    ray.shutdown()
    print("SUMMARY", json.dumps(summary.to_dict()))


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory):
    reason = _ray_skip_reason()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("train_many")
    roster, store = make_roster(root / "roster"), root / "store"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = (f"ip link set lo up && exec {sys.executable} {Path(__file__).resolve()} --driver {roster} {store}")
    proc = subprocess.run(["unshare", "-n", "sh", "-c", cmd], capture_output=True, text=True, env=env,
                          timeout=RAY_TIMEOUT_S, cwd=REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("SUMMARY ")]
    assert proc.returncode == 0 and lines, f"driver failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n" \
                                           f"{proc.stderr[-3000:]}"
    summary = json.loads(lines[-1][len("SUMMARY "):])
    return {"roster": roster, "store": store, "summary": summary,
            "people": {p["person"]: p for p in summary["people"]}}


@pytest.fixture(scope="module")
def references(ray_run, tmp_path_factory):
    """What `train` itself writes for alice and bob with the same options (one torch thread, as the tasks)."""
    import torch

    from train.roster import train_entry, train_options
    out = tmp_path_factory.mktemp("reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name in PEOPLE_VIEWS:
            train_entry()(data=ray_run["roster"] / name, out=out / f"{name}.safetensors",
                          checkpoint_dir=out / f"{name}_train", **train_options(**TRAIN_ARGS))
    finally:
        torch.set_num_threads(threads)
    return {name: out / f"{name}.safetensors" for name in PEOPLE_VIEWS}


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(path))


def _assert_same_adapter(got: Path, want: Path) -> None:
    from formats.adapter_file import read_adapter_meta
    a, b = _tensors(got), _tensors(want)
    assert a.keys() == b.keys()
    different = [k for k in a if not bool((a[k] == b[k]).all())]
    assert not different, f"{got} differs from {want} in {different[:5]}"
    assert read_adapter_meta(got)["base_fingerprint"] == read_adapter_meta(want)["base_fingerprint"]


@pytest.mark.slow
def test_roster_matches_train_and_reports_the_broken_person(ray_run, references):
    from serve.package import list_people, people_dir
    people, store = ray_run["people"], ray_run["store"]
    assert [p for p in people] == ["alice", "bob", "broken"]
    assert ray_run["summary"]["counts"] == {"done": 2, "failed": 1, "skipped": 0}
    for name in PEOPLE_VIEWS:
        row = people[name]
        assert row["status"] == "done" and row["steps"] == TRAIN_ARGS["iterations"]
        assert row["adapter"] == str(people_dir(store, "tiny") / f"{name}.safetensors")
        assert set(row["final_losses"]) >= {"loss", "rec"} and row["wall_seconds"] > 0
        _assert_same_adapter(Path(row["adapter"]), references[name])
    assert list_people(store, "tiny") == ["alice", "bob"]
    assert sorted(p.name for p in people_dir(store, "tiny").iterdir()) == ["alice.safetensors", "bob.safetensors"]
    broken = people["broken"]
    assert broken["status"] == "failed" and broken["adapter"] is None and broken["attempts"] == 1
    assert "no usable photo" in broken["error"] and "photo_0.jpg: unreadable" in broken["error"]
    assert str(ray_run["roster"] / "broken") in broken["error"]
    summary_file = store / ".train-many" / "tiny" / "summary.json"
    assert json.loads(summary_file.read_text())["people"] == ray_run["summary"]["people"]


@pytest.mark.slow
def test_killed_worker_is_retried_and_resumes_from_its_checkpoint(ray_run, references):
    work = ray_run["store"] / ".train-many" / "tiny" / KILLED
    assert (work / "killed-by-test").is_file(), "the test hook never killed the worker"
    row = ray_run["people"][KILLED]
    assert row["status"] == "done" and row["attempts"] == 2 and row["resumed_from"] == KILL_AFTER_STEP
    attempts = [json.loads(ln) for ln in (work / "attempts.jsonl").read_text().splitlines()]
    assert [a["resume_step"] for a in attempts] == [None, KILL_AFTER_STEP]
    assert attempts[0]["pid"] != attempts[1]["pid"]
    assert int((work / "killed-by-test").read_text()) == attempts[0]["pid"]
    second = (work / "train.log").read_text().split("=== alice: attempt 2 ")[1]
    assert "resuming from" in second and f"at step {KILL_AFTER_STEP}" in second  # not retrained from scratch
    steps = [json.loads(ln)["step"] for ln in (work / "train" / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, TRAIN_ARGS["iterations"] + 1))
    assert ray_run["people"]["bob"]["attempts"] == 1
    _assert_same_adapter(Path(row["adapter"]), references[KILLED])


if __name__ == "__main__" and sys.argv[1:2] == ["--driver"]:
    sys.path.insert(0, str(REPO))
    _driver(sys.argv[2], sys.argv[3])
