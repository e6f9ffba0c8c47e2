"""Write files and directories so that a crash or a bad input never leaves a half-written result behind.

Everything is written beside its destination (same file system) under a hidden '.<name>.<random>.<pid>.tmp'
name, which no reader lists (people folders list '*.safetensors'), then moved into place with one os.replace.
A process killed mid-write cannot remove its temp file or folder; the next write to the same destination removes
every such leftover whose writer process no longer exists (`clean_stale_temps`), so interrupted exports do not
accumulate. Results get the permissions a plain open() would give (0666 / 0777 minus the umask), not mkstemp's
private 0600, whatever the writer did to the temp file.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _temp_name_pattern(path: Path) -> re.Pattern:
    return re.compile(re.escape(f".{path.name}.") + r"[A-Za-z0-9_]+\.(\d+)\.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temp files / folders of writes to `path` whose writer process is gone (killed mid-write);
    returns what was removed. Temps of live writers (this process included) are left alone."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern, removed = _temp_name_pattern(path), []
    for entry in path.parent.iterdir():
        m = pattern.fullmatch(entry.name)
        if m is None or _alive(int(m.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it replaces `path` in one rename, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".{os.getpid()}.tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    mode = 0o666 & ~_umask()
    os.chmod(tmp, mode)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # the bytes reach the disk before the name points at them
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # again: a writer that replaces the temp file (safetensors' save_file does) made it 0600
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy the bytes of `src` to `dst` atomically (readers see the old file or the complete new one)."""
    with atomic_file(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp directory beside `path`; on success it becomes `path`, on error it is removed.

    An existing non-empty `path` is refused unless `overwrite`, in which case it is replaced only after the new
    content is complete.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty (pass overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=f".{os.getpid()}.tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        replace_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def replace_dir(new: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move the complete directory `new` to `path`, replacing an existing `path` (moved aside, then deleted)."""
    new, path = Path(new), Path(path)
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(new, path)
        shutil.rmtree(old)
    else:
        os.replace(new, path)
