"""Tests for generator.official_pickle: safe reading of official EG3D pickles and the official-format writer.

The round trip uses the reference fixture made with the official code (state dict + init kwargs). Safety tests
craft pickles whose globals would run code if resolved, and check that the reader refuses them by name before any
of it runs (each payload would create a marker file).
"""
from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from generator import official_pickle as op
from generator.official_pickle import OfficialPickleError, UnsafePickleError, read_official_pickle
from tests.helpers import official_pickle_writer as opw
from tests.helpers.official_pickle_writer import write_official_pickle

REPO = Path(__file__).resolve().parents[1]

# docs/OFFICIAL_PICKLE.md: every global of an official-format snapshot pickle of the small config.
OFFICIAL_GLOBALS = {
    "collections.OrderedDict", "dnnlib.util.EasyDict", "numpy.dtype", "numpy.core.multiarray.scalar",
    "torch._utils._rebuild_parameter", "torch._utils._rebuild_tensor_v2", "torch.nn.modules.activation.Softplus",
    "torch.nn.modules.container.Sequential", "torch.storage._load_from_bytes",
    "torch_utils.persistence._reconstruct_persistent_obj", "training.triplane.OSGDecoder",
    "training.volumetric_rendering.ray_marcher.MipRayMarcher2",
    "training.volumetric_rendering.ray_sampler.RaySampler",
    "training.volumetric_rendering.renderer.ImportanceRenderer",
}
FOREIGN_PACKAGES = ("training", "torch_utils", "dnnlib")


# --------------------------------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture(scope="module")
def fixture_weights(official_dir):
    """(state_dict, init_kwargs, rendering_kwargs, neural_rendering_resolution) of the official small generator."""
    from safetensors.torch import load_file

    folder = official_dir
    meta = json.loads((folder / "small_init_kwargs.json").read_text())
    extra = meta["attributes_not_in_init_kwargs"]
    return (load_file(folder / "small_G_ema.safetensors"), meta["init_kwargs"], extra["rendering_kwargs"],
            extra["neural_rendering_resolution"])


def _pickle_globals(data: bytes | io.BytesIO) -> set[str]:
    """Every 'module.name' a pickle resolves (GLOBAL / STACK_GLOBAL / INST), following the string memo."""
    found, memo, strings, last = set(), {}, [], None
    for opcode, arg, _ in pickletools.genops(data):
        name = opcode.name
        if name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            last = arg
            strings.append(arg)
        elif name == "MEMOIZE":
            memo[len(memo)] = last
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[arg] = last
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            last = memo.get(arg)
            strings.append(last)
        elif name in ("GLOBAL", "INST"):
            found.add(arg.replace(" ", "."))
            last = None
        elif name == "STACK_GLOBAL":
            found.add(f"{strings[-2]}.{strings[-1]}")
            last = None
        else:
            last = None
    return found


def _storage_blobs(data: bytes) -> list[bytes]:
    """The bytes arguments of the pickle that are legacy torch.save streams."""
    return [arg for opcode, arg, _ in pickletools.genops(data)
            if opcode.name in ("SHORT_BINBYTES", "BINBYTES", "BINBYTES8") and arg.startswith(b"\x80\x02\x8a\n")]


def _legacy_sections(blob: bytes) -> list[set[str]]:
    """Globals of each of the five pickles at the start of a legacy torch.save stream."""
    stream = io.BytesIO(blob)
    return [_pickle_globals(stream) for _ in range(5)]


def _legacy_key(blob: bytes) -> str:
    """The storage key in a legacy torch.save stream (the only item of its fifth pickle, the key list)."""
    stream = io.BytesIO(blob)
    for _ in range(4):
        list(pickletools.genops(stream))
    (key,) = pickle.load(stream)
    return key


def _foreign_modules() -> list[str]:
    return [m for m in sys.modules
            if m.split(".")[0] in FOREIGN_PACKAGES or m.startswith("_imported_module_")]


def _assert_refused(path: Path, global_name: str, marker: Path) -> None:
    with pytest.raises(UnsafePickleError) as info:
        read_official_pickle(path)
    message = str(info.value)
    assert global_name in message and "executed" in message and str(path) in message
    assert info.value.global_name == global_name
    assert not marker.exists()


class _Payload:
    """Pickles as ``func(*args)``: a classic code-execution payload."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


# --------------------------------------------------------------------------------------------------------------------
# Round trip through the official format


@pytest.fixture(scope="module")
def written(fixture_weights, tmp_path_factory):
    """A pickle written from the fixture with a module_src that would create a marker file if executed."""
    folder = tmp_path_factory.mktemp("official")
    marker = folder / "MODULE_SRC_WAS_EXECUTED"
    module_src = f"open({str(marker)!r}, 'w').close()\n"
    state_dict, init_kwargs, rendering_kwargs, resolution = fixture_weights
    path = folder / "small-official.pkl"
    write_official_pickle(path, state_dict, init_kwargs, rendering_kwargs, resolution, module_src=module_src)
    return path, marker, module_src


def test_module_src_payload_is_live(written, tmp_path):
    """Positive control: the planted module_src really creates the marker when executed."""
    _, marker, module_src = written
    control_marker = tmp_path / "control"
    exec(compile(module_src.replace(str(marker), str(control_marker)), "<module_src>", "exec"), {})
    assert control_marker.exists()


def test_round_trip_is_bit_exact(written, fixture_weights):
    path, marker, module_src = written
    state_dict, init_kwargs, rendering_kwargs, resolution = fixture_weights
    assert module_src.encode() in path.read_bytes()
    checkpoint = read_official_pickle(path)
    assert checkpoint.class_name == "TriPlaneGenerator"
    assert set(checkpoint.state_dict) == set(state_dict) and len(state_dict) == 177
    for key, expected in state_dict.items():
        got = checkpoint.state_dict[key]
        assert got.dtype == expected.dtype and got.shape == expected.shape, key
        assert torch.equal(got, expected), key
    assert checkpoint.state_dict["backbone.synthesis.b4.conv1.noise_strength"].dim() == 0
    assert checkpoint.init_kwargs == init_kwargs
    assert type(checkpoint.init_kwargs["mapping_kwargs"]) is dict and type(checkpoint.init_kwargs["sr_kwargs"]) is dict
    assert checkpoint.rendering_kwargs == rendering_kwargs
    assert checkpoint.neural_rendering_resolution == resolution == 32
    assert not marker.exists(), "module_src was executed"
    assert _foreign_modules() == []


def test_G_is_the_same_network(written):
    path, _, _ = written
    g, g_ema = read_official_pickle(path, key="G"), read_official_pickle(path)
    assert list(g.state_dict) == list(g_ema.state_dict)


def test_written_globals_match_the_official_set(written):
    path, _, _ = written
    data = path.read_bytes()
    assert data[:2] == b"\x80\x04"
    assert _pickle_globals(data) == OFFICIAL_GLOBALS
    blobs = _storage_blobs(data)
    assert len(blobs) == 177 + 1  # every state-dict tensor + the renderer's plain plane_axes attribute
    for blob in blobs:
        assert set().union(*_legacy_sections(blob)) == {"torch.FloatStorage"}


@pytest.mark.parametrize("tensor", [torch.randn(5), torch.tensor(0.25), torch.randn(3).half(),
                                    torch.arange(4), torch.tensor([True, False])], ids=str)
def test_storage_blob_matches_torch_legacy_save(tensor):
    """Our legacy stream equals torch.save(storage, _use_new_zipfile_serialization=False) byte for byte."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.save(tensor.storage(), buffer, _use_new_zipfile_serialization=False)
    reference = buffer.getvalue()
    ours = opw._legacy_storage_bytes(tensor.reshape(-1), _legacy_key(reference))
    assert ours == reference
    parsed = op._parse_legacy_storage(ours).flat
    assert parsed.dtype == tensor.dtype and torch.equal(parsed, tensor.reshape(-1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        loaded = torch.load(io.BytesIO(ours), weights_only=True)
    assert torch.equal(torch.tensor(loaded.tolist(), dtype=tensor.dtype), tensor.reshape(-1))


# --------------------------------------------------------------------------------------------------------------------
# Pickles made by CPython + torch themselves through a persistence-style decorator

_FAKE_PACKAGES = {
    "dnnlib/__init__.py": "",
    "dnnlib/util.py": """
        class EasyDict(dict):
            def __getattr__(self, name):
                try:
                    return self[name]
                except KeyError:
                    raise AttributeError(name)
        """,
    "torch_utils/__init__.py": "",
    "torch_utils/persistence.py": """
        import copy, sys

        def _reconstruct_persistent_obj(meta):
            raise RuntimeError('never called by the safe reader')

        def persistent_class(cls):
            src = open(sys.modules[cls.__module__].__file__).read()
            class Persistent(cls):
                def __init__(self, *args, **kwargs):
                    super().__init__(*args, **kwargs)
                    self._init_args, self._init_kwargs = copy.deepcopy(args), copy.deepcopy(kwargs)
                def __reduce__(self):
                    meta = dict(type='class', version=6, module_src=src, class_name=cls.__name__,
                                state=super().__reduce__()[2])
                    return _reconstruct_persistent_obj, (meta,), None
            Persistent.__name__ = Persistent.__qualname__ = cls.__name__
            return Persistent
        """,
    "training/__init__.py": "",
    "training/volumetric_rendering/__init__.py": "",
    "training/volumetric_rendering/renderer.py": """
        import torch
        from training.volumetric_rendering.ray_marcher import MipRayMarcher2
        class ImportanceRenderer(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.ray_marcher = MipRayMarcher2()
                self.plane_axes = torch.eye(3).expand(3, 3, 3).clone()
        """,
    "training/volumetric_rendering/ray_marcher.py": """
        import torch
        class MipRayMarcher2(torch.nn.Module):
            pass
        """,
    "training/volumetric_rendering/ray_sampler.py": """
        import torch
        class RaySampler(torch.nn.Module):
            pass
        """,
    "training/networks_stylegan2.py": """
        import os
        import numpy as np
        import torch
        from torch_utils import persistence
        if os.environ.get('FAKE_EXEC_MARKER'):
            open(os.environ['FAKE_EXEC_MARKER'], 'w').close()

        @persistence.persistent_class
        class FullyConnectedLayer(torch.nn.Module):
            def __init__(self, in_features, out_features):
                super().__init__()
                self.weight = torch.nn.Parameter(torch.randn(in_features, out_features).t())
                self.bias = torch.nn.Parameter(torch.randn(out_features))
                self.weight_gain = 1 / np.sqrt(in_features)
        """,
    "training/triplane.py": """
        import os
        import torch
        from torch_utils import persistence
        from training.networks_stylegan2 import FullyConnectedLayer
        from training.volumetric_rendering.renderer import ImportanceRenderer
        from training.volumetric_rendering.ray_sampler import RaySampler
        if os.environ.get('FAKE_EXEC_MARKER'):
            open(os.environ['FAKE_EXEC_MARKER'], 'w').close()

        @persistence.persistent_class
        class TriPlaneGenerator(torch.nn.Module):
            def __init__(self, z_dim, mapping_kwargs, rendering_kwargs):
                super().__init__()
                self.renderer = ImportanceRenderer()
                self.ray_sampler = RaySampler()
                self.fc = FullyConnectedLayer(4, 3)
                self.decoder = OSGDecoder(3)
                self.register_buffer('kept', torch.randn(10)[3:7])
                self.kept.note = 'tensor with python state'
                self.register_buffer('scratch', torch.ones(2), persistent=False)
                self.strength = torch.nn.Parameter(torch.tensor(0.5))
                self.strength.tag = 'parameter with python state'
                self.rendering_kwargs = rendering_kwargs
                self.neural_rendering_resolution = 64

        class OSGDecoder(torch.nn.Module):
            def __init__(self, n):
                super().__init__()
                self.net = torch.nn.Sequential(FullyConnectedLayer(n, 8), torch.nn.Softplus(),
                                               FullyConnectedLayer(8, 4))
        """,
}

_MAKE_SNAPSHOT = """
    import pickle, sys, torch
    from dnnlib.util import EasyDict
    from training.triplane import TriPlaneGenerator
    torch.manual_seed(0)
    G = TriPlaneGenerator(z_dim=4, mapping_kwargs=EasyDict(num_layers=2),
                          rendering_kwargs={'depth_resolution': 8, 'avg_camera_pivot': [0, 0, 0.2]})
    G.neural_rendering_resolution = 128
    G = G.eval().requires_grad_(False)
    with open(sys.argv[1], 'wb') as f:
        pickle.dump(dict(training_set_kwargs=dict(resolution=512), G=G, D=None, G_ema=G, augment_pipe=None),
                    f, protocol=4)
    torch.save(G.state_dict(), sys.argv[2])
    """


@pytest.fixture(scope="module")
def genuine_snapshot(tmp_path_factory):
    """A snapshot pickled by CPython + torch from stand-in ``training``/``torch_utils``/``dnnlib`` packages."""
    folder = tmp_path_factory.mktemp("genuine")
    for relative, source in _FAKE_PACKAGES.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(textwrap.dedent(source))
    pkl, expected = folder / "snapshot.pkl", folder / "expected.pt"
    env = {k: v for k, v in os.environ.items() if k != "FAKE_EXEC_MARKER"}
    subprocess.run([sys.executable, "-c", textwrap.dedent(_MAKE_SNAPSHOT), str(pkl), str(expected)],
                   cwd=folder, env=env, check=True, timeout=120)
    return pkl, torch.load(expected, weights_only=True)


def test_reads_a_pickle_made_by_cpython_and_torch(genuine_snapshot, tmp_path, monkeypatch):
    pkl, expected = genuine_snapshot
    marker = tmp_path / "exec-marker"
    monkeypatch.setenv("FAKE_EXEC_MARKER", str(marker))
    globals_used = _pickle_globals(pkl.read_bytes())
    assert {"torch._utils._rebuild_parameter_with_state", "torch._tensor._rebuild_from_type_v2", "torch.Tensor",
            "numpy._core.multiarray.scalar",
            "torch_utils.persistence._reconstruct_persistent_obj", "training.triplane.OSGDecoder"} <= globals_used
    checkpoint = read_official_pickle(pkl)
    assert list(checkpoint.state_dict) == list(expected)  # same names, same order, 'scratch' (non-persistent) skipped
    for key, tensor in expected.items():
        got = checkpoint.state_dict[key]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape and torch.equal(got, tensor), key
    assert checkpoint.init_kwargs == {"z_dim": 4, "mapping_kwargs": {"num_layers": 2},
                                      "rendering_kwargs": {"depth_resolution": 8, "avg_camera_pivot": [0, 0, 0.2]}}
    assert checkpoint.rendering_kwargs == checkpoint.init_kwargs["rendering_kwargs"]
    assert checkpoint.neural_rendering_resolution == 128 and checkpoint.class_name == "TriPlaneGenerator"
    assert not marker.exists()
    assert _foreign_modules() == []


# --------------------------------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize("func, global_name, make_args", [
    (os.system, f"{os.system.__module__}.system", lambda marker: (f"touch {marker}",)),
    (eval, "builtins.eval", lambda marker: (f"open({str(marker)!r}, 'w').close()",)),
    (subprocess.Popen, "subprocess.Popen", lambda marker: (["touch", str(marker)],)),
], ids=["os.system", "builtins.eval", "subprocess.Popen"])
def test_code_execution_globals_are_refused(tmp_path, func, global_name, make_args):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _Payload(func, *make_args(marker))}, protocol=4))
    assert global_name in _pickle_globals(path.read_bytes())
    _assert_refused(path, global_name, marker)


def test_eval_payload_is_live(tmp_path):
    """Positive control: plain pickle.loads of the eval payload does create the marker."""
    marker = tmp_path / "PWNED"
    pickle.loads(pickle.dumps(_Payload(eval, f"open({str(marker)!r}, 'w').close()")))
    assert marker.exists()


def test_literal_os_system_global_is_refused(tmp_path):
    """A hand-written protocol-0 GLOBAL 'os system' (what pickles made on any OS may contain)."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pkl"
    path.write_bytes(b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR.")
    _assert_refused(path, "os.system", marker)


def test_payload_hidden_inside_a_module_state_is_refused(fixture_weights, tmp_path):
    """An otherwise valid official pickle with a payload planted among a module's attributes."""
    state_dict, init_kwargs, rendering_kwargs, resolution = fixture_weights
    marker = tmp_path / "PWNED"
    good = tmp_path / "good.pkl"
    write_official_pickle(good, {"dataset_label_std": state_dict["dataset_label_std"]}, init_kwargs,
                          {**rendering_kwargs, "marker_slot": "X" * 40}, resolution)
    source = f"open({str(marker)!r}, 'w').close()".encode()
    # builtins.eval(source), then MEMOIZE in place of the slot string's single memo entry.
    body = (b"\x8c\x08builtins\x8c\x04eval\x93" + b"X" + struct.pack("<I", len(source)) + source
            + b"\x85R\x94")
    slot = b"\x8c\x28" + b"X" * 40 + b"\x94"  # SHORT_BINUNICODE 'XXX...' + MEMOIZE
    data = good.read_bytes()
    assert data.count(slot) == 1
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(_unframe(data).replace(slot, body))
    _assert_refused(evil, "builtins.eval", marker)


def _unframe(data: bytes) -> bytes:
    """The pickle with its FRAME headers removed (frames are optional), so opcodes can be spliced in."""
    out, position = bytearray(data[:2]), 2
    for opcode, _, pos in pickletools.genops(data):
        if opcode.name == "FRAME":
            out += data[position:pos]
            position = pos + 9
    out += data[position:]
    return bytes(out)


def test_unknown_training_class_is_refused(tmp_path):
    marker = tmp_path / "never"
    path = tmp_path / "unknown.pkl"
    path.write_bytes(b"\x80\x02}q\x00X\x05\x00\x00\x00G_emaq\x01ctraining.foo\nBar\nq\x02)\x81q\x03}q\x04bs.")
    _assert_refused(path, "training.foo.Bar", marker)


def test_unexpected_persistent_id_is_refused(tmp_path):
    path = tmp_path / "persid.pkl"
    path.write_bytes(b"\x80\x02X\x03\x00\x00\x00abcQ.")
    with pytest.raises(UnsafePickleError, match="persistent id 'abc'"):
        read_official_pickle(path)


def test_foreign_global_inside_a_storage_blob_is_refused(tmp_path):
    blob = opw._legacy_storage_bytes(torch.ones(2), "0")
    assert b"ctorch\nFloatStorage\n" in blob
    evil_blob = blob.replace(b"ctorch\nFloatStorage\n", b"cbuiltins\neval\n")
    path = tmp_path / "blob.pkl"
    path.write_bytes(b"\x80\x04ctorch.storage\n_load_from_bytes\nB" + struct.pack("<I", len(evil_blob)) + evil_blob
                     + b"\x85R.")
    with pytest.raises(UnsafePickleError, match=r"builtins\.eval.*storage blob"):
        read_official_pickle(path)


# --------------------------------------------------------------------------------------------------------------------
# Unreadable files and wrong keys


def test_truncated_file_names_the_file(written, tmp_path):
    path, _, _ = written
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(OfficialPickleError, match="truncated") as info:
        read_official_pickle(truncated)
    assert str(truncated) in str(info.value) and not isinstance(info.value, UnsafePickleError)


@pytest.mark.parametrize("content, hint", [(b"PK\x03\x04 zip", "zip archive"), (b"hello", "protocol header"),
                                           (b"", "empty")])
def test_non_pickle_file_names_the_file(tmp_path, content, hint):
    path = tmp_path / "not-a-pickle.pkl"
    path.write_bytes(content)
    with pytest.raises(OfficialPickleError, match=hint) as info:
        read_official_pickle(path)
    assert str(path) in str(info.value)


def test_missing_key_lists_the_keys_present(written):
    path, _, _ = written
    with pytest.raises(OfficialPickleError) as info:
        read_official_pickle(path, key="D_ema")
    message = str(info.value)
    assert "'D_ema'" in message and str(path) in message
    for key in ("training_set_kwargs", "G", "D", "G_ema", "augment_pipe"):
        assert repr(key) in message


def test_key_that_is_not_a_network(written):
    path, _, _ = written
    with pytest.raises(OfficialPickleError, match="'D' is a NoneType"):
        read_official_pickle(path, key="D")


def test_writer_rejects_unknown_module_names(tmp_path, fixture_weights):
    _, init_kwargs, rendering_kwargs, resolution = fixture_weights
    with pytest.raises(ValueError, match="'mystery'"):
        write_official_pickle(tmp_path / "x.pkl", {"mystery.weight": torch.ones(1)}, init_kwargs, rendering_kwargs,
                              resolution)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------------------------
# Nesting depth is a limit of the reader (formats.limits.max_nesting)

def _deeply_nested_pickle(fixture_weights, tmp_path, depth: int) -> Path:
    """A valid official pickle whose init_kwargs holds a list nested `depth` deep (spliced in as opcodes: EMPTY_LIST
    `depth` times, then APPEND `depth - 1` times, in place of a marker string)."""
    state_dict, init_kwargs, rendering_kwargs, resolution = fixture_weights
    good = tmp_path / "good.pkl"
    write_official_pickle(good, {"dataset_label_std": state_dict["dataset_label_std"]},
                          {**init_kwargs, "marker_slot": "X" * 40}, rendering_kwargs, resolution)
    slot = b"\x8c\x28" + b"X" * 40 + b"\x94"
    data = _unframe(good.read_bytes())
    assert data.count(slot) == 1
    deep = tmp_path / f"deep{depth}.pkl"
    deep.write_bytes(data.replace(slot, b"]" * depth + b"a" * (depth - 1) + b"\x94"))
    return deep


def test_deeply_nested_init_kwargs_are_a_one_line_error(fixture_weights, tmp_path):
    """50,000 levels of nesting (a RecursionError before the limit existed) are refused naming the limit; 50 are
    read."""
    shallow = read_official_pickle(_deeply_nested_pickle(fixture_weights, tmp_path, 50))
    value, depth = shallow.init_kwargs["marker_slot"], 1
    while value:
        value, depth = value[0], depth + 1
    assert depth == 50
    with pytest.raises(OfficialPickleError, match="max_nesting=200.*MY3DGEN_LIMITS") as e:
        read_official_pickle(_deeply_nested_pickle(fixture_weights, tmp_path, 50_000))
    assert "init_kwargs.marker_slot" in str(e.value) and "deep50000.pkl" in str(e.value)


def test_convert_of_a_deeply_nested_pickle_exits_2_with_one_line(fixture_weights, tmp_path):
    from tests.helpers.cli import run_cli
    pkl = _deeply_nested_pickle(fixture_weights, tmp_path, 50_000)
    r = run_cli("convert", pkl, "--out", tmp_path / "model", check=False)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "max_nesting" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "model").exists()


def test_a_deep_or_cyclic_module_chain_is_refused(monkeypatch, tmp_path):
    """Every walk over what a pickle built is bounded: a _modules chain 10,000 deep, and a module that is its own
    child (a memo reference makes that one opcode), are one-line errors."""
    root = op._PersistentModuleStub("training.triplane.TriPlaneGenerator", 1, {"_modules": {}})
    node = root
    for _ in range(10_000):
        child = op._PersistentModuleStub("torch.nn.Module", 1, {"_modules": {}})
        node.state["_modules"]["m"] = child
        node = child
    monkeypatch.setattr(op, "_safe_load", lambda path: {"G_ema": root})
    with pytest.raises(OfficialPickleError, match="max_nesting"):
        op.read_official_pickle(tmp_path / "x.pkl")
    root.state["_modules"] = {"self": root}
    with pytest.raises(OfficialPickleError, match="max_nesting"):
        op.read_official_pickle(tmp_path / "x.pkl")
    cyclic: dict = {}
    cyclic["again"] = cyclic
    with pytest.raises(OfficialPickleError, match="max_nesting"):
        op._to_plain(cyclic)
