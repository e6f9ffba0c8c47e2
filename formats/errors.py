"""Errors for files that do not follow their format: each names the file (or field) and says what is wrong."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable


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


class DatasetError(FormatError):
    """A dataset folder whose dataset.json is missing or malformed, or lists a bad file name, label or image."""


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])(?:~|/)[^\s'\"`,;:()\[\]{}<>|]*")


def without_paths(message: str, folders: Iterable[str | os.PathLike] = ()) -> str:
    """`message` with every absolute path cut: a path inside one of `folders` (as given or resolved) made relative
    to it, a folder named alone cut to its last part, and every other absolute path cut to its last part
    ('/srv/people/tiny/bob.safetensors' -> 'bob.safetensors'). Errors a server sends to a client name files, never
    the folders of the machine; `folders` also catches paths the pattern cannot (a folder with a space)."""
    for folder in folders:
        for form in {str(folder), str(Path(folder).resolve())}:
            form = form.rstrip("/")
            if form:
                message = message.replace(form + "/", "").replace(form, Path(form).name)
    return _ABSOLUTE_PATH.sub(lambda m: m.group(0).rstrip("/").rpartition("/")[2] or "/", message)
