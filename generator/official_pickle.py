"""Read official NVlabs EG3D network pickles (``ffhq512-128.pkl`` etc.) without running their code.

An official snapshot is a protocol-4 pickle of ``{'training_set_kwargs', 'G', 'D', 'G_ema', 'augment_pipe'}``
written through ``torch_utils.persistence``: every persistent network module reduces to
``torch_utils.persistence._reconstruct_persistent_obj(meta)``, and ``meta['module_src']`` holds Python source that the
official loader ``exec``s. Loading such a file with plain ``pickle`` runs that source (and needs the ``training`` and
``torch_utils`` packages). This module never does either:

* :func:`read_official_pickle` uses an ``Unpickler`` whose ``find_class`` resolves only a short whitelist of
  data-only names to local stand-ins (module stubs keep ``meta['state']`` and drop ``module_src`` unread; tensor
  storages are parsed by hand from their legacy ``torch.save`` streams). Any other global raises
  :class:`UnsafePickleError` before it is imported. The state dict is rebuilt by walking the stubs'
  ``_parameters`` / ``_buffers`` / ``_modules``.
* The writer of the same format lives in `tests/helpers/official_pickle_writer.py` (a test helper).

See docs/OFFICIAL_PICKLE.md for the format.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from formats.limits import current_limits, raise_hint
from formats.tensors import read_file_bytes

__all__ = [
    "OfficialCheckpoint",
    "OfficialPickleError",
    "UnsafePickleError",
    "read_official_pickle",
]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_LEGACY_SYS_INFO = {"protocol_version": _LEGACY_PROTOCOL, "little_endian": True,
                    "type_sizes": {"short": 2, "int": 4, "long": 4}}

# Legacy storage class name (as it appears in torch.save streams) <-> element dtype.
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
_STORAGE_NAMES = {dtype: name for name, dtype in _STORAGE_DTYPES.items()}

# numpy dtype codes that may back a pickled numpy scalar (official pickles hold np.float64 gains).
_NUMPY_SCALAR_CODES = frozenset({"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1"})


class OfficialPickleError(ValueError):
    """The file is not a readable official EG3D pickle (not a pickle, truncated, unexpected structure, bad key)."""


class UnsafePickleError(OfficialPickleError):
    """The pickle asks for a global (or persistent id) outside the whitelist; loading stopped before resolving it."""

    def __init__(self, message: str, global_name: str | None = None):
        super().__init__(message)
        self.global_name = global_name


@dataclass
class OfficialCheckpoint:
    """What :func:`read_official_pickle` recovers from one network of an official pickle.

    ``state_dict`` equals the official ``G_ema.state_dict()`` (official key names, parameters and persistent buffers,
    e.g. ``dataset_label_std``, ``*.noise_const``, ``*.resample_filter``, ``backbone.mapping.w_avg``).
    ``init_kwargs`` is the constructor's ``_init_kwargs`` as plain dicts. ``rendering_kwargs`` and
    ``neural_rendering_resolution`` come from the module's attributes, which training may have changed after
    construction (ffhq512-128 stores 128 although ``__init__`` sets 64).
    """

    state_dict: dict[str, torch.Tensor]
    init_kwargs: dict
    rendering_kwargs: dict
    neural_rendering_resolution: int | None
    class_name: str


# ---------------------------------------------------------------------------------------------------------------------
# Reader: data-only stand-ins for the whitelisted globals.


class _PersistentModuleStub:
    """Stands in for an instance of a ``@persistent_class``: its class name and instance state, never its source."""

    __slots__ = ("class_name", "version", "state")

    def __init__(self, class_name: str, version: int, state: dict):
        self.class_name = class_name
        self.version = version
        self.state = state


def _reconstruct_persistent_stub(meta: Any) -> _PersistentModuleStub:
    """Replaces ``torch_utils.persistence._reconstruct_persistent_obj``; ``meta['module_src']`` is ignored unread."""
    if not isinstance(meta, dict):
        raise OfficialPickleError(f"persistent object meta is a {type(meta).__name__}, expected a dict")
    if meta.get("type") != "class":
        raise OfficialPickleError(f"persistent object meta has type {meta.get('type')!r}, expected 'class'")
    class_name, state = meta.get("class_name"), meta.get("state")
    if not isinstance(class_name, str) or not isinstance(state, dict):
        raise OfficialPickleError(f"persistent object meta lacks a str class_name / dict state (class {class_name!r})")
    return _PersistentModuleStub(class_name, meta.get("version"), state)


class _InertModule:
    """Base of the stand-ins for classes the official pickle stores by reference (NEWOBJ + BUILD).

    Instances only keep the BUILD state dict; subclasses exist so each stand-in is a distinct type with the
    official qualified name in ``official_name``.
    """

    __slots__ = ("state",)
    official_name = ""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise OfficialPickleError(f"{self.official_name}: BUILD state is a {type(state).__name__}, expected dict")
        self.state = state


def _inert_type(official_name: str) -> type:
    """A fresh `_InertModule` subclass named after ``official_name`` (e.g. 'training.triplane.OSGDecoder')."""
    return type(official_name.rsplit(".", 1)[1], (_InertModule,), {"__slots__": (), "official_name": official_name})


class _EasyDictStandIn(dict):
    """Stands in for ``dnnlib.util.EasyDict`` (a dict subclass; its items arrive via SETITEMS)."""

    def __setstate__(self, state: Any) -> None:
        if state is not None and not isinstance(state, dict):
            raise OfficialPickleError(f"dnnlib.util.EasyDict: BUILD state is a {type(state).__name__}")


class _TensorTypeToken:
    """Names ``torch.Tensor`` / ``torch.nn.Parameter`` for ``_rebuild_from_type_v2`` without being callable."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


_TENSOR_TYPE = _TensorTypeToken("torch.Tensor")
_PARAMETER_TYPE = _TensorTypeToken("torch.nn.parameter.Parameter")


class _LoadedStorage:
    """A storage parsed from a legacy ``torch.save`` blob, held as a flat 1-D tensor of its dtype."""

    __slots__ = ("flat",)

    def __init__(self, flat: torch.Tensor):
        self.flat = flat


def _check_no_hooks(hooks: Any, what: str) -> None:
    """Official snapshots carry empty backward-hook dicts; anything else is not plain weights."""
    if hooks is not None and (not isinstance(hooks, dict) or hooks):
        raise OfficialPickleError(f"{what}: non-empty backward hooks are not supported")


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    """Validates a size/stride argument: a tuple or list of plain ints."""
    if not isinstance(value, (tuple, list)) or not all(type(v) is int for v in value):
        raise OfficialPickleError(f"{what} must be a tuple of ints, got {value!r}")
    return tuple(value)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    """Replaces ``torch._utils._rebuild_tensor_v2``: a strided view of a parsed storage (torch checks the bounds)."""
    if not isinstance(storage, _LoadedStorage):
        raise OfficialPickleError(f"_rebuild_tensor_v2: storage is a {type(storage).__name__}, not a parsed storage")
    if type(storage_offset) is not int or not isinstance(requires_grad, bool):
        raise OfficialPickleError("_rebuild_tensor_v2: bad storage_offset / requires_grad")
    _check_no_hooks(backward_hooks, "_rebuild_tensor_v2")
    if metadata:
        raise OfficialPickleError(f"_rebuild_tensor_v2: unsupported tensor metadata {metadata!r}")
    size, stride = _int_tuple(size, "tensor size"), _int_tuple(stride, "tensor stride")
    if len(size) != len(stride):
        raise OfficialPickleError(f"_rebuild_tensor_v2: size {size} and stride {stride} differ in length")
    try:
        return storage.flat.as_strided(size, stride, storage_offset)
    except RuntimeError as exc:
        raise OfficialPickleError(f"_rebuild_tensor_v2: {exc}") from None


def _rebuild_parameter(data, requires_grad, backward_hooks):
    """Replaces ``torch._utils._rebuild_parameter``; state dicts hold plain tensors, so the data tensor is returned."""
    if not isinstance(data, torch.Tensor) or not isinstance(requires_grad, bool):
        raise OfficialPickleError("_rebuild_parameter: expected (tensor, bool, hooks)")
    _check_no_hooks(backward_hooks, "_rebuild_parameter")
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    """Replaces ``torch._utils._rebuild_parameter_with_state``; Python attributes set on a Parameter are dropped."""
    return _rebuild_parameter(data, requires_grad, backward_hooks)


_TENSOR_REBUILDERS = (_rebuild_tensor_v2, _rebuild_parameter, _rebuild_parameter_with_state)


def _rebuild_from_type_v2(func, new_type, args, state):
    """Replaces ``torch._tensor._rebuild_from_type_v2`` for plain Tensor/Parameter types only."""
    if func not in _TENSOR_REBUILDERS or new_type not in (_TENSOR_TYPE, _PARAMETER_TYPE):
        raise OfficialPickleError("_rebuild_from_type_v2: only plain tensors and parameters are supported")
    if not isinstance(args, tuple):
        raise OfficialPickleError("_rebuild_from_type_v2: args must be a tuple")
    return func(*args)


def _numpy_dtype(spec, align=False, copy=True):
    """Replaces ``numpy.dtype`` for simple numeric codes; always copies so BUILD cannot alter numpy's singletons."""
    if not isinstance(spec, str) or spec not in _NUMPY_SCALAR_CODES or not isinstance(align, bool):
        raise OfficialPickleError(f"numpy.dtype: unsupported dtype spec {spec!r}")
    return np.dtype(spec, align=align, copy=True)


def _numpy_scalar(dtype, data):
    """Replaces ``numpy.core.multiarray.scalar`` for numeric dtypes: decodes the raw bytes of one value."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise OfficialPickleError("numpy scalar: expected a numeric dtype and exactly itemsize raw bytes")
    return np.frombuffer(data, dtype=dtype)[0]


# ---------------------------------------------------------------------------------------------------------------------
# Reader: the legacy (non-zip) torch.save stream inside each `torch.storage._load_from_bytes` blob.


class _StorageTypeToken:
    """Stands in for a legacy storage class (``torch.FloatStorage`` ...) inside a blob: just its dtype."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: torch.dtype):
        self.name = name
        self.dtype = dtype


_STORAGE_TYPE_TOKENS = {name: _StorageTypeToken(name, dtype) for name, dtype in _STORAGE_DTYPES.items()}


class _LegacyBlobUnpickler(pickle.Unpickler):
    """Unpickles the small pickles of a legacy torch.save stream; only ``torch.<X>Storage`` globals are allowed."""

    def __init__(self, file):
        super().__init__(file)
        self.declared: dict[str, tuple[torch.dtype, int]] = {}

    def find_class(self, module: str, name: str):
        if module == "torch" and name in _STORAGE_TYPE_TOKENS:
            return _STORAGE_TYPE_TOKENS[name]
        raise _refusal(f"{module}.{name}", "inside a tensor storage blob")

    def persistent_load(self, pid: Any):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise UnsafePickleError(f"unexpected persistent id {pid!r} inside a tensor storage blob; "
                                    "no code from the file was executed")
        _, token, key, location, numel, view_metadata = pid
        if not isinstance(token, _StorageTypeToken) or not isinstance(key, str) or not isinstance(location, str) \
                or type(numel) is not int or numel < 0 or view_metadata is not None:
            raise OfficialPickleError(f"malformed storage persistent id {pid!r}")
        self.declared[key] = (token.dtype, numel)
        return key


def _read_storage_data(stream: io.BytesIO, dtype: torch.dtype, numel: int, key: str) -> torch.Tensor:
    """Reads one storage's record: int64 little-endian element count, then the raw little-endian elements."""
    header = stream.read(8)
    if len(header) != 8:
        raise OfficialPickleError(f"storage {key}: truncated element count")
    (count,) = struct.unpack("<q", header)
    if count != numel:
        raise OfficialPickleError(f"storage {key}: element count {count} != declared {numel}")
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    data = stream.read(nbytes)
    if len(data) != nbytes:
        raise OfficialPickleError(f"storage {key}: truncated data ({len(data)} of {nbytes} bytes)")
    if numel == 0:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=dtype)


def _parse_legacy_storage(blob: Any) -> _LoadedStorage:
    """Replaces ``torch.storage._load_from_bytes``: parses the legacy torch.save stream of one storage by hand.

    Layout: pickled magic, pickled protocol 1001, pickled sys_info, pickled root object (the storage, as persistent
    id ``('storage', torch.<X>Storage, key, location, numel, None)``), pickled key list, then per key an int64
    element count and the raw data. The location is ignored: everything is loaded on the CPU.
    """
    if not isinstance(blob, (bytes, bytearray)):
        raise OfficialPickleError(f"_load_from_bytes: argument is a {type(blob).__name__}, expected bytes")
    stream = io.BytesIO(blob)
    unpickler = _LegacyBlobUnpickler(stream)

    def load() -> Any:
        check_counted_lengths(stream)
        return unpickler.load()
    try:
        magic, protocol, sys_info = load(), load(), load()
        if magic != _LEGACY_MAGIC or protocol != _LEGACY_PROTOCOL:
            raise OfficialPickleError("storage blob is not a legacy torch.save stream (bad magic / protocol)")
        if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
            raise OfficialPickleError(f"storage blob: unsupported sys_info {sys_info!r} (big-endian?)")
        root_key, keys = load(), load()
    except OfficialPickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, struct.error) as exc:
        raise OfficialPickleError(f"storage blob: corrupt legacy stream ({exc})") from None
    if not isinstance(keys, list) or sorted(keys) != sorted(unpickler.declared) or root_key not in unpickler.declared:
        raise OfficialPickleError(f"storage blob: key list {keys!r} does not match declared storages")
    storages = {key: _read_storage_data(stream, *unpickler.declared[key], key) for key in keys}
    if stream.read(1):
        raise OfficialPickleError("storage blob: unexpected trailing bytes")
    return _LoadedStorage(storages[root_key])


# ---------------------------------------------------------------------------------------------------------------------
# Reader: the whitelist and the unpickler.


_INERT_CLASS_NAMES = (
    "training.triplane.OSGDecoder",
    "training.volumetric_rendering.renderer.ImportanceRenderer",
    "training.volumetric_rendering.ray_sampler.RaySampler",
    "training.volumetric_rendering.ray_marcher.MipRayMarcher2",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.container.ModuleDict",
    "torch.nn.modules.activation.Softplus",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.activation.LeakyReLU",
    "torch.nn.modules.activation.Sigmoid",
    "torch.nn.modules.activation.Tanh",
    "torch.nn.modules.linear.Identity",
    "torch.nn.modules.linear.Linear",
)

_WHITELIST: dict[str, Any] = {
    "torch_utils.persistence._reconstruct_persistent_obj": _reconstruct_persistent_stub,
    "torch.storage._load_from_bytes": _parse_legacy_storage,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter_with_state,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch.Tensor": _TENSOR_TYPE,
    "torch.nn.parameter.Parameter": _PARAMETER_TYPE,
    "collections.OrderedDict": collections.OrderedDict,
    "dnnlib.util.EasyDict": _EasyDictStandIn,
    "numpy.dtype": _numpy_dtype,
    "numpy.core.multiarray.scalar": _numpy_scalar,
    "numpy._core.multiarray.scalar": _numpy_scalar,
    **{name: _inert_type(name) for name in _INERT_CLASS_NAMES},
}


def _refusal(global_name: str, where: str = "") -> UnsafePickleError:
    """The error for a global outside the whitelist."""
    where = f" {where}" if where else ""
    return UnsafePickleError(
        f"refused to load global '{global_name}'{where}: it is not on the whitelist of data-only names used by "
        "official EG3D pickles; it was not imported and no code from the file was executed", global_name)


class _SafeUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only whitelisted globals to local stand-ins and never imports anything."""

    def find_class(self, module: str, name: str):
        qualified = f"{module}.{name}"
        if qualified in _WHITELIST:
            return _WHITELIST[qualified]
        raise _refusal(qualified)

    def persistent_load(self, pid: Any):
        raise UnsafePickleError(f"unexpected persistent id {pid!r} (official EG3D pickles use none); "
                                "no code from the file was executed")


_CORRUPT_PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError, TypeError,
                          AttributeError, struct.error, UnicodeDecodeError, OverflowError)


def _pickle_error(path: str, reason: str) -> OfficialPickleError:
    return OfficialPickleError(f"{path}: {reason}")


def check_counted_lengths(stream: io.BytesIO) -> None:
    """Walk the opcodes of the pickle at `stream`'s position (without building anything) and refuse one whose
    counted arguments (bytes, strings, long integers) claim more bytes than the stream holds. The unpickler
    allocates such an argument before reading it, so a 20-byte file claiming a 1 TB string would otherwise be a
    MemoryError; `pickletools.genops` reads them from the in-memory stream, which never returns more than it has.
    Raises what genops raises for a truncated or malformed opcode (ValueError); the stream is left where it was."""
    start = stream.tell()
    try:
        for _ in pickletools.genops(stream):
            pass
    finally:
        stream.seek(start)


def _safe_load(path: str | os.PathLike) -> Any:
    """Unpickles ``path`` with :class:`_SafeUnpickler`; errors are re-raised with the file name in the message.

    The file must be a regular file within the size limit (formats.limits: devices and FIFOs are refused), and its
    opcodes are checked (`check_counted_lengths`) before anything is unpickled."""
    data = read_file_bytes(path, _pickle_error, what="pickle file")
    head = data[:4]
    f = io.BytesIO(data)
    try:
        check_counted_lengths(f)
        return _SafeUnpickler(f).load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{os.fspath(path)}: {exc}", exc.global_name) from None
    except OfficialPickleError as exc:
        raise OfficialPickleError(f"{os.fspath(path)}: {exc}") from None
    except MemoryError:
        raise OfficialPickleError(f"{os.fspath(path)}: the pickle asks for more memory than is available "
                                  f"(corrupt or hostile)") from None
    except _CORRUPT_PICKLE_ERRORS as exc:
        raise OfficialPickleError(_corrupt_message(path, head, exc)) from None


def _corrupt_message(path: str | os.PathLike, head: bytes, exc: Exception) -> str:
    """Explains why ``path`` could not be unpickled, with a hint for the common wrong-file cases."""
    if not head:
        hint = "the file is empty"
    elif head.startswith(b"PK"):
        hint = "it looks like a zip archive (a torch.save checkpoint?), not an official network pickle"
    elif not head.startswith(b"\x80"):
        hint = "it does not start with a pickle protocol header"
    else:
        hint = "it is truncated or corrupt"
    return f"{os.fspath(path)}: not a readable official EG3D network pickle; {hint} ({type(exc).__name__}: {exc})"


# ---------------------------------------------------------------------------------------------------------------------
# Reader: from stubs to an OfficialCheckpoint.


def _module_state(obj: Any, where: str) -> dict:
    """The instance state of a module stand-in (persistent stub or inert by-reference class)."""
    if isinstance(obj, _PersistentModuleStub):
        return obj.state
    if isinstance(obj, _InertModule):
        return getattr(obj, "state", {})
    raise OfficialPickleError(f"{where or '<root>'} is a {type(obj).__name__}, not a network module")


def _named_entries(state: dict, attr: str, where: str) -> dict:
    """``state[attr]`` (``_parameters`` / ``_buffers`` / ``_modules``), checked to be a dict with str keys."""
    entries = state.get(attr, {})
    if not isinstance(entries, dict) or not all(isinstance(k, str) for k in entries):
        raise OfficialPickleError(f"{where or '<root>'}.{attr} is not a dict of named entries")
    return entries


def _check_depth(depth: int, where: str) -> None:
    """Refuse data nested deeper than `max_nesting` (formats.limits): every walk over what a pickle built is
    bounded, so deep nesting or a reference cycle is a one-line error, never a RecursionError."""
    cap = current_limits().max_nesting
    if depth > cap:
        raise OfficialPickleError(f"{where or '<root>'}: nested more than max_nesting={cap} levels deep (corrupt, "
                                  f"cyclic or hostile); " + raise_hint("max_nesting"))


def _collect_tensors(obj: Any, prefix: str, out: dict[str, torch.Tensor], depth: int = 0) -> None:
    """Fills ``out`` in ``nn.Module.state_dict()`` order: own parameters, persistent buffers, then children."""
    where = prefix[:-1]
    _check_depth(depth, where)
    state = _module_state(obj, where)
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for attr in ("_parameters", "_buffers"):
        for name, tensor in _named_entries(state, attr, where).items():
            if tensor is None or (attr == "_buffers" and name in non_persistent):
                continue
            if not isinstance(tensor, torch.Tensor):
                raise OfficialPickleError(f"{prefix}{name} is a {type(tensor).__name__}, not a tensor")
            out[prefix + name] = tensor
    for name, child in _named_entries(state, "_modules", where).items():
        if child is not None:
            _collect_tensors(child, f"{prefix}{name}.", out, depth + 1)


def _to_plain(value: Any, where: str = "", depth: int = 0) -> Any:
    """EasyDict/OrderedDict -> dict, numpy scalars -> Python numbers, recursively through lists and tuples (at
    most `max_nesting` levels deep)."""
    _check_depth(depth, where)
    if isinstance(value, dict):
        return {k: _to_plain(v, f"{where}.{k}"[:200], depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_plain(v, f"{where}[{i}]"[:200], depth + 1) for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return tuple(_to_plain(v, f"{where}[{i}]"[:200], depth + 1) for i, v in enumerate(value))
    if isinstance(value, np.generic):
        return value.item()
    return value


def _select(root: Any, key: str, path: str | os.PathLike) -> Any:
    """``root[key]``, with an error listing the keys present when it is missing."""
    if not isinstance(root, dict):
        raise OfficialPickleError(f"{os.fspath(path)}: top-level object is a {type(root).__name__}, expected the "
                                  "snapshot dict of an official EG3D pickle")
    if key not in root:
        present = ", ".join(repr(k) for k in root)
        raise OfficialPickleError(f"{os.fspath(path)}: no key {key!r} in the pickle; keys present: {present}")
    return root[key]


def read_official_pickle(path: str | os.PathLike, key: str = "G_ema") -> OfficialCheckpoint:
    """Loads network ``key`` of an official EG3D pickle as plain tensors and dicts, executing nothing from the file.

    Raises :class:`UnsafePickleError` if the file needs any global outside the whitelist, and
    :class:`OfficialPickleError` if it is not a readable pickle, lacks ``key``, or ``key`` is not a network.
    """
    network = _select(_safe_load(path), key, path)
    if not isinstance(network, _PersistentModuleStub):
        raise OfficialPickleError(f"{os.fspath(path)}: {key!r} is a {type(network).__name__}, not a persistent "
                                  "EG3D network")
    state_dict: dict[str, torch.Tensor] = {}
    try:
        _collect_tensors(network, "", state_dict)
    except OfficialPickleError as exc:
        raise OfficialPickleError(f"{os.fspath(path)}: {key}: {exc}") from None
    state = network.state
    resolution = state.get("neural_rendering_resolution")
    try:
        init_kwargs = _to_plain(state.get("_init_kwargs") or {}, f"{key}.init_kwargs")
        rendering_kwargs = _to_plain(state.get("rendering_kwargs") or {}, f"{key}.rendering_kwargs")
    except OfficialPickleError as exc:
        raise OfficialPickleError(f"{os.fspath(path)}: {exc}") from None
    return OfficialCheckpoint(
        state_dict=state_dict,
        init_kwargs=init_kwargs,
        rendering_kwargs=rendering_kwargs,
        neural_rendering_resolution=None if resolution is None else int(resolution),
        class_name=network.class_name,
    )
