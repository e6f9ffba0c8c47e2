"""A small HTTP server (standard library) for the web page: loopback only unless a token guards it.

Routes (GET; the token, when one is set, as `?token=` or the `X-Token` header; `/` takes it from the URL and the
page passes it on):
  /                                   the page (web/page.html, its slider and field ranges filled in from
                                      formats.limits.MAX_ABS_YAW / MAX_ABS_PITCH and the app's WebLimits)
  /api/people                         {"people": {name: [anchor, ...]}, "skipped": {name: why},
                                       "backend": {"name", "precision", "why"}: what renders (the runtime's
                                       backend and why it was chosen, or "eager": a model directory's generator)
  /api/view?person&anchor&yaw&pitch   PNG
  /api/interpolate?person&a&b&t&yaw&pitch   PNG
  /api/video?person&kind&a[&b]&frames&fps&format    mp4 or GIF, as a download
  /api/mesh?person&anchor&format&resolution&level   PLY or OBJ, as a download

Status codes (errors are {"error": "..."}, with no absolute path in them: people, fields and file names only):
  400  a missing or bad field, named (numbers must be finite, plain decimal, within range); a mesh of an export
       without its model directory (the reason named)
  403  a missing or wrong token            404  no such page
  422  a person whose adapter file fails its checks, named
  503  a time budget that cannot be met (nothing was run), the long-job slots taken, or too many connections:
       with Retry-After (seconds); also while the server stops
  504  a time budget exceeded midway: the work was stopped
  500  a bug (the traceback goes to stderr)

Budgets, cancellation and concurrency are web/app.py's (see its docstring): each request's work runs in chunks
under the model lock, checked against its budget and against the client: `client_gone` polls the request's
socket for EOF between chunks, so a closed tab or download stops its video or mesh. Connections: each has a
read timeout (`ServerOptions.read_timeout_s`, default 30 s), so an idle or half-open connection does not keep
its thread; at most `max_connections` (default 32) are served at once, the next is answered 503 at once.
Closing the server (`stop()`, or `httpd.server_close()` after `serve_forever()`) stops running work at its next
chunk and ends open connections before it waits for their threads.
"""
from __future__ import annotations

import hmac
import json
import select
import socket
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from formats.limits import MAX_ABS_PITCH, MAX_ABS_YAW
from runtime.errors import BudgetExceeded
from web.app import LEVEL_RANGE, PersonInvalid, WebApp
from web.jobs import Busy, Cancelled
from web.settings import ServerOptions

PAGE = Path(__file__).with_name("page.html")
CONTENT_TYPES = {".mp4": "video/mp4", ".gif": "image/gif", ".ply": "application/octet-stream",
                 ".obj": "text/plain; charset=ascii"}
MAX_QUERY_FIELDS = 32
"""Most query fields one request may carry."""
MAX_ERROR_CHARS = 1000
"""Longest error message sent (a message may echo a client's value or list a person's anchors)."""
REFUSE_TIMEOUT_S = 1.0
"""How long writing the 503 to a connection over max_connections may block the accepting thread."""


def peer_closed(sock: socket.socket) -> bool:
    """True when the client has closed its end of `sock` (EOF or a reset is waiting): a readable socket whose
    peek reads nothing. Bytes waiting (a pipelined request) mean the client is still there."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def render_page(app: WebApp) -> bytes:
    """web/page.html with its ranges filled in: one range for the page, the API and the rest of the product."""
    values = {"max_abs_yaw": MAX_ABS_YAW, "max_abs_pitch": MAX_ABS_PITCH, "max_frames": app.limits.max_frames,
              "max_mesh_resolution": app.limits.max_mesh_resolution, "min_level": LEVEL_RANGE[0],
              "max_level": LEVEL_RANGE[1]}
    text = PAGE.read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", f"{value:g}")
    return text.encode("utf-8")


def _required(q: dict, field: str) -> str:
    """Query field `field`, or ValueError naming it."""
    if field not in q:
        raise ValueError(f"missing field {field!r}")
    return q[field]


def error_response(e: Exception) -> tuple[int, str, int | None]:
    """(status, message, Retry-After seconds or None) of an exception from a route; see the module docstring."""
    if isinstance(e, Busy):
        return 503, str(e), e.retry_after_s
    if isinstance(e, BudgetExceeded):
        return (503, str(e), None) if e.before_running else (504, str(e), None)
    if isinstance(e, Cancelled):
        return 503, str(e), None
    if isinstance(e, PersonInvalid):
        return 422, str(e), None
    if isinstance(e, ValueError):
        return 400, str(e), None
    traceback.print_exception(e)
    return 500, "internal error (see the server's log)", None


def make_handler(app: WebApp, token: str | None, read_timeout_s: float = 30.0) -> type[BaseHTTPRequestHandler]:
    """The request handler class bound to `app` and `token`; its connections time out after `read_timeout_s`."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "my3dgen-web"
        timeout = read_timeout_s  # StreamRequestHandler.setup: settimeout on the connection

        def log_message(self, format, *args):  # one line per request on stderr is noise in a page's life
            pass

        def _send(self, status: int, body: bytes, content_type: str, filename: str | None = None,
                  retry_after: int | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            if filename:
                self.send_header("Content-Disposition", f'attachment; filename="{filename}"')
            if retry_after is not None:
                self.send_header("Retry-After", str(retry_after))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, message: str, retry_after: int | None = None) -> None:
            """A JSON error, with no absolute path in it; every 503 says when to retry."""
            if status == 503 and retry_after is None:
                retry_after = app.retry_after_s()
            message = app.scrub(message)
            if len(message) > MAX_ERROR_CHARS:
                message = message[:MAX_ERROR_CHARS - 3] + "..."
            body = json.dumps({"error": message}).encode()
            self._send(status, body, "application/json", retry_after=retry_after)

        def _authorized(self, query: dict) -> bool:
            if token is None:
                return True
            given = self.headers.get("X-Token") or query.get("token", "")
            return hmac.compare_digest(given.encode(), token.encode())

        def client_gone(self) -> bool:
            """Has the client closed the connection (checked between chunks of its work)?"""
            return peer_closed(self.connection)

        def do_GET(self):
            url = urlparse(self.path)
            try:
                q = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True,
                                                   max_num_fields=MAX_QUERY_FIELDS).items()}
            except ValueError:
                return self._error(400, f"too many query fields (at most {MAX_QUERY_FIELDS})")
            if not self._authorized(q):
                return self._error(403, "a valid token is required (?token=...)")
            try:
                self._answer(url.path, q)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                self.close_connection = True  # the page went away (a newer request, a closed tab)

        def _answer(self, path: str, q: dict) -> None:
            """Route the request; an exception becomes its error status (none when the client went away)."""
            try:
                self._route(path, q)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                raise
            except Cancelled as e:
                self.close_connection = True
                if not e.client_gone:
                    self._error(*error_response(e))
            except Exception as e:  # mapped to a status; a bug is a 500 that keeps the server up
                self._error(*error_response(e))

        def _route(self, path: str, q: dict) -> None:
            gone = self.client_gone
            if path in ("/", "/index.html"):
                return self._send(200, render_page(app), "text/html; charset=utf-8")
            if path == "/api/people":
                people, skipped = app.people_listing()
                return self._send(200, json.dumps({"people": people, "skipped": skipped,
                                                   "backend": app.backend()}).encode(), "application/json")
            if path == "/api/view":
                png = app.view(_required(q, "person"), _required(q, "anchor"), q.get("yaw", 0), q.get("pitch", 0),
                               client_gone=gone)
                return self._send(200, png, "image/png")
            if path == "/api/interpolate":
                png = app.interpolate(_required(q, "person"), _required(q, "a"), _required(q, "b"),
                                      q.get("t", 0.5), q.get("yaw", 0), q.get("pitch", 0), client_gone=gone)
                return self._send(200, png, "image/png")
            if path == "/api/video":
                person, kind = _required(q, "person"), _required(q, "kind")
                data, suffix = app.video(person, kind, _required(q, "a"), q.get("b"), q.get("frames", 48),
                                         q.get("fps", 24), q.get("format", "mp4"), client_gone=gone)
                return self._send(200, data, CONTENT_TYPES[suffix], f"{person}_{kind}{suffix}")
            if path == "/api/mesh":
                person, fmt = _required(q, "person"), q.get("format", "ply")
                data = app.mesh(person, _required(q, "anchor"), fmt, q.get("resolution", 96), q.get("level", 10),
                                client_gone=gone)
                return self._send(200, data, CONTENT_TYPES[f".{fmt}"], f"{person}.{fmt}")
            self._error(404, "no such page")

    return Handler


class BoundedThreadingHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer serving at most `max_connections` connections at once (a thread each); the next is
    answered 503 from the accepting thread and closed. Open connections are tracked: `server_close` calls
    `on_close` (the app's: stop running work), ends them, then waits for their threads."""

    def __init__(self, address, handler, max_connections: int, on_close=None):
        self.max_connections = max_connections
        self.on_close = on_close
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        with self._open_lock:
            admitted = len(self._open) < self.max_connections
            if admitted:
                self._open.add(request)
        if admitted:
            return super().process_request(request, client_address)
        self._refuse(request)

    def _refuse(self, request: socket.socket) -> None:
        """Answer 503 (Retry-After: 1) to a connection over the limit, then close it."""
        body = json.dumps({"error": f"too many connections (max_connections={self.max_connections}); "
                                    f"try again later"}).encode()
        head = (f"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: "
                f"{len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n").encode()
        try:
            request.settimeout(REFUSE_TIMEOUT_S)
            request.sendall(head + body)
        except OSError:
            pass
        super().shutdown_request(request)

    def shutdown_request(self, request):
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def server_close(self):
        if self.on_close is not None:
            self.on_close()
        self.close_connections()
        super().server_close()

    def open_connections(self) -> int:
        """How many connections are being served now."""
        with self._open_lock:
            return len(self._open)

    def close_connections(self) -> None:
        """Shut the reading side of every open connection: a handler waiting for a request sees EOF and ends."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass


class WebServer:
    """The page and its API on (host, port); `start()` serves in a thread, `serve_forever()` in this one."""

    def __init__(self, app: WebApp, options: ServerOptions = ServerOptions()):
        self.app = app
        self.token = options.resolved_token()
        self.httpd = BoundedThreadingHTTPServer((options.host, options.port),
                                                make_handler(app, self.token, options.read_timeout_s),
                                                options.max_connections, on_close=app.close)
        self.httpd.daemon_threads = False   # stop() waits for requests in flight (a render must not outlive torch)
        self.httpd.block_on_close = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/" + (f"?token={self.token}" if self.token else "")

    def start(self) -> "WebServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        """Stop accepting; then `server_close`: running work stops at its next chunk, open connections end, their
        threads are waited for."""
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join()
