"""The management API's guard: with `serve --enable-model-api`, only the management calls this product uses pass,
and only archives inside the model store can be registered.

TorchServe checks `allowed_urls` only for URL forms: a plain absolute path to a `.mar` anywhere on the machine is
registered and its handler code runs in a worker. So when the model API is on, TorchServe's management listener
is a unix socket in a private (0700) folder of the run, and this process listens on the management address in its
place. It forwards a request only when it is one of these calls (method and path matched exactly; `{model}` is a
model name, 1-64 of A-Z a-z 0-9 _ -, `{version}` a version, 1-64 of A-Z a-z 0-9 . _ - starting with a letter or
digit), with only the query parameters listed, each at most once:

    OPTIONS /                                  (API description)
    GET     /api-description
    GET     /token                             type (management | inference: renew that key)
    GET     /models                            limit, next_page_token
    POST    /models                            url (required), model_name, initial_workers, synchronous,
                                               batch_size, max_batch_delay, response_timeout, startup_timeout
    GET     /models/{model}                    customized
    GET     /models/{model}/{version}          customized ({version} may be `all`)
    PUT     /models/{model}                    min_worker, max_worker, synchronous, model_version
    PUT     /models/{model}/{version}          min_worker, max_worker, synchronous
    PUT     /models/{model}/{version}/set-default
    DELETE  /models/{model}
    DELETE  /models/{model}/{version}

Anything else is refused with a JSON 4xx naming the refused field (`method`, `path`, `query`, a parameter name,
`header` or `body`) - workflow registration and the `handler`/`runtime` registration parameters included.

The guard sees a request as TorchServe 0.12 routes it (its frontend decodes the path with Netty's
QueryStringDecoder - `%2F` becomes a `/`, `%6D` an `m` - and splits it on `/`, dropping trailing empty segments,
so `/models%2F` and `/%6Dodels` are `/models` to it): the path must already be canonical - `/` and non-empty
segments of unreserved characters (A-Z a-z 0-9 - . _ ~), no `%`, no `;` parameters, no `.`/`..` segments, no
repeated or trailing `/`, no absolute-form `http://...` target, case as the route spells it - and is forwarded
unchanged; a non-canonical path is refused, never normalised. The query is parsed, checked per parameter and
rebuilt percent-encoded from the checked values (a `;` or `#` in it is refused: Netty also splits parameters on
`;`). Registrations' `url` (a bare name, a relative or absolute path, or a `file://` URL, percent-encoded or not)
must resolve, symlinks followed, to a `<name>.mar` file or archived `<name>/` folder directly inside the resolved
model store, and is forwarded as that bare real name, so TorchServe loads it from the store. Only the
`Authorization` header is forwarded and no body (TorchServe reads a JSON body as registration parameters); since
TorchServe takes any request whose text holds `/token` for its key-renewal call, only the `/token` route may.
Idle or slow clients are cut off after `READ_TIMEOUT_S` (TorchServe's own listeners have no idle-connection
timeout to configure).

Run by serve.server.start_server as `python -m serve.model_api_guard HOST PORT UPSTREAM_SOCKET MODEL_STORE`.
"""
from __future__ import annotations

import http.client
import json
import re
import socket
import string
import sys
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from formats.names import NAME_RULE, is_valid_name

READ_TIMEOUT_S = 30.0
"""Seconds a client connection may stay silent (idle keep-alive or a half-sent request) before it is closed."""
MAX_BODY_BYTES = 1 << 20
"""Largest announced request body answered with a 400 rather than a 413 (no body is ever forwarded)."""
UPSTREAM_TIMEOUT_S = 600.0
"""Seconds to wait for TorchServe's answer (registering a model starts its workers)."""
MAX_QUERY_PARAMS = 32
"""Most query parameters one management call may carry."""

UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
"""The characters of a canonical path segment (RFC 3986 unreserved): they mean themselves to every decoder."""
MODEL = "{model}"
VERSION = "{version}"
VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A model version as a path segment or `model_version` value (no `.`/`..`, no `/`)."""
TOKEN_MARK = "/token"
"""TorchServe 0.12 answers any management request whose text (request line and headers) holds this as its
key-renewal call (TokenAuthorizationHandler: `req.toString().contains("/token")`)."""


class Refused(Exception):
    """A management request the guard does not forward: HTTP `status`, the offending `field`, a message."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


@dataclass(frozen=True)
class Route:
    """One management call the guard forwards: `method`, the path `pattern` (literal segments, MODEL or VERSION)
    and the query parameters it may carry (`required` ones must be there)."""

    name: str
    method: str
    pattern: tuple
    params: tuple = ()
    required: tuple = ()

    @property
    def spelling(self) -> str:
        """`METHOD /path/{model}` as in the module docstring."""
        return f"{self.method} /{'/'.join(self.pattern)}"


REGISTER_PARAMS = ("url", "model_name", "initial_workers", "synchronous", "batch_size", "max_batch_delay",
                   "response_timeout", "startup_timeout")
ROUTES = (
    Route("api-description", "OPTIONS", ()),
    Route("api-description", "GET", ("api-description",)),
    Route("token", "GET", ("token",), ("type",), ("type",)),
    Route("list", "GET", ("models",), ("limit", "next_page_token")),
    Route("register", "POST", ("models",), REGISTER_PARAMS, ("url",)),
    Route("describe", "GET", ("models", MODEL), ("customized",)),
    Route("describe", "GET", ("models", MODEL, VERSION), ("customized",)),
    Route("scale", "PUT", ("models", MODEL), ("min_worker", "max_worker", "synchronous", "model_version")),
    Route("scale", "PUT", ("models", MODEL, VERSION), ("min_worker", "max_worker", "synchronous")),
    Route("set-default", "PUT", ("models", MODEL, VERSION, "set-default")),
    Route("unregister", "DELETE", ("models", MODEL)),
    Route("unregister", "DELETE", ("models", MODEL, VERSION)),
)
"""The allow-list: every management call the product uses, and nothing else."""


@dataclass(frozen=True)
class Approved:
    """A request the guard forwards: the allow-listed `route` it matched, its path `segments`, and the request
    `target` and `headers` sent to TorchServe."""

    route: Route
    segments: tuple
    target: str
    headers: dict


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


def canonical_path(target: str) -> tuple:
    """(path segments, raw query) of request `target` when its path is canonical - the only form whose meaning
    does not depend on who decodes it; Refused(403, 'path') otherwise, saying what is not canonical."""
    if not target.startswith("/"):
        raise Refused(403, "path", f"request target {target[:200]!r}: only a path starting with '/' is accepted "
                                   f"(no absolute-form http://... targets)")
    if "#" in target:
        raise Refused(403, "path", f"request target {target[:200]!r}: '#' is not accepted")
    path, _, query = target.partition("?")
    if path == "/":
        return (), query
    segments = tuple(path[1:].split("/"))
    for seg in segments:
        if not seg:
            raise Refused(403, "path", f"path {path[:200]!r}: empty segment (repeated or trailing '/')")
        if seg in (".", ".."):
            raise Refused(403, "path", f"path {path[:200]!r}: '{seg}' segment")
        odd = sorted(set(seg) - UNRESERVED)
        if odd:
            raise Refused(403, "path", f"path {path[:200]!r}: {''.join(odd)[:20]!r} in a segment (only A-Z a-z 0-9 "
                                       f"- . _ ~; percent-encoding and ';' parameters are not accepted)")
    return segments, query


def _segment_matches(pattern: str, segment: str) -> bool:
    """Whether path `segment` fits `pattern` (a literal, MODEL or VERSION)."""
    if pattern == MODEL:
        return is_valid_name(segment)
    if pattern == VERSION:
        return VERSION_RE.fullmatch(segment) is not None
    return segment == pattern


def match_route(method: str, segments: tuple) -> Route:
    """The allow-listed Route for `method /segments`; Refused(403, 'path' or 'method') naming the call otherwise."""
    shaped = [r for r in ROUTES if len(r.pattern) == len(segments)
              and all(_segment_matches(p, s) for p, s in zip(r.pattern, segments))]
    for route in shaped:
        if route.method == method:
            return route
    call = f"{method} /{'/'.join(segments)}"[:200]
    if shaped:
        allowed = ", ".join(sorted({r.method for r in shaped}))
        raise Refused(403, "method", f"{call!r}: method not allowed on this path (allowed: {allowed})")
    if segments[:1] == ("workflows",):
        raise Refused(403, "path", f"{call!r}: workflow management is disabled (this project serves no workflows)")
    raise Refused(403, "path", f"{call!r} is not a management call this server forwards; allowed: "
                               f"{', '.join(r.spelling for r in ROUTES)}")


def query_pairs(query: str) -> list:
    """The decoded (name, value) pairs of raw `query`; Refused(403, 'query') for a `;` (Netty splits on it,
    Python does not), characters outside printable ASCII, repeated names or too many parameters."""
    if ";" in query:
        raise Refused(403, "query", "';' in the query is not accepted (use '&' between parameters)")
    if any(not " " < c < "\x7f" for c in query):
        raise Refused(403, "query", "the query holds characters outside printable ASCII (percent-encode them)")
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, max_num_fields=MAX_QUERY_PARAMS,
                                       errors="strict")
    except (ValueError, UnicodeDecodeError) as e:
        raise Refused(403, "query", f"unreadable query ({e})") from None
    seen = set()
    for name, _ in pairs:
        if name in seen:
            raise Refused(403, name[:64] or "query", f"parameter {name[:64]!r} is given more than once")
        seen.add(name)
    return pairs


def _int_value(name: str, value: str) -> str:
    """`value` when it is a (possibly negative) integer of at most 9 digits."""
    if re.fullmatch(r"-?[0-9]{1,9}", value) is None:
        raise Refused(400, name, f"{name}={value[:64]!r}: expected an integer")
    return value


def _bool_value(name: str, value: str) -> str:
    """`value` lower-cased when it is true or false."""
    if value.lower() not in ("true", "false"):
        raise Refused(400, name, f"{name}={value[:64]!r}: expected true or false")
    return value.lower()


def _name_value(name: str, value: str) -> str:
    """`value` when it is a valid model name."""
    if not is_valid_name(value):
        raise Refused(400, name, f"{name}={value[:64]!r}: use {NAME_RULE}")
    return value


def _version_value(name: str, value: str) -> str:
    """`value` when it is a valid model version."""
    if VERSION_RE.fullmatch(value) is None:
        raise Refused(400, name, f"{name}={value[:64]!r}: use 1-64 of A-Z a-z 0-9 . _ - starting with a letter or "
                                 f"digit")
    return value


def _token_type_value(name: str, value: str) -> str:
    """`value` when it names a key TorchServe can renew."""
    if value not in ("management", "inference"):
        raise Refused(400, name, f"{name}={value[:64]!r}: expected management or inference")
    return value


PARAM_CHECKS: dict = {
    "limit": _int_value, "next_page_token": _int_value, "customized": _bool_value, "min_worker": _int_value,
    "max_worker": _int_value, "synchronous": _bool_value, "model_version": _version_value,
    "type": _token_type_value, "model_name": _name_value, "initial_workers": _int_value,
    "batch_size": _int_value, "max_batch_delay": _int_value, "response_timeout": _int_value,
    "startup_timeout": _int_value,
}
"""Value check of every allow-listed parameter but `url` (checked against the model store)."""


def checked_query(route: Route, pairs: list, model_store: str | Path) -> str:
    """The query to forward for `route`: its allow-listed parameters, values checked (`url` rewritten to the
    bare in-store archive name), percent-encoded; Refused naming the first parameter that may not pass."""
    out = []
    for name, value in pairs:
        if name not in route.params:
            allowed = ", ".join(route.params) or "none"
            raise Refused(403, name[:64] or "query", f"parameter {name[:64]!r} is not accepted by "
                                                     f"{route.spelling} (allowed: {allowed})")
        out.append((name, archive_in_store(value, model_store) if name == "url" else PARAM_CHECKS[name](name, value)))
    missing = [p for p in route.required if p not in dict(pairs)]
    if missing:
        raise Refused(400, missing[0], f"{route.spelling} needs the {missing[0]!r} parameter")
    return "&".join(f"{urllib.parse.quote(k, safe='')}={urllib.parse.quote(v, safe='')}" for k, v in out)


def forwarded_headers(headers) -> dict:
    """The headers to forward: the `Authorization` header alone, when it is one line of printable ASCII."""
    if hasattr(headers, "get_all"):
        values = headers.get_all("Authorization") or []
    else:
        values = [v for k, v in dict(headers or {}).items() if k.lower() == "authorization"]
    if len(values) > 1:
        raise Refused(400, "header", "more than one Authorization header")
    if values and any(not " " <= c < "\x7f" for c in values[0]):
        raise Refused(400, "header", "the Authorization header holds characters outside printable ASCII")
    return {"Authorization": values[0]} if values else {}


def approve(method: str, target: str, model_store: str | Path, headers=None) -> Approved:
    """What the guard forwards for `method target` with client `headers` (a Message or dict): the allow-listed
    route matched on the canonical path, the target with its query rebuilt from checked parameters, and the
    forwarded headers; Refused for anything else."""
    segments, query = canonical_path(target)
    route = match_route(method, segments)
    rebuilt = checked_query(route, query_pairs(query), model_store)
    path = "/" + "/".join(segments)
    forwarded = path + ("?" + rebuilt if rebuilt else "")
    out_headers = forwarded_headers(headers)
    if route.name != "token" and any(TOKEN_MARK in text for text in (forwarded, *out_headers.values())):
        raise Refused(403, "path" if TOKEN_MARK in forwarded else "header",
                      f"{route.spelling}: the request holds {TOKEN_MARK!r}, which TorchServe would take for its "
                      f"key-renewal call")
    return Approved(route, segments, forwarded, out_headers)


def guard_target(method: str, target: str, model_store: str | Path) -> str:
    """The request target forwarded for `method target` (see approve); Refused for what may not pass."""
    return approve(method, target, model_store).target


def check_body(headers) -> None:
    """Refused unless the request announces no body: management calls carry their parameters in the query, and
    TorchServe would read a JSON body as registration parameters the guard has not checked."""
    if "Transfer-Encoding" in headers:
        raise Refused(411, "body", "Transfer-Encoding is not accepted: management calls take no body")
    try:
        length = int(headers.get("Content-Length") or 0)
    except ValueError:
        raise Refused(400, "body", "malformed Content-Length") from None
    if length > MAX_BODY_BYTES:
        raise Refused(413, "body", f"body of {length} bytes (management calls take no body)")
    if length != 0:
        raise Refused(400, "body", f"body of {length} bytes: management calls take their parameters in the "
                                   f"query, and no body is forwarded")


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def make_handler(upstream_socket: str, model_store: str | Path) -> type[BaseHTTPRequestHandler]:
    """The request handler class forwarding to TorchServe's management socket what `approve` lets through."""

    class Handler(BaseHTTPRequestHandler):
        timeout = READ_TIMEOUT_S
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # noqa: D401 - one line per request on stderr (the guard's log)
            sys.stderr.write("guard: " + (fmt % args) + "\n")

        def _refuse(self, e: Refused) -> None:
            self.log_message("refused %s (%s): %s", e.status, e.field, e.message)
            body = json.dumps({"code": e.status, "type": "Refused", "field": e.field, "message": e.message}).encode()
            self.send_response(e.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _raw_target(self) -> str:
            """The request target as the client sent it (http.server rewrites a leading '//' in self.path)."""
            return self.requestline.split()[1]

        def _forward(self) -> None:
            try:
                check_body(self.headers)
                approved = approve(self.command, self._raw_target(), model_store, self.headers)
            except Refused as e:
                self.close_connection = True
                return self._refuse(e)
            conn = _UnixHTTPConnection(upstream_socket, UPSTREAM_TIMEOUT_S)
            try:
                conn.request(self.command, approved.target, headers=approved.headers)
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

        do_GET = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = _forward

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
