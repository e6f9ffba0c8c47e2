"""A dataset folder: images + `dataset.json`, EG3D's `{"labels": [[file name, [25 numbers]], ...]}`.

The one definition of the file that joins `preprocess` (and the head world's photo folders, and the benchmarks'
sample people) to `train` and `eval`: its name, the checks of a label and of a file name, the one writer
`write_dataset_json` and the one reader `read_dataset_json` (`load_dataset` adds absolute paths). A label is
`formats.cameras`' 25 numbers: row-major 4x4 cam2world, then row-major normalized 3x3 intrinsics. Errors are
`DatasetError`s that name the file, the entry (index and image name) and the field.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from formats.atomic import write_text
from formats.errors import DatasetError

DATASET_JSON = "dataset.json"
"""The labels file of a dataset folder."""
LABEL_DIM = 25
"""Numbers in one camera label."""


@dataclass(frozen=True)
class Sample:
    """One labelled image of a dataset folder."""

    path: Path
    """Absolute path of the image file."""
    label: np.ndarray
    """float32 (25,): row-major 4x4 cam2world then row-major normalized 3x3 intrinsics."""

    @property
    def name(self) -> str:
        return self.path.name


def validate_label(label, where: str) -> np.ndarray:
    """Check one 25-d EG3D camera label and return it as float32; errors start with `where`.

    Checks: 25 finite numbers, cam2world bottom row (0, 0, 0, 1), cam2world rotation orthonormal within 1e-3
    with determinant +1, intrinsics bottom row (0, 0, 1) and positive focal lengths.
    """
    if not isinstance(label, (list, tuple, np.ndarray)) or len(label) != LABEL_DIM:
        size = len(label) if isinstance(label, (list, tuple, np.ndarray)) else type(label).__name__
        raise DatasetError(where, f"label must be a list of {LABEL_DIM} numbers, got {size}")
    values = []
    for k, value in enumerate(label):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise DatasetError(where, f"label[{k}] is not a number: {value!r}")
        try:
            finite = math.isfinite(float(value))
        except OverflowError:  # an integer too large for a float
            finite = False
        if not finite:
            raise DatasetError(where, f"label[{k}] is not finite: {str(value)[:40]}")
        values.append(float(value))
    arr = np.asarray(values, dtype=np.float64)
    cam2world = arr[:16].reshape(4, 4)
    if np.abs(cam2world[3] - [0.0, 0.0, 0.0, 1.0]).max() > 1e-4:
        raise DatasetError(where, f"cam2world bottom row (label[12:16]) is {cam2world[3].tolist()}, "
                                  "expected [0, 0, 0, 1]")
    rotation = cam2world[:3, :3]
    error = float(np.abs(rotation.T @ rotation - np.eye(3)).max())
    if error > 1e-3:
        raise DatasetError(where, "cam2world rotation (label[0:3], label[4:7], label[8:11]) is not orthonormal: "
                                  f"max |R^T R - I| = {error:.3g} > 1e-3")
    if np.linalg.det(rotation) < 0:
        raise DatasetError(where, "cam2world rotation (label[0:3], label[4:7], label[8:11]) is a reflection "
                                  "(determinant -1)")
    intrinsics = arr[16:].reshape(3, 3)
    if np.abs(intrinsics[2] - [0.0, 0.0, 1.0]).max() > 1e-4:
        raise DatasetError(where, f"intrinsics bottom row (label[22:25]) is {intrinsics[2].tolist()}, "
                                  "expected [0, 0, 1]")
    if intrinsics[0, 0] <= 0 or intrinsics[1, 1] <= 0:
        raise DatasetError(where, "intrinsics focal lengths (label[16], label[20]) must be positive, got "
                                  f"{intrinsics[0, 0]}, {intrinsics[1, 1]}")
    return arr.astype(np.float32)


def check_file_name(name, where: str) -> str:
    """`name` when it is a non-empty relative path inside the dataset folder (no '..', no absolute path, no
    backslash); DatasetError starting with `where` otherwise."""
    if not isinstance(name, str) or not name:
        raise DatasetError(where, f"file name must be a non-empty string, got {name!r}")
    parts = Path(name).parts
    if Path(name).is_absolute() or ".." in parts or "\\" in name:
        raise DatasetError(where, f"file name must be a relative path inside the dataset folder, got {name!r}")
    return name


def read_dataset_json(dataset_dir: str | os.PathLike) -> list[tuple[str, np.ndarray]]:
    """Entries of dataset_dir/dataset.json as (relative file name, float32 label), validated.

    Every label is checked with `validate_label`, names must be unique relative paths, and every file must
    exist. Errors name the json file, the entry index, the image name and the field.
    """
    dataset_dir = Path(dataset_dir)
    json_path = dataset_dir / DATASET_JSON
    if not json_path.is_file():
        raise DatasetError(str(json_path), f"not found (a dataset folder needs {DATASET_JSON} with camera labels)")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(str(json_path), f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or "labels" not in data:
        raise DatasetError(str(json_path), "expected an object with a 'labels' field")
    labels = data["labels"]
    if labels is None:
        raise DatasetError(str(json_path), "'labels' is null: the dataset has no camera labels")
    if not isinstance(labels, list):
        raise DatasetError(str(json_path), f"'labels' must be a list of [file name, [25 numbers]], "
                                           f"got {type(labels).__name__}")
    entries, seen = [], set()
    for i, entry in enumerate(labels):
        where = f"{json_path}: labels[{i}]"
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise DatasetError(where, f"expected [file name, [25 numbers]], got {entry!r:.80}")
        name = check_file_name(entry[0], where)
        where = f"{where} ({name!r})"
        if name in seen:
            raise DatasetError(where, "file name listed twice")
        seen.add(name)
        label = validate_label(entry[1], where)
        if not (dataset_dir / name).is_file():
            raise DatasetError(where, f"image file not found: {dataset_dir / name}")
        entries.append((name, label))
    return entries


def write_dataset_json(dataset_dir: str | os.PathLike, entries: Iterable[tuple[str, np.ndarray]]) -> Path:
    """Write dataset_dir/dataset.json atomically: {"labels": [[name, [25 floats]], ...]}. Every name and label is
    checked first (a refused entry writes nothing; the error names the file, the entry and the field)."""
    path = Path(dataset_dir) / DATASET_JSON
    rows = []
    for i, (name, label) in enumerate(entries):
        where = f"{path}: labels[{i}] ({name!r})"
        checked = validate_label(np.asarray(label, dtype=np.float64).tolist(), where)
        rows.append([check_file_name(name, where), [float(v) for v in checked]])
    return write_text(path, json.dumps({"labels": rows}) + "\n")


def load_dataset(dataset_dir: str | os.PathLike) -> list[Sample]:
    """Samples (absolute image path, float32 label) of a dataset folder, validated (see `read_dataset_json`)."""
    dataset_dir = Path(dataset_dir).resolve()
    return [Sample(path=dataset_dir / name, label=label) for name, label in read_dataset_json(dataset_dir)]
