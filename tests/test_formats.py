"""The torch-free core (formats/): names, atomic writes, fingerprints, versioned JSON, the adapter schema, the
dataset.json writer and reader, and the export manifest's writer and reader."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from formats import atomic
from formats.adapter_file import adapter_metadata, check_metadata, lora_shapes
from formats.errors import AdapterFileError, FormatError, ManifestError
from formats.export_manifest import (ExportManifest, build_manifest, graph_entry, keep_lora_adapter_section,
                                     write_manifest)
from formats.fingerprint import sha256_bytes, sha256_file, weights_fingerprint_of
from formats.names import check_name, is_valid_name
from formats.versioned_json import parse_versioned_json


def test_names_match_the_whole_string():
    for good in ("a", "A-b_9", "x" * 64):
        assert is_valid_name(good) and check_name(good) == good
    for bad in ("alice\n", "", "x" * 65, "a.b", "../x", "a b", "é", None, 7):
        assert not is_valid_name(bad)
    with pytest.raises(ValueError, match="person name 'alice\\\\n'"):
        check_name("alice\n")


def test_atomic_writes_follow_the_umask_and_leave_nothing_on_error(tmp_path):
    old = os.umask(0o027)
    try:
        path = atomic.write_text(tmp_path / "sub" / "a.txt", "hello")
        assert path.read_text() == "hello" and stat.S_IMODE(path.stat().st_mode) == 0o640
        with pytest.raises(RuntimeError):
            with atomic.atomic_file(tmp_path / "b.bin") as tmp:
                tmp.write_bytes(b"half")
                raise RuntimeError("crash")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]
        atomic.copy_file(path, tmp_path / "c.txt")
        assert (tmp_path / "c.txt").read_text() == "hello"
        with atomic.atomic_dir(tmp_path / "d") as d:
            (d / "x").write_text("1")
        with pytest.raises(FileExistsError):
            with atomic.atomic_dir(tmp_path / "d"):
                pass
        with atomic.atomic_dir(tmp_path / "d", overwrite=True) as d:
            (d / "y").write_text("2")
        assert [p.name for p in (tmp_path / "d").iterdir()] == ["y"]
        assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o750
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    finally:
        os.umask(old)


def test_fingerprints(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    assert sha256_file(tmp_path / "f") == sha256_bytes(b"abc") == \
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    a = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(3, np.float32)}
    fp = weights_fingerprint_of(a)
    assert fp == weights_fingerprint_of(dict(reversed(list(a.items()))))  # name order, not insertion order
    assert fp != weights_fingerprint_of({**a, "b": np.ones(3, np.float32)})
    assert fp != weights_fingerprint_of({**a, "w": a["w"].reshape(3, 2)})


def test_versioned_json_errors_name_the_place_and_field():
    ok = json.dumps({"format": "f", "format_version": 2, "x": 1})
    assert parse_versioned_json(ok, "here", "f", 2)["x"] == 1
    for text, match in (("{", "not valid JSON"), ("[1]", "not a JSON object"),
                        (json.dumps({"format": "f", "format_version": 3}), "'f'/3, expected 'f'/2"), (None, "no")):
        with pytest.raises(ManifestError, match=match) as e:
            parse_versioned_json(text, "here", "f", 2, ManifestError)
        assert str(e.value).startswith("here: ") and isinstance(e.value, FormatError)


def test_lora_shape_rule():
    assert lora_shapes((8, 4, 3, 3), 2, "loralib") == ((6, 12), (24, 6))
    assert lora_shapes((8, 4, 3, 3), 2, "flat") == ((2, 36), (8, 2))
    assert lora_shapes((8, 4), 2, "loralib") == lora_shapes((8, 4), 2, "flat") == ((2, 4), (8, 2))


def test_adapter_metadata_round_trip_and_field_checks():
    meta = adapter_metadata(rank=4, alpha=4.0, layout="loralib", policy={"rank": 4}, targets=[["a.weight", "lora",
                            [8, 4]]], base_fingerprint="sha256:x", dtype="float16", anchor_names=["p"])
    assert list(meta)[:3] == ["format", "format_version", "rank"]
    assert check_metadata(json.dumps(meta), "f") == meta
    for field, value in (("rank", 0), ("layout", "diagonal"), ("targets", {}), ("base_fingerprint", None)):
        with pytest.raises(AdapterFileError, match=field):
            check_metadata(json.dumps({**meta, field: value}), "f")
    with pytest.raises(AdapterFileError, match="no 'my3dgen_adapter' metadata"):
        check_metadata(None, "f")


def test_manifest_one_writer_one_reader(tmp_path):
    for g in ("synthesis", "render"):
        (tmp_path / f"{g}.onnx").write_bytes(b"graph")
    graphs = {g: graph_entry(f"{g}.onnx", sha256_file(tmp_path / f"{g}.onnx"), [], [], []) for g in
              ("synthesis", "render")}
    adapter = keep_lora_adapter_section({"rank": 4}, 4, 4.0, "loralib", 1.0, [], [
        {"input": "x", "tensor": "x", "target": "x", "role": "full", "shape": [2], "graph": "render",
         "dtype": "float32"}], None, 2)
    m = build_manifest(graphs=graphs, generator={}, model={"num_ws": 3, "w_dim": 8, "z_dim": 8, "c_dim": 25,
                       "img_resolution": 64}, camera={"radius": 2.7, "pivot": [0, 0, 0.2], "focal": 4.2647},
                       base_fingerprint="sha256:b", source={}, adapter=adapter, precision="fp32", opset=18,
                       versions={}, verification=None, tensorrt_check={})
    write_manifest(tmp_path, m)
    got = ExportManifest.read(tmp_path)
    assert got.raw == m and got.mode == "keep-lora" and got.num_ws == 3 and got.image_size == 64
    assert got.camera == (2.7, (0.0, 0.0, 0.2), 4.2647) and got.engines is None
    assert [i["input"] for i in got.adapter_inputs("render")] == ["x"] and got.adapter_inputs("synthesis") == []
    (tmp_path / "render.onnx").unlink()
    with pytest.raises(ManifestError, match="graph 'render' is missing"):
        ExportManifest.read(tmp_path)
    with pytest.raises(ManifestError, match="missing .is .* an export directory"):
        ExportManifest.read(tmp_path / "nowhere")


def test_dataset_json_one_writer_one_reader(tmp_path):
    """formats.dataset: what write_dataset_json writes, read_dataset_json reads back as float32 labels (exactly);
    a bad entry is refused before anything is written, naming the file, the entry and the field."""
    from formats.cameras import lookat_label
    from formats.dataset import DATASET_JSON, Sample, load_dataset, read_dataset_json, write_dataset_json
    from formats.errors import DatasetError
    entries = [(f"img{i}.png", lookat_label(0.2 * i - 0.2, 0.1 * i)) for i in range(3)]
    for name, _ in entries:
        (tmp_path / name).write_bytes(b"png")
    path = write_dataset_json(tmp_path, entries)
    assert path == tmp_path / DATASET_JSON
    raw = json.loads(path.read_text())
    assert list(raw) == ["labels"] and [row[0] for row in raw["labels"]] == [n for n, _ in entries]
    back = read_dataset_json(tmp_path)
    assert [n for n, _ in back] == [n for n, _ in entries]
    for (_, a), (_, b) in zip(entries, back):
        assert b.dtype == np.float32 and np.array_equal(a, b)
    samples = load_dataset(tmp_path)
    assert all(isinstance(s, Sample) and s.path.is_absolute() and s.path.is_file() for s in samples)
    assert [s.name for s in samples] == [n for n, _ in entries] and np.array_equal(samples[2].label, back[2][1])
    before = path.read_bytes()
    bad_focal = entries[1][1].copy()
    bad_focal[16] = -1.0
    for bad, field in (((entries[1][0], bad_focal), r"label\[16\], label\[20\]"),
                       (("../x.png", entries[1][1]), "relative path"),
                       ((entries[1][0], entries[1][1][:24]), "25 numbers, got 24")):
        with pytest.raises(DatasetError, match=field) as info:
            write_dataset_json(tmp_path, [entries[0], bad])
        assert str(info.value).startswith(f"{path}: labels[1] ")
        assert isinstance(info.value, FormatError) and path.read_bytes() == before  # nothing written
