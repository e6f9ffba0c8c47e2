"""Parse and validate the JSON requests of the serving endpoint; every problem names the field and an HTTP status.

Shipped inside every `.mar` (with `serve/handler.py` and the `runtime` and `formats` packages), so it imports only
the standard library, numpy and those packages, and touches no files. The value checks themselves (numbers,
ranges, names, anchors, budgets) are runtime.requests', the one place requests are validated; this module decodes
the JSON, checks its structure and turns runtime.InvalidRequest into a 400 `RequestError`. The handler turns a
`RequestError` into a JSON error response; nothing in here can raise anything else for any input (tests feed it
garbage).

Requests are JSON objects with an `op`:

- `{"op": "novel_view", "person": P, "anchor": NAME|INDEX | "latent": [...], "yaw": f, "pitch": f,
  "format": "png"|"jpeg", "size": int, "quality": int, "budget_ms": f, "response": "image"|"json"}`
- `{"op": "interpolate", "person": P, "a": A, "b": B, "t": f | "frames": n, "yaw", "pitch", "format", "size",
  "quality", "budget_ms", "response"}`
- `{"op": "video", "kind": "turntable", "person": P, "anchor": A | "latent": [...], "frames": n, "fps": f,
  "size": even int, "format": "mp4"|"gif", "budget_ms": f}`: EG3D's turntable orbit;
  `{"op": "video", "kind": "interpolate", "person": P, "a": A, "b": B, ...}`: latent and camera from anchor a's
  photo to anchor b's. The response is the video's bytes.
- `{"op": "people"}` and `{"op": "person", "person": P}`.

Unknown fields are refused (a typo such as `"yaww"` must not silently render the frontal view).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from formats.limits import MAX_ABS_PITCH, MAX_ABS_YAW
from media.frames import VIDEO_KINDS
from runtime import requests as check
from runtime.errors import InvalidRequest
from runtime.requests import Anchor, RequestLimits

FORMATS = {"png": "image/png", "jpeg": "image/jpeg"}
"""Image encodings and their content types (`"jpg"` is accepted as an alias of `"jpeg"`)."""

RESPONSES = ("image", "json")
"""`image`: the encoded image bytes with timings in headers; `json`: base64 image(s) and timings in a JSON body."""

VIDEO_FORMATS = {"mp4": "video/mp4", "gif": "image/gif"}
"""Video encodings and their content types (an mp4 comes back as a GIF, so said by its Content-Type, where the
server has no ffmpeg)."""

_OUTPUT_FIELDS = ("format", "size", "quality", "budget_ms", "response")
FIELDS = {
    "novel_view": ("op", "person", "anchor", "latent", "yaw", "pitch") + _OUTPUT_FIELDS,
    "interpolate": ("op", "person", "a", "b", "t", "frames", "yaw", "pitch") + _OUTPUT_FIELDS,
    "video": ("op", "kind", "person", "anchor", "latent", "a", "b", "frames", "fps", "size", "format", "budget_ms"),
    "people": ("op",),
    "person": ("op", "person"),
}
"""The fields each op accepts."""


class RequestError(Exception):
    """A request the handler refuses: `status` is the HTTP status, `field` the offending field ('body' for the
    request as a whole), `kind` a stable machine-readable error type."""

    def __init__(self, status: int, field: str, message: str, kind: str = "invalid_request"):
        super().__init__(message)
        self.status = int(status)
        self.field = field
        self.message = message
        self.kind = kind

    def to_dict(self) -> dict:
        """The JSON error body."""
        return {"error": self.message, "field": self.field, "status": self.status, "type": self.kind}


@dataclass(frozen=True)
class HttpLimits:
    """What a request may ask for; the handler fills it from the runtime's limits and the model config."""

    max_abs_yaw: float = MAX_ABS_YAW
    """Largest |yaw| in radians (the runtime's `limits['max_abs_yaw']`)."""
    max_abs_pitch: float = MAX_ABS_PITCH
    """Largest |pitch| in radians (the runtime's `limits['max_abs_pitch']`)."""
    max_frames: int = 16
    """Most frames one interpolation request may render (min of the runtime's and the model config's)."""
    image_size: int = 512
    """The model's output resolution: `size` may only shrink the image."""
    min_size: int = 16
    """Smallest `size` accepted."""
    default_budget_ms: Optional[float] = None
    """Deadline applied when a request gives no `budget_ms` (None: no deadline)."""
    max_budget_ms: float = 60_000.0
    """Largest `budget_ms` accepted: keeps every request below TorchServe's responseTimeout, whose expiry would
    kill the worker."""
    max_latent_values: int = 65_536
    """Most numbers a `latent` may hold (W+ of the full model is 14 x 512 = 7168)."""
    max_body_bytes: int = 1 << 20
    """Largest request body accepted."""
    max_video_frames: int = 64
    """Most frames of one video (min of the runtime's max_frames and the model config's)."""
    default_video_frames: int = 16
    """Frames of a video request that gives no `frames`."""
    max_fps: float = 60.0
    """Largest `fps` of a video."""

    @property
    def request_limits(self) -> RequestLimits:
        """The limits runtime.requests checks values against."""
        return RequestLimits(self.max_abs_yaw, self.max_abs_pitch, self.max_frames)


@dataclass(frozen=True)
class Output:
    """How to return the rendered image(s)."""

    format: str = "png"
    """`png` or `jpeg`."""
    size: Optional[int] = None
    """Square output size in pixels (None: the model's own)."""
    quality: Optional[int] = None
    """JPEG quality, 1..100 (None: the model config's default; only for JPEG)."""
    response: str = "image"
    """`image` (bytes + headers) or `json` (base64 + timings)."""

    @property
    def content_type(self) -> str:
        return FORMATS[self.format]


@dataclass(frozen=True)
class NovelView:
    """Render one view of a person's anchor (or of a given W / W+ latent)."""

    person: Optional[str]
    """Person name, or None for the base model (then a latent is required)."""
    anchor: Optional[Anchor]
    """Anchor name or index (exclusive with latent)."""
    latent: Optional[np.ndarray]
    """float32 [w_dim] or [num_ws, w_dim] (exclusive with anchor)."""
    yaw: float
    pitch: float
    budget_ms: Optional[float]
    output: Output


@dataclass(frozen=True)
class Interpolate:
    """Render W-space interpolations between two anchors of a person."""

    person: str
    a: Anchor
    b: Anchor
    ts: tuple
    """Interpolation weights in [0, 1], one per frame."""
    frames: bool
    """True when the request asked for `frames` (a strip / list), False for a single `t`."""
    yaw: float
    pitch: float
    budget_ms: Optional[float]
    output: Output


@dataclass(frozen=True)
class Video:
    """A turntable (of an anchor or latent) or an interpolation (from anchor a to anchor b), encoded as a video."""

    kind: str
    """`turntable` or `interpolate`."""
    person: Optional[str]
    anchor: Optional[Anchor]
    """turntable: anchor name or index (exclusive with latent)."""
    latent: Optional[np.ndarray]
    """turntable: W [w_dim] or W+ [num_ws, w_dim] (exclusive with anchor)."""
    a: Optional[Anchor]
    """interpolate: the first frame's anchor."""
    b: Optional[Anchor]
    """interpolate: the last frame's anchor."""
    frames: int
    fps: float
    size: Optional[int]
    """Even square frame side in pixels (None: the model's)."""
    format: str
    """`mp4` or `gif`."""
    budget_ms: Optional[float]


@dataclass(frozen=True)
class People:
    """List the people of this model."""


@dataclass(frozen=True)
class PersonInfo:
    """Describe one person (anchor names, rank, layout)."""

    person: str


Request = NovelView | Interpolate | Video | People | PersonInfo


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def decode_body(raw: Any, limits: HttpLimits = HttpLimits()) -> dict:
    """The request body as a dict: TorchServe hands over a dict (JSON already parsed when the content type was
    application/json), bytes/bytearray (anything else, including malformed JSON), a str, or None."""
    if isinstance(raw, dict):
        return raw
    if raw is None:
        raise RequestError(400, "body", "empty request body: send a JSON object with "
                                        "Content-Type: application/json")
    if isinstance(raw, (bytes, bytearray)):
        if len(raw) > limits.max_body_bytes:
            raise RequestError(413, "body", f"request body of {len(raw)} bytes exceeds {limits.max_body_bytes}")
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            raise RequestError(400, "body", f"request body is not UTF-8 ({e.reason} at byte {e.start})") from None
    if not isinstance(raw, str):
        raise RequestError(400, "body", f"request body must be a JSON object, got {type(raw).__name__}")
    if len(raw) > limits.max_body_bytes:
        raise RequestError(413, "body", f"request body of {len(raw)} characters exceeds {limits.max_body_bytes}")
    if not raw.strip():
        raise RequestError(400, "body", "empty request body: send a JSON object")
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise RequestError(400, "body", f"malformed JSON: {e}") from None
    if not isinstance(value, dict):
        raise RequestError(400, "body", f"request body must be a JSON object, got a JSON {type(value).__name__}")
    return value


def validate_name(value: Any, field: str = "person") -> str:
    """A person or model name (formats.names: so no '..', '/', NUL or absolute paths); RequestError otherwise."""
    try:
        return check.name(value, field)
    except InvalidRequest as e:
        raise RequestError(400, e.field, str(e)) from None


def parse_request(raw: Any, limits: HttpLimits = HttpLimits()) -> Request:
    """Decode and validate one request; raises `RequestError` (never anything else)."""
    try:
        return _parse(decode_body(raw, limits), limits)
    except RequestError:
        raise
    except InvalidRequest as e:
        raise RequestError(400, e.field, str(e)) from None
    except Exception as e:  # a validator bug must still come back as a 400 naming the body, not kill a worker
        raise RequestError(400, "body", f"could not read the request ({type(e).__name__}: {e})") from None


def _parse(body: dict, limits: HttpLimits) -> Request:
    op = body.get("op")
    if op is None:
        raise RequestError(400, "op", f"missing field 'op' (one of {', '.join(FIELDS)})")
    if not isinstance(op, str) or op not in FIELDS:
        raise RequestError(400, "op", f"unknown op {_show(op)}; known ops: {', '.join(FIELDS)}")
    for key in body:
        if key not in FIELDS[op]:
            raise RequestError(400, str(key), f"unknown field {_show(key)} for op {op!r}; "
                                              f"allowed: {', '.join(FIELDS[op][1:]) or '(none)'}")
    if op == "people":
        return People()
    if op == "person":
        return PersonInfo(check.name(_required(body, "person")))
    if op == "video":
        return _video(body, limits)
    yaw = check.angle("yaw", _get(body, "yaw", 0.0), limits.request_limits)
    pitch = check.angle("pitch", _get(body, "pitch", 0.0), limits.request_limits)
    output = _output(body, limits)
    budget = _budget(body, limits)
    if op == "novel_view":
        person = body.get("person")
        person = None if person is None else check.name(person)
        anchor, latent = _anchor_or_latent(body, person, limits)
        return NovelView(person, anchor, latent, yaw, pitch, budget, output)
    person = check.name(_required(body, "person"))
    a = check.anchor("a", _required(body, "a"))
    b = check.anchor("b", _required(body, "b"))
    has_t, has_frames = body.get("t") is not None, body.get("frames") is not None
    if has_t and has_frames:
        raise RequestError(400, "frames", "give either 't' (one frame) or 'frames' (a sequence), not both")
    if has_frames:
        n = check.frames(body["frames"], limits.request_limits, lo=2)
        return Interpolate(person, a, b, tuple(i / (n - 1) for i in range(n)), True, yaw, pitch, budget, output)
    if not has_t:
        raise RequestError(400, "t", "missing field 't' (a weight in [0, 1]) or 'frames' (a count >= 2)")
    t = check.weight("t", body["t"])
    return Interpolate(person, a, b, (t,), False, yaw, pitch, budget, output)


def _anchor_or_latent(body: dict, person: str | None, limits: HttpLimits):
    """(anchor, latent) of a request that takes exactly one of them; an anchor needs a person."""
    has_anchor, has_latent = body.get("anchor") is not None, body.get("latent") is not None
    if has_anchor == has_latent:
        raise RequestError(400, "anchor" if not has_anchor else "latent",
                           "give exactly one of 'anchor' (name or index) or 'latent'")
    if has_anchor and person is None:
        raise RequestError(400, "person", "'anchor' needs a 'person' (the base model has no anchors)")
    anchor = check.anchor("anchor", body["anchor"]) if has_anchor else None
    latent = _latent(body["latent"], limits) if has_latent else None
    return anchor, latent


def _video(body: dict, limits: HttpLimits) -> Video:
    kind = _required(body, "kind")
    if kind not in VIDEO_KINDS:
        raise RequestError(400, "kind", f"kind must be one of {', '.join(VIDEO_KINDS)}, got {_show(kind)}")
    person = body.get("person")
    person = None if person is None else check.name(person)
    anchor = latent = a = b = None
    if kind == "turntable":
        for field in ("a", "b"):
            if body.get(field) is not None:
                raise RequestError(400, field, f"'{field}' is for kind 'interpolate'; a turntable takes 'anchor' "
                                               f"or 'latent'")
        anchor, latent = _anchor_or_latent(body, person, limits)
    else:
        for field in ("anchor", "latent"):
            if body.get(field) is not None:
                raise RequestError(400, field, f"'{field}' is for kind 'turntable'; an interpolation takes 'a' "
                                               f"and 'b'")
        person = check.name(_required(body, "person"))
        a = check.anchor("a", _required(body, "a"))
        b = check.anchor("b", _required(body, "b"))
    frames = check.integer("frames", _get(body, "frames", limits.default_video_frames), 2, limits.max_video_frames)
    fps = check.number("fps", _get(body, "fps", 30.0), 1.0, limits.max_fps, "frames per second")
    size = body.get("size")
    if size is not None:
        size = check.integer("size", size, limits.min_size, limits.image_size)
        if size % 2:
            raise RequestError(400, "size", f"size={size}: a video's side must be even (H.264 halves the colour "
                                            f"planes)")
    fmt = _get(body, "format", "mp4")
    if not isinstance(fmt, str) or fmt not in VIDEO_FORMATS:
        raise RequestError(400, "format", f"a video's format must be one of {', '.join(VIDEO_FORMATS)}, "
                                          f"got {_show(fmt)}")
    return Video(kind, person, anchor, latent, a, b, frames, fps, size, fmt, _budget(body, limits))


def _show(value: Any, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "...'"


def _required(body: dict, field: str) -> Any:
    if body.get(field) is None:
        raise RequestError(400, field, f"missing field {field!r}")
    return body[field]


def _get(body: dict, field: str, default: Any) -> Any:
    """body[field], or `default` when it is absent or null."""
    return default if body.get(field) is None else body[field]


def _latent(v: Any, limits: HttpLimits) -> np.ndarray:
    if not isinstance(v, list) or not v:
        raise RequestError(400, "latent", "latent must be a non-empty list of numbers ([w_dim]) or of lists "
                                          "([num_ws][w_dim])")
    rows = v if isinstance(v[0], list) else None
    if rows is None:
        flat, shape = v, (len(v),)
    else:
        width = len(rows[0])
        for i, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != width or width == 0:
                raise RequestError(400, "latent", f"latent[{i}] must be a list of {width} numbers (rows of a "
                                                  f"W+ latent all have the same length)")
        flat, shape = [x for row in rows for x in row], (len(rows), width)
    if len(flat) > limits.max_latent_values:
        raise RequestError(413, "latent", f"latent has {len(flat)} values, more than {limits.max_latent_values}")
    for i, x in enumerate(flat):
        if not check.is_number(x) or not math.isfinite(x):
            where = f"[{i}]" if rows is None else f"[{i // shape[1]}][{i % shape[1]}]"
            raise RequestError(400, "latent", f"latent{where} must be a finite number, got {_show(x)}")
    return np.asarray(flat, dtype=np.float32).reshape(shape)


def _output(body: dict, limits: HttpLimits) -> Output:
    fmt = body.get("format", "png")
    if isinstance(fmt, str) and fmt.lower() == "jpg":
        fmt = "jpeg"
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise RequestError(400, "format", f"format must be one of {', '.join(FORMATS)}, got {_show(fmt)}")
    size = body.get("size")
    if size is not None:
        size = check.integer("size", size, limits.min_size, limits.image_size)
    quality = None
    if body.get("quality") is not None:
        if fmt != "jpeg":
            raise RequestError(400, "quality", "quality applies only to format 'jpeg'")
        quality = check.integer("quality", body["quality"], 1, 100)
    response = body.get("response", "image")
    if response not in RESPONSES:
        raise RequestError(400, "response", f"response must be one of {', '.join(RESPONSES)}, got {_show(response)}")
    return Output(fmt, size, quality, response)


def _budget(body: dict, limits: HttpLimits) -> Optional[float]:
    if body.get("budget_ms") is None:
        return limits.default_budget_ms
    v = check.budget_ms(body["budget_ms"])
    if v > limits.max_budget_ms:
        raise RequestError(400, "budget_ms", f"budget_ms={float(v):g} exceeds the server's maximum "
                                             f"{limits.max_budget_ms:g} ms")
    return float(v)
