"""Tests of `preprocess` on folders: what a run keeps and skips (and says why), mirrors, EXIF, pose limits, a
5-point detector, the output folder, and dataset.json written, read, accepted as it is and validated.

Real-photo checks use skimage's astronaut (one frontal face). Single photos (detection, crops, head pose):
tests/test_preprocess.py.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image
from scipy.spatial.transform import Rotation

from formats.cameras import lookat_label, mirror_label, yaw_pitch_of
from preprocess import (
    DatasetError,
    DlibBackend,
    Face,
    PreprocessConfig,
    load_dataset,
    preprocess_folder,
    read_dataset_json,
    write_dataset_json,
)
from tests.helpers.photos import DEG, photo_and_mirror, pose_of, save_image
from tests.helpers.photos import astronaut, backend  # noqa: F401 - fixtures


# ---------------------------------------------------------------------------------------------- folders

@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, astronaut):
    photos = tmp_path_factory.mktemp("photos")
    save_image(astronaut, photos / "astronaut.png")
    (photos / "corrupt.jpg").write_bytes(np.random.default_rng(0).bytes(5000))
    save_image(skimage.data.coffee(), photos / "coffee.png")
    out = tmp_path_factory.mktemp("runs") / "dataset"
    report = preprocess_folder(photos, out, PreprocessConfig())
    return photos, out, report


def test_folder_keeps_astronaut_and_reports_the_rest(mixed_run, astronaut):
    photos, out, report = mixed_run
    assert [k.source for k in report.kept] == ["astronaut.png"]
    reasons = {s.source: s.reason for s in report.skipped}
    assert reasons == {"corrupt.jpg": "unreadable", "coffee.png": "no_face"}
    assert sorted(p.name for p in out.iterdir()) == [
        "dataset.json", "img00000000.png", "img00000000_mirror.png", "report.json"]
    on_disk = json.loads((out / "report.json").read_text())
    assert {s["source"]: s["reason"] for s in on_disk["skipped"]} == reasons
    assert on_disk["kept"][0]["raw_yaw"] == pytest.approx(report.kept[0].raw_yaw)
    assert on_disk["config"]["backend"] == "dlib" and on_disk["config"]["size"] == 512
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temporary folder left behind"


def test_folder_dataset_json_labels_and_mirror(mixed_run):
    _, out, report = mixed_run
    raw = json.loads((out / "dataset.json").read_text())
    assert [row[0] for row in raw["labels"]] == ["img00000000.png", "img00000000_mirror.png"]
    samples = load_dataset(out)
    assert [s.name for s in samples] == ["img00000000.png", "img00000000_mirror.png"]
    label, mirrored = samples[0].label, samples[1].label
    assert label.dtype == np.float32 and label.shape == (25,)
    np.testing.assert_allclose(mirrored, mirror_label(label), atol=1e-6)
    kept = report.kept[0]
    assert yaw_pitch_of(label) == pytest.approx((kept.yaw, kept.pitch), abs=1e-5)
    assert yaw_pitch_of(mirrored)[0] == pytest.approx(-kept.yaw, abs=1e-5)
    crop = np.asarray(Image.open(samples[0].path))
    flip = np.asarray(Image.open(samples[1].path))
    assert crop.shape == (512, 512, 3)
    np.testing.assert_array_equal(flip, crop[:, ::-1])


def test_photo_and_its_mirror_get_opposite_labels(tmp_path, astronaut):
    photos = photo_and_mirror(tmp_path / "photos", astronaut)
    report = preprocess_folder(photos, tmp_path / "out", PreprocessConfig(mirror=False, crop="ffhq"))
    a, b = report.kept
    assert b.raw_yaw == pytest.approx(-a.raw_yaw, abs=0.05 * DEG)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "dataset.json", "img00000000.png", "img00000001.png", "report.json"]
    crop_a = np.asarray(Image.open(tmp_path / "out" / "img00000000.png"), dtype=np.int16)
    crop_b = np.asarray(Image.open(tmp_path / "out" / "img00000001.png"), dtype=np.int16)
    assert np.abs(crop_b - crop_a[:, ::-1]).mean() < 1.0


def test_two_faces_are_skipped_as_several_faces(tmp_path, astronaut):
    photos = tmp_path / "photos"
    photos.mkdir()
    canvas = np.zeros((512, 1024, 3), np.uint8)
    canvas[:, :512] = astronaut
    canvas[:, 512:] = astronaut
    save_image(canvas, photos / "two.png")
    save_image(astronaut, photos / "one.png")
    report = preprocess_folder(photos, tmp_path / "out")
    assert [k.source for k in report.kept] == ["one.png"]
    assert [(s.source, s.reason) for s in report.skipped] == [("two.png", "several_faces")]
    assert "2 faces" in report.skipped[0].detail


def test_exif_rotated_phone_photo_is_turned_upright(tmp_path, astronaut):
    photos = tmp_path / "photos"
    photos.mkdir()
    sideways = Image.fromarray(astronaut).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways.save(photos / "phone.jpg", exif=exif.tobytes(), quality=95)
    report = preprocess_folder(photos, tmp_path / "out", PreprocessConfig(mirror=False))
    assert [k.source for k in report.kept] == ["phone.jpg"], report.summary()
    assert abs(report.kept[0].raw_yaw) < 15 * DEG


def test_truncated_image_is_unreadable(tmp_path, astronaut):
    photos = tmp_path / "photos"
    photos.mkdir()
    data = (save_image(astronaut, photos / "full.png")).read_bytes()
    (photos / "full.png").unlink()
    (photos / "cut.png").write_bytes(data[: len(data) // 2])
    report = preprocess_folder(photos, tmp_path / "out")
    assert report.kept == []
    assert [(s.source, s.reason) for s in report.skipped] == [("cut.png", "unreadable")]
    assert load_dataset(tmp_path / "out") == []


def test_pose_limits_skip_and_clamp(tmp_path, astronaut):
    photos = tmp_path / "photos"
    photos.mkdir()
    save_image(astronaut, photos / "a.png")
    report = preprocess_folder(photos, tmp_path / "skip", PreprocessConfig(max_abs_yaw=0.5 * DEG))
    assert [s.reason for s in report.skipped] == ["pose_out_of_range"]
    assert "yaw" in report.skipped[0].detail
    report = preprocess_folder(photos, tmp_path / "clamp", PreprocessConfig(clamp_abs_yaw=0.5 * DEG))
    kept = report.kept[0]
    assert kept.clamped and abs(kept.raw_yaw) > 0.5 * DEG
    assert kept.yaw == pytest.approx(math.copysign(0.5 * DEG, kept.raw_yaw))
    assert yaw_pitch_of(load_dataset(tmp_path / "clamp")[0].label)[0] == pytest.approx(kept.yaw, abs=1e-5)


class _FivePointBackend:
    """Wraps dlib and reports only SCRFD-style 5 points, as the insightface detector alone would."""

    name = "five-point"

    def __init__(self, inner: DlibBackend) -> None:
        self.inner = inner

    def detect(self, image):
        faces = []
        for face in self.inner.detect(image):
            lm = face.landmarks
            five = np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])
            faces.append(Face(box=face.box, landmarks=five, score=face.score))
        return faces


def test_five_point_backend_path(tmp_path, astronaut, backend):
    photos = tmp_path / "photos"
    photos.mkdir()
    save_image(astronaut, photos / "a.png")
    report = preprocess_folder(photos, tmp_path / "out", PreprocessConfig(backend=_FivePointBackend(backend)))
    assert report.backend == "five-point"
    kept = report.kept[0]
    _, pose68 = pose_of(astronaut, backend, flip_average=True)
    assert abs(kept.raw_yaw - pose68.yaw) < 6 * DEG
    assert len(load_dataset(tmp_path / "out")) == 2


# ---------------------------------------------------------------------------------------------- output dir

def test_non_empty_out_dir_is_refused_then_overwritten(tmp_path, astronaut):
    photos = tmp_path / "photos"
    photos.mkdir()
    save_image(astronaut, photos / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not empty.*overwrite"):
        preprocess_folder(photos, out)
    assert (out / "keep.txt").read_text() == "precious"
    preprocess_folder(photos, out, PreprocessConfig(overwrite=True))
    assert not (out / "keep.txt").exists() and (out / "dataset.json").is_file()
    with pytest.raises(ValueError, match="outside photos_dir"):
        preprocess_folder(photos, photos, PreprocessConfig(overwrite=True))
    assert (photos / "a.png").is_file()


class _ExplodingBackend:
    name = "exploding"

    def detect(self, image):
        raise RuntimeError("backend crashed")


def test_failed_run_leaves_nothing(tmp_path, astronaut):
    photos = tmp_path / "photos"
    photos.mkdir()
    save_image(astronaut, photos / "a.png")
    with pytest.raises(RuntimeError, match="backend crashed"):
        preprocess_folder(photos, tmp_path / "out", PreprocessConfig(backend=_ExplodingBackend()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


# ---------------------------------------------------------------------------------------------- dataset.json

def _labelled_folder(folder: Path, count: int = 3) -> list[tuple[str, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(count):
        name = f"img{i:08d}.png"
        save_image(np.full((8, 8, 3), 40 * i, np.uint8), folder / name)
        entries.append((name, lookat_label(0.2 * i - 0.2, 0.1 * i)))
    write_dataset_json(folder, entries)
    return entries


def test_dataset_json_round_trip(tmp_path):
    entries = _labelled_folder(tmp_path / "ds")
    raw = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert list(raw) == ["labels"] and len(raw["labels"][0][1]) == 25
    back = read_dataset_json(tmp_path / "ds")
    assert [name for name, _ in back] == [name for name, _ in entries]
    for (_, a), (_, b) in zip(entries, back):
        np.testing.assert_array_equal(a, b)
    samples = load_dataset(tmp_path / "ds")
    assert all(s.path.is_absolute() and s.path.is_file() for s in samples)


def test_existing_dataset_is_accepted_as_is(tmp_path):
    entries = _labelled_folder(tmp_path / "ds")
    report = preprocess_folder(tmp_path / "ds", tmp_path / "out")
    assert report.accepted_existing and report.skipped == []
    copied = load_dataset(tmp_path / "out")
    assert [s.name for s in copied] == [name for name, _ in entries]
    np.testing.assert_array_equal(copied[1].label, entries[1][1])


def test_eg3d_in_the_wild_output_is_used_unchanged(tmp_path):
    """A folder made by EG3D's preprocess_in_the_wild.py: .jpg names, float64 labels (Deep3DFaceRecon pose with
    roll, radius 2.7, intrinsics 2985.29 / 700), mirror entries; copied byte for byte, labels untouched."""
    folder = tmp_path / "eg3d"
    folder.mkdir()
    rotation = Rotation.from_euler("yxz", [0.3, -0.1, 0.05]).as_matrix() @ np.diag([1.0, -1.0, -1.0])
    pose = np.eye(4)
    pose[:3, :3] = rotation
    pose[:3, 3] = -rotation[:, 2] * 2.7
    intrinsics = [[2985.29 / 700, 0, 0.5], [0, 2985.29 / 700, 0.5], [0, 0, 1]]
    labels = []
    flip = np.diag([-1.0, 1, 1, 1])
    for name, cam in (("photo.jpg", pose), ("photo_mirror.jpg", flip @ pose @ flip)):
        Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(folder / name)
        labels.append([name, np.concatenate([cam.reshape(-1), np.reshape(intrinsics, -1)]).tolist()])
    (folder / "dataset.json").write_text(json.dumps({"labels": labels}))
    report = preprocess_folder(folder, tmp_path / "out")
    assert report.accepted_existing and [k.image for k in report.kept] == ["photo.jpg", "photo_mirror.jpg"]
    assert (tmp_path / "out" / "dataset.json").read_bytes() == (folder / "dataset.json").read_bytes()
    samples = load_dataset(tmp_path / "out")
    np.testing.assert_array_equal(samples[0].label, np.float32(labels[0][1]))
    assert yaw_pitch_of(samples[1].label)[0] == pytest.approx(-yaw_pitch_of(samples[0].label)[0], abs=1e-6)


def _corrupt(tmp_path: Path, edit) -> Path:
    folder = tmp_path / "ds"
    _labelled_folder(folder)
    data = json.loads((folder / "dataset.json").read_text())
    edit(data)
    (folder / "dataset.json").write_text(json.dumps(data))
    return folder


def _set(index: int, value):
    def edit(data):
        data["labels"][1][1][index] = value
    return edit


def _rotate_bad(data):
    data["labels"][1][1][0] = 1.5


def _mirror_rotation(data):
    for k in (0, 4, 8):
        data["labels"][1][1][k] *= -1


@pytest.mark.parametrize("edit, pattern", [
    (lambda d: d["labels"][1].__setitem__(0, "missing.png"), r"labels\[1\] \('missing.png'\): image file not found"),
    (lambda d: d["labels"][1][1].pop(),
     r"labels\[1\] \('img00000001.png'\): label must be a list of 25 numbers, got 24"),
    (_set(5, float("nan")), r"labels\[1\] \('img00000001.png'\): label\[5\] is not finite"),
    (_set(7, "x"), r"label\[7\] is not a number"),
    (_set(14, 0.5), r"cam2world bottom row \(label\[12:16\]\) is \[0.0, 0.0, 0.5, 1.0\]"),
    (_rotate_bad, r"labels\[1\] \('img00000001.png'\): cam2world rotation .* not orthonormal"),
    (_mirror_rotation, r"reflection"),
    (_set(24, 2.0), r"intrinsics bottom row \(label\[22:25\]\)"),
    (lambda d: d["labels"].append(d["labels"][0]), r"labels\[3\] \('img00000000.png'\): file name listed twice"),
    (lambda d: d["labels"][0].__setitem__(0, "../x.png"), r"labels\[0\]: file name must be a relative path"),
    (lambda d: d.__setitem__("labels", None), r"'labels' is null"),
])
def test_validation_errors_name_file_entry_and_field(tmp_path, edit, pattern):
    folder = _corrupt(tmp_path, edit)
    with pytest.raises(DatasetError, match=pattern) as info:
        load_dataset(folder)
    assert "dataset.json" in str(info.value)


def test_missing_or_broken_dataset_json(tmp_path):
    with pytest.raises(DatasetError, match="dataset.json: not found"):
        load_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_dataset(tmp_path)


def test_preprocess_command_crop_option(tmp_path, astronaut):
    import typer
    from typer.testing import CliRunner

    from preprocess.commands import preprocess as preprocess_command
    app = typer.Typer()
    app.command()(preprocess_command)
    photos = tmp_path / "photos"
    photos.mkdir()
    save_image(astronaut, photos / "a.png")
    result = CliRunner().invoke(app, [str(photos), "--out", str(tmp_path / "out"), "--crop", "ffhq", "--no-mirror"])
    assert result.exit_code == 0, result.output
    assert "crop: ffhq framing" in result.output and "1 photo(s) kept" in result.output
    assert json.loads((tmp_path / "out" / "report.json").read_text())["config"]["crop"] == "ffhq"
    again = CliRunner().invoke(app, [str(tmp_path / "out"), "--out", str(tmp_path / "copy")])
    assert again.exit_code == 0 and "copied unchanged" in again.output
    bad = CliRunner().invoke(app, [str(photos), "--out", str(tmp_path / "bad"), "--crop", "square"])
    assert bad.exit_code == 2 and "crop must be one of" in bad.output
