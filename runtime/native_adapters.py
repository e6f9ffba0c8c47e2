"""A person's onnxruntime-native LoRA adapter files, and what one graph run gets of a person's adapter.

Keep-LoRA exports of manifest format 2 carry the base values of every adapter input as overridable initializers, so
onnxruntime's own multi-LoRA API can swap people without feeding arrays: `PeopleStore.add` writes, next to
`<name>.safetensors`, one adapter file per graph (onnxruntime.AdapterFormat, written atomically)

    <name>.<graph>.<first 16 hex digits of the .safetensors sha256>.onnx_adapter

and the runtime activates it with `RunOptions.add_active_adapter`. The hash in the name finds the file of one
version of the person's adapter; a `.safetensors` replaced by other means has no matching file and runs on numpy
feeds (the runtime's stats count which path each run took; nothing falls back silently).

A native file is derived data, and whoever can write the people folder can copy another person's files over it.
So it is never trusted by its name: when it loads, its parameters must equal, value for value, what the checked
`.safetensors` derives (`check_native`); it is loaded from a private copy of the very bytes that were checked. A
file that differs (another person's, a sidecar of the other graph, truncated, altered) is refused with a warning
and the person runs on numpy feeds of their checked `.safetensors`: the wrong face is never rendered.

onnxruntime's adapter format cannot hold 0-d tensors (each parameter needs at least one dimension), so the few
scalar inputs (noise strengths) are fed as arrays beside the native adapter.
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from formats.atomic import atomic_file
from runtime.session import import_onnxruntime

log = logging.getLogger("my3dgen.runtime")

SUFFIX = ".onnx_adapter"
ADAPTER_VERSION = 1
"""What our files put in onnxruntime's adapter_version / model_version fields (the name carries the identity)."""


@dataclass
class GraphFeeds:
    """How one graph run gets a person's adapter: as numpy feeds, or as a native adapter plus the rest."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    """Every adapter input of the graph as an array (the numpy path; TensorRT engines and mixed batches use it)."""
    run_options: Any = None
    """onnxruntime.RunOptions with the person's native adapter active; with no adapter active it runs the graph's
    defaults (the base model). None: no native path for this person and graph."""
    rest: dict[str, np.ndarray] = field(default_factory=dict)
    """Inputs the native adapter cannot hold (0-d), fed as arrays beside it."""
    adapter: Any = None
    """The onnxruntime.LoraAdapter that `run_options` points at, kept alive as long as it."""
    why_numpy: str | None = None
    """Why a person with adapter inputs runs on numpy feeds (no native file, unreadable file, old export)."""
    graph_defaults: bool = False
    """The base model on graphs that hold its values as input defaults: any onnxruntime graph runs it with no
    adapter feed at all (`arrays` still serve TensorRT engines and mixed batches)."""
    device_values: dict[Any, dict[str, Any]] = field(default_factory=dict)
    """`arrays` uploaded to a device graph's device, by (device, device id): uploaded once, bound on every run."""

    def on_device(self, graph) -> dict[str, Any]:
        """`arrays` as OrtValues on `graph`'s device (runtime.session.OrtGraph.to_device), uploaded on first use."""
        key = (graph.device, graph.device_id)
        values = self.device_values.get(key)
        if values is None:
            values = self.device_values[key] = graph.to_device(self.arrays)
        return values

    @property
    def native(self) -> bool:
        return self.run_options is not None


def sha_hex(sha256: str) -> str:
    """The hex digits of a 'sha256:<hex>' identity."""
    return sha256.rpartition(":")[2]


def native_path(people_dir: Path, name: str, graph: str, sha256: str) -> Path:
    """Where the native adapter of `name`'s adapter version `sha256` for `graph` lives."""
    return Path(people_dir) / f"{name}.{graph}.{sha_hex(sha256)[:16]}{SUFFIX}"


def split_params(inputs: list[dict], tensors: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray],
                                                                             dict[str, np.ndarray]]:
    """(native parameters, the rest) of one graph's adapter inputs, by graph input name, float32 in the input's
    shape; 0-d inputs go to the rest."""
    native, rest = {}, {}
    for i in inputs:
        value = np.array(tensors[i["tensor"]], np.float32).reshape(i["shape"])  # a copy, 0-d kept 0-d
        (native if value.ndim else rest)[i["input"]] = value
    return native, rest


def write_native_adapters(people_dir: Path, name: str, sha256: str, tensors: dict[str, np.ndarray],
                          inputs_by_graph: dict[str, list[dict]]) -> list[Path]:
    """Write `name`'s native adapter file of each graph that has adapter inputs (atomically), after removing the
    files of any earlier version of the person; returns the paths written."""
    ort = import_onnxruntime()
    remove_native_adapters(people_dir, name)
    written = []
    for graph, inputs in inputs_by_graph.items():
        params, _ = split_params(inputs, tensors)
        if not params:
            continue
        fmt = ort.AdapterFormat()
        fmt.set_adapter_version(ADAPTER_VERSION)
        fmt.set_model_version(ADAPTER_VERSION)
        fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in params.items()})
        path = native_path(people_dir, name, graph, sha256)
        with atomic_file(path) as tmp:
            fmt.export_adapter(str(tmp))
        written.append(path)
    return written


def remove_native_adapters(people_dir: Path, name: str) -> int:
    """Delete every native adapter file of `name` (names have no '.', so the prefix is unambiguous)."""
    gone = 0
    for p in Path(people_dir).glob(f"{name}.*{SUFFIX}"):
        p.unlink(missing_ok=True)
        gone += 1
    return gone


def numpy_feeds(inputs: list[dict], tensors: dict[str, np.ndarray], why: str | None = None) -> GraphFeeds:
    """The numpy-only feeds of one graph."""
    native, rest = split_params(inputs, tensors)
    return GraphFeeds(arrays={**native, **rest}, why_numpy=why if inputs else None)


def person_feeds(people_dir: Path, name: str, sha256: str, graph: str, inputs: list[dict],
                 tensors: dict[str, np.ndarray]) -> GraphFeeds:
    """`name`'s feeds of `graph`: the native adapter when its file for this adapter version exists and loads,
    else numpy feeds with the reason recorded."""
    feeds = numpy_feeds(inputs, tensors)
    params, rest = split_params(inputs, tensors)
    if not params:
        return feeds
    path = native_path(people_dir, name, graph, sha256)
    if not path.is_file():
        feeds.why_numpy = f"no {path.name} (written by `people add`)"
        return feeds
    try:
        adapter = load_checked_native(path, params)
    except NativeMismatch as e:
        log.warning("person %r, graph %s: %s; running their checked adapter file on numpy feeds instead "
                    "(`cli.py people add` rewrites the native files)", name, graph, e)
        feeds.why_numpy = str(e)
        return feeds
    ort = import_onnxruntime()
    options = ort.RunOptions()
    options.add_active_adapter(adapter)
    return GraphFeeds(arrays=feeds.arrays, run_options=options, rest=rest, adapter=adapter)


class NativeMismatch(Exception):
    """A native adapter file that cannot be loaded or does not hold what the person's adapter derives."""


def check_native(path: Path, fmt, expected: dict[str, np.ndarray]) -> None:
    """NativeMismatch unless onnxruntime AdapterFormat `fmt` (read from `path`) holds exactly `expected`: the same
    parameter names, shapes and float32 values."""
    got = fmt.get_parameters()
    if set(got) != set(expected):
        extra, missing = sorted(set(got) - set(expected)), sorted(set(expected) - set(got))
        raise NativeMismatch(f"{path.name} holds other parameters than the person's adapter derives (unexpected "
                             f"{extra[:3]}, missing {missing[:3]}): refused")
    for k, want in expected.items():
        value = got[k].numpy()
        if value.dtype != np.float32 or value.shape != want.shape:
            raise NativeMismatch(f"{path.name}: parameter {k!r} is {value.dtype} {list(value.shape)}, the person's "
                                 f"adapter derives float32 {list(want.shape)}: refused")
        if not np.array_equal(value, want):
            raise NativeMismatch(f"{path.name}: parameter {k!r} holds other values than the person's adapter "
                                 f"derives (another person's file, or altered): refused")


def load_checked_native(path: Path, expected: dict[str, np.ndarray]):
    """The onnxruntime.LoraAdapter of native file `path`, loaded only once its parameters are `expected`.

    The file is read once (bounded, regular files only) into a private temporary copy; the check and the load
    both read that copy, so the people folder cannot change what runs between them. (LoraAdapter memory-maps its
    file; the mapping outlives the copy's name, which is removed at once.)"""
    from formats.errors import FormatError, without_paths
    from formats.tensors import open_regular
    ort = import_onnxruntime()
    try:
        f, _ = open_regular(path, FormatError, what="native adapter file")
        with f:
            data = f.read()
    except FormatError as e:
        raise NativeMismatch(f"{path.name} {e.reason}") from None
    fd, tmp = tempfile.mkstemp(prefix="my3dgen-native-", suffix=SUFFIX)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        try:
            fmt = ort.AdapterFormat.read_adapter(tmp)
            check_native(path, fmt, expected)
            adapter = ort.LoraAdapter()
            adapter.Load(tmp)
        except NativeMismatch:
            raise
        except Exception as e:  # onnxruntime raises RuntimeError subclasses of its own for a bad file
            said = without_paths(str(e).replace(tmp, path.name))[:200]
            raise NativeMismatch(f"{path.name} cannot be loaded ({type(e).__name__}: {said})") from None
    finally:
        os.unlink(tmp)
    return adapter


def base_feeds(inputs: list[dict], tensors: dict[str, np.ndarray], defaults_in_graph: bool) -> GraphFeeds:
    """The base model's feeds of one graph: the graph's own defaults (no feed) when it has them."""
    feeds = numpy_feeds(inputs, tensors, None if defaults_in_graph else "export without default adapter values")
    feeds.graph_defaults = defaults_in_graph and bool(inputs)
    return feeds
