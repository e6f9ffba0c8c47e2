"""A model directory: `model.safetensors` (official EG3D state-dict keys) + `config.json` (header below), and
optionally `identity.safetensors`, the model's paired identity network.

Written by generator.model_dir.save_model_dir (`cli.py convert`), read by generator.model_dir.load_model_dir.
config.json fields: format 'my3dgen-model', format_version 1, generator (GeneratorConfig.to_dict()), fingerprint
(formats.fingerprint.weights_fingerprint of the weights), source (provenance: the pickle, a preset, ...).

`identity.safetensors` (IDENTITY_FILE) is a head-world identity network (perception/heads_identity.py; safetensors
metadata 'format' IDENTITY_FORMAT) that `train` uses for the symmetry loss and `eval` for its ID score when no
identity option is given (`models/heads` carries one). It is a file inside the directory, never a path named in
config.json: a model directory cannot point the tools at a file elsewhere. The member is optional and nothing in
config.json refers to it, so format_version stays 1: a reader that knows no identity member ignores the file, and
a directory without one loads as before.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from formats.errors import ModelDirError
from formats.tensors import read_metadata
from formats.versioned_json import read_versioned_json

FORMAT = "my3dgen-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
WEIGHTS_METADATA = {"format": FORMAT}
"""The safetensors metadata of model.safetensors."""
IDENTITY_FILE = "identity.safetensors"
"""The optional member holding the model's paired identity network."""
IDENTITY_FORMAT = "my3dgen-heads-identity"
"""The safetensors metadata 'format' of an identity network file (perception.heads_identity.FORMAT)."""


def config_record(generator: dict[str, Any], fingerprint: str, source: dict[str, Any] | None) -> dict[str, Any]:
    """The config.json object of a new model directory."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "generator": generator, "fingerprint": fingerprint,
            "source": source or {}}


def read_config_record(path: str | os.PathLike) -> dict[str, Any]:
    """config.json of model directory `path`, checked for format and version; ModelDirError names the file."""
    return read_versioned_json(Path(path) / CONFIG_FILE, FORMAT, FORMAT_VERSION, ModelDirError,
                               f" (is {path} a model directory made by `cli.py convert`?)")


def check_identity_file(path: str | os.PathLike) -> Path:
    """`path`, once its safetensors header (read alone, bounded) says it is an identity network (metadata 'format'
    IDENTITY_FORMAT); otherwise ModelDirError naming the file. The tensors are checked when it is loaded
    (perception.heads_identity.load_heads_identity)."""
    metadata = read_metadata(path, ModelDirError)
    if metadata.get("format") != IDENTITY_FORMAT:
        raise ModelDirError(str(path), f"not an identity network: safetensors metadata 'format' is "
                                       f"{metadata.get('format')!r}, expected {IDENTITY_FORMAT!r} (a head-world "
                                       f"identity network, perception/heads_identity.py)")
    return Path(path)


def identity_file(path: str | os.PathLike) -> Path | None:
    """The identity network of model directory `path` (its IDENTITY_FILE, checked by `check_identity_file`), or None
    if it has none. Only a regular file inside the directory counts: a symbolic link or anything else under that
    name is a ModelDirError, so an identity network is never read from outside the directory."""
    member = Path(path) / IDENTITY_FILE
    if member.is_symlink():
        raise ModelDirError(str(member), "is a symbolic link: a model directory's identity network must be a file "
                                         "inside it; refused")
    if not member.exists():
        return None
    return check_identity_file(member)
