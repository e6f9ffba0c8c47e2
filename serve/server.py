"""Start and stop a TorchServe server for a model store, with a generated config.properties and safe defaults.

Safe defaults: every listener (inference, management, metrics, gRPC inference and management) on 127.0.0.1 unless
the operator passes another host; TorchServe's token authorization left on (the key file is
`<run_dir>/key_file.json`, requests carry `Authorization: Bearer <inference key>`); the model-management API off
unless asked for, and when on, TorchServe's management listener is a private unix socket behind
serve.model_api_guard, which forwards only an allow-list of management calls in canonical spelling and lets only
archives inside the model store be registered, whatever the URL form (docs/SECURITY.md); `allowed_urls` limited
to archives in the local model store (no remote model URLs); `install_py_dep_per_model=false`;
environment-variable overrides of the config off.

Metrics: `metrics_mode=prometheus`, so the metrics listener's `/metrics` serves TorchServe's own metrics and the
handler's custom counters (serve/metrics.py: requests by op and status, tri-plane cache hits and misses, per-stage
milliseconds, budget refusals), declared in `<run_dir>/metrics.yaml` (TorchServe's default metrics configuration
plus ours), which `metrics_config` names.

The Java frontend is started directly (the same command `torchserve --start` builds) rather than through the
`torchserve` launcher, because the launcher keeps one global pid file in /tmp and refuses a second server on the
machine. Here each server has a run folder: `config.properties`, `torchserve.pid`, `server.json`, `key_file.json`,
`logs/` and the frontend's temp folder (worker sockets, extracted archives). `stop_server(run_dir)` stops exactly
the process recorded there, after checking that it is that server.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

from formats.atomic import write_text
from launch.allocator import allocator_env
from launch.threads import thread_env
from formats.names import NAME_CHARS, is_valid_name
from serve.worker_env import BACKEND_ENV, PEOPLE_ROOT_ENV, PRECISION_ENV

DEFAULT_PORTS = {"inference": 8080, "management": 8081, "metrics": 8082, "grpc_inference": 7070,
                 "grpc_management": 7071, "worker": 9000, "distribution": 29500}
"""TorchServe's default ports; `port_offset` shifts them all."""

PID_FILE = "torchserve.pid"
GUARD_PID_FILE = "model_api_guard.pid"
GUARD_MODULE = "serve.model_api_guard"
MANAGEMENT_SOCKET = "management.sock"
REPO_ROOT = Path(__file__).resolve().parents[1]
STATE_FILE = "server.json"
KEY_FILE = "key_file.json"
METRICS_FILE = "metrics.yaml"
MAIN_CLASS = "org.pytorch.serve.ModelServer"


class ServerError(RuntimeError):
    """The server could not be started, found or stopped; the message says why and where the logs are."""


@dataclass
class ServeConfig:
    """How to run TorchServe over a model store."""

    model_store: Path = Path("model_store")
    """Folder with `<name>.mar` archives and `people/<name>/` adapter folders."""
    models: Union[str, list] = "all"
    """Model names to load, or "all" (every `<name>.mar` / archived folder in the store)."""
    host: str = "127.0.0.1"
    """Address every listener binds to. Anything but loopback exposes the server: use with a firewall/proxy."""
    port_offset: int = 0
    """Added to every default port (two servers on one machine: offset one of them)."""
    ports: Optional[dict] = None
    """Explicit ports by role (keys of DEFAULT_PORTS); missing roles use default + offset."""
    enable_model_api: bool = False
    """Allow registering/deleting models over the management API (only archives in the local store)."""
    run_dir: Path = Path("logs/torchserve")
    """Folder for config.properties, pid file, key file, logs and temp files."""
    token_expiration_min: int = 60
    """Lifetime of the inference/management keys (renew with the management API's /token endpoint)."""
    job_queue_size: int = 100
    """Requests queued per model before TorchServe answers 503."""
    max_request_size: int = 6_553_500
    """Largest request body in bytes."""
    max_response_size: int = 64 << 20
    """Largest response body in bytes (long interpolation strips)."""
    grpc_max_connection_age_s: float = 300.0
    """gRPC connections (inference and management) are closed after this age, then given a grace of a quarter of
    it to finish: TorchServe's only connection timeout (its HTTP listeners have no idle timeout; see
    docs/SECURITY.md)."""
    backend: Optional[str] = None
    """Every worker's backend instead of the one its archive was packaged with (None: the packaged one)."""
    precision: Optional[str] = None
    """Every worker's precision instead of the packaged one (None: the packaged one)."""
    java: str = "java"
    """Java executable (JAVA_HOME/bin/java when JAVA_HOME is set)."""
    python: str = sys.executable
    """Python executable of the workers (needs numpy, onnxruntime, pillow, torchserve)."""

    def resolved_ports(self) -> dict:
        ports = {k: v + self.port_offset for k, v in DEFAULT_PORTS.items()}
        ports.update(self.ports or {})
        unknown = sorted(set(ports) - set(DEFAULT_PORTS))
        if unknown:
            raise ValueError(f"ports: unknown role(s) {', '.join(unknown)}; known: {', '.join(DEFAULT_PORTS)}")
        for role, p in ports.items():
            if not 1 <= int(p) <= 65535:
                raise ValueError(f"port for {role} = {p} is outside 1..65535 (port_offset={self.port_offset})")
        return {k: int(v) for k, v in ports.items()}


@dataclass
class ServerInfo:
    """A started server: where it listens and where its files are."""

    pid: int
    run_dir: Path
    host: str
    ports: dict
    models: list
    model_store: Path
    tmp_dir: Path
    started_at: float = field(default_factory=time.time)

    @property
    def inference_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.ports['inference']}"

    @property
    def management_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.ports['management']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.ports['metrics']}"

    @property
    def key_file(self) -> Path:
        return self.run_dir / KEY_FILE

    def token(self, kind: str = "inference") -> str:
        return read_token(self.run_dir, kind)

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(run_dir=str(self.run_dir), model_store=str(self.model_store), tmp_dir=str(self.tmp_dir))
        return d

    @classmethod
    def from_json(cls, d: dict) -> "ServerInfo":
        d = dict(d)
        d.update(run_dir=Path(d["run_dir"]), model_store=Path(d["model_store"]), tmp_dir=Path(d["tmp_dir"]))
        return cls(**d)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _prop_value(value: str) -> str:
    """Escape a value for a Java .properties file."""
    return str(value).replace("\\", "\\\\").replace("\n", "\\n")


def ts_home() -> Path:
    """The site-packages folder holding TorchServe's `ts/` (its frontend jar lives in ts/frontend/)."""
    spec = importlib.util.find_spec("ts")
    if spec is None or not spec.origin:
        raise ServerError("TorchServe is not installed (pip install torchserve==0.12.0)")
    home = Path(spec.origin).resolve().parent.parent
    if not (home / "ts" / "frontend" / "model-server.jar").is_file():
        raise ServerError(f"{home / 'ts' / 'frontend'}: TorchServe's model-server.jar is missing")
    return home


def metrics_yaml_text(home: Path) -> str:
    """TorchServe's default metrics configuration (ts/configs/metrics.yaml under `home`) with the handler's
    counters declared (serve.metrics), as YAML text."""
    import yaml

    from serve.metrics import metrics_config
    default = home / "ts" / "configs" / "metrics.yaml"
    try:
        parsed = yaml.safe_load(default.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ServerError(f"{default}: cannot read TorchServe's default metrics configuration ({e})") from None
    head = "# Generated by `cli.py serve` at each start: TorchServe's default metrics plus serve/metrics.py's.\n"
    return head + yaml.safe_dump(metrics_config(parsed), sort_keys=False)


def store_models(model_store: Path) -> list:
    """Model names in a store: `<name>.mar` files and archived `<name>/` folders (with MAR-INF/MANIFEST.json).
    A symlink that leads out of the store is not a model of the store (docs/SECURITY.md)."""
    names = set()
    store = Path(model_store).resolve()
    for p in Path(model_store).iterdir():
        if p.resolve().parent != store:
            continue
        if p.is_file() and p.suffix == ".mar" and is_valid_name(p.stem):
            names.add(p.stem)
        elif p.is_dir() and is_valid_name(p.name) and (p / "MAR-INF" / "MANIFEST.json").is_file():
            names.add(p.name)
    return sorted(names)


def _model_url(model_store: Path, name: str) -> str:
    return f"{name}.mar" if (model_store / f"{name}.mar").is_file() else name


def config_properties(cfg: ServeConfig, models: list, model_store: Path,
                      management_socket: Optional[Path] = None, metrics_yaml: Optional[Path] = None) -> str:
    """The generated config.properties text. With `management_socket` (the model API on), TorchServe's management
    API listens on that unix socket only, behind serve.model_api_guard on the management address. `metrics_yaml`:
    the metrics configuration declaring the handler's counters (None: TorchServe's default, without them)."""
    host, ports = cfg.host, cfg.resolved_ports()
    http = _url_host(host)
    load = ",".join(f"{m}={_model_url(model_store, m)}" for m in models)
    # allowed_urls is a comma-separated list, so the regex has no {m,n} quantifier
    store_url = "file://" + str(model_store).rstrip("/") + "/" + NAME_CHARS + "+([.]mar)?"
    lines = {
        "inference_address": f"http://{http}:{ports['inference']}",
        "management_address": (f"unix:{management_socket}" if management_socket is not None
                               else f"http://{http}:{ports['management']}"),
        "metrics_address": f"http://{http}:{ports['metrics']}",
        "grpc_inference_address": host,
        "grpc_inference_port": ports["grpc_inference"],
        "grpc_management_address": host,
        "grpc_management_port": ports["grpc_management"],
        "initial_worker_port": ports["worker"],
        "initial_distribution_port": ports["distribution"],
        "model_store": str(model_store),
        "load_models": load,
        "enable_model_api": str(bool(cfg.enable_model_api)).lower(),
        "disable_token_authorization": "false",
        "token_expiration_min": int(cfg.token_expiration_min),
        "allowed_urls": store_url,
        "install_py_dep_per_model": "false",
        "enable_envvars_config": "false",
        "default_workers_per_model": 1,
        "job_queue_size": int(cfg.job_queue_size),
        "max_request_size": int(cfg.max_request_size),
        "max_response_size": int(cfg.max_response_size),
        "metrics_mode": "prometheus",
    }
    if metrics_yaml is not None:
        lines["metrics_config"] = str(metrics_yaml)
    age_ms = int(cfg.grpc_max_connection_age_s * 1000)
    if age_ms <= 0:
        raise ValueError(f"grpc_max_connection_age_s={cfg.grpc_max_connection_age_s}: must be positive")
    for api in ("inference", "management"):
        lines[f"grpc_{api}_max_connection_age_ms"] = age_ms
        lines[f"grpc_{api}_max_connection_age_grace_ms"] = age_ms // 4
    if management_socket is not None:
        lines["use_native_io"] = "true"  # TorchServe serves unix sockets only through netty's native transport
    head = "# Generated by `cli.py serve` at each start; edit the command's options, not this file.\n"
    return head + "".join(f"{k}={_prop_value(v)}\n" for k, v in lines.items())


def _alive(pid: int) -> bool:
    import psutil
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _read_pid(run_dir: Path) -> Optional[int]:
    try:
        return int((run_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def _log_tail(run_dir: Path, n: int = 3000) -> str:
    parts = []
    for name in ("console.log", "model_log.log", "ts_log.log"):
        p = run_dir / "logs" / name
        if p.is_file():
            parts.append(f"--- {p} (tail) ---\n" + p.read_text(errors="replace")[-n:])
    return "\n".join(parts)


def start_server(cfg: ServeConfig, wait: bool = True, timeout_s: float = 180.0) -> ServerInfo:
    """Write the config, start the frontend in its own session, record its pid; wait until every model answers.

    Raises ServerError (with the log tails) when the server exits or is not ready within `timeout_s`; the
    process is stopped in that case.
    """
    from runtime.backend import BACKENDS, PRECISIONS
    for what, value, allowed in (("backend", cfg.backend, BACKENDS), ("precision", cfg.precision, PRECISIONS)):
        if value is not None and value not in allowed:
            raise ServerError(f"{what}={value!r}: expected one of {', '.join(allowed)}")
    model_store = Path(cfg.model_store).resolve()
    if not model_store.is_dir():
        raise ServerError(f"{model_store}: no such model store")
    available = store_models(model_store)
    if cfg.models == "all" or cfg.models == ["all"]:
        models = available
    else:
        models = [cfg.models] if isinstance(cfg.models, str) else list(cfg.models)
        for m in models:
            if not is_valid_name(m) or m not in available:
                raise ServerError(f"model {m!r} is not in {model_store} (available: {', '.join(available) or 'none'})")
    if not models:
        raise ServerError(f"{model_store}: no <name>.mar archives to serve (package one with `cli.py package`)")
    run_dir = Path(cfg.run_dir).resolve()
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    pid = _read_pid(run_dir)
    if pid is not None and _alive(pid):
        raise ServerError(f"a server from {run_dir} is already running (pid {pid}); stop it with "
                          f"`cli.py serve --stop --run-dir {run_dir}`")
    ports = cfg.resolved_ports()
    tmp_dir = run_dir / "tmp"
    if len(str(tmp_dir)) + len("/.ts.sock.65535") >= 100:  # unix socket paths are limited to ~107 bytes
        tmp_dir = Path(tempfile.mkdtemp(prefix="my3dgen-ts-"))
    tmp_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / KEY_FILE).unlink(missing_ok=True)
    config = run_dir / "config.properties"
    management_socket = None
    if cfg.enable_model_api:
        private = tmp_dir / "management"
        private.mkdir(mode=0o700, exist_ok=True)
        os.chmod(private, 0o700)  # only this user reaches TorchServe's unguarded management socket
        management_socket = private / MANAGEMENT_SOCKET
        management_socket.unlink(missing_ok=True)
    home = ts_home()
    metrics_yaml = run_dir / METRICS_FILE
    write_text(metrics_yaml, metrics_yaml_text(home))
    write_text(config, config_properties(cfg, models, model_store, management_socket, metrics_yaml))
    java = os.path.join(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") and \
        cfg.java == "java" else cfg.java
    if shutil.which(java) is None:
        raise ServerError(f"{java}: Java not found (TorchServe needs Java 11+; set JAVA_HOME)")
    cmd = [java, f"-Dmodel_server_home={home}", f"-Djava.io.tmpdir={tmp_dir}", "-cp",
           f".:{home / 'ts' / 'frontend'}/*", MAIN_CLASS, "--python", cfg.python, "-f", str(config),
           "-s", str(model_store), "-ncs"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TS_")}  # TS_CONFIG_FILE would replace ours
    env.update(LOG_LOCATION=str(run_dir / "logs"), METRICS_LOCATION=str(run_dir / "logs"),
               **{PEOPLE_ROOT_ENV: str(model_store / "people")})
    for var in (BACKEND_ENV, PRECISION_ENV):
        env.pop(var, None)  # only this call's choice reaches the workers
    env.update({var: value for var, value in ((BACKEND_ENV, cfg.backend), (PRECISION_ENV, cfg.precision)) if value})
    env.update(allocator_env(env))  # the Python workers inherit jemalloc/tcmalloc (launch/allocator.py)
    env.update(thread_env(env))  # and OpenMP's passive wait policy (launch/threads.py)
    with open(run_dir / "logs" / "console.log", "ab") as log:
        proc = subprocess.Popen(cmd, cwd=run_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    info = ServerInfo(pid=proc.pid, run_dir=run_dir, host=cfg.host, ports=ports, models=models,
                      model_store=model_store, tmp_dir=tmp_dir)
    write_text(run_dir / PID_FILE, f"{proc.pid}\n")
    if management_socket is not None:
        _start_guard(run_dir, cfg.host, ports["management"], management_socket, model_store, env)
    write_text(run_dir / STATE_FILE, json.dumps(info.to_json(), indent=2))
    if wait:
        try:
            wait_ready(info, timeout_s)
        except BaseException:
            stop_server(run_dir)
            raise
    return info


def _start_guard(run_dir: Path, host: str, port: int, socket_path: Path, model_store: Path, env: dict) -> int:
    """Start serve.model_api_guard on the management address in front of TorchServe's management socket."""
    env = {**env, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    with open(run_dir / "logs" / "model_api_guard.log", "ab") as log:
        guard = subprocess.Popen([sys.executable, "-m", GUARD_MODULE, host, str(port), str(socket_path),
                                  str(model_store)], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
    write_text(run_dir / GUARD_PID_FILE, f"{guard.pid}\n")
    return guard.pid


def _stop_guard(run_dir: Path) -> None:
    """Stop the model-API guard recorded in `run_dir` (only a process that is that guard)."""
    import psutil
    path = run_dir / GUARD_PID_FILE
    try:
        proc = psutil.Process(int(path.read_text().strip()))
        if GUARD_MODULE in proc.cmdline():
            proc.terminate()
            proc.wait(timeout=10)
    except (OSError, ValueError, psutil.Error):
        pass
    path.unlink(missing_ok=True)


def read_token(run_dir: Path, kind: str = "inference") -> str:
    """The current key of `kind` (inference | management) from the server's key file."""
    path = Path(run_dir) / KEY_FILE
    try:
        return json.loads(path.read_text())[kind]["key"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ServerError(f"{path}: no {kind} key ({type(e).__name__}: {e})") from None


def http_request(url: str, body: Optional[Union[dict, bytes, str]] = None, token: Optional[str] = None,
                 timeout: float = 60.0, method: Optional[str] = None,
                 content_type: str = "application/json") -> tuple:
    """One HTTP call -> (status, headers dict with lower-case names, body bytes); 4xx/5xx are returned."""
    data = None
    if body is not None:
        data = json.dumps(body).encode() if isinstance(body, dict) else (
            body.encode() if isinstance(body, str) else body)
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"))
    if data is not None:
        req.add_header("Content-Type", content_type)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def wait_ready(info: ServerInfo, timeout_s: float = 180.0) -> None:
    """Until /ping is healthy and every model answers `{"op": "people"}` with 200."""
    deadline = time.monotonic() + timeout_s
    pending = list(info.models)
    last = "no answer yet"
    while time.monotonic() < deadline:
        if not _alive(info.pid):
            raise ServerError(f"TorchServe (pid {info.pid}) exited during start-up\n{_log_tail(info.run_dir)}")
        try:
            token = info.token("inference")
            status, _, body = http_request(f"{info.inference_url}/ping", token=token, timeout=5)
            if status == 200:
                for m in list(pending):
                    status, _, body = http_request(f"{info.inference_url}/predictions/{m}", {"op": "people"},
                                                   token=token, timeout=30)
                    if status == 200:
                        pending.remove(m)
                    else:
                        last = f"{m}: {status} {body[:200]!r}"
                if not pending:
                    return
            else:
                last = f"/ping: {status} {body[:200]!r}"
        except (ServerError, OSError) as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.25)
    raise ServerError(f"TorchServe (pid {info.pid}) not ready after {timeout_s:.0f} s ({last})\n"
                      f"{_log_tail(info.run_dir)}")


def server_info(run_dir: Path) -> Optional[ServerInfo]:
    """The running server recorded in `run_dir`, or None."""
    run_dir = Path(run_dir).resolve()
    pid = _read_pid(run_dir)
    if pid is None or not _alive(pid):
        return None
    try:
        return ServerInfo.from_json(json.loads((run_dir / STATE_FILE).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stop_server(run_dir: Path, timeout_s: float = 60.0) -> bool:
    """Stop the server recorded in `run_dir` (SIGTERM, then SIGKILL after `timeout_s`) and its workers; wait
    until they are gone. Returns False when no server was running. Refuses a pid that is not this server."""
    import psutil
    run_dir = Path(run_dir).resolve()
    pid = _read_pid(run_dir)
    if pid is None:
        return False
    try:
        proc = psutil.Process(pid)
        cmdline = proc.cmdline()
    except psutil.Error:
        (run_dir / PID_FILE).unlink(missing_ok=True)
        _stop_guard(run_dir)
        return False
    config = str(run_dir / "config.properties")
    if MAIN_CLASS not in cmdline or config not in cmdline:
        raise ServerError(f"{run_dir / PID_FILE}: pid {pid} is not the TorchServe started from {run_dir} "
                          f"({' '.join(cmdline)[:200]}); not stopping it")
    try:
        children = proc.children(recursive=True)
    except psutil.Error:
        children = []
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except psutil.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    gone, alive = psutil.wait_procs(children, timeout=10)
    for c in alive:
        c.kill()
    psutil.wait_procs(alive, timeout=10)
    (run_dir / PID_FILE).unlink(missing_ok=True)
    (run_dir / KEY_FILE).unlink(missing_ok=True)
    _stop_guard(run_dir)
    try:
        state = json.loads((run_dir / STATE_FILE).read_text())
        tmp = Path(state.get("tmp_dir", ""))
        if tmp.name.startswith("my3dgen-ts-") and tmp.parent == Path(tempfile.gettempdir()):
            shutil.rmtree(tmp, ignore_errors=True)
    except (OSError, ValueError):
        pass
    return True


def curl_example(info: ServerInfo, model: str) -> str:
    """A copy-pasteable curl call rendering a frontal view with the inference token."""
    key = f"$(python3 -c 'import json; print(json.load(open(\"{info.key_file}\"))[\"inference\"][\"key\"])')"
    return (f"curl -sS -H \"Authorization: Bearer {key}\" -H 'Content-Type: application/json' \\\n"
            f"  -d '{{\"op\": \"people\"}}' {info.inference_url}/predictions/{model}\n"
            f"curl -sS -H \"Authorization: Bearer {key}\" -H 'Content-Type: application/json' \\\n"
            f"  -d '{{\"op\": \"novel_view\", \"person\": \"PERSON\", \"anchor\": 0, \"yaw\": 0.3}}' "
            f"-o view.png {info.inference_url}/predictions/{model}")
