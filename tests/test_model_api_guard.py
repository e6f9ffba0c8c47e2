"""serve.model_api_guard against TorchServe's own routing: no spelling of a management call gets a registration (or
any call) past the guard that the guard did not approve, decided in-process.

Why: an attack run registered an archive from outside the model store with `POST /models%2F?url=link.mar`: the old
guard inspected only registrations whose literal path was `/models`, while TorchServe decodes the path first.

The generated corpus (tests/helpers/management_api.py) is checked in-process against the model of TorchServe 0.12's
routing there (fast, hypothesis), with the allow-listed calls and the refusals spelled out, and the model's decoding
is checked against Netty's own QueryStringDecoder from TorchServe's jar. The guard server and a real TorchServe:
tests/test_model_api_guard_server.py.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve import model_api_guard
from serve.model_api_guard import Refused
from tests.helpers.management_api import (BUG_REPORT, METHODS, Pick, evil_urls, expected_route, fill, netty_params,
                                          netty_segments, request_text, seeded_corpus, spelling, torchserve_route,
                                          wire)
from tests.helpers.management_api import paths  # noqa: F401 - fixture

# --------------------------------------------------------------------------------------- the in-process property


def check_guard(method: str, target: str, store: Path, headers: dict):
    """Run the guard's decision on one spelling and assert that what it forwards is exactly what it approved, as
    TorchServe routes it; returns the Approved, or None when refused."""
    try:
        approved = model_api_guard.approve(method, target, store, headers)
    except Refused as e:
        assert e.status in (400, 403, 411, 413) and e.field and e.message, (method, target)
        return None
    sent = {**approved.headers, "Host": "localhost", "Accept-Encoding": "identity"}
    route = torchserve_route(method, approved.target, request_text(method, approved.target, sent))
    params = netty_params(approved.target)
    if route[0] == "register":
        assert approved.route.name == "register", (method, target, approved.target)
        (url,) = params["url"]
        assert not (store / url).is_symlink() and (store / url).resolve().parent == store.resolve(), (target, url)
    assert route == expected_route(approved), (method, target, approved.target, route)
    assert approved.target.partition("?")[0] == target.partition("?")[0], "the path was rewritten"
    assert params is not None and set(params) <= set(approved.route.params), (target, params)
    assert all(len(v) == 1 for v in params.values()), (target, params)
    return approved


@settings(max_examples=600, deadline=None)
@given(st.data())
def test_no_spelling_gets_a_call_past_the_guard_that_it_did_not_approve(paths, data):
    """Generated spellings (percent-encoding of any character, case, slashes, dot segments, ';' parameters,
    absolute form, encoded '?'/'#', unicode, methods, smuggled query parameters): refused, or forwarded as exactly
    the allow-listed call approved; no registration of anything but an in-store archive."""
    pick = Pick(lambda lo, hi: data.draw(st.integers(lo, hi)))
    method, template = spelling(pick)
    target = wire(fill(template, pick.one(evil_urls(paths)), pick.one(("good.mar", "folder", "second.mar"))))
    auth = pick.one(("Bearer k", "Bearer k/token", None))
    approved = check_guard(method, target, paths["store"], {"Authorization": auth} if auth else {})
    if approved is not None and approved.route.name == "register":
        assert "link" not in approved.target and "evil" not in approved.target


@settings(max_examples=400, deadline=None)
@given(method=st.sampled_from(METHODS), target=st.text(max_size=60).map(lambda s: wire("/" + s)))
def test_arbitrary_targets_are_refused_or_forwarded_as_approved(paths, method, target):
    """Arbitrary text after the '/' (any unicode, control characters included)."""
    check_guard(method, target, paths["store"], {"Authorization": "Bearer k"})


def test_the_bug_reports_spellings_are_refused_naming_the_path(paths):
    for method, template in BUG_REPORT:
        with pytest.raises(Refused) as e:
            model_api_guard.approve(method, fill(template, "link.mar", ""), paths["store"])
        assert e.value.status == 403 and e.value.field == "path" and "%" in e.value.message
        assert torchserve_route(method, fill(template, "link.mar", ""), "") == ("register",)


@pytest.mark.parametrize("method,target,route,forwarded", [
    ("OPTIONS", "/", "api-description", "/"),
    ("GET", "/api-description", "api-description", "/api-description"),
    ("GET", "/token?type=inference", "token", "/token?type=inference"),
    ("GET", "/models?limit=10&next_page_token=2", "list", "/models?limit=10&next_page_token=2"),
    ("POST", "/models?url=.%2Fgood.mar&model_name=g&synchronous=True", "register",
     "/models?url=good.mar&model_name=g&synchronous=true"),
    ("GET", "/models/good", "describe", "/models/good"),
    ("GET", "/models/good/all?customized=false", "describe", "/models/good/all?customized=false"),
    ("GET", "/models/good/1.0", "describe", "/models/good/1.0"),
    ("PUT", "/models/good?min_worker=2&max_worker=2&synchronous=true", "scale",
     "/models/good?min_worker=2&max_worker=2&synchronous=true"),
    ("PUT", "/models/good/1.0?min_worker=1", "scale", "/models/good/1.0?min_worker=1"),
    ("PUT", "/models/good/1.0/set-default", "set-default", "/models/good/1.0/set-default"),
    ("DELETE", "/models/good", "unregister", "/models/good"),
    ("DELETE", "/models/good/1.0", "unregister", "/models/good/1.0"),
])
def test_the_allow_listed_calls_pass(paths, method, target, route, forwarded):
    approved = check_guard(method, target, paths["store"], {"Authorization": "Bearer k"})
    assert approved is not None and approved.route.name == route and approved.target == forwarded
    assert approved.headers == {"Authorization": "Bearer k"}


@pytest.mark.parametrize("method,target,field", [
    ("POST", "/models/?url=good.mar", "path"), ("POST", "//models?url=good.mar", "path"),
    ("POST", "/./models?url=good.mar", "path"), ("POST", "/models;x?url=good.mar", "path"),
    ("POST", "http://localhost/models?url=good.mar", "path"), ("POST", "/Models?url=good.mar", "path"),
    ("POST", "/models#x?url=link.mar", "path"), ("GET", "/models/token", "path"),
    ("POST", "/workflows?url=good.mar", "path"), ("GET", "/v1/models/good", "path"),
    ("OPTIONS", "/models/good", "method"), ("PATCH", "/models", "method"), ("POST", "/models/good", "method"),
    ("POST", "/models?url=good.mar;url=link.mar", "query"), ("POST", "/models?url=good.mar&url=link.mar", "url"),
    ("POST", "/models?url=good.mar&handler=x", "handler"), ("POST", "/models?url=good.mar&runtime=x", "runtime"),
    ("POST", "/models?model_name=x", "url"), ("POST", "/models?url=link.mar", "url"),
    ("POST", "/models?url=good.mar&model_name=..%2Fx", "model_name"), ("GET", "/token?type=API", "type"),
    ("PUT", "/models/good?min_worker=1e3", "min_worker"), ("GET", "/models?limit=1&x=2", "x"),
    ("POST", "/models?url=good.mar&model_name=x%2Ftoken", "model_name"),
])
def test_everything_else_is_refused_naming_the_field(paths, method, target, field):
    with pytest.raises(Refused) as e:
        model_api_guard.approve(method, target, paths["store"], {"Authorization": "Bearer k"})
    assert e.value.status in (400, 403) and e.value.field == field, (e.value.field, e.value.message)


def test_the_authorization_header_cannot_turn_a_call_into_the_token_call(paths):
    """TorchServe takes any request whose text holds '/token' for its key renewal."""
    with pytest.raises(Refused) as e:
        model_api_guard.approve("GET", "/models", paths["store"], {"Authorization": "Bearer x/token"})
    assert e.value.field == "header"


# ------------------------------------------------------------------ the model checked against Netty's decoder


def _torchserve_jar():
    """TorchServe's frontend jar (Netty and Gson inside), or None."""
    try:
        from serve.server import ts_home
        return ts_home() / "ts" / "frontend" / "model-server.jar"
    except Exception:
        return None


NETTY_PROBE = """
import com.google.gson.Gson;
import io.netty.handler.codec.http.QueryStringDecoder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.*;

public class NettyProbe {
    public static void main(String[] args) throws Exception {
        Gson gson = new Gson();
        String[] uris = gson.fromJson(new String(Files.readAllBytes(Paths.get(args[0])), StandardCharsets.UTF_8),
                                      String[].class);
        List<Map<String, Object>> out = new ArrayList<>();
        for (String uri : uris) {
            Map<String, Object> r = new HashMap<>();
            QueryStringDecoder d = new QueryStringDecoder(uri);
            try { r.put("segments", Arrays.asList(d.path().split("/"))); } catch (IllegalArgumentException e) { }
            try { r.put("params", d.parameters()); } catch (IllegalArgumentException e) { }
            out.add(r);
        }
        Files.write(Paths.get(args[1]), gson.toJson(out).getBytes(StandardCharsets.UTF_8));
    }
}
"""


def test_the_routing_model_decodes_like_torchserves_netty(paths, tmp_path):
    """Why: the in-process corpus test is only as good as torchserve_route; its path splitting and query parsing
    are compared with Netty's QueryStringDecoder and Java's String.split from TorchServe's own jar."""
    jar, java = _torchserve_jar(), shutil.which("java")
    if jar is None or not jar.is_file() or java is None:
        pytest.skip("needs Java and TorchServe's model-server.jar")
    uris = [wire(fill(t, u, "good.mar")) for (_, t), u in zip(seeded_corpus(400, seed=7),
                                                             evil_urls(paths) * 100)]
    uris += ["/", "", "?a=1", "/models/", "/models%2F", "/a;b=c?x=1;url=2#y&z=3", "/%E2%82", "/%zz", "/?=a&b",
             "/x?a=1&a=2&+b+=%2B", "/x?#a=1", "#x", "/models?url=a%2", "/m?%C0%AF=%FF"]
    (tmp_path / "NettyProbe.java").write_text(NETTY_PROBE)
    (tmp_path / "in.json").write_text(json.dumps(uris))
    subprocess.run([java, "-cp", str(jar), str(tmp_path / "NettyProbe.java"), str(tmp_path / "in.json"),
                    str(tmp_path / "out.json")], check=True, timeout=120, capture_output=True)
    results = json.loads((tmp_path / "out.json").read_text())
    assert len(results) == len(uris)
    for uri, r in zip(uris, results):
        assert netty_segments(uri) == r.get("segments"), uri
        mine = netty_params(uri)
        if mine is not None and "\ufffd" in json.dumps(mine, ensure_ascii=False):
            continue  # how many U+FFFD a bad byte run becomes differs between Java and Python; no route uses it
        assert mine == r.get("params"), uri
