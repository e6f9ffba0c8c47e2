"""Tests of `preprocess` on single photos: detection, FFHQ crop, head pose sign conventions, EG3D crop.

Real-photo checks use skimage's astronaut (one frontal face); pose conventions are pinned on synthetic
projections of the 3-D template, where the true rotation is known. Folders in and out (the report, mirrors,
dataset.json and its validation): tests/test_preprocess_folders.py.
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from formats.cameras import lookat_label, yaw_pitch_of
from preprocess import (
    BackendUnavailable,
    InsightFaceBackend,
    PreprocessConfig,
    align_face,
    detect_flip_averaged,
    estimate_head_pose,
    ffhq_quad,
    keypoints_from_landmarks,
    load_dataset,
    make_backend,
    pose_label,
    preprocess_folder,
    validate_label,
)
from preprocess.align import FaceKeypoints
from preprocess.eg3d_crop import (
    CENTER_CROP_SIZE,
    LM3D_STD,
    RESCALE_FACTOR,
    TARGET_SIZE,
    eg3d_align,
    eg3d_framing,
    expected_crop_position,
    five_points,
    pos_fit,
)
from preprocess.detect import MIRROR_68, dlib_model_path, mirror_face
from preprocess.pose import TEMPLATE_68, _FRONTAL, crop_intrinsics, direction_to_yaw_pitch, project
from tests.helpers.photos import DEG, photo_and_mirror, pose_of
from tests.helpers.photos import astronaut, backend  # noqa: F401 - fixtures


# ---------------------------------------------------------------------------------------------- detection

def test_dlib_models_found_offline():
    assert dlib_model_path("shape_predictor_68_face_landmarks.dat").stat().st_size > 1_000_000


def test_astronaut_one_face_with_68_landmarks(astronaut, backend):
    faces = backend.detect(astronaut)
    assert len(faces) == 1
    face = faces[0]
    assert face.landmarks.shape == (68, 2)
    left, top, right, bottom = face.box
    assert 150 < left < right < 300 and 50 < top < bottom < 200
    assert face.score > backend.min_score


def test_mirror_face_is_an_involution(astronaut, backend):
    face = backend.detect(astronaut)[0]
    twice = mirror_face(mirror_face(face, 512), 512)
    np.testing.assert_allclose(twice.landmarks, face.landmarks)
    assert np.allclose(twice.box, face.box)
    assert (MIRROR_68[MIRROR_68] == np.arange(68)).all()
    once = mirror_face(face, 512)
    assert once.landmarks[36, 0] < once.landmarks[45, 0]


def test_insightface_backend_without_models_says_what_to_do(tmp_path):
    with pytest.raises(BackendUnavailable, match=r"det_10g\.onnx.*buffalo_l"):
        InsightFaceBackend(tmp_path)
    with pytest.raises(BackendUnavailable, match="model_dir"):
        make_backend("insightface")
    with pytest.raises(ValueError, match="unknown backend 'mediapipe'"):
        make_backend("mediapipe")


def test_insightface_backend_without_package_says_pip_install(tmp_path):
    if importlib.util.find_spec("insightface") is not None:
        pytest.skip("insightface is installed here; the missing-package message cannot be checked")
    (tmp_path / "det_10g.onnx").write_bytes(b"placeholder")
    with pytest.raises(BackendUnavailable, match="pip install insightface"):
        InsightFaceBackend(tmp_path)


# ---------------------------------------------------------------------------------------------- crop

def test_ffhq_quad_constants():
    keypoints = FaceKeypoints(np.array([100.0, 100.0]), np.array([140.0, 100.0]),
                              np.array([105.0, 150.0]), np.array([135.0, 150.0]))
    quad = ffhq_quad(keypoints)
    half = max(2.0 * 40.0, 1.8 * 50.0)
    centre = np.array([120.0, 100.0 + 0.1 * 50.0])
    np.testing.assert_allclose(quad, centre + np.array([[-1, -1], [-1, 1], [1, 1], [1, -1]]) * half)


def test_ffhq_quad_removes_roll():
    base = np.array([[100.0, 100.0], [140.0, 100.0], [105.0, 150.0], [135.0, 150.0]])
    rot = Rotation.from_euler("z", 25, degrees=True).as_matrix()[:2, :2]
    turned = base @ rot.T
    quad = ffhq_quad(FaceKeypoints(*turned))
    top_edge = quad[3] - quad[0]
    assert math.degrees(math.atan2(top_edge[1], top_edge[0])) == pytest.approx(25.0, abs=1e-6)


def test_keypoints_from_5_and_68_landmarks():
    lm = np.arange(136, dtype=np.float64).reshape(68, 2)
    kp = keypoints_from_landmarks(lm)
    np.testing.assert_allclose(kp.eye_left, lm[36:42].mean(0))
    np.testing.assert_allclose(kp.mouth_right, lm[54])
    five = keypoints_from_landmarks(lm[:5])
    np.testing.assert_allclose(five.mouth_left, lm[3])
    with pytest.raises(ValueError, match=r"\(68, 2\) or \(5, 2\)"):
        keypoints_from_landmarks(lm[:10])


def test_astronaut_crop_is_512_and_maps_landmarks(astronaut, backend):
    face = backend.detect(astronaut)[0]
    aligned = align_face(astronaut, face.landmarks)
    assert aligned.image.shape == (512, 512, 3) and aligned.image.dtype == np.uint8
    np.testing.assert_allclose(aligned.to_crop(aligned.quad[[0, 2]]), [[-0.5, -0.5], [511.5, 511.5]], atol=1e-6)
    crop_lm = aligned.to_crop(face.landmarks)
    eyes = np.stack([crop_lm[36:42].mean(0), crop_lm[42:48].mean(0)])
    assert abs(eyes[0, 1] - eyes[1, 1]) < 3.0
    assert 0.3 * 512 < eyes[:, 1].mean() < 0.5 * 512
    redetected = backend.detect(aligned.image)
    assert len(redetected) == 1
    assert np.abs(redetected[0].landmarks[36:48] - crop_lm[36:48]).mean() < 3.0


def test_face_near_the_border_is_padded(astronaut, backend):
    near_edge = np.ascontiguousarray(astronaut[70:330, 120:330])
    face = backend.detect(near_edge)[0]
    aligned = align_face(near_edge, face.landmarks)
    assert aligned.padded and aligned.image.shape == (512, 512, 3)
    pose = estimate_head_pose(aligned.to_crop(face.landmarks), 512)
    assert abs(pose.yaw) < 15 * DEG and abs(pose.pitch) < 15 * DEG


# ---------------------------------------------------------------------------------------------- pose

def _synthetic_landmarks(head_yaw_deg: float, head_pitch_deg: float) -> np.ndarray:
    """68-point array whose template points are the projection of the template turned by the given angles.

    head_yaw: rotation about the head's up axis taking the nose towards +x (the face turns to its own left);
    head_pitch: rotation about x taking the nose down.
    """
    index = sorted(TEMPLATE_68)
    points = np.array([TEMPLATE_68[i] for i in index])
    points -= points.mean(0)
    turn = Rotation.from_euler("yx", [head_yaw_deg, head_pitch_deg], degrees=True).as_matrix()
    uv = project(points, _FRONTAL @ turn, np.array([0.0, 0.0, 110.0]), crop_intrinsics(512))
    landmarks = np.zeros((68, 2))
    landmarks[index] = uv
    return landmarks


@pytest.mark.parametrize("head_yaw, head_pitch", [(0, 0), (20, 0), (-35, 5), (10, -12), (50, 0)])
def test_pnp_recovers_synthetic_pose_and_signs(head_yaw, head_pitch):
    pose = estimate_head_pose(_synthetic_landmarks(head_yaw, head_pitch), 512)
    assert pose.rms_px < 1e-3
    expected = np.array([0.0, 0.0, 1.0]) @ Rotation.from_euler("yx", [head_yaw, head_pitch], degrees=True).as_matrix()
    yaw, pitch = direction_to_yaw_pitch(expected)
    assert pose.yaw == pytest.approx(yaw, abs=0.1 * DEG)
    assert pose.pitch == pytest.approx(pitch, abs=0.1 * DEG)
    if head_yaw:
        assert np.sign(pose.yaw) == -np.sign(head_yaw), "face turned to its own left must give negative yaw"
    if head_pitch:
        assert np.sign(pose.pitch) == -np.sign(head_pitch), "face tilted down: camera above: negative pitch"


def test_pnp_mirrored_landmarks_negate_yaw():
    landmarks = _synthetic_landmarks(25, 8)
    mirrored = landmarks[MIRROR_68].copy()
    mirrored[:, 0] = 511 - mirrored[:, 0]
    a, b = estimate_head_pose(landmarks, 512), estimate_head_pose(mirrored, 512)
    assert b.yaw == pytest.approx(-a.yaw, abs=1e-3 * DEG)
    assert b.pitch == pytest.approx(a.pitch, abs=1e-3 * DEG)


@pytest.mark.parametrize("yaw, pitch", [(0.0, 0.0), (0.4, -0.2), (-0.7, 0.3)])
def test_direction_to_yaw_pitch_inverts_lookat(yaw, pitch):
    label = lookat_label(yaw, pitch)
    position = label[:16].reshape(4, 4)[:3, 3].astype(np.float64)
    assert direction_to_yaw_pitch(position) == pytest.approx((yaw, pitch), abs=1e-5)
    assert yaw_pitch_of(pose_label(yaw, pitch)) == pytest.approx((yaw, pitch), abs=1e-5)


def test_astronaut_label_is_valid_near_frontal_camera(astronaut, backend):
    _, pose = pose_of(astronaut, backend, flip_average=True)
    assert abs(pose.yaw) < 15 * DEG and abs(pose.pitch) < 15 * DEG
    label = validate_label(pose_label(pose.yaw, pose.pitch).tolist(), "astronaut")
    assert label.shape == (25,) and label.dtype == np.float32
    cam2world = label[:16].reshape(4, 4)
    assert np.linalg.norm(cam2world[:3, 3]) == pytest.approx(2.7, abs=1e-4)
    assert cam2world[2, 3] > 2.0, "a near-frontal camera sits in front of the face, at +z"
    np.testing.assert_allclose(label[16:], [4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1], atol=1e-6)


def test_astronaut_mirror_gives_opposite_yaw(astronaut, backend):
    mirrored = np.ascontiguousarray(astronaut[:, ::-1])
    _, direct = pose_of(astronaut, backend, flip_average=True)
    _, flipped = pose_of(mirrored, backend, flip_average=True)
    assert flipped.yaw == pytest.approx(-direct.yaw, abs=0.05 * DEG)
    assert flipped.pitch == pytest.approx(direct.pitch, abs=0.05 * DEG)
    assert abs(direct.yaw) > 0.5 * DEG

    _, raw_direct = pose_of(astronaut, backend, flip_average=False)
    _, raw_flipped = pose_of(mirrored, backend, flip_average=False)
    assert np.sign(raw_direct.yaw) == -np.sign(raw_flipped.yaw) == np.sign(direct.yaw)
    assert abs(abs(raw_direct.yaw) - abs(raw_flipped.yaw)) < 3 * DEG


# ---------------------------------------------------------------------------------------------- EG3D crop

def _align_img_reference(photo: np.ndarray, lm5: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """EG3D's crop written out step by step from the published numbers, independently of preprocess.eg3d_crop:
    Deep3DFaceRecon align_img (POS fit to lm3D, resize by 300 / s, 1024 crop around t), then EG3D's centre crop
    700 and resize to 512. Returns the 512 crop (PIL, black outside the photo) and the landmarks' positions in
    it by Deep3DFaceRecon's own landmark formula (`resize_n_crop_img`'s lm_new)."""
    image = Image.fromarray(photo)
    w0, h0 = image.size
    lm = np.asarray(lm5, np.float64).copy()
    lm[:, 1] = h0 - 1 - lm[:, 1]
    rows = np.zeros((10, 8))
    rows[0::2, 0:3], rows[0::2, 3] = LM3D_STD, 1
    rows[1::2, 4:7], rows[1::2, 7] = LM3D_STD, 1
    k = np.linalg.lstsq(rows, lm.reshape(-1), rcond=None)[0]
    s = 300.0 / ((np.linalg.norm(k[0:3]) + np.linalg.norm(k[4:7])) / 2)
    t = np.array([k[3], k[7]])
    w, h = int(w0 * s), int(h0 * s)
    left = int(w / 2 - 1024 / 2 + (t[0] - w0 / 2) * s)
    up = int(h / 2 - 1024 / 2 + (h0 / 2 - t[1]) * s)
    big = image.resize((w, h), resample=Image.Resampling.BICUBIC).crop((left, up, left + 1024, up + 1024))
    crop = big.crop((162, 162, 862, 862)).resize((512, 512), resample=Image.Resampling.LANCZOS)
    lm_new = (lm - t + [w0 / 2, h0 / 2]) * s - [w / 2 - 512, h / 2 - 512]
    points = np.stack([lm_new[:, 0], 1024 - 1 - lm_new[:, 1]], axis=1)
    return np.asarray(crop), (points - 162) * 512 / 700


def test_eg3d_constants_put_eyes_and_mouth_where_eg3d_does():
    assert (TARGET_SIZE, RESCALE_FACTOR, CENTER_CROP_SIZE) == (1024.0, 300.0, 700)
    eyes = expected_crop_position(LM3D_STD[:2].mean(0)) / 512
    mouth = expected_crop_position(LM3D_STD[3:].mean(0)) / 512
    assert eyes[1] == pytest.approx(0.376, abs=0.002) and mouth[1] == pytest.approx(0.663, abs=0.002)
    assert abs(eyes[0] - 0.5) < 0.002 and abs(mouth[0] - 0.5) < 0.003
    eye_distance = (LM3D_STD[1, 0] - LM3D_STD[0, 0]) * 300 * 512 / 700
    assert eye_distance == pytest.approx(136.3, abs=0.1)


def test_pos_fit_recovers_scale_and_translation():
    rotation = Rotation.from_euler("yxz", [20, -10, 5], degrees=True).as_matrix()
    projected = LM3D_STD @ rotation.T * 137.0 + [50.0, 80.0, 0.0]
    t, scale = pos_fit(projected[:, :2])
    assert scale == pytest.approx(137.0, rel=1e-9)
    np.testing.assert_allclose(t, [50.0, 80.0], atol=1e-9)
    lm = np.arange(136, dtype=np.float64).reshape(68, 2)
    np.testing.assert_allclose(five_points(lm)[0], (lm[36] + lm[39]) / 2)
    np.testing.assert_allclose(five_points(lm)[4], lm[54])


@pytest.mark.parametrize("border", [False, True])
def test_eg3d_crop_reproduces_align_img_pixels(border):
    yy, xx = np.mgrid[0:300, 0:400].astype(np.float64)
    photo = np.stack([127 + 100 * np.sin(xx / 23.0), 127 + 100 * np.cos(yy / 17.0),
                      127 + 90 * np.sin((xx + yy) / 31.0)], axis=-1).round().astype(np.uint8)
    roll = Rotation.from_euler("z", 8, degrees=True).as_matrix()
    y_down = np.diag([1.0, -1.0, 1.0])
    centre = [90.0, 100.0] if border else [210.0, 140.0]
    lm5 = (LM3D_STD @ roll.T @ y_down)[:, :2] * 95.0 + centre
    expected, expected_points = _align_img_reference(photo, lm5)
    aligned = eg3d_align(photo, lm5, padding="black")
    assert aligned.padded == border
    diff = np.abs(aligned.image.astype(np.float64) - expected)
    assert diff.mean() < 1.5 and np.percentile(diff, 99) < 12
    # lm_new ignores the integer truncation of the crop corner and, with y flipped, is (s - 1) 1024-pixels off
    # in y (s = 300 / 95 here): ~1.6 px of the 512 crop; the pixels above agree exactly.
    np.testing.assert_allclose(aligned.to_crop(lm5), expected_points, atol=2.0)


def _check_eg3d_framing(photo: np.ndarray, face, backend) -> None:
    """Re-detect landmarks on the EG3D crop of `face`; eye midpoint and mouth centre must sit within 2% of the
    image size of where align_img's geometry puts them."""
    aligned = eg3d_align(photo, face.landmarks)
    _, expected = _align_img_reference(photo, five_points(face.landmarks))
    found = detect_flip_averaged(backend, aligned.image)
    assert len(found) >= 1
    got = five_points(max(found, key=lambda f: f.size).landmarks)
    tolerance = 0.02 * 512
    for name, index in (("eye midpoint", [0, 1]), ("mouth centre", [3, 4])):
        error = np.linalg.norm(got[index].mean(0) - expected[index].mean(0))
        assert error < tolerance, f"{name} {got[index].mean(0)} vs align_img {expected[index].mean(0)}"


def test_astronaut_eg3d_crop_matches_align_img_geometry(astronaut, backend):
    face = detect_flip_averaged(backend, astronaut)[0]
    _check_eg3d_framing(astronaut, face, backend)
    aligned = eg3d_align(astronaut, face.landmarks)
    eyes = five_points(aligned.to_crop(face.landmarks))[:2].mean(0)
    assert 0.33 < eyes[1] / 512 < 0.43


def test_insightface_group_photo_eg3d_crops(backend):
    spec = importlib.util.find_spec("insightface")
    if spec is None:
        pytest.skip("insightface is not installed (sdist only: it compiles a Cython extension and pulls onnx and "
                    "opencv, too slow to install here); its test photo t1.jpg ships inside the package")
    photo_path = Path(list(spec.submodule_search_locations)[0]) / "data" / "images" / "t1.jpg"
    if not photo_path.is_file():
        pytest.skip(f"insightface is installed but has no {photo_path}")
    photo = np.asarray(Image.open(photo_path).convert("RGB"))
    faces = [f for f in backend.detect(photo) if f.size >= 60]
    assert faces
    for face in faces:
        _check_eg3d_framing(photo, face, backend)


def test_astronaut_eg3d_mirror_gives_mirrored_camera(tmp_path, astronaut):
    photos = photo_and_mirror(tmp_path / "photos", astronaut)
    report = preprocess_folder(photos, tmp_path / "out", PreprocessConfig(mirror=False, crop="eg3d"))
    a, b = report.kept
    # LM3D_STD is not exactly left-right symmetric (x -0.3115 vs 0.3098), so the mirrored photo's crop is the
    # mirror of the photo's crop only to within a fraction of a pixel: the yaws agree to ~0.05 degrees.
    assert b.raw_yaw == pytest.approx(-a.raw_yaw, abs=0.1 * DEG)
    assert b.raw_pitch == pytest.approx(a.raw_pitch, abs=0.1 * DEG)
    labels = load_dataset(tmp_path / "out")
    assert yaw_pitch_of(labels[1].label)[0] == pytest.approx(-yaw_pitch_of(labels[0].label)[0], abs=0.1 * DEG)
    assert json.loads((tmp_path / "out" / "report.json").read_text())["config"]["crop"] == "eg3d"


def test_crop_option_ffhq_and_bad_values(tmp_path, astronaut, backend):
    face = detect_flip_averaged(backend, astronaut)[0]
    ffhq = align_face(astronaut, face.landmarks)
    eg3d = eg3d_align(astronaut, face.landmarks)
    eyes_ffhq = keypoints_from_landmarks(ffhq.to_crop(face.landmarks))
    eyes_eg3d = five_points(eg3d.to_crop(face.landmarks))
    assert (eyes_ffhq.eye_left[1] - eyes_eg3d[0, 1]) / 512 > 0.05  # FFHQ puts the eyes lower
    with pytest.raises(ValueError, match="crop must be one of"):
        PreprocessConfig(crop="square")
    with pytest.raises(ValueError, match="padding must be one of"):
        PreprocessConfig(padding="mirror")
    assert eg3d_framing(face.landmarks, (512, 512)).quad.shape == (4, 2)


def test_eg3d_face_near_the_border_is_padded(astronaut, backend):
    near_edge = np.ascontiguousarray(astronaut[70:330, 120:330])
    face = backend.detect(near_edge)[0]
    black = eg3d_align(near_edge, face.landmarks, padding="black")
    reflect = eg3d_align(near_edge, face.landmarks, padding="reflect")
    assert black.padded and reflect.padded
    outside = (black.image == 0).all(axis=-1)
    assert outside.mean() > 0.02  # a black band where the square leaves the photo, as EG3D's in-the-wild crop
    assert reflect.image[outside].mean() > 60  # filled with the blurred reflection instead
