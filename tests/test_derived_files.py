"""Derived files never decide who is rendered: each is checked against what it was derived from.

- A person's native `.onnx_adapter` files are derived from their `.safetensors`: whatever is written over them
  (another person's files under this person's names, the other graph's sidecar, truncated or flipped bytes, a
  symlink, a folder), the person renders as their checked `.safetensors` says, bit for bit, or the request is a
  422 naming the person; never another face (generated over tampering kinds with hypothesis).
- Graphs and TensorRT engines are derived from the export: their bytes must hash to the manifest's sha256 (and an
  engine's `graph_sha256` must be its graph's), checked once when a graph is opened; a replaced graph with the
  same inputs and outputs (another person's merged graph) is refused, naming the file.
- A corrupt graph is a one-line error in `python -m runtime`, and every FormatError-family error in the code is
  built with its (path, reason) pair, so no error path can itself raise a TypeError.
"""
from __future__ import annotations

import ast
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import AdapterInvalid, ExportInvalid, Runtime
from runtime.native_adapters import SUFFIX
from serve.handler import HandlerConfig, Service
from fixtures.people import make_person
from tests.test_export import G, exports  # noqa: F401 - G and exports are fixtures
from tests.test_hardening_serve import _ask

REPO = Path(__file__).resolve().parents[1]
GRAPHS = ("synthesis", "render")


@pytest.fixture(scope="module")
def world(exports, G, tmp_path_factory):
    """A people folder with bob and carol added by the runtime (native files written), and the true images of each
    (rendered from numpy feeds of their .safetensors, with no native file in the folder)."""
    root = tmp_path_factory.mktemp("derived")
    people = root / "people"
    people.mkdir()
    make_person(G, root / "carol.safetensors", seed=7)
    rt = Runtime(exports["keep"], people, threads=2, backend="onnxruntime")
    rt.add_person("bob", exports["people"] / "bob.safetensors")
    rt.add_person("carol", root / "carol.safetensors")
    assert rt.person_info("bob")["native_adapter"] == {"synthesis": True, "render": True}
    latent = np.random.default_rng(5).standard_normal((rt.num_ws, rt.w_dim)).astype(np.float32) * 0.3
    plain = root / "plain"
    plain.mkdir()
    for p in people.glob("*.safetensors"):
        shutil.copy(p, plain / p.name)
    truth_rt = Runtime(exports["keep"], plain, threads=2, backend="onnxruntime")
    truth = {who: truth_rt.novel_view(who, latent=latent).image for who in ("bob", "carol")}
    assert truth_rt.person_info("bob")["native_adapter"] == {"synthesis": False, "render": False}
    assert np.array_equal(rt.novel_view("bob", latent=latent).image, truth["bob"])  # native == numpy, exactly
    assert np.abs(truth["bob"] - truth["carol"]).max() > 1e-3
    return {"people": people, "latent": latent, "truth": truth, "export": exports["keep"]}


def native_file(folder: Path, person: str, graph: str) -> Path:
    (path,) = folder.glob(f"{person}.{graph}.*{SUFFIX}")
    return path


TAMPERING = ("other_person", "other_graph", "truncate", "flip", "empty", "random", "symlink_to_other", "directory")


def tamper(folder: Path, graph: str, kind: str, data: st.DataObject) -> None:
    """Change bob's native file of `graph` in place, the way someone with write access to the folder could."""
    target = native_file(folder, "bob", graph)
    carol = native_file(folder, "carol", graph)
    other = native_file(folder, "bob", GRAPHS[1 - GRAPHS.index(graph)])
    original = target.read_bytes()
    if kind in ("symlink_to_other", "directory"):
        target.unlink()
        target.symlink_to(carol) if kind == "symlink_to_other" else target.mkdir()
        return
    if kind == "other_person":
        new = carol.read_bytes()
    elif kind == "other_graph":
        new = other.read_bytes()
    elif kind == "truncate":
        new = original[:data.draw(st.integers(0, len(original) - 1), label="keep bytes")]
    elif kind == "flip":
        at = data.draw(st.integers(0, len(original) - 1), label="flip at")
        new = original[:at] + bytes([original[at] ^ (1 << data.draw(st.integers(0, 7)))]) + original[at + 1:]
    elif kind == "empty":
        new = b""
    else:
        new = data.draw(st.binary(min_size=1, max_size=4096), label="random bytes")
    target.write_bytes(new)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(graphs=st.sets(st.sampled_from(GRAPHS), min_size=1), kind=st.sampled_from(TAMPERING), data=st.data())
def test_tampered_native_adapters_never_render_another_face(world, graphs, kind, data, caplog):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "people"
        shutil.copytree(world["people"], folder)
        for graph in sorted(graphs):
            tamper(folder, graph, kind, data)
        rt = Runtime(world["export"], folder, threads=2, backend="onnxruntime")
        with caplog.at_level(logging.WARNING, "my3dgen.runtime"):
            try:
                image = rt.novel_view("bob", latent=world["latent"]).image
            except AdapterInvalid as e:
                assert "native adapter" in str(e)
                return
        assert np.array_equal(image, world["truth"]["bob"]), (kind, graphs)
        info = rt.person_info("bob")
        for graph in graphs:
            if not info["native_adapter"][graph]:
                assert info["native_adapter_why_not"][graph]
                assert any("bob" in r.getMessage() and graph in r.getMessage() for r in caplog.records)


def test_another_persons_native_files_under_this_persons_names_are_refused(world, tmp_path, caplog):
    """The attack run's case: carol's files copied over bob's (bob's names, hence bob's hash) served carol."""
    folder = tmp_path / "people"
    shutil.copytree(world["people"], folder)
    for graph in GRAPHS:
        shutil.copy(native_file(folder, "carol", graph), native_file(folder, "bob", graph))
    rt = Runtime(world["export"], folder, threads=2, backend="onnxruntime")
    with caplog.at_level(logging.WARNING, "my3dgen.runtime"):
        image = rt.novel_view("bob", latent=world["latent"]).image
    assert np.array_equal(image, world["truth"]["bob"])
    assert not np.array_equal(image, world["truth"]["carol"])
    info = rt.person_info("bob")
    assert info["native_adapter"] == {"synthesis": False, "render": False}
    assert all("holds other values" in why for why in info["native_adapter_why_not"].values())
    assert sum("person 'bob'" in r.getMessage() for r in caplog.records) == 2
    assert rt.person_info("carol")["native_adapter"] == {"synthesis": True, "render": True}


def test_a_native_adapter_onnxruntime_refuses_is_a_422_naming_the_person(world, tmp_path, monkeypatch):
    """Past the content check (switched off here), a native adapter that does not fit its graph (the render
    sidecar over the synthesis one) is the person's fault: a 422 naming them, not a 500."""
    import runtime.native_adapters as native
    monkeypatch.setattr(native, "check_native", lambda path, fmt, expected: None)
    folder = tmp_path / "people"
    shutil.copytree(world["people"], folder)
    shutil.copy(native_file(folder, "bob", "render"), native_file(folder, "bob", "synthesis"))
    rt = Runtime(world["export"], folder, threads=2, backend="onnxruntime")
    with pytest.raises(AdapterInvalid, match="native adapter of the synthesis graph"):
        rt.novel_view("bob", latent=world["latent"])
    service = Service(rt, "tiny", HandlerConfig(warmup=False), folder)
    status, out = _ask(service, {"op": "novel_view", "person": "bob", "latent": world["latent"][0].tolist()})
    body = json.loads(out)
    assert status == 422 and body["field"] == "person" and "bob" in body["error"], body
    assert str(folder) not in body["error"]
    status, _ = _ask(service, {"op": "novel_view", "person": "carol", "latent": world["latent"][0].tolist()})
    assert status == 200


# ---------------------------------------------------------------------------------------------- graphs and engines

def test_a_replaced_graph_with_the_same_inputs_and_outputs_is_refused(exports, tmp_path):
    """Bob's merged graphs copied into alice's merged export would render bob as 'alice'; the manifest's sha256
    catches it when the graph is opened."""
    d = tmp_path / "alice"
    shutil.copytree(exports["merged_alice"], d)
    Runtime(d, threads=2, backend="onnxruntime")  # the untouched copy loads
    for graph in GRAPHS:
        shutil.copy(exports["merged_bob"] / f"{graph}.onnx", d / f"{graph}.onnx")
    with pytest.raises(ExportInvalid, match=r"synthesis\.onnx.*not the one the export wrote.*re-export"):
        Runtime(d, threads=2, backend="onnxruntime")


def test_lazily_opened_graphs_are_checked_too(exports, tmp_path):
    d = tmp_path / "keep"
    shutil.copytree(exports["keep"], d)
    data = bytearray((d / "mapping.onnx").read_bytes())
    data[len(data) // 2] ^= 1  # one bit of one weight
    (d / "mapping.onnx").write_bytes(bytes(data))
    rt = Runtime(d, threads=2, backend="onnxruntime")
    with pytest.raises(ExportInvalid, match=r"mapping\.onnx"):
        rt.map(np.zeros(rt.z_dim, np.float32))


def _runtime_cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "MY3DGEN_ALLOCATOR": "system"}
    return subprocess.run([sys.executable, "-m", "runtime", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=300, env=env)


@pytest.mark.parametrize("damage", ["truncated_render", "synthesis_is_mapping"])
def test_corrupt_graphs_are_one_line_errors_of_python_m_runtime(exports, tmp_path, damage):
    """The attack run's cases: the error path itself raised TypeError (ExportInvalid built without its reason).
    Also with the manifest's sha256 updated to the damaged file, so onnxruntime's own refusal is reached."""
    for fix_hash in (False, True):
        d = tmp_path / f"{damage}-{fix_hash}"
        shutil.copytree(exports["keep"], d)
        if damage == "truncated_render":
            data = (d / "render.onnx").read_bytes()
            (d / "render.onnx").write_bytes(data[:len(data) // 3])
            graph = "render"
        else:
            shutil.copy(d / "mapping.onnx", d / "synthesis.onnx")
            graph = "synthesis"
        if fix_hash:
            from formats.fingerprint import sha256_file
            m = json.loads((d / "manifest.json").read_text())
            m["graphs"][graph]["sha256"] = sha256_file(d / f"{graph}.onnx")
            (d / "manifest.json").write_text(json.dumps(m))
        r = _runtime_cli(d, exports["people"] / "bob.safetensors", "--yaw", "0.1", "--out", tmp_path / "x.png")
        assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and f"{graph}.onnx" in lines[0], r.stderr
        assert "Traceback" not in r.stderr and not (tmp_path / "x.png").exists()


def test_engines_are_checked_against_their_graph_and_their_own_hash(exports, tmp_path, caplog):
    """TensorRT cannot run here; what can: an engine built from another graph, or altered, is refused before
    TensorRT is touched; a checked one gets as far as TensorRT; one without fingerprints (manifest format 1-2)
    falls back to the checked ONNX graph, saying so."""
    from formats.export_manifest import engine_fingerprints, engine_is_fingerprinted
    from runtime.session import ENGINE_PROVIDER, EngineGraph, OrtGraph, open_graph
    d = tmp_path / "e"
    shutil.copytree(exports["merged_alice"], d)
    spec = json.loads((d / "manifest.json").read_text())["graphs"]["render"]
    (d / "render.engine").write_bytes(b"a serialized engine")
    entry = {"file": "render.engine", **engine_fingerprints(d / "render.engine", spec["sha256"])}
    assert engine_is_fingerprinted(entry)
    with pytest.raises(ExportInvalid, match="not built from this export's graph"):
        EngineGraph("render", spec, d / "render.engine", {**entry, "graph_sha256": "sha256:" + "0" * 64})
    (d / "render.engine").write_bytes(b"another engine")
    with pytest.raises(ExportInvalid, match="not the one the export wrote"):
        EngineGraph("render", spec, d / "render.engine", entry)
    entry = {"file": "render.engine", **engine_fingerprints(d / "render.engine", spec["sha256"])}
    with pytest.raises(Exception) as e:  # checks passed: now TensorRT itself is missing here
        EngineGraph("render", spec, d / "render.engine", entry)
    assert not isinstance(e.value, ExportInvalid) and "TensorRT" in str(e.value)
    with caplog.at_level(logging.WARNING, "my3dgen.runtime"):
        g = open_graph(d, "render", spec, [ENGINE_PROVIDER, "CPUExecutionProvider"], 1,
                       {"render": {"file": "render.engine"}})
    assert isinstance(g, OrtGraph) and any("records no fingerprints" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------- error construction

def _format_error_classes(trees: dict[Path, ast.Module]) -> set[str]:
    """Names of every class derived (in this code base) from formats.errors.FormatError."""
    names = {"FormatError"}
    grew = True
    while grew:
        grew = False
        for tree in trees.values():
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and node.name not in names and any(
                        isinstance(b, ast.Name) and b.id in names for b in node.bases):
                    names.add(node.name)
                    grew = True
    return names


def test_every_format_error_is_built_with_a_path_and_a_reason():
    """The class of the attack run's TypeError: an error built with one argument where (path, reason) are needed
    raises TypeError on the error path itself. Every construction in the library passes both."""
    files = [p for p in REPO.rglob("*.py") if not {".venv", "tests", ".git"} & set(p.relative_to(REPO).parts)]
    trees = {p: ast.parse(p.read_text(), str(p)) for p in files}
    classes = _format_error_classes(trees)
    assert {"AdapterInvalid", "ExportInvalid", "ManifestError", "ModelDirError"} <= classes
    bad = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in classes:
                if any(isinstance(a, ast.Starred) for a in node.args) or node.keywords:
                    continue
                if len(node.args) != 2:
                    bad.append(f"{path.relative_to(REPO)}:{node.lineno} {node.func.id}({len(node.args)} args)")
    assert not bad, bad
