"""Issue 13, serving side: the handler, in-process, never answers 500 for anything a request or a people-folder
file can hold (property-based: hypothesis generates every request field and every adapter metadata key), a person
removed during a request is 404, and an anchor of non-ASCII digits is a 400."""
from __future__ import annotations

import json
import logging
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file

from formats.adapter_file import META_KEY
from formats.tensors import read_metadata, save_safetensors
from runtime import Runtime
from serve.handler import HandlerConfig, Service
from serve.requests import FIELDS
from fixtures.torchserve_context import Context  # noqa: F401 - re-exported: other tests import it from here
from tests.test_export import TinyExports, tiny_generator


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return TinyExports(tmp_path_factory, tiny_generator())


@pytest.fixture(scope="module")
def service(exports, tmp_path_factory):
    people = tmp_path_factory.mktemp("people")
    shutil.copy(exports["people"] / "alice.safetensors", people / "alice.safetensors")
    rt = Runtime(exports["keep"], people, threads=1)
    return Service(rt, "tiny", HandlerConfig(warmup=False, max_frames=3), people)


class NoInternalErrors(logging.Handler):
    """Collects the handler's 'internal error' log lines (an exception that escaped every mapping)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())


def _ask(service, body) -> tuple[int, object]:
    ctx = Context()
    watcher = NoInternalErrors()
    logging.getLogger("serve.handler").addHandler(watcher)
    try:
        out = service.handle_one(body, 0, ctx)
    finally:
        logging.getLogger("serve.handler").removeHandler(watcher)
    assert not watcher.records, watcher.records
    return ctx.status[0], out


def _no_server_error(status: int, out) -> None:
    """2xx or 4xx; a 503/504 only for `budget_ms` (the client's own deadline, which it chose)."""
    if status >= 500:
        assert status in (503, 504) and json.loads(out)["type"] == "budget_exceeded", (status, out)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.floats() | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                max_size=3), max_leaves=8)
FIELD_VALUES = {"person": st.sampled_from(["alice", "nobody", "alice\n", "../x", "²"]) | JSON,
                "anchor": st.sampled_from([0, 1, "0", "²", "١", "photo1", -1, 10**20]) | JSON,
                "a": st.sampled_from([0, "²"]) | JSON, "b": st.sampled_from([1, "⁹"]) | JSON,
                "yaw": st.floats() | JSON, "pitch": st.floats() | JSON, "t": st.floats() | JSON,
                "frames": st.integers(-5, 5) | JSON, "latent": JSON, "format": st.sampled_from(["png", "jpg"]) | JSON,
                "size": st.integers(-5, 600) | JSON, "quality": st.integers(-5, 200) | JSON,
                "budget_ms": st.floats() | JSON, "response": st.sampled_from(["image", "json"]) | JSON}


@st.composite
def requests(draw):
    op = draw(st.sampled_from(list(FIELDS)) | JSON)
    fields = FIELDS[op] if isinstance(op, str) and op in FIELDS else tuple(FIELD_VALUES)
    body = {"op": op}
    for name in draw(st.lists(st.sampled_from([f for f in fields if f != "op"] or ["person"]), unique=True)):
        body[name] = draw(FIELD_VALUES.get(name, JSON))
    encoding = draw(st.sampled_from(["dict", "bytes", "str"]))
    if encoding == "dict":
        return body
    text = json.dumps(body)
    return text.encode() if encoding == "bytes" else text


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(body=requests())
def test_generated_requests_never_cause_a_server_error(service, body):
    """Why: "a client can cause a 500": no generated value of any request field gives a 5xx or escapes."""
    _no_server_error(*_ask(service, body))


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=64) | st.text(max_size=64) | JSON)
def test_generated_bodies_never_cause_a_server_error(service, raw):
    _no_server_error(*_ask(service, raw))


METADATA_KEYS = ["format", "format_version", "rank", "alpha", "layout", "policy", "targets", "base_fingerprint",
                 "dtype", "anchor_names", "extra"]


@pytest.fixture(scope="module")
def alice(exports):
    path = exports["people"] / "alice.safetensors"
    return load_file(str(path)), json.loads(read_metadata(path)[META_KEY])


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(METADATA_KEYS), value=JSON, drop=st.booleans(),
       op=st.sampled_from(["novel_view", "person", "interpolate"]))
def test_generated_adapter_metadata_in_the_people_folder_is_a_4xx(service, alice, key, value, drop, op):
    """Why: "an adapter whose metadata has a wrong type ... placed in the people folder turns its requests into
    500s": every metadata key, replaced by a generated value (or removed), gives 2xx/4xx for every op."""
    tensors, meta = alice
    meta = dict(meta)
    if drop:
        meta.pop(key)
    else:
        meta[key] = value
    save_safetensors(service.people_dir / "fuzz.safetensors", tensors, {META_KEY: json.dumps(meta)})
    body = {"op": op, "person": "fuzz"}
    if op == "novel_view":
        body["anchor"] = 0
    elif op == "interpolate":
        body.update(a=0, b=1, t=0.5)
    status, out = _ask(service, body)
    _no_server_error(status, out)
    if status != 200:
        assert 400 <= status < 500 and json.loads(out)["field"] == "person", (status, out)


@pytest.mark.parametrize("anchor", ["²", "١٢", "⁰"])
def test_non_ascii_digit_anchor_is_a_400(service, anchor):
    """Why: an anchor whose characters are digits to str.isdigit() but not to int() raised inside the runtime."""
    status, out = _ask(service, {"op": "novel_view", "person": "alice", "anchor": anchor})
    assert status == 400 and json.loads(out)["field"] == "anchor", out


def test_person_removed_during_a_request_is_404(service, monkeypatch):
    """Why: "a person removed during a request gives 422 instead of 404"."""
    import runtime.people as people_mod
    shutil.copy(service.people_dir / "alice.safetensors", service.people_dir / "carol.safetensors")
    real = people_mod.read_adapter

    def vanish_then_read(path, *args, **kwargs):
        path.unlink()  # `people remove` wins the race after the handler's existence check
        return real(path, *args, **kwargs)
    monkeypatch.setattr(people_mod, "read_adapter", vanish_then_read)
    status, out = _ask(service, {"op": "novel_view", "person": "carol", "anchor": 0})
    assert status == 404 and json.loads(out)["type"] == "unknown_person", out


def test_wrong_type_metadata_is_422_naming_the_person(service, alice):
    tensors, meta = alice
    save_safetensors(service.people_dir / "dave.safetensors", tensors,
                     {META_KEY: json.dumps({**meta, "anchor_names": 3})})
    status, out = _ask(service, {"op": "novel_view", "person": "dave", "anchor": 0})
    body = json.loads(out)
    assert status == 422 and body["field"] == "person" and "anchor_names" in body["error"], body


def test_runtime_cli_takes_any_adapter_file_name(exports, tmp_path, capsys):
    """Why (hygiene): "the runtime CLI cannot use an adapter whose file name has a space, `+`, an accent or > 64
    characters": the file is added under an internal name, so its stem need not be a person name."""
    from runtime.__main__ import main
    odd = tmp_path / ("my photo+é " + "x" * 70 + ".safetensors")
    shutil.copy(exports["people"] / "alice.safetensors", odd)
    out = tmp_path / "view.png"
    assert main([str(exports["keep"]), str(odd), "--anchor", "0", "--yaw", "0.2", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert main([str(exports["keep"]), str(odd), "--anchor", "²", "--out", str(out)]) == 2
    assert "anchor" in capsys.readouterr().err
    assert main([str(exports["keep"]), str(odd), "--yaw", "nan", "--out", str(out)]) == 2
    assert "yaw: must be finite" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ the model API's guard

def _store(tmp_path):
    store = tmp_path / "store"
    (store / "folder" / "MAR-INF").mkdir(parents=True)
    (store / "folder" / "MAR-INF" / "MANIFEST.json").write_text("{}")
    (store / "good.mar").write_bytes(b"PK")
    outside = tmp_path / "evil.mar"
    outside.write_bytes(b"PK")
    (store / "link.mar").symlink_to(outside)
    return store, outside


def test_only_archives_inside_the_store_are_registrable_whatever_the_url_form(tmp_path):
    """Why: "a plain absolute path to a `.mar` outside the model store is registered and served"."""
    from serve.model_api_guard import Refused, archive_in_store
    store, outside = _store(tmp_path)
    for ok, name in [("good.mar", "good.mar"), (str(store / "good.mar"), "good.mar"),
                     (f"file://{store}/good.mar", "good.mar"), (f"file://localhost{store}/good%2Emar", "good.mar"),
                     ("folder", "folder"), (str(store / "folder" / ".." / "good.mar"), "good.mar")]:
        assert archive_in_store(ok, store) == name, ok
    for bad in [str(outside), f"file://{outside}", "../evil.mar", "link.mar", str(store / "link.mar"),
                "https://example.com/x.mar", "file://otherhost/x.mar", "%2E%2E/evil.mar", str(store), "/etc/passwd",
                "missing.mar", "", "good.mar\0"]:
        with pytest.raises(Refused) as info:
            archive_in_store(bad, store)
        assert info.value.status == 403 and info.value.field == "url", bad


def test_generated_config_bounds_connections_and_guards_the_model_api(tmp_path):
    """Why (hygiene): "the server keeps idle half-open connections forever": gRPC connections get TorchServe's
    max connection age; with the model API on, TorchServe's management listener is a private unix socket."""
    from serve.server import ServeConfig, config_properties
    store = tmp_path / "store"
    store.mkdir()
    cfg = ServeConfig(model_store=store)
    props = dict(line.split("=", 1) for line in config_properties(cfg, ["m"], store).splitlines()
                 if "=" in line and not line.startswith("#"))
    assert props["grpc_inference_max_connection_age_ms"] == "300000"
    assert props["grpc_management_max_connection_age_grace_ms"] == "75000"
    assert props["enable_model_api"] == "false" and props["management_address"].startswith("http://127.0.0.1:")
    cfg.enable_model_api = True
    props = dict(line.split("=", 1) for line in config_properties(cfg, ["m"], store, tmp_path / "s.sock").splitlines()
                 if "=" in line and not line.startswith("#"))
    assert props["management_address"] == f"unix:{tmp_path / 's.sock'}" and props["use_native_io"] == "true"
