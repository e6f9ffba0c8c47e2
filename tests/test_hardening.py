"""Issue 13, torch-free part: one validator per format, limits, bounded header-first reads, special files refused,
and hostile sizes that end in a one-line error (not a MemoryError or a kill) under a 2 GB address-space limit."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from formats.adapter_file import META_KEY, adapter_metadata, read_adapter, read_adapter_meta
from formats.errors import AdapterFileError, FormatError, ModelDirError
from formats.limits import LIMITS_ENV, Limits
from formats.model_dir import read_config_record
from formats.names import is_valid_name
from formats.tensors import read_file_bytes, read_header, save_safetensors
from runtime.people import is_index
from tests.conftest import REPO

W_DIM = 8


def write_adapter(path: Path, meta_changes: dict | None = None, tensors: dict | None = None,
                  drop: tuple = (), raw_meta: str | None = None) -> Path:
    """A small valid adapter file (numpy only): one 2-D LoRA target, one full tensor, two anchors; `meta_changes`
    replaces metadata fields, `tensors` replaces or adds tensors, `drop` removes metadata fields."""
    meta = adapter_metadata(rank=2, alpha=2.0, layout="flat", policy={"rank": 2}, dtype="float32",
                            targets=[["m.weight", "lora", [4, 3]], ["m.bias", "full", [4]]],
                            base_fingerprint="sha256:" + "0" * 64, anchor_names=["p0", "p1"])
    meta.update(meta_changes or {})
    for k in drop:
        meta.pop(k)
    rng = np.random.default_rng(0)
    t = {"m.lora_A": rng.standard_normal((2, 3)).astype(np.float32),
         "m.lora_B": rng.standard_normal((4, 2)).astype(np.float32),
         "m.bias": np.zeros(4, np.float32),
         "anchors.ws": rng.standard_normal((2, W_DIM)).astype(np.float32),
         "anchors.c": np.zeros((2, 25), np.float32)}
    t.update(tensors or {})
    return save_safetensors(path, t, {META_KEY: raw_meta if raw_meta is not None else json.dumps(meta)})


def test_valid_adapter_reads(tmp_path):
    data = read_adapter(write_adapter(tmp_path / "a.safetensors"), w_dim=W_DIM)
    assert data.anchor_names == ["p0", "p1"] and set(data.tensors) == {"m.lora_A", "m.lora_B", "m.bias"}


BAD_METADATA = [
    ({"rank": "4"}, "'rank'"),
    ({"rank": 0}, "'rank'"),
    ({"rank": True}, "'rank'"),
    ({"alpha": float("nan")}, "'alpha'"),
    ({"alpha": 1e308}, "'alpha'"),
    ({"alpha": "2"}, "'alpha'"),
    ({"layout": "bogus"}, "'layout'"),
    ({"layout": 3}, "'layout'"),
    ({"dtype": "float64"}, "'dtype'"),
    ({"anchor_names": 7}, "'anchor_names'"),
    ({"anchor_names": ["p0", 1]}, "'anchor_names'"),
    ({"anchor_names": ["p0", ""]}, "'anchor_names'"),
    ({"targets": 3}, "'targets'"),
    ({"targets": [["m.weight", "lora", [4, "3"]], ["m.bias", "full", [4]]]}, "'targets'"),
    ({"policy": []}, "'policy'"),
    ({"base_fingerprint": None}, "'base_fingerprint'"),
    ({"extra": [1]}, "'extra'"),
    ({"format_version": 3}, "format_version"),
]


@pytest.mark.parametrize("change,field", BAD_METADATA, ids=[str(c) for c, _ in BAD_METADATA])
def test_every_reader_judges_metadata_the_same(tmp_path, change, field):
    """Why: "the same file is judged differently by different readers" - the runtime, `people add` (both
    formats.adapter_file.read_adapter) and `cli.py render --adapter` (generator.adapter_file.load_adapter) all
    go through one validator; the header-only reader agrees."""
    path = write_adapter(tmp_path / "bad.safetensors", change)
    for reader in (lambda: read_adapter(path), lambda: read_adapter_meta(path)):
        with pytest.raises(AdapterFileError, match=field):
            reader()
    pytest.importorskip("torch")
    from generator.adapter_file import load_adapter
    with pytest.raises(AdapterFileError, match=field):
        load_adapter(path, object())  # refused before the model is even looked at


@pytest.mark.parametrize("name,tensor", [
    ("fp64 LoRA", {"m.lora_A": np.zeros((2, 3), np.float64)}),
    ("int anchors", {"anchors.c": np.zeros((2, 25), np.int32)}),
])
def test_tensor_dtypes_other_than_fp32_fp16_are_refused(tmp_path, name, tensor):
    path = write_adapter(tmp_path / "a.safetensors", tensors=tensor)
    with pytest.raises(AdapterFileError, match="float32/16 expected"):
        read_adapter_meta(path)


def test_cameras_must_be_25_numbers(tmp_path):
    path = write_adapter(tmp_path / "a.safetensors", tensors={"anchors.c": np.zeros((2, 24), np.float32)})
    with pytest.raises(AdapterFileError, match=r"anchors.c.*\(2, 25\)"):
        read_adapter(path)


@pytest.mark.parametrize("tensor", ["m.lora_B", "m.bias", "anchors.ws", "anchors.c"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_tensors_are_refused_by_name(tmp_path, tensor, value):
    """Why: "non-finite or absurd numbers pass silently" (adapters)."""
    t = write_adapter(tmp_path / "ok.safetensors")
    from safetensors.numpy import load_file
    tensors = load_file(str(t))
    tensors[tensor] = tensors[tensor].copy()
    tensors[tensor].flat[0] = value
    path = write_adapter(tmp_path / "a.safetensors", tensors=tensors)
    with pytest.raises(AdapterFileError, match=f"'{tensor}' has non-finite"):
        read_adapter(path)


def test_anchor_count_is_limited_and_the_limit_can_be_raised(tmp_path, monkeypatch):
    """Why: "adapters have no cap on anchors or size" - the count is refused from the header, before the body."""
    k = 40
    path = write_adapter(tmp_path / "many.safetensors", {"anchor_names": [f"p{i}" for i in range(k)]},
                         {"anchors.ws": np.zeros((k, W_DIM), np.float32), "anchors.c": np.zeros((k, 25), np.float32)})
    small = Limits(max_anchors=10)
    with pytest.raises(AdapterFileError, match="max_anchors=10.*MY3DGEN_LIMITS"):
        read_adapter(path, limits=small)
    monkeypatch.setenv(LIMITS_ENV, "max_anchors=10")
    with pytest.raises(AdapterFileError, match="max_anchors=10"):
        read_adapter(path)
    monkeypatch.setenv(LIMITS_ENV, "max_anchors=100")
    assert len(read_adapter(path).anchor_names) == k


def test_metadata_size_is_limited(tmp_path):
    path = write_adapter(tmp_path / "a.safetensors", {"extra": {"blob": "x" * 5000}})
    with pytest.raises(AdapterFileError, match="max_metadata_bytes=1000"):
        read_adapter_meta(path, limits=Limits(max_metadata_bytes=1000))


@pytest.mark.parametrize("text,error", [
    ("max_anchors=5,max_alpha=2.5", None),
    ("max_anchors=x", "not a number"),
    ("bogus=3", "field=value"),
    ("max_anchors=0", "positive"),
])
def test_limits_from_the_environment(text, error):
    if error is None:
        lim = Limits.from_env({LIMITS_ENV: text})
        assert (lim.max_anchors, lim.max_alpha) == (5, 2.5)
    else:
        with pytest.raises(ValueError, match=error):
            Limits.from_env({LIMITS_ENV: text})


def _fifo(tmp_path: Path) -> Path:
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    return fifo


@pytest.mark.parametrize("make", [lambda tmp: Path("/dev/zero"), _fifo, lambda tmp: tmp],
                         ids=["dev-zero", "fifo", "directory"])
def test_special_files_are_refused_without_reading(tmp_path, make):
    """Why: "the runtime reads a whole file before checking its header (a path to /dev/zero grows without
    bound)": special files are refused from their stat, before any read (a FIFO would block the open)."""
    path = make(tmp_path)
    for reader in (lambda: read_adapter(path), lambda: read_header(path, AdapterFileError),
                   lambda: read_file_bytes(path, FormatError)):
        with pytest.raises(FormatError, match="not a regular"):
            reader()


def test_special_config_json_is_refused(tmp_path):
    (tmp_path / "config.json").symlink_to("/dev/zero")
    with pytest.raises(ModelDirError, match="not a regular"):
        read_config_record(tmp_path)


def test_file_size_limit(tmp_path):
    path = write_adapter(tmp_path / "a.safetensors")
    with pytest.raises(AdapterFileError, match="max_file_bytes=100"):
        read_adapter(path, limits=Limits(max_file_bytes=100))


def test_header_entries_are_checked_against_the_body(tmp_path):
    header = json.dumps({"t": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 4]}}).encode()
    path = tmp_path / "lie.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    with pytest.raises(FormatError, match="does not fit its data offsets"):
        read_header(path, FormatError)


def test_names_use_fullmatch_and_anchor_indices_ascii_digits():
    """Why (hygiene, 500s): a trailing newline is not a name; a superscript digit is not an index."""
    assert is_valid_name("alice") and not is_valid_name("alice\n")
    assert is_index("12") and not is_index("²") and not is_index("١")


def test_safetensors_follow_the_umask(tmp_path):
    """Why (hygiene): "every safetensors file is written 0600" - ours follow the umask like every other output."""
    old = os.umask(0o022)
    try:
        path = write_adapter(tmp_path / "a.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


HOSTILE = textwrap.dedent('''
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    kind, path = sys.argv[1:3]
    try:
        if kind == "adapter":
            from formats.adapter_file import read_adapter
            read_adapter(path)
        elif kind == "model_dir":
            from generator.model_dir import load_model_dir
            load_model_dir(path)
        elif kind == "pickle":
            from generator.official_pickle import read_official_pickle
            read_official_pickle(path)
        elif kind == "checkpoint":
            from train.checkpoint import read_checkpoint_record
            read_checkpoint_record(path)
    except MemoryError:
        print("MEMORYERROR")
        raise SystemExit(3)
    except ValueError as e:  # FormatError, ModelDirError and OfficialPickleError are ValueErrors
        print("REFUSED " + str(e).splitlines()[0])
        raise SystemExit(0)
    print("ACCEPTED")
    raise SystemExit(4)
''')


def _hostile_adapter(tmp: Path) -> Path:
    """A 200,000-anchor person whose metadata is tiny (the anchors would take ~6 MB on disk, far more in a worker);
    the header says so, and the reader refuses it before reading the body."""
    k = 200_000
    meta = adapter_metadata(rank=2, alpha=2.0, layout="flat", policy={}, targets=[], base_fingerprint="x",
                            dtype="float16", anchor_names=[])
    header = {"__metadata__": {META_KEY: json.dumps(meta)},
              "anchors.ws": {"dtype": "F16", "shape": [k, W_DIM], "data_offsets": [0, k * W_DIM * 2]},
              "anchors.c": {"dtype": "F16", "shape": [k, 25], "data_offsets": [k * W_DIM * 2, k * 33 * 2]}}
    raw = json.dumps(header).encode()
    path = tmp / "hostile.safetensors"
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.truncate(8 + len(raw) + k * 33 * 2)
    return path


def _hostile_config_dir(tmp: Path, name: str, field: str, value: int) -> Path:
    """A model dir whose config.json is the tiny preset with one field edited, beside tiny weights."""
    from formats.model_dir import config_record
    from generator.presets import preset
    cfg = preset("tiny").to_dict()
    cfg[field] = value
    d = tmp / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config_record(cfg, "sha256:0", {})))
    save_safetensors(d / "model.safetensors", {"x": np.zeros(1, np.float32)}, {})
    return d


def _hostile_model_dir(tmp: Path) -> Path:
    """config.json with a one-field edit: w_dim of 10^6 (5 GB of mapping weights) beside tiny weights."""
    return _hostile_config_dir(tmp, "model", "w_dim", 1_000_000)


def _hostile_model_dir_layers(tmp: Path) -> Path:
    """config.json claiming 10^6 mapping layers (the issue's out-of-memory case), within every other limit."""
    return _hostile_config_dir(tmp, "model_layers", "mapping_layers", 1_000_000)


def _hostile_model_dir_shapes(tmp: Path) -> Path:
    """A within-limits config whose weights file's header claims a 64 GB tensor for 4 bytes of data."""
    from formats.model_dir import config_record
    from generator.presets import preset
    d = tmp / "model_shapes"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config_record(preset("tiny").to_dict(), "sha256:0", {})))
    header = json.dumps({"mapping.fc0.weight": {"dtype": "F32", "shape": [1 << 17, 1 << 17],
                                                "data_offsets": [0, 4]}}).encode()
    (d / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    return d


def _hostile_pickle(tmp: Path) -> Path:
    """A 30-byte pickle whose BINBYTES8 opcode claims 1 TB."""
    path = tmp / "hostile.pkl"
    path.write_bytes(b"\x80\x04\x8e" + (1 << 40).to_bytes(8, "little") + b"tiny")
    return path


def _hostile_checkpoint(tmp: Path) -> Path:
    """A training checkpoint whose safetensors header length claims 2^60 bytes."""
    path = tmp / "checkpoint.safetensors"
    path.write_bytes((1 << 60).to_bytes(8, "little") + b"{}")
    return path


HOSTILE_FILES = {"adapter": _hostile_adapter, "model_dir": _hostile_model_dir,
                 "model_dir_layers": _hostile_model_dir_layers, "model_dir_shapes": _hostile_model_dir_shapes,
                 "pickle": _hostile_pickle, "checkpoint": _hostile_checkpoint}


@pytest.mark.parametrize("kind", list(HOSTILE_FILES))
def test_hostile_sizes_under_a_2gb_memory_limit(tmp_path, kind):
    """Why: "small inputs allocate gigabytes": each format, opened with hostile sizes in a child limited to a 2 GB
    address space, ends in a clear one-line refusal - not a MemoryError, not a kill."""
    if kind == "checkpoint":
        pytest.importorskip("train.checkpoint").read_checkpoint_record  # noqa: B018 - skip if it does not exist
    path = HOSTILE_FILES[kind](tmp_path)
    reader = kind.split("_layers")[0].split("_shapes")[0]
    proc = subprocess.run([sys.executable, "-c", HOSTILE, reader, str(path)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    assert proc.stdout.startswith("REFUSED "), proc.stdout


KILLED_WRITE = textwrap.dedent('''
    import os, signal, sys
    from formats.atomic import atomic_dir
    with atomic_dir(sys.argv[1]) as tmp:
        (tmp / "model.onnx").write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGKILL)
''')


def test_a_killed_writes_temp_folder_is_cleaned_by_the_next_write(tmp_path):
    """Why (hygiene): "a killed export leaves a hidden temp folder that the next export does not clean"
    (exports are written with formats.atomic.atomic_dir)."""
    from formats.atomic import atomic_dir
    out = tmp_path / "export"
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(out)], cwd=REPO, capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == -9
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".export.")]
    assert len(leftovers) == 1 and not out.exists()
    live = tmp_path / f".export.keepme.{os.getpid()}.tmp"  # a write in progress in a live process is left alone
    live.mkdir()
    with atomic_dir(out) as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["export", live.name])


def test_decompression_bomb_photo_is_a_one_line_error(tmp_path, monkeypatch):
    """Why ("tracebacks instead of one-line errors"): a decompression-bomb PNG is refused with PIL's limit."""
    from PIL import Image

    from preprocess.dataset import load_photo
    path = tmp_path / "bomb.png"
    Image.new("L", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels > 2 x 1000: PIL's error, not its warning
    with pytest.raises(ValueError, match="bomb.png: refused as a possible decompression bomb"):
        load_photo(path)


def _manifest_dir(tmp_path: Path, edit) -> Path:
    from formats.export_manifest import FORMAT, FORMAT_VERSION
    d = tmp_path / "export"
    d.mkdir()
    for g in ("synthesis", "render"):
        (d / f"{g}.onnx").write_bytes(b"onnx")
    m = {"format": FORMAT, "format_version": FORMAT_VERSION,
         "graphs": {g: {"file": f"{g}.onnx", "sha256": "x", "inputs": [], "outputs": [], "adapter_inputs": []}
                    for g in ("synthesis", "render")},
         "model": {"num_ws": 14, "w_dim": 512, "z_dim": 512, "img_resolution": 512},
         "camera": {"radius": 2.7, "pivot": [0, 0, 0.2], "focal": 4.26}, "adapter": {"mode": "none"},
         "base_fingerprint": "sha256:0"}
    edit(m)
    (d / "manifest.json").write_text(json.dumps(m))
    return d


@pytest.mark.parametrize("edit,field", [
    (lambda m: None, None),
    (lambda m: m.update(model=[1]), "'model'"),
    (lambda m: m["model"].update(w_dim=10 ** 9), "model.w_dim"),
    (lambda m: m["model"].update(num_ws=True), "model.num_ws"),
    (lambda m: m["camera"].update(focal=float("nan")), "camera"),
    (lambda m: m["graphs"]["render"].update(file="../../etc/passwd"), "graphs.render.file"),
    (lambda m: m["graphs"].update(render=3), "graphs.render.file"),
    (lambda m: m.update(adapter={"mode": "merged", "person": "a", "adapter_sha256": "x",
                                 "anchors_file": "/dev/zero"}), "adapter.anchors_file"),
    (lambda m: m.update(adapter={"mode": "keep-lora"}), "adapter"),
    (lambda m: m.update(tensorrt={"engines": {"render": {"file": "../x.engine"}}}), "tensorrt.engines.render.file"),
])
def test_manifest_has_one_validator(tmp_path, edit, field):
    """Why: "tracebacks instead of one-line errors" for JSON of the wrong type; file names in a manifest cannot
    leave the export directory."""
    from formats.errors import ManifestError
    from formats.export_manifest import ExportManifest
    d = _manifest_dir(tmp_path, edit)
    if field is None:
        assert ExportManifest.read(d).w_dim == 512
    else:
        with pytest.raises(ManifestError, match=field):
            ExportManifest.read(d)


def test_fingerprint_refuses_special_files():
    from formats.fingerprint import sha256_file
    with pytest.raises(ValueError, match="not a regular file"):
        sha256_file("/dev/zero")


@pytest.mark.parametrize("value", [10 ** 400, float("inf")])
def test_label_number_too_large_for_a_float_is_a_one_line_error(value):
    """Why ("tracebacks instead of one-line errors"): a dataset label number too large for a float."""
    from formats.dataset import DatasetError, validate_label
    with pytest.raises(DatasetError, match=r"label\[3\] is not finite"):
        validate_label([0.0] * 3 + [value] + [0.0] * 21, "dataset.json: labels[0]")
