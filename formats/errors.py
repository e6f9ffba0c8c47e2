"""Errors for files that do not follow their format: each names the file (or field) and says what is wrong."""
from __future__ import annotations

import re


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


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])(?:~|/)[^\s'\"`,;:()\[\]{}<>|]*")


def without_paths(message: str) -> str:
    """`message` with every absolute path cut to its last part ('/srv/people/tiny/bob.safetensors' ->
    'bob.safetensors'): errors a server sends to a client name files, never the folders of the machine."""
    return _ABSOLUTE_PATH.sub(lambda m: m.group(0).rstrip("/").rpartition("/")[2] or "/", message)
