"""serve.model_api_guard's server against a recording fake TorchServe and a real one: it forwards only what it
approved, rewrites registrations to the archive in the store, and no spelling of the seeded corpus gets a
registration past it that a real TorchServe 0.12 would make.

The in-process checks of the guard's decision, and the routing model they use (tests/helpers/management_api.py),
are in tests/test_model_api_guard.py; here the same decision is held to over sockets: the guard's own request
parsing (http.server), the headers it forwards, and what TorchServe really routes.
"""
from __future__ import annotations

import http.client
import json
import socket
import socketserver
import threading
import urllib.parse
from dataclasses import dataclass

import pytest

from serve import model_api_guard
from serve.model_api_guard import Refused
from tests.helpers.management_api import fill, make_store, request_text, seeded_corpus, torchserve_route, wire
from tests.helpers.management_api import paths  # noqa: F401 - fixture

# ------------------------------------------------------------------------ the guard server's request handling


@pytest.fixture()
def guard_with_recorder(paths, tmp_path):
    """A guard server in front of a recording fake TorchServe on a unix socket -> (port, seen requests)."""
    from http.server import BaseHTTPRequestHandler
    seen = []

    class Upstream(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _record(self):
            seen.append((self.command, self.path, dict(self.headers.items())))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        do_GET = do_POST = do_PUT = do_DELETE = do_OPTIONS = _record

    class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

        def get_request(self):
            request, _ = super().get_request()
            return request, ("unix", 0)
    sock = tmp_path / "m.sock"
    upstream = UnixServer(str(sock), Upstream)
    guard = model_api_guard.serve("127.0.0.1", 0, str(sock), paths["store"])
    for server in (upstream, guard):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield guard.server_address[1], seen
    finally:
        guard.shutdown()
        upstream.shutdown()


def raw_request(connect, method: str, target: str, headers: dict, body: bytes = b"") -> tuple:
    """Send one request exactly as spelled (no client-side normalisation) -> (status, body bytes); status 0 when
    the connection closed without an answer. The answer is read up to its Content-Length (TorchServe keeps a
    connection open after a 200 whatever `Connection` says)."""
    head = f"{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with connect() as s:
        s.settimeout(60)
        s.sendall(wire(head).encode("latin-1") + b"\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data and (chunk := s.recv(65536)):
            data += chunk
        head_bytes, _, rest = data.partition(b"\r\n\r\n")
        fields = dict(line.split(b":", 1) for line in head_bytes.split(b"\r\n")[1:] if b":" in line)
        length = int(fields.get(b"content-length", fields.get(b"Content-Length", b"-1")))
        length = 0 if method == "HEAD" else length
        while (length < 0 or len(rest) < length) and (chunk := s.recv(65536)):
            rest += chunk
    return (int(head_bytes.split()[1]) if head_bytes else 0), rest


def test_the_guard_server_forwards_only_what_it_approved(guard_with_recorder):
    """The raw target is judged (http.server's own '//' rewrite does not hide a non-canonical path), registration
    bodies are refused (TorchServe reads a JSON body as registration parameters), and only Authorization is
    forwarded."""
    port, seen = guard_with_recorder
    tcp = lambda: socket.create_connection(("127.0.0.1", port))  # noqa: E731
    auth = {"Authorization": "Bearer k", "Cookie": "c", "Content-Type": "application/json"}
    assert raw_request(tcp, "POST", "//models?url=good.mar", auth)[0] == 403
    assert raw_request(tcp, "POST", "/models%2F?url=link.mar", auth)[0] == 403
    body = json.dumps({"url": "link.mar"}).encode()
    status, data = raw_request(tcp, "POST", "/models?url=good.mar", {**auth, "Content-Length": len(body)}, body)
    assert status == 400 and json.loads(data)["field"] == "body"
    status, data = raw_request(tcp, "POST", "/models?url=good.mar", {**auth, "Transfer-Encoding": "chunked"},
                               b"0\r\n\r\n")
    assert status == 411 and json.loads(data)["field"] == "body"
    assert raw_request(tcp, "POST", "/models?url=good.mar&model_name=g", auth) == (200, b"ok")
    assert [(m, p) for m, p, _ in seen] == [("POST", "/models?url=good.mar&model_name=g")]
    forwarded = {k.lower() for k in seen[0][2]}
    assert "authorization" in forwarded and not forwarded & {"cookie", "content-type"}


def test_the_guard_server_rewrites_registrations_to_the_archive_in_the_store(guard_with_recorder, paths):
    """Over HTTP: a `file://` URL of an archive in the store is forwarded as its bare name; paths out of the store,
    remote URLs and workflows are refused; the other allowed calls pass as they are."""
    port, seen = guard_with_recorder
    tcp = lambda: socket.create_connection(("127.0.0.1", port))  # noqa: E731
    auth = {"Authorization": "Bearer k"}
    q = lambda s: urllib.parse.quote(s, safe="")  # noqa: E731
    assert raw_request(tcp, "GET", "/models", auth) == (200, b"ok")
    assert raw_request(tcp, "POST", f"/models?url={q(str(paths['evil']))}&model_name=x", auth)[0] == 403
    assert raw_request(tcp, "POST", f"/models?url={q('https://example.com/x.mar')}", auth)[0] == 403
    assert raw_request(tcp, "POST", "/workflows?url=good.mar", auth)[0] == 403
    good = q(f"file://{paths['store']}/good.mar")
    assert raw_request(tcp, "POST", f"/models?url={good}&model_name=g", auth) == (200, b"ok")
    assert raw_request(tcp, "DELETE", "/models/g", auth) == (200, b"ok")
    assert [(m, p, h.get("Authorization")) for m, p, h in seen] == [
        ("GET", "/models", "Bearer k"), ("POST", "/models?url=good.mar&model_name=g", "Bearer k"),
        ("DELETE", "/models/g", "Bearer k")]


# ------------------------------------------------------------------------------- against a real TorchServe


def registration_answer(method: str, data: bytes) -> bool:
    """Whether TorchServe's answer to a registration probe (a url naming no archive) comes from its model or
    workflow registration code: ApiUtils.registerModel, ModelArchive.downloadModel, WorkflowManager, WorkflowArchive
    (a workflow registration counts: the guard must refuse it too)."""
    try:
        answer = json.loads(data)
    except ValueError:
        return False
    if not isinstance(answer, dict):
        return False
    kind, message = answer.get("type"), str(answer.get("message"))
    return (kind == "BadRequestException" and message == "Parameter url is required.") or (
        kind == "ModelNotFoundException" and (message == "empty url" or message.startswith(
            ("Model not found at: ", "Relative path is not allowed in url: ")))) or (
        kind == "WorkflowNotFoundException" and method == "POST")


def registration_route(route: tuple) -> bool:
    """Whether a torchserve_route tuple is a model or workflow registration."""
    return route[0] == "register" or route == ("workflow", "POST")


@dataclass
class Outcome:
    """One corpus spelling sent directly to TorchServe's socket and through the guard."""

    method: str
    template: str
    ts_registers: bool
    guard_status: int
    guard_refused: bool
    approved: object


@pytest.mark.server
def test_a_real_torchserve_routes_the_corpus_as_the_guard_expects(tmp_path):
    """A real TorchServe with the model API on: a seeded sample of the corpus (the bug report's spellings first)
    is sent directly to its management socket, with a probe url, to learn which spellings it routes to
    registration, and through the guard with a symlink out of the store as url. Every spelling TorchServe routes
    to registration is refused by the guard unless approved (never the symlink: the outside archive's handler
    never runs), the routing model agrees with TorchServe, and the calls the product uses work through the guard."""
    from bench.serve_load import serve_config
    from serve.server import read_token, start_server, stop_server
    p = make_store(tmp_path / "work")
    store = p["store"]
    cfg = serve_config(store, tmp_path / "run")
    cfg.enable_model_api, cfg.models = True, ["good"]
    info = start_server(cfg, timeout_s=120)
    try:
        key = {"Authorization": f"Bearer {info.token('management')}"}
        management_socket = info.tmp_dir / "management" / "management.sock"

        def direct():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(management_socket))
            return s

        def guarded():
            return socket.create_connection(("127.0.0.1", info.ports["management"]))

        outcomes = []
        for i, (method, template) in enumerate(seeded_corpus(200)):
            probe = f"probe-{i}.mar"
            status, data = raw_request(direct, method, fill(template, probe, probe), key)
            ts_registers = registration_answer(method, data)
            model = torchserve_route(method, wire(fill(template, probe, probe)),
                                     request_text(method, wire(fill(template, probe, probe)), key))
            assert registration_route(model) == ts_registers, (method, template, status, data[:300], model)
            target = fill(template, "link.mar", "good.mar")
            try:
                approved = model_api_guard.approve(method, wire(target), store, key)
            except Refused:
                approved = None
            g_status, g_data = raw_request(guarded, method, target, key)
            refused = g_data.startswith(b"{") and json.loads(g_data).get("type") == "Refused"
            outcomes.append(Outcome(method, template, ts_registers, g_status, refused, approved))
        for o in outcomes:
            if o.approved is None:
                assert o.guard_refused or o.guard_status == 501, o  # 501: http.server's answer to an odd method
            elif o.ts_registers:
                assert o.approved.route.name == "register" and not o.guard_refused, o
        assert sum(o.ts_registers for o in outcomes) >= 20, "too few registration spellings in the sample"
        body = json.dumps({"url": "probe-body.mar"}).encode()
        as_json = {**key, "Content-Type": "application/json", "Content-Length": len(body)}
        status, data = raw_request(direct, "POST", "/models?url=probe-query.mar", as_json, body)
        assert b"probe-body.mar" in data, data  # TorchServe reads a JSON body's parameters, not the query's
        status, data = raw_request(guarded, "POST", "/models?url=good.mar", as_json, body)
        assert status == 400 and json.loads(data)["field"] == "body"
        assert not p["marker"].exists(), "the archive behind the symlink was registered: its handler ran"

        url = info.management_url
        http_ok = lambda method, path, headers=key: _http(url, method, path, headers)  # noqa: E731
        assert http_ok("OPTIONS", "/")[0] == 200 and http_ok("GET", "/api-description")[0] == 200
        status, body = http_ok("GET", "/models")
        names = {m["modelName"] for m in json.loads(body)["models"]}
        assert status == 200 and "good" in names and not names & {"link", "evil"}, names
        for path in ("/models/good", "/models/good/all", "/models/good/1.0?customized=false"):
            assert http_ok("GET", path)[0] == 200, path
        assert http_ok("PUT", "/models/good?min_worker=1&max_worker=1&synchronous=true")[0] == 200
        assert http_ok("POST", "/models?url=second.mar&model_name=second&synchronous=true")[0] == 200
        assert http_ok("PUT", "/models/second/1.0/set-default")[0] == 200
        assert http_ok("DELETE", "/models/second")[0] == 200
        api_key = {"Authorization": f"Bearer {read_token(info.run_dir, 'API')}"}
        assert http_ok("GET", "/token?type=inference", api_key)[0] == 200
        assert not p["marker"].exists()
    finally:
        assert stop_server(info.run_dir)


def _http(base: str, method: str, path: str, headers: dict) -> tuple:
    """One well-formed call through http.client -> (status, body)."""
    parts = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    try:
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()

