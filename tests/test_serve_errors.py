"""What the TorchServe handler sends names people, fields and file names, never the server's folders.

Every request kind (hypothesis over ops and people) against a people folder holding every kind of bad file (NaN
tensors, garbage bytes, another base model's adapter, a folder in a file's place, a broken native adapter, whose
onnxruntime error names the file it read) and an export whose mapping graph was altered: no JSON response (errors,
and the 'people' and 'person' answers) contains an absolute path.
"""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file

from formats.adapter_file import META_KEY
from formats.tensors import read_metadata, save_safetensors
from runtime import Runtime
from runtime.native_adapters import SUFFIX
from serve.handler import HandlerConfig, Service
from tests.test_export import TinyExports, tiny_generator
from tests.test_hardening_serve import _ask

ABSOLUTE = re.compile(r"(?<![\w.:/])/[\w.+-]+/")
"""Two path components after a slash that is not inside a word or URL: an absolute path of the server."""
PEOPLE = ("alice", "dora", "nan", "garbage", "otherbase", "folder", "nobody")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    exports = TinyExports(tmp_path_factory, tiny_generator())
    root = tmp_path_factory.mktemp("errors")
    export = root / "export"
    shutil.copytree(exports["keep"], export)
    data = bytearray((export / "mapping.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (export / "mapping.onnx").write_bytes(bytes(data))
    people = root / "people"
    people.mkdir()
    alice = exports["people"] / "alice.safetensors"
    shutil.copy(alice, people / "alice.safetensors")
    tensors, meta = load_file(str(alice)), read_metadata(alice)
    first = sorted(k for k in tensors if not k.startswith("anchors"))[0]
    save_safetensors(people / "nan.safetensors", {**tensors, first: np.full_like(tensors[first], np.nan)}, meta)
    (people / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    other = json.loads(meta[META_KEY])
    other["base_fingerprint"] = "sha256:" + "1" * 64
    save_safetensors(people / "otherbase.safetensors", tensors, {META_KEY: json.dumps(other)})
    (people / "folder.safetensors").mkdir()
    rt = Runtime(export, people, threads=1)
    rt.add_person("dora", alice)  # with native files, one of them then broken
    next(people.glob(f"dora.synthesis.*{SUFFIX}")).write_bytes(b"\0" * 64)
    return Service(rt, "tiny", HandlerConfig(warmup=False, max_frames=3), people), root


def requests():
    person = st.sampled_from(PEOPLE)
    latent = st.just([0.1] * 64)
    return st.one_of(
        st.fixed_dictionaries({"op": st.just("novel_view"), "person": person, "anchor": st.sampled_from([0, 9, "x"])}),
        st.fixed_dictionaries({"op": st.just("novel_view"), "person": person, "latent": latent}),
        st.fixed_dictionaries({"op": st.just("interpolate"), "person": person, "a": st.just(0), "b": st.just(1),
                               "t": st.just(0.5)}),
        st.fixed_dictionaries({"op": st.just("person"), "person": person}),
        st.fixed_dictionaries({"op": st.just("video"), "person": person, "anchor": st.just(0),
                               "frames": st.just(2)}),
        st.fixed_dictionaries({"op": st.just("novel_view"), "z": st.just([0.0] * 8)}),
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=requests())
def test_no_error_names_a_server_folder(service, body):
    svc, root = service
    status, out = _ask(svc, body)
    if isinstance(out, str):  # JSON: errors, and the answers of 'people' and 'person'
        assert str(root) not in out and not ABSOLUTE.search(out), (body, out)


def test_the_bad_files_do_fail_with_their_names(service):
    """Positive control: each bad person is refused, naming their file (so the test above sees real errors)."""
    svc, root = service
    for person in ("nan", "garbage", "otherbase", "folder"):
        status, out = _ask(svc, {"op": "novel_view", "person": person, "anchor": 0})
        body = json.loads(out)
        assert status in (404, 422) and person in body["error"] and str(root) not in body["error"], (person, body)
    status, out = _ask(svc, {"op": "novel_view", "person": "alice", "latent": [0.1] * 64})
    assert status == 200
    status, out = _ask(svc, {"op": "person", "person": "dora"})
    why = json.loads(out)["info"]["native_adapter_why_not"]["synthesis"]
    assert status == 200 and "cannot be loaded" in why and str(root) not in why and "my3dgen-native" not in why
