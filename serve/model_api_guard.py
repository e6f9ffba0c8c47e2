"""The management API's guard: with `serve --enable-model-api`, only archives inside the model store can be registered.

TorchServe checks `allowed_urls` only for URL forms: a plain absolute path to a `.mar` anywhere on the machine is
registered and its handler code runs in a worker. So when the model API is on, TorchServe's management listener
is a unix socket in a private (0700) folder of the run, and this process listens on the management address in its
place. It forwards every request unchanged except registrations (`POST /models`): their `url` (a bare name, a
relative or absolute path, or a `file://` URL, percent-encoded or not) is resolved, symlinks followed, and must be a
`<name>.mar` file or archived `<name>/` folder directly inside the resolved model store; it is then forwarded as
that bare name, so TorchServe loads it from the store and no other form reaches it. Anything else is a 403 naming
the `url` field. Workflow registration is refused (this project serves no workflows). Idle or slow clients are
cut off after `READ_TIMEOUT_S` (TorchServe's own listeners have no idle-connection timeout to configure).

Run by serve.server.start_server as `python -m serve.model_api_guard HOST PORT UPSTREAM_SOCKET MODEL_STORE`.
"""
from __future__ import annotations

import http.client
import json
import socket
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from formats.names import is_valid_name

READ_TIMEOUT_S = 30.0
"""Seconds a client connection may stay silent (idle keep-alive or a half-sent request) before it is closed."""
MAX_BODY_BYTES = 1 << 20
"""Largest management request body forwarded (management calls carry their parameters in the query)."""
UPSTREAM_TIMEOUT_S = 600.0
"""Seconds to wait for TorchServe's answer (registering a model starts its workers)."""


class Refused(Exception):
    """A management request the guard does not forward: HTTP `status`, the offending `field`, a message."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


def archive_in_store(url: str, model_store: str | Path) -> str:
    """The bare archive name (`<name>.mar` or `<name>`) that registration `url` designates, when it resolves
    (symlinks followed) to an archive directly inside `model_store`; Refused(403, 'url', why) otherwise."""
    store = Path(model_store).resolve()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme and len(parts.scheme) > 1:  # 'C:' style drive letters do not exist here
        if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost"):
            raise Refused(403, "url", f"url {url[:200]!r}: only archives in the model store can be registered "
                                      f"(no remote URLs)")
        raw = urllib.parse.unquote(parts.path)
    else:
        raw = urllib.parse.unquote(url)
    if not raw or "\0" in raw:
        raise Refused(403, "url", "url is empty or holds a NUL character")
    path = Path(raw) if Path(raw).is_absolute() else store / raw
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise Refused(403, "url", f"url {url[:200]!r}: no such archive in the model store") from None
    name = resolved.name[:-4] if resolved.name.endswith(".mar") and resolved.is_file() else resolved.name
    is_archive = resolved.is_file() and resolved.suffix == ".mar" or (
        resolved.is_dir() and (resolved / "MAR-INF" / "MANIFEST.json").is_file())
    if resolved.parent != store or not is_archive or not is_valid_name(name):
        raise Refused(403, "url", f"url {url[:200]!r} resolves outside the model store or to something that is not "
                                  f"an archive there: only <name>.mar files and archived <name>/ folders directly "
                                  f"inside the model store can be registered")
    return resolved.name


def guard_target(method: str, target: str, model_store: str | Path) -> str:
    """The request target to forward for `method target`: registrations rewritten to their in-store archive name,
    everything else unchanged; Refused for what may not pass."""
    parts = urllib.parse.urlsplit(target)
    route = parts.path.rstrip("/")
    if method == "POST" and route == "/workflows":
        raise Refused(403, "url", "workflow registration is disabled")
    if method != "POST" or route != "/models":
        return target
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    urls = [v for k, v in query if k == "url"]
    if len(urls) != 1:
        raise Refused(400, "url", "a registration needs exactly one 'url' parameter")
    name = archive_in_store(urls[0], model_store)
    query = [(k, name if k == "url" else v) for k, v in query]
    return urllib.parse.urlunsplit(("", "", parts.path, urllib.parse.urlencode(query), ""))


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def make_handler(upstream_socket: str, model_store: str | Path) -> type[BaseHTTPRequestHandler]:
    """The request handler class forwarding to TorchServe's management socket through `guard_target`."""

    class Handler(BaseHTTPRequestHandler):
        timeout = READ_TIMEOUT_S
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # noqa: D401 - one line per request on stderr (the guard's log)
            sys.stderr.write("guard: " + (fmt % args) + "\n")

        def _refuse(self, e: Refused) -> None:
            body = json.dumps({"code": e.status, "type": "Refused", "field": e.field, "message": e.message}).encode()
            self.send_response(e.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _forward(self) -> None:
            try:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    raise Refused(411, "body", "chunked bodies are not accepted: send a Content-Length")
                length = int(self.headers.get("Content-Length") or 0)
                if not 0 <= length <= MAX_BODY_BYTES:
                    raise Refused(413, "body", f"body of {length} bytes (at most {MAX_BODY_BYTES})")
                body = self.rfile.read(length) if length else None
                target = guard_target(self.command, self.path, model_store)
            except Refused as e:
                self.close_connection = True
                return self._refuse(e)
            except ValueError:
                self.close_connection = True
                return self._refuse(Refused(400, "body", "malformed Content-Length"))
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in ("host", "connection", "keep-alive", "transfer-encoding")}
            conn = _UnixHTTPConnection(upstream_socket, UPSTREAM_TIMEOUT_S)
            try:
                conn.request(self.command, target, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except OSError as e:
                return self._refuse(Refused(502, "body", f"TorchServe's management API did not answer ({e})"))
            finally:
                conn.close()
            self.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in ("content-length", "connection", "transfer-encoding", "keep-alive"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_OPTIONS = _forward

    return Handler


def serve(host: str, port: int, upstream_socket: str, model_store: str | Path) -> ThreadingHTTPServer:
    """A started-but-not-serving guard server (call serve_forever); IPv6 hosts get an IPv6 socket."""
    server_cls = type("GuardServer", (ThreadingHTTPServer,), {
        "address_family": socket.AF_INET6 if ":" in host else socket.AF_INET, "daemon_threads": True})
    return server_cls((host, port), make_handler(upstream_socket, model_store))


def main(argv: list[str] | None = None) -> int:
    host, port, upstream, store = (argv if argv is not None else sys.argv[1:])
    server = serve(host, int(port), upstream, store)
    print(f"guard: listening on {host}:{port} for {upstream} (model store {store})", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
