"""TorchServe 0.12's management API as tests/test_model_api_guard*.py see it: a model of its routing, a generated
corpus of spellings of management calls, and a model store with a symlink out of it.

Why a model: serve.model_api_guard must refuse every spelling that TorchServe would route to a call the guard did
not approve; `torchserve_route` is how TorchServe 0.12 routes a management request, written from its frontend
(HttpRequestHandler: Netty 4.1's QueryStringDecoder(uri).path() then `path.split("/")`;
ApiDescriptionRequestHandler, TokenAuthorizationHandler, ManagementRequestHandler, WorkflowMgmtRequestHandler,
InvalidRequestHandler in that order). tests/test_model_api_guard.py holds it against the guard in-process and
against Netty's own decoder; tests/test_model_api_guard_server.py against the guard server and a real TorchServe.
"""
from __future__ import annotations

import json
import random
import string
import urllib.parse
import zipfile
from pathlib import Path

import pytest

# ------------------------------------------------------------------------- TorchServe 0.12's routing, as a model


def netty_decode(s: str, is_path: bool) -> str:
    """Netty 4.1 QueryStringDecoder.decodeComponent: runs of %XX decoded as UTF-8 (bad bytes replaced), '+' a space
    outside the path; ValueError where Netty throws IllegalArgumentException (a bad or cut escape)."""
    if "%" not in s and (is_path or "+" not in s):
        return s
    out, i = [], 0
    while i < len(s):
        if s[i] != "%":
            out.append(" " if s[i] == "+" and not is_path else s[i])
            i += 1
            continue
        run = bytearray()
        while i < len(s) and s[i] == "%":
            pair = s[i + 1:i + 3]
            if len(pair) < 2 or not all(c in string.hexdigits for c in pair):
                raise ValueError(f"bad escape at {i} of {s!r}")
            run.append(int(pair, 16))
            i += 3
        out.append(run.decode("utf-8", "replace"))
    return "".join(out)


def path_end(uri: str) -> int:
    """Where Netty's path ends: the first '?' or '#'."""
    return next((i for i, c in enumerate(uri) if c in "?#"), len(uri))


def java_split_slash(path: str) -> list:
    """Java's `path.split("/")`: trailing empty strings dropped, a leading one kept, no match -> [path]."""
    parts = path.split("/")
    if len(parts) == 1:
        return parts
    while parts and parts[-1] == "":
        parts.pop()
    return parts


def netty_segments(uri: str):
    """The `segments` TorchServe routes `uri` by, or None where decoding the path fails (its answer is a 403)."""
    try:
        return java_split_slash(netty_decode(uri[:path_end(uri)], True))
    except ValueError:
        return None


def netty_params(uri: str):
    """Netty's QueryStringDecoder(uri).parameters(): '&' and ';' separate, '#' ends, a leading '=' is skipped,
    names and values decoded; None where decoding fails."""
    params: dict = {}

    def add(name_start: int, value_start: int, value_end: int) -> None:
        if name_start >= value_end:
            return
        if value_start <= name_start:
            value_start = value_end + 1
        name = netty_decode(uri[name_start:value_start - 1], False)
        params.setdefault(name, []).append(netty_decode(uri[value_start:value_end], False))

    start = path_end(uri)
    if start >= len(uri):
        return params
    start += uri[start] == "?"
    name_start, value_start, i = start, -1, start
    try:
        while i < len(uri) and uri[i] != "#":
            if uri[i] == "=":
                if name_start == i:
                    name_start = i + 1
                elif value_start < name_start:
                    value_start = i + 1
            elif uri[i] in "&;":
                add(name_start, value_start, i)
                name_start = i + 1
            i += 1
        add(name_start, value_start, i)
    except ValueError:
        return None
    return params


def torchserve_route(method: str, uri: str, request_text: str) -> tuple:
    """The management call TorchServe 0.12 makes of `method uri` (request line and headers: `request_text`), the
    key assumed right: ('register',), ('describe', model, version), ..., ('error',) or ('refused',)."""
    segs = netty_segments(uri)
    if segs is None:
        return ("error",)
    n = len(segs)
    if n == 0 or (n == 2 and segs[1] == "api-description"):  # ApiDescriptionRequestHandler
        api = (netty_decode(uri[:path_end(uri)], True) == "/" and method == "OPTIONS") or n == 2
        return ("api-description",) if api else ("refused",)
    if "/token" in request_text:  # TokenAuthorizationHandler: req.toString().contains("/token")
        return ("token",)
    if n == 1:  # isManagementReq reads segments[1]: ArrayIndexOutOfBoundsException, a 500
        return ("error",)
    if (2 <= n <= 4 and segs[1] == "models") or (n == 5 and segs[4] == "set-default"):
        return _model_route(method, segs, uri)
    if n == 4 and segs[1] == "v1" and segs[2] == "models":
        return ("kfv1-ready", segs[3]) if method == "GET" else ("refused",)
    if 2 <= n <= 4 and segs[1] == "workflows":  # WorkflowMgmtRequestHandler
        return ("workflow", method, *segs[2:3])
    return ("refused",)  # InvalidRequestHandler: 404


def _model_route(method: str, segs: list, uri: str) -> tuple:
    """ManagementRequestHandler's branch for a management path (`segs` passed isManagementReq)."""
    n = len(segs)
    if segs[1] != "models":
        return ("refused",)
    if n < 3:
        if method == "GET":
            return ("list",)
        if method == "POST":
            return ("register",) if netty_params(uri) is not None else ("error",)
        return ("refused",)
    version = segs[3] if n == 4 else None
    if method == "GET":
        return ("describe", segs[2], version)
    if method == "PUT":
        return ("set-default", segs[2], segs[3]) if n == 5 else ("scale", segs[2], version)
    if method == "DELETE":
        return ("unregister", segs[2], version)
    if method == "OPTIONS":
        return ("model-api-description", segs[2], version)
    return ("refused",)


def request_text(method: str, target: str, headers: dict) -> str:
    """The request line and headers, the text TorchServe searches for '/token'."""
    return f"{method} {target} HTTP/1.1\n" + "".join(f"{k}: {v}\n" for k, v in headers.items())


def wire(target: str) -> str:
    """`target` as both servers read it off the wire: its UTF-8 bytes as ISO-8859-1 characters."""
    return target.encode("utf-8").decode("latin-1")


def expected_route(approved) -> tuple:
    """The torchserve_route tuple of the allow-listed call the guard approved."""
    name, segs = approved.route.name, approved.segments
    if name in ("describe", "scale", "unregister"):
        return (name, segs[1], segs[2] if len(segs) == 3 else None)
    if name == "set-default":
        return (name, segs[1], segs[2])
    return (name,)


# ---------------------------------------------------------------------------------------------- the corpus

URL, GOOD = "{URL}", "{GOOD}"
BASES = (
    ("POST", "/models", f"url={URL}&model_name=x"), ("POST", "/models", f"url={GOOD}"),
    ("POST", "/models", f"model_name=x&url={URL}&initial_workers=1"), ("GET", "/models", ""),
    ("GET", "/models/good", ""), ("GET", "/models/good/all", "customized=false"),
    ("PUT", "/models/good", "min_worker=1&synchronous=true"), ("PUT", "/models/good/1.0/set-default", ""),
    ("DELETE", "/models/x", ""), ("POST", "/workflows", f"url={URL}"), ("GET", "/token", "type=management"),
    ("OPTIONS", "/", ""), ("GET", "/api-description", ""), ("GET", "/v1/models/good", ""),
)
BUG_REPORT = (("POST", f"/models%2F?url={URL}"), ("POST", f"/%6Dodels?url={URL}"))
METHODS = ("GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "HEAD", "TRACE", "post")
ODD_CHARS = ("ｍ", "ſ", "\u0130", "\u212a", "é", "\u200b", "\ufeff", "%C0%AF", "%E2%80%8B", "%EF%BD%8D", "%00",
             "%FF", "%", "%2", "%zz", "+", "*", "\\", "%5C", "@", ":", "$", "!")


class Pick:
    """Choices for the corpus generator: `int(lo, hi)` (inclusive) from hypothesis or a seeded random.Random."""

    def __init__(self, int_between):
        self.int = int_between

    def one(self, seq):
        return seq[self.int(0, len(seq) - 1)]


def _at(pick: Pick, path: str, chars: str) -> int:
    """A position in `path` of one of `chars` (0 if none)."""
    spots = [i for i, c in enumerate(path) if c in chars] or [0]
    return pick.one(spots)


def _encode_char(pick, path):
    """Percent-encode one character (any, '/' included), upper- or lower-case hex."""
    if not path:
        return path
    i = pick.int(0, len(path) - 1)
    hexes = "".join(f"%{b:02X}" for b in path[i].encode())
    return path[:i] + (hexes.lower() if pick.int(0, 1) else hexes) + path[i + 1:]


def _flip_case(pick, path):
    """Swap the case of one letter."""
    i = _at(pick, path, string.ascii_letters)
    return path[:i] + path[i:i + 1].swapcase() + path[i + 1:]


def _extra_slash(pick, path):
    """Repeat a '/'."""
    i = _at(pick, path, "/")
    return path[:i] + "/" + path[i:]


def _trailing(pick, path):
    """A trailing slash, encoded slash or dot segment."""
    return path + pick.one(("/", "//", "%2F", "%2f", "/.", "/./", "/x/..", "/%2E", "/%2e%2e", "/%2E%2E/models"))


def _dot_segment(pick, path):
    """A dot segment at a '/'."""
    i = _at(pick, path, "/")
    return path[:i] + pick.one(("/.", "/x/..", "/%2E", "/.%2E/x/..", "/%2e%2e/models")) + path[i:]


def _parameter(pick, path):
    """A ';' parameter after a segment."""
    i = _at(pick, path, "/") if pick.int(0, 1) else len(path)
    return path[:i] + pick.one((";", ";x=1", ";jsessionid=1", "%3B", "%3b")) + path[i:]


def _absolute(pick, path):
    """An absolute-form or authority-like prefix."""
    return pick.one(("http://localhost", "http://127.0.0.1:1", "HTTP://x", "//x", "/", "*", "")) + path


def _query_chars(pick, path):
    """An encoded or raw '?' or '#' in the path."""
    return path + pick.one(("%3F", "%3Fx=1", "%3f", "%23", "%23x", "#", "#frag", "?", "%3F%23"))


def _odd_char(pick, path):
    """An odd character (unicode look-alike, bad escape, overlong UTF-8...) in or instead of one."""
    i = pick.int(0, len(path))
    return path[:i] + pick.one(ODD_CHARS) + path[i + pick.int(0, 1):]


def _recase_models(pick, path):
    """'models' spelled in another case."""
    return path.replace("models", pick.one(("Models", "MODELS", "mOdels", "models")), 1)


def _encode_segment(pick, path):
    """Percent-encode a whole segment."""
    segs = path.split("/")
    i = pick.int(0, len(segs) - 1)
    segs[i] = "".join(f"%{b:02x}" for b in segs[i].encode())
    return "/".join(segs)


PATH_MUTATIONS = (_encode_char, _flip_case, _extra_slash, _trailing, _dot_segment, _parameter, _absolute,
                  _query_chars, _odd_char, _recase_models, _encode_segment)
QUERY_SMUGGLES = (f";url={URL}", f"&url={URL}", f"&url={URL}#", f"#&url={URL}", f"%26url%3D{URL}", "&handler=evil",
                  "&runtime=python", f"&&url={URL}", f"&=url={URL}", f"&u%72l={URL}", f"&URL={URL}",
                  f"&url+={URL}", f"&url%00={URL}", "&model_name=..%2F..", "&initial_workers=1", "&x=%2Ftoken")


def _mutate_query(pick, query):
    """The base query with a smuggled parameter, a renamed `url`, or emptied."""
    kind = pick.int(0, 3)
    if kind == 0:
        return query + pick.one(QUERY_SMUGGLES)
    if kind == 1:
        return pick.one(QUERY_SMUGGLES).lstrip("&") + "&" + query
    if kind == 2:
        return query.replace("url=", pick.one(("u%72l=", "%75rl=", "URL=", "url%3D", "url;=", "url")), 1)
    return ""


def spelling(pick: Pick) -> tuple:
    """(method, target template) of a management call, mutated: {URL} and {GOOD} mark registration urls."""
    if pick.int(0, 9) == 0:
        return pick.one(BUG_REPORT)
    method, path, query = pick.one(BASES[:3]) if pick.int(0, 1) else pick.one(BASES)
    for _ in range(pick.one((0, 1, 1, 1, 2, 3))):
        path = pick.one(PATH_MUTATIONS)(pick, path)
    if pick.int(0, 2) == 0:
        query = _mutate_query(pick, query)
    if pick.int(0, 5) == 0:
        method = pick.one(METHODS)
    return method, path + ("?" + query if query or pick.int(0, 5) == 0 else "")


def fill(template: str, url: str, good: str) -> str:
    """`template` with its registration url slots filled."""
    return template.replace(URL, url).replace(GOOD, good)


def seeded_corpus(n: int, seed: int = 20240611) -> list:
    """`n` distinct spellings from a seeded generator, the bug report's first."""
    rng = random.Random(seed)
    pick = Pick(rng.randint)
    out = list(BUG_REPORT)
    while len(out) < n:
        s = spelling(pick)
        if s not in out:
            out.append(s)
    return out


# ---------------------------------------------------------------------------------------------- the store


def write_mar(path: Path, name: str, handler_source: str) -> Path:
    """A minimal TorchServe archive: MAR-INF/MANIFEST.json and a `handler.py` with a `handle` function."""
    manifest = {"createdOn": "01/01/2024 00:00:00", "runtime": "python", "archiverVersion": "0.12.0",
                "model": {"modelName": name, "handler": "handler.py", "modelVersion": "1.0"}}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        z.writestr("handler.py", handler_source)
    return path


HANDLER = ("import json\n\n\ndef handle(data, context):\n"
           "    return None if data is None else [json.dumps({'ok': True})] * len(data)\n")


def make_store(root: Path) -> dict:
    """A model store with good.mar, second.mar, an archived folder, and link.mar: a symlink to an archive outside
    it whose handler writes a marker file when imported."""
    store, outside = root / "store", root / "outside"
    store.mkdir(parents=True)
    outside.mkdir()
    marker = root / "evil-handler-ran"
    write_mar(store / "good.mar", "good", HANDLER)
    write_mar(store / "second.mar", "second", HANDLER)
    (store / "folder" / "MAR-INF").mkdir(parents=True)
    (store / "folder" / "MAR-INF" / "MANIFEST.json").write_text("{}")
    evil = write_mar(outside / "evil.mar", "evil", f"open({str(marker)!r}, 'w').write('ran')\n" + HANDLER)
    (store / "link.mar").symlink_to(evil)
    return dict(store=store, outside=outside, evil=evil, marker=marker)


def evil_urls(paths: dict) -> tuple:
    """Query-ready spellings of the symlink out of the store (and of the archive it leads to)."""
    q = lambda s: urllib.parse.quote(s, safe="")  # noqa: E731
    link = paths["store"] / "link.mar"
    return ("link.mar", "link%2Emar", "./link.mar", "link", q(str(link)), q(f"file://{link}"), q(str(paths["evil"])),
            q(f"file://{paths['evil']}"), "..%2Foutside%2Fevil.mar")


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """make_store's paths, one store per test module."""
    return make_store(tmp_path_factory.mktemp("guard"))
