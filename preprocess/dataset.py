"""Folder of photos -> EG3D-style dataset folder.

Output layout (what EG3D's `ImageFolderDataset` and this project's trainer read):

    out_dir/img00000000.png           512x512 crop of the first kept photo, framed as EG3D frames faces
                                      (`crop='eg3d'`, default) or by the FFHQ recipe (`crop='ffhq'`)
    out_dir/img00000000_mirror.png    its horizontal flip (unless mirror=False)
    out_dir/dataset.json              {"labels": [["img00000000.png", [25 floats]], ...]}
    out_dir/report.json               what was kept (with raw and used yaw/pitch) and what was skipped, why

Every photo that cannot be used is skipped and listed with its reason, never guessed at: unreadable files,
no face, several faces of similar size, a face too small, a head pose outside the plausible range. The output
is written to a temporary folder next to `out_dir` and renamed into place at the end, so a crash never
leaves a half-written dataset, and an existing non-empty `out_dir` is only replaced with `overwrite=True`.
`dataset.json` itself (its checks, its writer and its reader) is defined in `formats.dataset`.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from formats.atomic import replace_dir
from formats.cameras import mirror_label, yaw_pitch_of
from formats.dataset import DATASET_JSON, read_dataset_json, write_dataset_json
from preprocess.align import PADDINGS, align_face
from preprocess.detect import FaceBackend, detect_flip_averaged, make_backend
from preprocess.eg3d_crop import eg3d_align
from preprocess.pose import estimate_head_pose, pose_label

REPORT_JSON = "report.json"
CROPS = ("eg3d", "ffhq")
"""Face framings: 'eg3d' = EG3D's own (Deep3DFaceRecon align_img geometry, `preprocess.eg3d_crop`), the framing
the released models were trained on; 'ffhq' = the original FFHQ alignment recipe (`preprocess.align`)."""

UNREADABLE = "unreadable"
NOT_A_FILE = "not_a_file"
NO_FACE = "no_face"
SEVERAL_FACES = "several_faces"
FACE_TOO_SMALL = "face_too_small"
POSE_OUT_OF_RANGE = "pose_out_of_range"
SKIP_REASONS = (UNREADABLE, NOT_A_FILE, NO_FACE, SEVERAL_FACES, FACE_TOO_SMALL, POSE_OUT_OF_RANGE)


@dataclass
class PreprocessConfig:
    """Options of `preprocess_folder`. Angles are radians in EG3D's look-at yaw/pitch parametrization."""

    backend: str | FaceBackend = "dlib"
    """'dlib' (offline default), 'insightface' (needs `insightface_model_dir`) or a `FaceBackend` object."""
    insightface_model_dir: str | Path | None = None
    """Folder with the user's insightface buffalo_l ONNX files, for backend='insightface'."""
    size: int = 512
    """Side of the square output crops (EG3D ffhq512: 512)."""
    crop: str = "eg3d"
    """Face framing, one of CROPS: 'eg3d' (default; what EG3D was trained on and what its
    preprocess_in_the_wild.py makes) or 'ffhq' (the original FFHQ recipe: eyes lower, face smaller)."""
    padding: str = "reflect"
    """How a crop reaching outside the photo is filled, one of `align.PADDINGS`: 'reflect' (FFHQ's blurred
    reflection, what EG3D's FFHQ training images have) or 'black' (exactly EG3D's in-the-wild script)."""
    mirror: bool = True
    """Also write each crop's horizontal flip with the mirrored camera (EG3D's --mirror augmentation)."""
    flip_average_landmarks: bool = True
    """Average the landmarks found on the photo and on its mirror image: removes the landmark model's
    left/right bias so a photo and its mirror get exactly opposite yaws. Doubles detection time."""
    multi_face_ratio: float = 0.5
    """A photo is skipped as 'several faces' when a second face is at least this fraction of the largest
    face's size (box side); smaller background faces are ignored."""
    min_face_size: float = 48.0
    """Skip faces whose detector box side is below this many source pixels (the crop would be mostly blur)."""
    max_abs_yaw: float = math.radians(75.0)
    """Skip photos whose estimated |yaw| exceeds this: the 68-point PnP is not trustworthy beyond it."""
    max_abs_pitch: float = math.radians(45.0)
    """Skip photos whose estimated |pitch| exceeds this."""
    clamp_abs_yaw: float = math.radians(60.0)
    """Yaw written to the label is clamped to +-this (about FFHQ's range); the raw estimate is reported."""
    clamp_abs_pitch: float = math.radians(30.0)
    """Pitch written to the label is clamped to +-this; the raw estimate is reported."""
    supersample: int = 4
    """FFHQ's transform_size / output_size: resample at this multiple of `size`, then downsample."""
    overwrite: bool = False
    """Replace an existing non-empty out_dir (otherwise it is refused)."""
    progress: bool = False
    """Show a tqdm progress bar over the photos."""

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"PreprocessConfig.size must be >= 8, got {self.size}")
        if self.crop not in CROPS:
            raise ValueError(f"PreprocessConfig.crop must be one of {CROPS}, got {self.crop!r}")
        if self.padding not in PADDINGS:
            raise ValueError(f"PreprocessConfig.padding must be one of {PADDINGS}, got {self.padding!r}")
        if not 0.0 < self.multi_face_ratio <= 1.0:
            raise ValueError(f"PreprocessConfig.multi_face_ratio must be in (0, 1], got {self.multi_face_ratio}")
        for name in ("max_abs_yaw", "max_abs_pitch", "clamp_abs_yaw", "clamp_abs_pitch"):
            value = getattr(self, name)
            if not 0.0 < value <= math.pi / 2:
                raise ValueError(f"PreprocessConfig.{name} must be in (0, pi/2] radians, got {value}")


@dataclass(frozen=True)
class SkippedFile:
    """A file of the photo folder that is not in the dataset."""

    source: str
    """File name inside photos_dir."""
    reason: str
    """One of SKIP_REASONS."""
    detail: str
    """Human-readable specifics (decoder error, face count and sizes, estimated angles)."""


@dataclass(frozen=True)
class KeptPhoto:
    """A photo that went into the dataset."""

    source: str
    """File name inside photos_dir."""
    image: str
    """Crop file name in out_dir."""
    mirror_image: str | None
    """Mirrored crop file name, or None without mirroring."""
    yaw: float
    """Yaw of the written label (clamped), radians."""
    pitch: float
    """Pitch of the written label (clamped), radians."""
    raw_yaw: float
    """Estimated yaw before clamping."""
    raw_pitch: float
    """Estimated pitch before clamping."""
    clamped: bool
    """Whether the label's angles differ from the raw estimate."""
    reprojection_rms_px: float | None
    """PnP fit error in crop pixels (large: unusual face or bad landmarks); None for accepted datasets."""
    face_score: float | None
    """Detector score of the face used."""
    padded: bool
    """Whether the crop reached outside the photo and was filled (see PreprocessConfig.padding)."""


@dataclass
class PreprocessReport:
    """What `preprocess_folder` did; also written as out_dir/report.json."""

    photos_dir: str
    out_dir: str
    backend: str
    kept: list[KeptPhoto] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    accepted_existing: bool = False
    """True when photos_dir already was a labelled dataset and was copied as-is."""
    config: dict = field(default_factory=dict)
    """The PreprocessConfig used (backend by name), for reproducing the run."""

    def to_dict(self) -> dict:
        kept = []
        for item in self.kept:
            entry = asdict(item)
            entry.update(yaw_deg=math.degrees(item.yaw), pitch_deg=math.degrees(item.pitch),
                         raw_yaw_deg=math.degrees(item.raw_yaw), raw_pitch_deg=math.degrees(item.raw_pitch))
            kept.append(entry)
        return {"photos_dir": self.photos_dir, "out_dir": self.out_dir, "backend": self.backend,
                "accepted_existing": self.accepted_existing, "config": self.config, "num_kept": len(self.kept),
                "num_skipped": len(self.skipped), "kept": kept, "skipped": [asdict(s) for s in self.skipped]}

    def summary(self) -> str:
        lines = [f"{len(self.kept)} photo(s) kept, {len(self.skipped)} skipped -> {self.out_dir}"]
        lines += [f"  skipped {s.source}: {s.reason} ({s.detail})" for s in self.skipped]
        return "\n".join(lines)


def load_photo(path: str | Path) -> np.ndarray:
    """RGB uint8 (H, W, 3) pixels of an image file, rotated upright by its EXIF orientation. An image above PIL's
    decompression-bomb limit (Image.MAX_IMAGE_PIXELS) is a ValueError naming the file, not a traceback."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Image.DecompressionBombError as e:
        raise ValueError(f"{path}: refused as a possible decompression bomb ({e})") from None


def _config_record(config: PreprocessConfig) -> dict:
    record = {}
    for name in config.__dataclass_fields__:
        value = getattr(config, name)
        if name == "backend" and not isinstance(value, str):
            value = value.name
        record[name] = str(value) if isinstance(value, Path) else value
    return record


def _check_dirs(photos_dir: Path, out_dir: Path, overwrite: bool) -> None:
    if not photos_dir.is_dir():
        raise FileNotFoundError(f"photos_dir is not a folder: {photos_dir}")
    src, dst = photos_dir.resolve(), out_dir.resolve()
    if dst == src or dst in src.parents or src in dst.parents:
        raise ValueError(f"out_dir {out_dir} must be outside photos_dir {photos_dir} and must not contain it")
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"out_dir exists and is not a folder: {out_dir}")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"out_dir is not empty: {out_dir}; pass overwrite=True (CLI: --overwrite) to "
                              "replace it")


def _commit(tmp_dir: Path, out_dir: Path) -> None:
    """Move the finished temporary folder to out_dir, replacing what was there (already checked)."""
    replace_dir(tmp_dir, out_dir)


def _list_photos(photos_dir: Path) -> list[Path]:
    return sorted(p for p in photos_dir.iterdir() if not p.name.startswith("."))


def _process_photo(path: Path, backend: FaceBackend, config: PreprocessConfig):
    """(aligned crop, pose, face, clamped yaw, clamped pitch) or a SkippedFile for one photo."""
    name = path.name
    if not path.is_file():
        return SkippedFile(name, NOT_A_FILE, "a folder or special file; sub-folders are not searched")
    try:
        image = load_photo(path)
    except Exception as exc:  # any decoder error of a corrupt file means the same thing: unreadable
        return SkippedFile(name, UNREADABLE, f"{type(exc).__name__}: {exc}")
    faces = detect_flip_averaged(backend, image) if config.flip_average_landmarks else backend.detect(image)
    if not faces:
        return SkippedFile(name, NO_FACE, f"{backend.name} found no face in the {image.shape[1]}x{image.shape[0]} "
                                          "photo")
    faces = sorted(faces, key=lambda f: f.size, reverse=True)
    face = faces[0]
    rivals = [f for f in faces[1:] if f.size >= config.multi_face_ratio * face.size]
    if rivals:
        sizes = ", ".join(f"{f.size:.0f}" for f in [face] + rivals)
        return SkippedFile(name, SEVERAL_FACES, f"{1 + len(rivals)} faces of similar size (box sides {sizes} px); "
                                                "crop the photo to one person")
    if face.size < config.min_face_size:
        return SkippedFile(name, FACE_TOO_SMALL, f"face box side {face.size:.0f} px < min_face_size "
                                                 f"{config.min_face_size:.0f} px")
    if config.crop == "eg3d":
        aligned = eg3d_align(image, face.landmarks, config.size, config.supersample, config.padding)
    else:
        aligned = align_face(image, face.landmarks, config.size, config.supersample, config.padding == "reflect")
    pose = estimate_head_pose(aligned.to_crop(face.landmarks), config.size)
    if abs(pose.yaw) > config.max_abs_yaw or abs(pose.pitch) > config.max_abs_pitch:
        return SkippedFile(name, POSE_OUT_OF_RANGE,
                           f"estimated yaw {math.degrees(pose.yaw):.1f} deg, pitch {math.degrees(pose.pitch):.1f} "
                           f"deg; limits +-{math.degrees(config.max_abs_yaw):.0f} / "
                           f"+-{math.degrees(config.max_abs_pitch):.0f} deg")
    yaw = float(np.clip(pose.yaw, -config.clamp_abs_yaw, config.clamp_abs_yaw))
    pitch = float(np.clip(pose.pitch, -config.clamp_abs_pitch, config.clamp_abs_pitch))
    return aligned, pose, face, yaw, pitch


def _save_png(pixels: np.ndarray, path: Path) -> None:
    Image.fromarray(pixels, "RGB").save(path, compress_level=4)


def _accept_existing(photos_dir: Path, tmp_dir: Path, report: PreprocessReport) -> None:
    """Copy a labelled dataset folder unchanged: its images and its dataset.json byte for byte (after
    validation), e.g. the output of EG3D's `preprocess_in_the_wild.py` (`{"labels": [[name, 25 numbers]]}`)."""
    entries = read_dataset_json(photos_dir)
    for name, label in entries:
        target = tmp_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(photos_dir / name, target)
        yaw, pitch = yaw_pitch_of(label)
        report.kept.append(KeptPhoto(source=name, image=name, mirror_image=None, yaw=yaw, pitch=pitch,
                                     raw_yaw=yaw, raw_pitch=pitch, clamped=False, reprojection_rms_px=None,
                                     face_score=None, padded=False))
    shutil.copy2(photos_dir / DATASET_JSON, tmp_dir / DATASET_JSON)
    report.accepted_existing = True


def preprocess_folder(photos_dir: str | Path, out_dir: str | Path,
                      config: PreprocessConfig | None = None) -> PreprocessReport:
    """Turn a folder of photos into an EG3D dataset folder (crops, mirrors, dataset.json, report.json).

    A photos_dir that already holds a dataset.json with camera labels (this command's output, or EG3D's
    `preprocess_in_the_wild.py` output) is validated and copied as-is, labels unchanged. Files
    that cannot be used are listed in the report with their reason; the rest is still written. Raises
    FileExistsError for a non-empty out_dir without `config.overwrite`, DatasetError for an invalid existing
    dataset.json, BackendUnavailable when the chosen backend cannot run.
    """
    config = config or PreprocessConfig()
    photos_dir, out_dir = Path(photos_dir), Path(out_dir)
    _check_dirs(photos_dir, out_dir, config.overwrite)
    existing = (photos_dir / DATASET_JSON).is_file()
    backend = None if existing else make_backend(config.backend, config.insightface_model_dir)
    report = PreprocessReport(photos_dir=str(photos_dir), out_dir=str(out_dir),
                              backend="none (existing dataset)" if existing else backend.name,
                              config=_config_record(config))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        os.chmod(tmp_dir, 0o755)
        if existing:
            _accept_existing(photos_dir, tmp_dir, report)
        else:
            _build_dataset(photos_dir, tmp_dir, backend, config, report)
        (tmp_dir / REPORT_JSON).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        _check_dirs(photos_dir, out_dir, config.overwrite)
        _commit(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return report


def _build_dataset(photos_dir: Path, tmp_dir: Path, backend: FaceBackend, config: PreprocessConfig,
                   report: PreprocessReport) -> None:
    paths = _list_photos(photos_dir)
    if config.progress:
        from tqdm import tqdm
        paths = tqdm(paths, desc="preprocess", unit="photo")
    entries = []
    for path in paths:
        result = _process_photo(path, backend, config)
        if isinstance(result, SkippedFile):
            report.skipped.append(result)
            continue
        aligned, pose, face, yaw, pitch = result
        index = len(report.kept)
        image_name = f"img{index:08d}.png"
        label = pose_label(yaw, pitch)
        _save_png(aligned.image, tmp_dir / image_name)
        entries.append((image_name, label))
        mirror_name = None
        if config.mirror:
            mirror_name = f"img{index:08d}_mirror.png"
            _save_png(np.ascontiguousarray(aligned.image[:, ::-1]), tmp_dir / mirror_name)
            entries.append((mirror_name, mirror_label(label)))
        report.kept.append(KeptPhoto(source=path.name, image=image_name, mirror_image=mirror_name, yaw=yaw,
                                     pitch=pitch, raw_yaw=pose.yaw, raw_pitch=pose.pitch,
                                     clamped=(yaw != pose.yaw or pitch != pose.pitch),
                                     reprojection_rms_px=pose.rms_px, face_score=face.score,
                                     padded=aligned.padded))
    write_dataset_json(tmp_dir, entries)
