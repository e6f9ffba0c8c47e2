"""Native onnxruntime LoRA adapters on keep-LoRA exports (manifest format 2): base values as graph defaults,
`.onnx_adapter` files written by `people add`, activated with RunOptions, and format-1 exports still served.

Parity is exact: the native adapter feeds the very same float32 values as the numpy feeds, so outputs are compared
with tolerance 0.0. Exports come from tests/test_export.py's session cache.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from formats.fingerprint import sha256_file
from runtime import Runtime
from runtime.native_adapters import SUFFIX, native_path
from tests.test_export import TinyExports, adapter_feeds, load_manifest, tiny_generator

W_SEED = 5


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return TinyExports(tmp_path_factory, tiny_generator())


@pytest.fixture
def rt(exports, tmp_path):
    """A runtime on the keep-LoRA export with an empty people folder (people are added by the tests)."""
    people = tmp_path / "people"
    people.mkdir()
    return Runtime(exports["keep"], people, threads=2, backend="onnxruntime")


def latent(rt) -> np.ndarray:
    return np.random.default_rng(W_SEED).standard_normal((rt.num_ws, rt.w_dim)).astype(np.float32) * 0.3


def session(path: Path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def test_keep_lora_graphs_carry_the_base_values_as_overridable_defaults(exports):
    d = exports["keep"]
    m = load_manifest(d)
    assert m["format_version"] == 3 and m["adapter"]["defaults_in_graph"] is True
    for g in ("synthesis", "render"):
        spec = {i["name"]: i for i in m["graphs"][g]["inputs"]}
        adapter_inputs = m["graphs"][g]["adapter_inputs"]
        assert adapter_inputs and all(spec[n].get("default") is True for n in adapter_inputs)
        assert not any(spec[n].get("default") for n in spec if n not in adapter_inputs)
        s = session(d / f"{g}.onnx")
        assert {i.name for i in s.get_overridable_initializers()} == set(adapter_inputs)
        assert {i.name for i in s.get_inputs()} == set(spec) - set(adapter_inputs)
    # no adapter feeds = the base values fed explicitly, exactly
    ws = np.random.default_rng(1).standard_normal((2, m["model"]["num_ws"], m["model"]["w_dim"])).astype(np.float32)
    syn = session(d / "synthesis.onnx")
    bare = syn.run(None, {"ws": ws})[0]
    fed = syn.run(None, {"ws": ws, **adapter_feeds(m, "synthesis", None)})[0]
    assert np.array_equal(bare, fed)


def test_people_add_writes_native_adapters_that_match_numpy_feeds_exactly(rt, exports):
    alice = exports["people"] / "alice.safetensors"
    rt.add_person("alice", alice)
    sha = rt.person_info("alice")["fingerprint"]
    files = sorted(p.name for p in rt.people_dir.glob(f"*{SUFFIX}"))
    assert files == sorted(native_path(rt.people_dir, "alice", g, sha).name for g in ("render", "synthesis"))
    assert rt.person_info("alice")["native_adapter"] == {"synthesis": True, "render": True}
    got = rt.novel_view("alice", latent=latent(rt), yaw=0.3)
    assert rt.stats()["adapter_paths"] == {"defaults": 0, "native": 2, "device": 0, "numpy": 0}
    # the same person without native files: numpy feeds, said in stats and person_info (tolerance 0.0)
    numpy_rt = Runtime(exports["keep"], exports["people"], threads=2, backend="onnxruntime")
    want = numpy_rt.novel_view("alice", latent=latent(rt), yaw=0.3)
    assert numpy_rt.stats()["adapter_paths"] == {"defaults": 0, "native": 0, "device": 0, "numpy": 2}
    assert "written by `people add`" in numpy_rt.person_info("alice")["native_adapter_why_not"]["synthesis"]
    for key in ("image", "image_raw", "depth"):
        assert float(np.abs(getattr(got, key) - getattr(want, key)).max()) == 0.0
    # and it is alice, not the base model
    base = rt.novel_view(None, latent=latent(rt), yaw=0.3)
    assert float(np.abs(base.image - got.image).max()) > 1e-3
    assert rt.stats()["adapter_paths"]["defaults"] == 2  # the base model: no adapter feed at all


def test_a_replaced_adapter_file_never_runs_with_stale_native_values(rt, exports):
    rt.add_person("alice", exports["people"] / "alice.safetensors")
    old = set(rt.people_dir.glob(f"*{SUFFIX}"))
    shutil.copyfile(exports["people"] / "bob.safetensors", rt.people_dir / "alice.safetensors")  # not `people add`
    rt.clear_caches()
    assert rt.person_info("alice")["native_adapter"] == {"synthesis": False, "render": False}
    got = rt.novel_view("alice", latent=latent(rt))
    bob = Runtime(exports["keep"], exports["people"], threads=2,
                  backend="onnxruntime").novel_view("bob", latent=latent(rt))
    assert np.array_equal(got.image, bob.image)
    rt.add_person("alice", exports["people"] / "bob.safetensors")  # re-adding replaces the native files
    new = set(rt.people_dir.glob(f"*{SUFFIX}"))
    assert len(new) == 2 and not (new & old)
    rt.remove_person("alice")
    assert not list(rt.people_dir.glob(f"*{SUFFIX}"))


def as_format_1(src: Path, dst: Path) -> Path:
    """A copy of a format-2 keep-LoRA export as format 1 wrote it: no input defaults in the graphs, no
    `default` marks, no `defaults_in_graph` / `mixed_batch`."""
    from export.graph_edits import without_input_defaults  # also what TensorRT engines are built from
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    for g in ("synthesis", "render"):
        assert without_input_defaults(dst / f"{g}.onnx", dst / f"{g}.onnx")
        assert not session(dst / f"{g}.onnx").get_overridable_initializers()
        for i in m["graphs"][g]["inputs"]:
            i.pop("default", None)
    for g in ("synthesis", "render"):  # format 1 recorded the sha256 of the graphs it wrote
        m["graphs"][g]["sha256"] = sha256_file(dst / f"{g}.onnx")
    m["format_version"] = 1
    for key in ("defaults_in_graph", "mixed_batch"):
        m["adapter"].pop(key)
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def test_format_1_exports_still_load_and_render_on_numpy_feeds(rt, exports, tmp_path):
    old_dir = as_format_1(exports["keep"], tmp_path / "v1")
    people = tmp_path / "people_v1"
    people.mkdir()
    old = Runtime(old_dir, people, threads=2, backend="onnxruntime")
    assert not old.manifest.adapter_defaults_in_graph and old.manifest.mixed_batch is None
    old.add_person("alice", exports["people"] / "alice.safetensors")
    assert not list(people.glob(f"*{SUFFIX}"))  # no native files for graphs without defaults
    assert "format 1" in old.person_info("alice")["native_adapter_why_not"]["render"]
    rt.add_person("alice", exports["people"] / "alice.safetensors")
    for person in ("alice", None):
        a = old.novel_view(person, latent=latent(rt), yaw=-0.2)
        b = rt.novel_view(person, latent=latent(rt), yaw=-0.2)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.depth, b.depth)


def test_cli_people_add_writes_and_people_remove_deletes_native_adapters(exports, tmp_path):
    """`cli.py people add` / `people remove` (serve.package) on a no-archive packaged model."""
    from serve.package import add_person, people_dir, remove_person
    store = tmp_path / "store"
    shutil.copytree(exports["keep"], store / "tiny" / "export")
    dest = add_person(store, "tiny", "alice", exports["people"] / "alice.safetensors", check=False)
    folder = people_dir(store, "tiny")
    assert dest == folder / "alice.safetensors" and dest.is_file()
    assert len(list(folder.glob(f"alice.*{SUFFIX}"))) == 2
    rt = Runtime(store / "tiny" / "export", folder, threads=2, backend="onnxruntime")
    assert rt.person_info("alice")["native_adapter"] == {"synthesis": True, "render": True}
    assert remove_person(store, "tiny", "alice") and not list(folder.glob(f"*{SUFFIX}"))


def test_people_add_extracts_once_goes_through_the_people_store_and_is_all_or_nothing(exports, tmp_path,
                                                                                       monkeypatch):
    """`cli.py people add` (serve.package.add_person) on a zipped `.mar`: the export is extracted once and the
    person goes through PeopleStore.add (rendered first with check); a refused adapter, with or without the check,
    leaves the people folder byte for byte as it was; a replaced person gets the new version's native files."""
    import zipfile

    import serve.package as package
    from runtime.errors import AdapterInvalid
    store = tmp_path / "store"
    store.mkdir()
    with zipfile.ZipFile(store / "tiny.mar", "w") as z:
        for f in sorted(p for p in exports["keep"].rglob("*") if p.is_file()):
            z.write(f, (Path("export") / f.relative_to(exports["keep"])).as_posix())
    extracted = []
    real_extract = package._extract_export
    monkeypatch.setattr(package, "_extract_export", lambda a, d: extracted.append(a) or real_extract(a, d))
    alice, bob = exports["people"] / "alice.safetensors", exports["people"] / "bob.safetensors"
    folder = package.people_dir(store, "tiny")
    assert package.add_person(store, "tiny", "alice", alice) == folder / "alice.safetensors"
    assert extracted == [(store / "tiny.mar").resolve()]
    files = lambda: {p.name: p.read_bytes() for p in folder.iterdir()}  # noqa: E731
    before = files()
    assert len(before) == 3 and before["alice.safetensors"] == alice.read_bytes()
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00not an adapter file" * 8)
    with pytest.raises(ValueError, match=f"{broken}: not a usable adapter for model 'tiny'"):
        package.add_person(store, "tiny", "alice", broken, overwrite=True)
    with pytest.raises(AdapterInvalid, match="broken.safetensors"):
        package.add_person(store, "tiny", "alice", broken, overwrite=True, check=False)
    with pytest.raises(FileExistsError, match="alice.safetensors exists"):
        package.add_person(store, "tiny", "alice", bob)
    assert files() == before  # nothing replaced, nothing left behind (no temp files)
    extracted.clear()
    package.add_person(store, "tiny", "alice", bob, overwrite=True, check=False)
    assert extracted == [(store / "tiny.mar").resolve()]
    assert (folder / "alice.safetensors").read_bytes() == bob.read_bytes()
    info = Runtime(exports["keep"], folder, threads=2, backend="onnxruntime").person_info("alice")
    assert info["fingerprint"] == sha256_file(bob) and info["native_adapter"] == {"synthesis": True, "render": True}
    assert len(list(folder.glob(f"alice.*{SUFFIX}"))) == 2 and len(files()) == 3  # alice's old native files gone
