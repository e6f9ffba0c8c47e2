"""PEFT adapter folders: `adapter_config.json` + `adapter_model.safetensors`, the pair PEFT's `save_pretrained`
writes and `from_pretrained` reads, for a 'flat'-layout adapter. The names, the shape rule, the config schema and
its checked reader; no torch.

What the folder holds (the conversion from and to an adapter file is generator/peft_folder.py):

    adapter_model.safetensors
      base_model.model.<module>.lora_A.weight   a LoRA pair, as PEFT's state dict names it after save_pretrained
      base_model.model.<module>.lora_B.weight   (the adapter name, 'default', is not in saved keys). A fully
                                                connected layer: A [r, in], B [out, r]; a (modulated) conv with
                                                a k x k kernel: A [r, in, k, k], B [out, r, 1, 1], the weights of
                                                PEFT's Conv2d pair. Values are our 'flat' A [r, in*k*k] and
                                                B [out, r], reshaped (row-major, so reshape(B @ A) is the delta).
      base_model.model.<state-dict key>         a personal tensor kept whole (bias, noise strength, const, the OSG
                                                decoder): where PEFT saves what it keeps whole (modules_to_save,
                                                bias='all'), so a state-dict loader puts it in place.
      my3dgen.anchors.ws, my3dgen.anchors.c     the person's anchors (PEFT has no place for them)
      __metadata__                              {'format': 'pt', 'my3dgen_adapter': the adapter file's metadata
                                                JSON, unchanged}: what an import needs to give back the same file
    adapter_config.json                         PEFT's LoraConfig fields (`peft_config`); `target_modules` lists
                                                the full module paths of the LoRA pairs
    README.md                                   a short model card (not read back)

The delta is PEFT's: W = W0 + (lora_alpha / r) * reshape(B @ A) on the layer's effective weight (a fully
connected layer's weight times its equalized-lr gain; a modulated conv's weight before modulation and
demodulation). Our layers are not nn.Linear / nn.Conv2d, so PEFT's LoraModel cannot inject into them: the folder
is for interoperability (inspection, storage, hub tooling, merging scripts) and comes back with an import.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from formats.errors import AdapterFileError
from formats.limits import Limits, current_limits, raise_hint
from formats.tensors import open_regular, read_safetensors

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_WEIGHTS_NAME = "adapter_model.bin"
README_NAME = "README.md"
KEY_PREFIX = "base_model.model."
"""The prefix of every module tensor in a PEFT LoRA state dict (PeftModel.base_model -> LoraModel.model)."""
ANCHOR_NAMES = {"anchors.ws": "my3dgen.anchors.ws", "anchors.c": "my3dgen.anchors.c"}
"""Adapter-file anchor name -> its name in the folder."""
LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")
PEFT_TYPE = "LORA"
BIASES = ("none", "all", "lora_only")


def peft_lora_names(key: str) -> tuple[str, str]:
    """Folder names of the LoRA pair on base weight `key` ('<module>.weight')."""
    module = key.rsplit(".", 1)[0]
    return tuple(f"{KEY_PREFIX}{module}{s}" for s in LORA_SUFFIXES)


def peft_full_name(key: str) -> str:
    """Folder name of a personal tensor kept whole (base state-dict key `key`)."""
    return KEY_PREFIX + key


def peft_lora_shapes(shape: tuple[int, ...] | list[int], rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(A, B) shapes of PEFT's pair for a weight [out, in] (Linear) or [out, in, k, k] (Conv2d)."""
    if len(shape) == 4:
        out_f, in_f, kh, kw = shape
        return (rank, in_f, kh, kw), (out_f, rank, 1, 1)
    return (rank, shape[1]), (shape[0], rank)


def peft_config(*, rank: int, alpha: float, target_modules: list[str], modules_to_save: list[str] | None,
                base_model_name_or_path: str | None = None) -> dict[str, Any]:
    """The adapter_config.json object of an adapter: PEFT's LoraConfig fields with the values that describe ours
    (no dropout at inference, no fan-in/fan-out transpose, no LoRA bias, no rsLoRA or DoRA, one rank and alpha for
    every module). `lora_alpha` is written as an int when it is one (PEFT types it int)."""
    return {
        "peft_type": PEFT_TYPE, "task_type": None, "base_model_name_or_path": base_model_name_or_path,
        "revision": None, "inference_mode": True, "r": rank,
        "lora_alpha": int(alpha) if float(alpha).is_integer() else float(alpha), "lora_dropout": 0.0,
        "fan_in_fan_out": False, "bias": "none", "use_rslora": False, "use_dora": False, "lora_bias": False,
        "init_lora_weights": True, "target_modules": sorted(target_modules), "exclude_modules": None,
        "modules_to_save": sorted(modules_to_save) if modules_to_save else None, "layers_to_transform": None,
        "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {}}


def dump_config(config: dict[str, Any]) -> str:
    """adapter_config.json text as PEFT writes it: sorted keys, 2-space indent."""
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


@dataclass
class PeftConfig:
    """The fields of a checked adapter_config.json that an import uses."""

    r: int
    lora_alpha: float
    use_rslora: bool
    target_modules: list[str]
    modules_to_save: list[str]
    base_model_name_or_path: str | None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def alpha(self) -> float:
        """Our alpha (scale = alpha / r) for PEFT's scale: lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA."""
        return self.lora_alpha * math.sqrt(self.r) if self.use_rslora else self.lora_alpha

    def targets_module(self, module: str) -> bool:
        """Whether `target_modules` names `module` by PEFT's rule (the path, or a suffix after a dot)."""
        return any(module == t or module.endswith("." + t) for t in self.target_modules)


def check_config(config: Any, where: str, limits: Limits | None = None) -> PeftConfig:
    """Check a parsed adapter_config.json: the type, range and finiteness of every field an import reads, and
    the absence of PEFT features a 'flat' adapter cannot hold. Missing fields take LoraConfig's defaults (r 8,
    lora_alpha 8); fields PEFT added that we do not read are ignored, as PEFT's own loader does."""
    lim = current_limits(limits)
    if not isinstance(config, dict):
        raise AdapterFileError(where, "is not a JSON object")

    def bad(name: str, expected: str):
        return AdapterFileError(where, f"field '{name}' is {_shown(config.get(name))}: expected {expected}")

    if config.get("peft_type") != PEFT_TYPE:
        raise bad("peft_type", f"'{PEFT_TYPE}' (only LoRA adapters are read)")
    r, alpha = config.get("r", 8), config.get("lora_alpha", 8)
    if not _is_int(r) or not 1 <= r <= lim.max_rank:
        raise bad("r", f"an integer in 1..max_rank={lim.max_rank}")
    if not _is_number(alpha) or not math.isfinite(alpha) or abs(alpha) > lim.max_alpha:
        raise bad("lora_alpha", f"a finite number with |lora_alpha| <= max_alpha={lim.max_alpha:g}")
    dropout = config.get("lora_dropout", 0.0)
    if not _is_number(dropout) or not 0.0 <= dropout <= 1.0:
        raise bad("lora_dropout", "a number in [0, 1]")
    for name, refusal in (("fan_in_fan_out", "our weights are [out, in] (a transposed layout is not read)"),
                          ("use_dora", "DoRA's magnitude vectors have no place in an adapter file"),
                          ("lora_bias", "a bias on lora_B has no place in an adapter file"),
                          ("use_rslora", None), ("inference_mode", None)):
        value = config.get(name, False)
        if not isinstance(value, bool):
            raise bad(name, "true or false")
        if value and refusal is not None:
            raise bad(name, f"false: {refusal}")
    if config.get("bias", "none") not in BIASES:
        raise bad("bias", f"one of {BIASES}")
    targets = config.get("target_modules")
    if isinstance(targets, str):
        raise bad("target_modules", "a list of module paths (a regular expression is not matched here)")
    targets = _names(config, "target_modules", where, lim, bad)
    to_save = _names(config, "modules_to_save", where, lim, bad)
    for name in ("rank_pattern", "alpha_pattern"):
        value = {} if config.get(name) is None else config[name]
        if not isinstance(value, dict):
            raise bad(name, "an object")
        if value:
            raise bad(name, "empty: one rank and one alpha for every module (a per-module pattern is not read)")
    for name in ("target_parameters", "trainable_token_indices", "layer_replication"):
        if config.get(name):
            raise bad(name, "null: only LoRA pairs on modules are read")
    for name in ("base_model_name_or_path", "revision", "task_type", "peft_version"):
        value = config.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > 1000):
            raise bad(name, "null or a string of at most 1000 characters")
    return PeftConfig(r=r, lora_alpha=alpha, use_rslora=config.get("use_rslora", False), target_modules=targets,
                      modules_to_save=to_save, base_model_name_or_path=config.get("base_model_name_or_path"),
                      raw=config)


def _names(config: dict, name: str, where: str, lim: Limits, bad) -> list[str]:
    value = [] if config.get(name) is None else config[name]
    if not isinstance(value, list) or not all(isinstance(v, str) and v and v.isprintable() for v in value):
        raise bad(name, "null or a list of module paths (non-empty strings)")
    if len(value) > lim.max_tensors:
        raise AdapterFileError(where, f"field '{name}' lists {len(value)} modules, more than "
                                      f"max_tensors={lim.max_tensors}; " + raise_hint("max_tensors"))
    return list(value)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _shown(value: Any, n: int = 40) -> str:
    text = "missing or null" if value is None else f"{type(value).__name__} {value!r}"
    return text if len(text) <= n else text[:n] + "..."


@dataclass
class PeftFolder:
    """A read, checked PEFT adapter folder."""

    path: Path
    config: PeftConfig
    tensors: dict[str, np.ndarray]
    """Folder name -> tensor as stored (float32 or float16, finite)."""
    metadata: dict[str, str]
    """The safetensors '__metadata__' strings ('my3dgen_adapter' when we wrote it)."""

    def lora_modules(self) -> list[str]:
        """Module paths of the LoRA pairs, in file order (A and B both present)."""
        return [k[len(KEY_PREFIX):-len(LORA_SUFFIXES[0])] for k in self.tensors if k.endswith(LORA_SUFFIXES[0])]

    def full_keys(self) -> list[str]:
        """Base state-dict keys of the tensors kept whole."""
        return [k[len(KEY_PREFIX):] for k in self.tensors
                if k.startswith(KEY_PREFIX) and not k.endswith(LORA_SUFFIXES)]


def read_folder(path: str | os.PathLike, limits: Limits | None = None) -> PeftFolder:
    """Read and check a PEFT LoRA folder: adapter_config.json (within max_metadata_bytes; `check_config`) and
    adapter_model.safetensors (header first, bounded; float32/float16 finite tensors, every name a LoRA weight
    under base_model.model., a whole tensor there or one of our anchors). Pickled weights (adapter_model.bin)
    are never loaded."""
    path, lim = Path(path), current_limits(limits)
    if not path.is_dir():
        raise AdapterFileError(str(path), "is not a folder (a PEFT adapter is a folder holding "
                                          f"{CONFIG_NAME} and {WEIGHTS_NAME})")
    config_path, weights = path / CONFIG_NAME, path / WEIGHTS_NAME
    if not config_path.exists():
        raise AdapterFileError(str(path), f"has no {CONFIG_NAME} (not a PEFT adapter folder)")
    if not weights.exists():
        pickled = (path / PICKLE_WEIGHTS_NAME).exists()
        raise AdapterFileError(str(path), f"has no {WEIGHTS_NAME}" + (
            f"; {PICKLE_WEIGHTS_NAME} is a pickle and is never loaded (re-save it with PEFT's "
            "save_pretrained(..., safe_serialization=True))" if pickled else ""))
    f, size = open_regular(config_path, AdapterFileError, lim, "JSON file")
    with f:
        if size > lim.max_metadata_bytes:
            raise AdapterFileError(str(config_path), f"{size} bytes exceed the limit max_metadata_bytes="
                                                     f"{lim.max_metadata_bytes}; " + raise_hint("max_metadata_bytes"))
        raw = f.read(size)
    try:
        parsed = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise AdapterFileError(str(config_path), f"is not valid JSON ({e})") from None
    config = check_config(parsed, str(config_path), lim)
    metadata, tensors, _ = read_safetensors(weights, AdapterFileError, lim)
    for name, value in tensors.items():
        _check_tensor(name, value, str(weights))
    folder = PeftFolder(path=path, config=config, tensors=tensors, metadata=metadata)
    _check_pairs(folder, str(weights))
    return folder


def _check_pairs(folder: PeftFolder, where: str) -> None:
    """Every LoRA module has both A and B, and adapter_config.json's target_modules names it."""
    halves = {}
    for name in folder.tensors:
        if name.endswith(LORA_SUFFIXES):
            halves.setdefault(name[len(KEY_PREFIX):-len(LORA_SUFFIXES[0])], set()).add(name[-len(LORA_SUFFIXES[0]):])
    for module, found in halves.items():
        if len(found) != 2:
            raise AdapterFileError(where, f"module '{module[:80]}' has only {found.pop()[1:]}: a LoRA pair needs "
                                          f"lora_A.weight and lora_B.weight")
        if not folder.config.targets_module(module):
            raise AdapterFileError(where, f"module '{module[:80]}' holds a LoRA pair but {CONFIG_NAME} field "
                                          f"'target_modules' does not name it")


def _check_tensor(name: str, value: np.ndarray, where: str) -> None:
    if name not in ANCHOR_NAMES.values():
        if not name.startswith(KEY_PREFIX) or len(name) == len(KEY_PREFIX):
            raise AdapterFileError(where, f"tensor '{name[:80]}' is not under '{KEY_PREFIX}' (not a PEFT "
                                          f"LoRA state dict)")
        if "lora_" in name and not name.endswith(LORA_SUFFIXES):
            raise AdapterFileError(where, f"tensor '{name[:80]}' is a PEFT tensor an adapter file has no place "
                                          f"for (only lora_A.weight / lora_B.weight: no DoRA, embedding LoRA or "
                                          f"LoRA bias)")
    if value.dtype not in (np.float32, np.float16):
        raise AdapterFileError(where, f"tensor '{name[:80]}' has dtype {value.dtype} (float32/16 expected)")
    if not np.isfinite(value).all():
        raise AdapterFileError(where, f"tensor '{name[:80]}' has non-finite values")
