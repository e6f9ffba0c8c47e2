"""A small HTTP server (standard library) for the web page: loopback only unless a token guards it.

Routes (GET; the token, when one is set, as `?token=` or the `X-Token` header; `/` takes it from the URL and the
page passes it on):
  /                                   the page (web/page.html)
  /api/people                         {"people": {name: [anchor, ...]}}
  /api/view?person&anchor&yaw&pitch   PNG
  /api/interpolate?person&a&b&t&yaw&pitch   PNG
  /api/video?person&kind&a[&b]&frames&format    mp4 or GIF, as a download
  /api/mesh?person&anchor&format&resolution&level   PLY or OBJ, as a download
Bad values answer 400 with {"error": "..."} naming the field; a missing or wrong token 403.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
import threading
import traceback
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from web.app import WebApp

PAGE = Path(__file__).with_name("page.html")
CONTENT_TYPES = {".mp4": "video/mp4", ".gif": "image/gif", ".ply": "application/octet-stream",
                 ".obj": "text/plain; charset=ascii"}


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerOptions:
    """Where to listen and the token; a host that is not loopback always gets a token (generated if not given)."""

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None

    def resolved_token(self) -> str | None:
        if self.token is not None and len(self.token) < 16:
            raise ValueError("--token must be at least 16 characters")
        if self.token is None and not is_loopback(self.host):
            return secrets.token_urlsafe(24)
        return self.token


def make_handler(app: WebApp, token: str | None) -> type[BaseHTTPRequestHandler]:
    """The request handler class bound to `app` and `token`."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "my3dgen-web"

        def log_message(self, format, *args):  # one line per request on stderr is noise in a page's life
            pass

        def _send(self, status: int, body: bytes, content_type: str, filename: str | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            if filename:
                self.send_header("Content-Disposition", f'attachment; filename="{filename}"')
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, message: str) -> None:
            self._send(status, json.dumps({"error": message}).encode(), "application/json")

        def _authorized(self, query: dict) -> bool:
            if token is None:
                return True
            given = self.headers.get("X-Token") or query.get("token", "")
            return hmac.compare_digest(given.encode(), token.encode())

        def do_GET(self):
            url = urlparse(self.path)
            q = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if not self._authorized(q):
                return self._error(403, "a valid token is required (?token=...)")
            try:
                self._route(url.path, q)
            except (BrokenPipeError, ConnectionResetError):
                return  # the page went away (a newer request, a closed tab): nothing to answer
            except (ValueError, KeyError, OSError) as e:
                message = f"missing field {e.args[0]!r}" if isinstance(e, KeyError) else str(e)
                self._error(400, message)
            except Exception:  # a bug: keep the server up, say so, keep the traceback on stderr
                traceback.print_exc()
                self._error(500, "internal error (see the server's log)")

        def _route(self, path: str, q: dict) -> None:
            if path in ("/", "/index.html"):
                return self._send(200, PAGE.read_bytes(), "text/html; charset=utf-8")
            if path == "/api/people":
                return self._send(200, json.dumps({"people": app.people()}).encode(), "application/json")
            if path == "/api/view":
                png = app.view(q["person"], q["anchor"], q.get("yaw", 0), q.get("pitch", 0))
                return self._send(200, png, "image/png")
            if path == "/api/interpolate":
                png = app.interpolate(q["person"], q["a"], q["b"], q.get("t", 0.5), q.get("yaw", 0), q.get("pitch", 0))
                return self._send(200, png, "image/png")
            if path == "/api/video":
                data, suffix = app.video(q["person"], q["kind"], q["a"], q.get("b"), q.get("frames", 48),
                                         q.get("fps", 24), q.get("format", "mp4"))
                return self._send(200, data, CONTENT_TYPES[suffix], f"{q['person']}_{q['kind']}{suffix}")
            if path == "/api/mesh":
                fmt = q.get("format", "ply")
                data = app.mesh(q["person"], q["anchor"], fmt, q.get("resolution", 96), q.get("level", 10))
                return self._send(200, data, CONTENT_TYPES.get(f".{fmt}", "application/octet-stream"),
                                  f"{q['person']}.{fmt}")
            self._error(404, f"no such page: {path}")

    return Handler


class WebServer:
    """The page and its API on (host, port); `start()` serves in a thread, `serve_forever()` in this one."""

    def __init__(self, app: WebApp, options: ServerOptions = ServerOptions()):
        self.token = options.resolved_token()
        self.httpd = ThreadingHTTPServer((options.host, options.port), make_handler(app, self.token))
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
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join()
