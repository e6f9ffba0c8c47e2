"""JSON metadata that names its format and version ({"format": NAME, "format_version": N, ...}), parsed and checked."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from formats.errors import FormatError


def parse_versioned_json(text: str | bytes | None, where: str, fmt: str, version: int | tuple[int, ...],
                         error: type[FormatError] = FormatError, what: str = "metadata") -> dict[str, Any]:
    """The JSON object in `text`, checked to be format `fmt` of version `version` (or one of several readable
    versions); otherwise `error(where, reason)`.

    `what` words the messages ('metadata' for a key inside a safetensors header, 'file' for a JSON file).
    """
    versions = (version,) if isinstance(version, int) else tuple(version)
    if text is None:
        raise error(where, f"no {what}")
    try:
        value = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise error(where, f"{what} is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise error(where, f"{what} is not a JSON object")
    found = value.get("format_version")
    if value.get("format") != fmt or isinstance(found, bool) or found not in versions:
        expected = "/".join(str(v) for v in versions)
        raise error(where, f"field 'format'/'format_version' is {value.get('format')!r}/"
                           f"{found!r}, expected {fmt!r}/{expected}")
    return value


def read_versioned_json(path: str | os.PathLike, fmt: str, version: int, error: type[FormatError] = FormatError,
                        missing_hint: str = "") -> dict[str, Any]:
    """A JSON file checked by `parse_versioned_json`; a missing file is `error(path, 'missing' + missing_hint)`.
    The file must be a regular file within formats.limits' `max_json_bytes` (a device or FIFO is refused)."""
    from formats.limits import current_limits
    from formats.tensors import read_file_bytes
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise error(str(path), "missing" + missing_hint)
    lim = current_limits()
    data = read_file_bytes(path, error, dataclasses.replace(lim, max_file_bytes=lim.max_json_bytes), "JSON file")
    return parse_versioned_json(data, str(path), fmt, version, error, what="file")


def dump_json(value: Any) -> str:
    """How our JSON files are written: 2-space indent, keys in the order given, a final newline."""
    return json.dumps(value, indent=2) + "\n"
