"""`preprocess`: a folder of photos -> an EG3D-style dataset (EG3D-framed crops + 25-d camera labels).

Pipeline per photo: detect faces and 68 landmarks (`detect`), EG3D's crop (`eg3d_crop`, Deep3DFaceRecon
align_img geometry) or the FFHQ recipe's oriented crop (`align`), head pose by
PnP against a mean 3-D face converted to an EG3D look-at camera (`pose`), written with its mirror image and a
report of every skipped file (`dataset`). The dataset.json names (`DATASET_JSON`, `DatasetError`, `Sample`,
`load_dataset`, `read_dataset_json`, `validate_label`, `write_dataset_json`) are `formats.dataset`'s, re-exported.
"""
from preprocess.align import AlignedFace, align_face, crop_quad, ffhq_quad, keypoints_from_landmarks
from formats.dataset import (
    DATASET_JSON,
    DatasetError,
    Sample,
    load_dataset,
    read_dataset_json,
    validate_label,
    write_dataset_json,
)
from preprocess.dataset import (
    CROPS,
    REPORT_JSON,
    SKIP_REASONS,
    KeptPhoto,
    PreprocessConfig,
    PreprocessReport,
    SkippedFile,
    load_photo,
    preprocess_folder,
)
from preprocess.detect import (
    BackendUnavailable,
    DlibBackend,
    Face,
    FaceBackend,
    InsightFaceBackend,
    detect_flip_averaged,
    make_backend,
)
from preprocess.eg3d_crop import EG3DFraming, eg3d_align, eg3d_framing
from preprocess.pose import HeadPose, estimate_head_pose, pose_label

__all__ = [
    "AlignedFace", "BackendUnavailable", "CROPS", "DATASET_JSON", "EG3DFraming", "DatasetError", "DlibBackend",
    "Face", "FaceBackend", "HeadPose", "InsightFaceBackend", "KeptPhoto", "PreprocessConfig", "PreprocessReport",
    "REPORT_JSON", "SKIP_REASONS", "Sample", "SkippedFile", "align_face", "crop_quad", "detect_flip_averaged",
    "eg3d_align", "eg3d_framing", "estimate_head_pose", "ffhq_quad", "keypoints_from_landmarks", "load_dataset",
    "load_photo", "make_backend", "pose_label", "preprocess_folder", "read_dataset_json", "validate_label",
    "write_dataset_json",
]
