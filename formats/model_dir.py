"""A model directory: `model.safetensors` (official EG3D state-dict keys) + `config.json` (header below).

Written by generator.model_dir.save_model_dir (`cli.py convert`), read by generator.model_dir.load_model_dir.
config.json fields: format 'my3dgen-model', format_version 1, generator (GeneratorConfig.to_dict()), fingerprint
(formats.fingerprint.weights_fingerprint of the weights), source (provenance: the pickle, a preset, ...).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from formats.errors import ModelDirError
from formats.versioned_json import read_versioned_json

FORMAT = "my3dgen-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
WEIGHTS_METADATA = {"format": FORMAT}
"""The safetensors metadata of model.safetensors."""


def config_record(generator: dict[str, Any], fingerprint: str, source: dict[str, Any] | None) -> dict[str, Any]:
    """The config.json object of a new model directory."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "generator": generator, "fingerprint": fingerprint,
            "source": source or {}}


def read_config_record(path: str | os.PathLike) -> dict[str, Any]:
    """config.json of model directory `path`, checked for format and version; ModelDirError names the file."""
    return read_versioned_json(Path(path) / CONFIG_FILE, FORMAT, FORMAT_VERSION, ModelDirError,
                               f" (is {path} a model directory made by `cli.py convert`?)")
