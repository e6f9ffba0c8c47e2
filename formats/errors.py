"""Errors for files that do not follow their format: each names the file (or field) and says what is wrong."""
from __future__ import annotations


class FormatError(ValueError):
    """A file (or a part of one) that does not follow its format. `path` is where, `reason` what is wrong."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


class AdapterFileError(FormatError):
    """An adapter file that is corrupt, or does not fit the base model or export it is used with."""


class ManifestError(FormatError):
    """An export directory whose manifest.json (or a file it names) is missing, malformed or of another version."""


class ModelDirError(FormatError):
    """A model directory that cannot be loaded (config.json or model.safetensors)."""
