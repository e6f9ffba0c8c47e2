"""`preprocess`: a folder of photos -> an EG3D-style dataset (EG3D-framed crops + 25-d camera labels).

Pipeline per photo: detect faces and 68 landmarks (`detect`), EG3D's crop (`eg3d_crop`, Deep3DFaceRecon
align_img geometry) or the FFHQ recipe's oriented crop (`align`), head pose by
PnP against a mean 3-D face converted to an EG3D look-at camera (`pose`), written with its mirror image and a
report of every skipped file (`dataset`). The dataset.json names (`DATASET_JSON`, `DatasetError`, `Sample`,
`load_dataset`, `read_dataset_json`, `validate_label`, `write_dataset_json`) are `formats.dataset`'s, re-exported.

Names load on first use (PEP 562): the pipeline imports scipy and PIL, and `cli.py --help` should not wait for them.
"""
from __future__ import annotations

import importlib

_MODULES = {
    "preprocess.align": ("AlignedFace", "align_face", "crop_quad", "ffhq_quad", "keypoints_from_landmarks"),
    "formats.dataset": (
        "DATASET_JSON", "DatasetError", "Sample", "load_dataset", "read_dataset_json", "validate_label",
        "write_dataset_json",
    ),
    "preprocess.dataset": (
        "CROPS", "REPORT_JSON", "SKIP_REASONS", "KeptPhoto", "PreprocessConfig", "PreprocessReport", "SkippedFile",
        "load_photo", "preprocess_folder",
    ),
    "preprocess.detect": (
        "BackendUnavailable", "DlibBackend", "Face", "FaceBackend", "InsightFaceBackend", "detect_flip_averaged",
        "make_backend",
    ),
    "preprocess.eg3d_crop": ("EG3DFraming", "eg3d_align", "eg3d_framing"),
    "preprocess.pose": ("HeadPose", "estimate_head_pose", "pose_label"),
}
_LAZY = {name: module for module, names in _MODULES.items() for name in names}

__all__ = list(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'preprocess' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
