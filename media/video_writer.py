"""Write a sequence of RGB frames as an H.264 mp4 (the ffmpeg that the imageio-ffmpeg wheel ships) or a GIF.

An mp4 is asked for by its suffix; where no ffmpeg is available the same frames are written as a GIF beside it
(`name.gif`) and `VideoInfo.note` says so in one line. Frames are HxWx3 uint8, all the same size (even sides:
H.264 in yuv420p halves the chroma planes). The file appears atomically (temp file beside it, then a rename).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from formats.atomic import atomic_file

VIDEO_SUFFIXES = (".mp4", ".gif")
CONTENT_TYPES = {".mp4": "video/mp4", ".gif": "image/gif"}
"""The media type of each video file kind (an HTTP response's Content-Type)."""


@dataclass(frozen=True)
class VideoInfo:
    """What was written: the path (a .gif where ffmpeg was missing), its format, frame count, size and rate."""

    path: Path
    format: str
    frames: int
    width: int
    height: int
    fps: float
    note: str = ""

    @property
    def content_type(self) -> str:
        """video/mp4 or image/gif: what was actually written (a GIF where an mp4 was asked for without ffmpeg)."""
        return CONTENT_TYPES[self.path.suffix.lower()]

    def summary(self) -> str:
        text = f"wrote {self.path} ({self.format}, {self.frames} frames, {self.width}x{self.height}, {self.fps:g} fps)"
        return f"{text}; {self.note}" if self.note else text


def ffmpeg_exe() -> str | None:
    """Path of the ffmpeg binary of imageio-ffmpeg, or None where the package or its binary is missing."""
    try:
        import imageio_ffmpeg
        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return None


def check_video_path(path: str | os.PathLike) -> Path:
    """The output path, refused (ValueError naming it) unless it ends in .mp4 or .gif."""
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"{path}: a video must end in {' or '.join(VIDEO_SUFFIXES)}")
    return path


def _checked(frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    first = None
    for i, frame in enumerate(frames):
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"video frame {i}: expected HxWx3 uint8, got {frame.shape} {frame.dtype}")
        if first is None:
            first = frame.shape
            if first[0] % 2 or first[1] % 2:
                raise ValueError(f"video frames are {first[1]}x{first[0]}: H.264 needs even sides")
        elif frame.shape != first:
            raise ValueError(f"video frame {i} is {frame.shape}, frame 0 was {first}")
        yield np.ascontiguousarray(frame)


def _write_mp4(frames: Iterator[np.ndarray], tmp: Path, fps: float, bitrate: str) -> tuple[int, tuple]:
    import imageio_ffmpeg
    first = next(frames, None)
    if first is None:
        raise ValueError("a video needs at least one frame")
    h, w = first.shape[:2]
    # -f mp4: the temp name does not end in .mp4; +faststart puts the index first so browsers play while loading
    writer = imageio_ffmpeg.write_frames(str(tmp), (w, h), fps=fps, codec="libx264", bitrate=bitrate,
                                         pix_fmt_out="yuv420p", macro_block_size=2, quality=None,
                                         output_params=["-f", "mp4", "-movflags", "+faststart"])
    writer.send(None)
    try:
        writer.send(first)
        count = 1
        for frame in frames:
            writer.send(frame)
            count += 1
    finally:
        writer.close()
    return count, (w, h)


def _write_gif(frames: Iterator[np.ndarray], tmp: Path, fps: float) -> tuple[int, tuple]:
    from PIL import Image
    images = [Image.fromarray(f) for f in frames]
    if not images:
        raise ValueError("a video needs at least one frame")
    # GIF delays are in 1/100 s; Pillow takes milliseconds and rounds to that
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], loop=0,
                   duration=max(20, round(1000 / fps)), optimize=False)
    return len(images), images[0].size


def write_video(frames: Iterable[np.ndarray], path: str | os.PathLike, fps: float = 30.0, bitrate: str = "10M"
                ) -> VideoInfo:
    """Write `frames` to `path` (.mp4: H.264, or .gif); returns what was written. See the module docstring."""
    path = check_video_path(path)
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    frames = _checked(frames)
    note = ""
    kind = "gif" if path.suffix.lower() == ".gif" else "mp4"
    if kind == "mp4" and ffmpeg_exe() is None:
        path, kind = path.with_suffix(".gif"), "gif"
        note = "no ffmpeg (pip install imageio-ffmpeg): wrote a GIF instead of the mp4"
    with atomic_file(path) as tmp:
        count, (w, h) = _write_mp4(frames, tmp, fps, bitrate) if kind == "mp4" else _write_gif(frames, tmp, fps)
    return VideoInfo(path, "H.264 mp4" if kind == "mp4" else "GIF", count, w, h, fps, note)


@dataclass(frozen=True)
class EncodedVideo:
    """A video in memory: its bytes and what they hold (info.path names the deleted temp file)."""

    data: bytes
    info: VideoInfo

    @property
    def content_type(self) -> str:
        return self.info.content_type


def encode_video(frames: Iterable[np.ndarray], fmt: str = "mp4", fps: float = 30.0, bitrate: str = "10M"
                 ) -> EncodedVideo:
    """`frames` as the bytes of an mp4 (or, without ffmpeg, a GIF: see `EncodedVideo.content_type`) or a GIF.

    Written by `write_video` into a private temp folder (ffmpeg's mp4 muxer needs a seekable file for
    +faststart), read back and deleted.
    """
    suffix = f".{fmt}"
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"video format must be one of {', '.join(s[1:] for s in VIDEO_SUFFIXES)}, got {fmt!r}")
    with tempfile.TemporaryDirectory(prefix="my3dgen-video-") as tmp:
        info = write_video(frames, Path(tmp) / f"video{suffix}", fps=fps, bitrate=bitrate)
        return EncodedVideo(info.path.read_bytes(), info)


def read_video(path: str | os.PathLike) -> list[np.ndarray]:
    """All frames of an mp4 (via ffmpeg) or GIF as HxWx3 uint8 arrays: for checks and tests."""
    path = Path(path)
    if path.suffix.lower() == ".gif":
        from PIL import Image, ImageSequence
        with Image.open(path) as im:
            return [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
    import imageio_ffmpeg
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    return [np.frombuffer(b, np.uint8).reshape(h, w, 3).copy() for b in reader]
