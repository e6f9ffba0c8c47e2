"""Write a state dict as an official NVlabs EG3D network pickle (the ``torch_utils.persistence`` format).

The official global names cannot be pickled the ordinary way because ``training`` / ``torch_utils`` / ``dnnlib``
are not importable here, so the file is written opcode by opcode. ``module_src`` is a placeholder, so official
code cannot rebuild modules from such a file; it exists for tests and for handing us weights in official layout.
The reader is :mod:`generator.official_pickle`; docs/OFFICIAL_PICKLE.md describes the format.
"""
from __future__ import annotations

import collections
import functools
import io
import os
import pickle
import re
import struct
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from generator.official_pickle import (_LEGACY_MAGIC, _LEGACY_PROTOCOL, _LEGACY_SYS_INFO, _STORAGE_NAMES,
                                       OfficialPickleError)

__all__ = ["write_official_pickle"]

# ---------------------------------------------------------------------------------------------------------------------
# Writer: an object tree of plain values plus the nodes below, emitted as protocol-4 opcodes.


@dataclass(frozen=True)
class _Global:
    """A global reference written as STACK_GLOBAL ``module`` ``name``."""

    module: str
    name: str


@dataclass(eq=False)
class _Call:
    """``func(*args)`` (REDUCE), then BUILD with ``state`` when given."""

    func: _Global
    args: tuple
    state: Any = None


@dataclass(eq=False)
class _NewObj:
    """``cls.__new__(cls, *args)`` (NEWOBJ), then SETITEMS of ``items`` and BUILD of ``state`` when given."""

    cls: _Global
    args: tuple = ()
    items: dict | None = None
    state: Any = None


_G_RECONSTRUCT = _Global("torch_utils.persistence", "_reconstruct_persistent_obj")
_G_LOAD_FROM_BYTES = _Global("torch.storage", "_load_from_bytes")
_G_REBUILD_TENSOR = _Global("torch._utils", "_rebuild_tensor_v2")
_G_REBUILD_PARAMETER = _Global("torch._utils", "_rebuild_parameter")
_G_ORDERED_DICT = _Global("collections", "OrderedDict")
_G_EASYDICT = _Global("dnnlib.util", "EasyDict")
_G_NUMPY_DTYPE = _Global("numpy", "dtype")
_G_NUMPY_SCALAR = _Global("numpy.core.multiarray", "scalar")

_FRAME_TARGET = 64 * 1024
_BATCH = 1000


class _OpcodeWriter:
    """Writes the opcodes of one protocol-4 pickle with framing and memoization, like CPython's pickler does.

    Supports None, bool, int, float, str, bytes, tuple, list, dict, OrderedDict, set and the writer nodes.
    Every non-atomic object is memoized by identity, so an object that appears twice is written once.
    """

    def __init__(self, file):
        self._file = file
        self._frame = io.BytesIO()
        self._memo: dict[Any, int] = {}
        self._keep_alive: list[Any] = []

    def dump(self, obj: Any) -> None:
        self._file.write(pickle.PROTO + bytes([4]))
        self._save(obj)
        self._frame.write(pickle.STOP)
        self._commit_frame(force=True)

    def _commit_frame(self, force: bool = False) -> None:
        size = self._frame.tell()
        if size and (force or size >= _FRAME_TARGET):
            self._file.write(pickle.FRAME + struct.pack("<Q", size) + self._frame.getvalue())
            self._frame = io.BytesIO()

    def _write(self, data: bytes) -> None:
        self._frame.write(data)

    def _memo_key(self, obj: Any) -> Any:
        return obj if isinstance(obj, _Global) else id(obj)

    def _memoize(self, obj: Any) -> None:
        self._memo[self._memo_key(obj)] = len(self._memo)
        self._keep_alive.append(obj)
        self._write(pickle.MEMOIZE)

    def _save_memo_get(self, obj: Any) -> bool:
        index = self._memo.get(self._memo_key(obj))
        if index is None:
            return False
        self._write(pickle.BINGET + bytes([index]) if index < 256 else pickle.LONG_BINGET + struct.pack("<I", index))
        return True

    def _save(self, obj: Any) -> None:
        self._commit_frame()
        if obj is None or isinstance(obj, (bool, int, float)):
            self._save_atom(obj)
        elif type(obj) is tuple and not obj:
            self._write(pickle.EMPTY_TUPLE)
        elif not self._save_memo_get(obj):
            self._save_new(obj)

    def _save_atom(self, obj: Any) -> None:
        if obj is None:
            self._write(pickle.NONE)
        elif isinstance(obj, bool):
            self._write(pickle.NEWTRUE if obj else pickle.NEWFALSE)
        elif isinstance(obj, int):
            self._save_int(obj)
        else:
            self._write(pickle.BINFLOAT + struct.pack(">d", obj))

    def _save_int(self, value: int) -> None:
        if 0 <= value < 256:
            self._write(pickle.BININT1 + bytes([value]))
        elif 0 <= value < 65536:
            self._write(pickle.BININT2 + struct.pack("<H", value))
        elif -(2**31) <= value < 2**31:
            self._write(pickle.BININT + struct.pack("<i", value))
        else:
            encoded = value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)
            self._write(pickle.LONG1 + bytes([len(encoded)]) + encoded if len(encoded) < 256
                        else pickle.LONG4 + struct.pack("<i", len(encoded)) + encoded)

    def _save_new(self, obj: Any) -> None:
        handlers = (
            (_Global, self._save_global), (str, self._save_str), (bytes, self._save_bytes),
            (tuple, self._save_tuple), (list, self._save_list), (collections.OrderedDict, self._save_ordered_dict),
            (dict, self._save_dict), (set, self._save_set), (_Call, self._save_call), (_NewObj, self._save_newobj),
        )
        for kind, handler in handlers:
            if type(obj) is kind:
                handler(obj)
                return
        raise TypeError(f"cannot write a {type(obj).__name__} into an official-format pickle")

    def _save_global(self, ref: _Global) -> None:
        self._save(ref.module)
        self._save(ref.name)
        self._write(pickle.STACK_GLOBAL)
        self._memoize(ref)

    def _save_str(self, text: str) -> None:
        data = text.encode("utf-8", "surrogatepass")
        if len(data) < 256:
            self._write(pickle.SHORT_BINUNICODE + bytes([len(data)]) + data)
        elif len(data) < 2**32:
            self._write(pickle.BINUNICODE + struct.pack("<I", len(data)) + data)
        else:
            self._write(pickle.BINUNICODE8 + struct.pack("<Q", len(data)) + data)
        self._memoize(text)

    def _save_bytes(self, data: bytes) -> None:
        if len(data) < 256:
            header = pickle.SHORT_BINBYTES + bytes([len(data)])
        elif len(data) < 2**32:
            header = pickle.BINBYTES + struct.pack("<I", len(data))
        else:
            header = pickle.BINBYTES8 + struct.pack("<Q", len(data))
        if len(data) >= _FRAME_TARGET:
            self._commit_frame(force=True)
            self._file.write(header)
            self._file.write(data)
        else:
            self._write(header + data)
        self._memoize(data)

    def _save_tuple(self, items: tuple) -> None:
        if len(items) <= 3:
            for item in items:
                self._save(item)
            self._write({1: pickle.TUPLE1, 2: pickle.TUPLE2, 3: pickle.TUPLE3}[len(items)])
        else:
            self._write(pickle.MARK)
            for item in items:
                self._save(item)
            self._write(pickle.TUPLE)
        self._memoize(items)

    def _save_batched(self, items: list, single: bytes, multiple: bytes, pairs: bool) -> None:
        """APPEND(S) / SETITEM(S) / ADDITEMS in batches of 1000, like CPython."""
        for start in range(0, len(items), _BATCH):
            batch = items[start:start + _BATCH]
            if len(batch) > 1 or not single:
                self._write(pickle.MARK)
            for item in batch:
                for part in (item if pairs else (item,)):
                    self._save(part)
            self._write(single if len(batch) == 1 and single else multiple)

    def _save_list(self, items: list) -> None:
        self._write(pickle.EMPTY_LIST)
        self._memoize(items)
        self._save_batched(list(items), pickle.APPEND, pickle.APPENDS, pairs=False)

    def _save_dict(self, mapping: dict) -> None:
        self._write(pickle.EMPTY_DICT)
        self._memoize(mapping)
        self._save_batched(list(mapping.items()), pickle.SETITEM, pickle.SETITEMS, pairs=True)

    def _save_ordered_dict(self, mapping: collections.OrderedDict) -> None:
        self._save(_G_ORDERED_DICT)
        self._write(pickle.EMPTY_TUPLE + pickle.REDUCE)
        self._memoize(mapping)
        self._save_batched(list(mapping.items()), pickle.SETITEM, pickle.SETITEMS, pairs=True)

    def _save_set(self, items: set) -> None:
        self._write(pickle.EMPTY_SET)
        self._memoize(items)
        self._save_batched(list(items), b"", pickle.ADDITEMS, pairs=False)

    def _save_call(self, call: _Call) -> None:
        self._save(call.func)
        self._save(call.args)
        self._write(pickle.REDUCE)
        self._memoize(call)
        if call.state is not None:
            self._save(call.state)
            self._write(pickle.BUILD)

    def _save_newobj(self, node: _NewObj) -> None:
        self._save(node.cls)
        self._save(node.args)
        self._write(pickle.NEWOBJ)
        self._memoize(node)
        if node.items:
            self._save_batched(list(node.items.items()), pickle.SETITEM, pickle.SETITEMS, pairs=True)
        if node.state is not None:
            self._save(node.state)
            self._write(pickle.BUILD)


# ---------------------------------------------------------------------------------------------------------------------
# Writer: tensors as legacy storage blobs.


class _StorageMarker:
    """The root object of a legacy storage pickle; its persistent id describes the storage."""


class _LegacyStoragePickler(pickle.Pickler):
    """Protocol-2 pickler that writes ``marker`` as the storage persistent id, as torch's legacy ``_save`` does."""

    def __init__(self, file, marker: _StorageMarker, pid: tuple):
        super().__init__(file, protocol=2)
        self._marker, self._pid = marker, pid

    def persistent_id(self, obj: Any):
        return self._pid if obj is self._marker else None


def _legacy_storage_bytes(flat: torch.Tensor, key: str) -> bytes:
    """The legacy ``torch.save(storage, _use_new_zipfile_serialization=False)`` stream of ``flat``'s elements.

    ``key`` takes the place of torch's storage key (the storage's address in torch); with the same key the bytes
    equal torch's.
    """
    if sys.byteorder != "little":
        raise OfficialPickleError("writing official pickles needs a little-endian machine")
    storage_type = getattr(torch, _STORAGE_NAMES[flat.dtype])
    buffer = io.BytesIO()
    for section in (_LEGACY_MAGIC, _LEGACY_PROTOCOL, _LEGACY_SYS_INFO):
        pickle.dump(section, buffer, protocol=2)
    marker = _StorageMarker()
    _LegacyStoragePickler(buffer, marker, ("storage", storage_type, key, "cpu", flat.numel(), None)).dump(marker)
    pickle.dump([key], buffer, protocol=2)
    buffer.write(struct.pack("<q", flat.numel()))
    buffer.write(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return buffer.getvalue()


class _TensorEncoder:
    """Turns tensors into ``_rebuild_tensor_v2`` / ``_rebuild_parameter`` calls, one storage blob per tensor."""

    def __init__(self):
        self._count = 0

    def tensor(self, tensor: torch.Tensor) -> _Call:
        if tensor.dtype not in _STORAGE_NAMES:
            raise TypeError(f"cannot write a {tensor.dtype} tensor into an official-format pickle")
        data = tensor.detach().to("cpu").contiguous()
        blob = _legacy_storage_bytes(data.reshape(-1), str(self._count))
        self._count += 1
        storage = _Call(_G_LOAD_FROM_BYTES, (blob,))
        args = (storage, 0, tuple(data.shape), tuple(data.stride()), False, collections.OrderedDict())
        return _Call(_G_REBUILD_TENSOR, args)

    def parameter(self, tensor: torch.Tensor) -> _Call:
        return _Call(_G_REBUILD_PARAMETER, (self.tensor(tensor), False, collections.OrderedDict()))


_FLOAT64_DTYPE = _Call(_G_NUMPY_DTYPE, ("f8", False, True), (3, "<", None, None, None, -1, -1, 0))


def _float64(value: float) -> _Call:
    """A numpy float64 scalar as official pickles store it (e.g. ``weight_gain``)."""
    return _Call(_G_NUMPY_SCALAR, (_FLOAT64_DTYPE, struct.pack("<d", value)))


# ---------------------------------------------------------------------------------------------------------------------
# Writer: the module tree implied by official state-dict key names.

_BUFFER_NAMES = frozenset({"resample_filter", "noise_const", "w_avg", "dataset_label_std"})

_PERSISTENT_CLASS_RULES = (
    (r"backbone", "Generator"),
    (r"synthesis", "SynthesisNetwork"),
    (r"mapping", "MappingNetwork"),
    (r"b\d+|block\d+", "SynthesisBlock"),
    (r"conv\d+", "SynthesisLayer"),
    (r"torgb", "ToRGBLayer"),
    (r"affine|embed|fc\d+", "FullyConnectedLayer"),
)

_SOURCE_MODULES = {
    "TriPlaneGenerator": "training/triplane.py",
    "SuperresolutionHybrid8XDC": "training/superresolution.py",
    "SuperresolutionHybrid4X": "training/superresolution.py",
    "SuperresolutionHybrid2X": "training/superresolution.py",
}

_DEFAULT_MODULE_SRC = (
    "# Placeholder written by my3dgen (generator/official_pickle.py) in place of the source of {source}.\n"
    "# The real module source is NVIDIA's and is not redistributed here. Official loaders exec() this text,\n"
    "# so this file cannot be loaded with NVlabs' torch_utils.persistence; my3dgen reads it without exec.\n"
    "raise RuntimeError('placeholder module_src from my3dgen was executed: this pickle holds weights only')\n"
)

_MODULE_HOOK_ATTRS = (
    "_backward_pre_hooks", "_backward_hooks", "_is_full_backward_hook", "_forward_hooks",
    "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs", "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


@dataclass(eq=False)
class _ModuleNode:
    """One module of the tree to write: persistent (``source`` set) or stored by reference (``global_ref`` set)."""

    class_name: str
    source: str | None = None
    global_ref: _Global | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    children: dict[str, "_ModuleNode"] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)


def _persistent(class_name: str) -> _ModuleNode:
    return _ModuleNode(class_name, source=_SOURCE_MODULES.get(class_name, "training/networks_stylegan2.py"))


def _by_reference(qualified: str) -> _ModuleNode:
    module, name = qualified.rsplit(".", 1)
    return _ModuleNode(name, global_ref=_Global(module, name))


def _child_node(parent: _ModuleNode, name: str, key: str, sr_class: str) -> _ModuleNode:
    """The module node for child ``name`` of ``parent``, by the official naming conventions."""
    if parent.class_name == "TriPlaneGenerator" and name == "superresolution":
        return _persistent(sr_class)
    if parent.class_name == "TriPlaneGenerator" and name == "decoder":
        return _by_reference("training.triplane.OSGDecoder")
    if parent.class_name == "OSGDecoder" and name == "net":
        return _by_reference("torch.nn.modules.container.Sequential")
    if parent.class_name == "Sequential" and name.isdigit():
        return _persistent("FullyConnectedLayer")
    for pattern, class_name in _PERSISTENT_CLASS_RULES:
        if re.fullmatch(pattern, name):
            return _persistent(class_name)
    raise ValueError(f"state-dict key {key!r}: no official module class for component {name!r}")


def _build_tree(state_dict: dict[str, torch.Tensor], sr_class: str) -> _ModuleNode:
    """The TriPlaneGenerator module tree holding every tensor of ``state_dict`` under its official name."""
    root = _persistent("TriPlaneGenerator")
    for key, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state_dict[{key!r}] is a {type(tensor).__name__}, not a tensor")
        *path, leaf = key.split(".")
        node = root
        for name in path:
            if name not in node.children:
                node.children[name] = _child_node(node, name, key, sr_class)
            node = node.children[name]
        node.tensors[leaf] = tensor
    return root


def _natural_key(name: str) -> list:
    """Sort key putting b4 < b8 < b16 and '2' < '10'."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _add_parameterless_modules(root: _ModuleNode) -> None:
    """Adds the official modules that own no tensors: renderer, ray sampler, ray marcher and the decoder Softplus."""
    renderer = _by_reference("training.volumetric_rendering.renderer.ImportanceRenderer")
    renderer.children["ray_marcher"] = _by_reference("training.volumetric_rendering.ray_marcher.MipRayMarcher2")
    renderer.attrs["plane_axes"] = torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                                                 [[1, 0, 0], [0, 0, 1], [0, 1, 0]],
                                                 [[0, 0, 1], [1, 0, 0], [0, 1, 0]]], dtype=torch.float32)
    root.children = {"renderer": renderer,
                     "ray_sampler": _by_reference("training.volumetric_rendering.ray_sampler.RaySampler"),
                     **root.children}
    decoder = root.children.get("decoder")
    net = decoder.children.get("net") if decoder is not None else None
    if net is None or not net.children:
        return
    for index in range(max(int(i) for i in net.children) + 1):
        if str(index) not in net.children:
            softplus = _by_reference("torch.nn.modules.activation.Softplus")
            softplus.attrs.update(beta=1.0, threshold=20.0)
            net.children[str(index)] = softplus


def _sort_children(node: _ModuleNode, top: bool = True) -> None:
    """Natural order for each module's children (the root keeps renderer and ray_sampler first)."""
    if not top:
        node.children = {k: node.children[k] for k in sorted(node.children, key=_natural_key)}
    for child in node.children.values():
        _sort_children(child, top=False)


def _shape_attrs(node: _ModuleNode, name: str) -> None:
    """Plain attributes the official classes carry that follow from their tensors (for realism; never read)."""
    weight = node.tensors.get("weight")
    if weight is None or weight.dim() < 2:
        return
    fan_in = int(np.prod(weight.shape[1:]))
    if node.class_name == "FullyConnectedLayer":
        lr_multiplier = 0.01 if re.fullmatch(r"fc\d+", name) else 1.0
        node.attrs.update(in_features=weight.shape[1], out_features=weight.shape[0],
                          weight_gain=_float64(lr_multiplier / fan_in ** 0.5), bias_gain=lr_multiplier)
    elif node.class_name in ("SynthesisLayer", "ToRGBLayer"):
        node.attrs.update(in_channels=weight.shape[1], out_channels=weight.shape[0])
        if node.class_name == "ToRGBLayer":
            node.attrs["weight_gain"] = _float64(1.0 / fan_in ** 0.5)
        else:
            node.attrs["act_gain"] = _float64(2.0 ** 0.5)


def _annotate(node: _ModuleNode, name: str = "") -> None:
    """Adds the shape-derived attributes to every node of the tree."""
    _shape_attrs(node, name)
    for child_name, child in node.children.items():
        _annotate(child, child_name)


def _copy_plain(value: Any, where: str) -> Any:
    """A fresh copy of a JSON-like value (dict/list/tuple/str/int/float/bool/None) for the pickle."""
    if isinstance(value, dict):
        return {str(k): _copy_plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_copy_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{where} is a {type(value).__name__}; only JSON-like values can be written")


def _init_kwargs_value(init_kwargs: dict) -> dict:
    """``_init_kwargs`` as ``train.py`` builds it: EasyDict for mapping_kwargs and sr_kwargs, plain dicts elsewhere."""
    kwargs = _copy_plain(init_kwargs, "init_kwargs")
    for name in ("mapping_kwargs", "sr_kwargs"):
        if isinstance(kwargs.get(name), dict):
            kwargs[name] = _NewObj(_G_EASYDICT, (), items=kwargs[name])
    return kwargs


def _module_state_value(node: _ModuleNode, encoder: _TensorEncoder, module_src: str | None) -> dict:
    """The ``nn.Module.__dict__`` of ``node`` as the official pickle stores it (eval mode, OrderedDict internals)."""
    params = collections.OrderedDict((k, encoder.parameter(t)) for k, t in node.tensors.items()
                                     if k not in _BUFFER_NAMES)
    buffers = collections.OrderedDict((k, encoder.tensor(t)) for k, t in node.tensors.items() if k in _BUFFER_NAMES)
    state: dict[str, Any] = {"training": False, "_parameters": params, "_buffers": buffers,
                             "_non_persistent_buffers_set": set()}
    for hook_attr in _MODULE_HOOK_ATTRS:
        state[hook_attr] = None if hook_attr == "_is_full_backward_hook" else collections.OrderedDict()
    state["_modules"] = collections.OrderedDict(
        (name, _module_value(child, encoder, module_src)) for name, child in node.children.items())
    for attr, value in node.attrs.items():
        state[attr] = encoder.tensor(value) if isinstance(value, torch.Tensor) else value
    if node.source is not None and "_init_kwargs" not in state:
        state["_init_args"] = ()
        state["_init_kwargs"] = {k: v for k, v in node.attrs.items() if k in ("in_features", "out_features",
                                                                             "in_channels", "out_channels")}
    return state


@functools.lru_cache(maxsize=None)
def _placeholder_src(source: str) -> str:
    """The default ``module_src`` for one official source file (one string object per file, as in real pickles)."""
    return _DEFAULT_MODULE_SRC.format(source=source)


def _module_value(node: _ModuleNode, encoder: _TensorEncoder, module_src: str | None) -> _Call | _NewObj:
    """A persistent module as ``_reconstruct_persistent_obj(meta)``; any other module as NEWOBJ + BUILD."""
    state = _module_state_value(node, encoder, module_src)
    if node.global_ref is not None:
        return _NewObj(node.global_ref, (), state=state)
    source = module_src if module_src is not None else _placeholder_src(node.source)
    meta = {"type": "class", "version": 6, "module_src": source, "class_name": node.class_name, "state": state}
    return _Call(_G_RECONSTRUCT, (meta,))


def write_official_pickle(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], init_kwargs: dict,
                          rendering_kwargs: dict, neural_rendering_resolution: int, *,
                          module_src: str | None = None) -> None:
    """Writes ``state_dict`` (official TriPlaneGenerator key names) as an official-format EG3D snapshot pickle.

    The file holds ``{'training_set_kwargs', 'G', 'D': None, 'G_ema', 'augment_pipe': None}`` with ``G`` and
    ``G_ema`` the same object, encoded as ``torch_utils.persistence`` does (see the module docstring). Every
    persistent module's ``module_src`` is ``module_src`` if given, else a placeholder that raises when executed.
    The file is written to a temporary name and renamed, so a failed write leaves no partial pickle.
    """
    if not isinstance(neural_rendering_resolution, int) or isinstance(neural_rendering_resolution, bool):
        raise TypeError("neural_rendering_resolution must be an int")
    rendering = _copy_plain(rendering_kwargs, "rendering_kwargs")
    sr_class = str(rendering.get("superresolution_module", "SuperresolutionHybrid8XDC")).rsplit(".", 1)[-1]
    root = _build_tree(state_dict, sr_class)
    _add_parameterless_modules(root)
    _sort_children(root)
    _annotate(root)
    plain_init = _copy_plain(init_kwargs, "init_kwargs")
    root.attrs.update({k: plain_init[k] for k in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels")
                       if k in plain_init})
    root.attrs.update(rendering_kwargs=rendering, neural_rendering_resolution=neural_rendering_resolution,
                      _last_planes=None, _init_args=(), _init_kwargs=_init_kwargs_value(init_kwargs))
    network = _module_value(root, _TensorEncoder(), module_src)
    snapshot = {
        "training_set_kwargs": {"class_name": "training.dataset.ImageFolderDataset", "use_labels": True,
                                "resolution": plain_init.get("img_resolution"), "xflip": False},
        "G": network, "D": None, "G_ema": network, "augment_pipe": None,
    }
    _write_atomically(path, snapshot)


def _write_atomically(path: str | os.PathLike, snapshot: dict) -> None:
    """Emits ``snapshot`` to ``path`` via a temporary file in the same directory."""
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            _OpcodeWriter(f).dump(snapshot)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
