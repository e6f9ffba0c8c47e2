"""An adapter file as a PEFT adapter folder and back (the folder's format: formats.peft_folder).

`export_peft` needs no model: a 'flat' adapter's pairs are PEFT's up to a reshape, its whole tensors and anchors
are copied, and its metadata travels unchanged in the safetensors header. 'loralib' adapters, format-1 adapters
(fully connected deltas before the gain) and full fine-tunes (no LoRA pairs) are refused: PEFT's LoRA cannot say
what they compute. `import_peft` of a folder we wrote needs no model either and gives back the same adapter file
(same tensors, dtypes and metadata); given a model G, the result must also fit it. A folder without our metadata
(re-saved by a tool that drops safetensors metadata, or made elsewhere) needs G: rank and alpha come from
adapter_config.json, and the adapter policy is the one whose target plan on G holds exactly the folder's LoRA
modules and whole tensors.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from formats.adapter_file import (FORMAT_VERSION, META_KEY, adapter_metadata, check_metadata, expected_shapes,
                                  lora_shapes, lora_tensor_names, read_adapter)
from formats.atomic import atomic_dir, atomic_file
from formats.errors import AdapterFileError
from formats.peft_folder import (ANCHOR_NAMES, CONFIG_NAME, README_NAME, WEIGHTS_NAME, PeftFolder, dump_config,
                                 peft_config, peft_full_name, peft_lora_names, peft_lora_shapes, read_folder)
from formats.tensors import read_header, shape_problems

DECODER_MODULE = "decoder"
"""The OSG decoder's module path (official EG3D key names; generator.lora_targets.part_roots): with
`train_decoder` every tensor under it is personal, so PEFT's `modules_to_save` names it."""


def _exportable(meta: dict[str, Any], where: str) -> None:
    """Refuse adapters whose computation PEFT's LoRA cannot state, saying why and what to do."""
    if meta["layout"] != "flat":
        raise AdapterFileError(where, f"layout '{meta['layout']}' has no PEFT form: its conv pair (A [r*k, in*k], "
                                      f"B [out*k, r*k]) is not PEFT's Conv2d pair (A [r, in, k, k], B [out, r, 1, "
                                      f"1]); train with --layout flat to get a PEFT-compatible adapter")
    if meta["format_version"] != FORMAT_VERSION:
        raise AdapterFileError(where, f"adapter format {meta['format_version']} adds its fully connected deltas "
                                      f"before the layer's gain, PEFT after it; train it again to export it")
    if not any(kind == "lora" for _, kind, _ in meta["targets"]):
        raise AdapterFileError(where, "has no LoRA pairs (a full fine-tune): PEFT's LoRA format cannot hold it")


def _modules_to_save(meta: dict[str, Any]) -> list[str]:
    policy = meta.get("policy") or {}
    whole = policy.get("mode", "lora") == "lora" and policy.get("train_decoder") is True
    return [DECODER_MODULE] if whole and any(k.startswith(DECODER_MODULE + ".") for k, _, _ in meta["targets"]) else []


def _model_card(meta: dict[str, Any]) -> str:
    return (f"# my3dgen person adapter (PEFT LoRA folder)\n\nOne person's LoRA adapter for a my3dgen EG3D generator "
            f"(base weights {meta['base_fingerprint']}), r={meta['rank']}, lora_alpha={meta['alpha']:g}, "
            f"{len(meta.get('anchor_names') or [])} anchor(s).\n\nThe LoRA modules are my3dgen's modulated "
            "convolutions and fully connected layers, not torch.nn.Conv2d / Linear: PEFT's LoraModel cannot inject "
            "into them. `python cli.py adapters --import-peft DIR --out person.safetensors` gives the adapter file "
            "back (my3dgen README, \"PEFT adapter folders\").\n")


def export_peft(adapter: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False, G=None
                ) -> dict[str, Any]:
    """Write adapter file `adapter` as the PEFT folder `out_dir` (atomically: all of it or nothing); with G, the
    adapter must fit G first. Returns a summary (counts, rank, alpha)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists: pass --overwrite (overwrite=True) to replace it")
    data = read_adapter(adapter)
    where, meta = str(data.path), data.meta
    _exportable(meta, where)
    if G is not None:
        from generator.adapter_file import load_adapter
        load_adapter(adapter, G)
    header_meta, entries = read_header(adapter, AdapterFileError)
    stored = {k: np.float16 if dtype == "F16" else np.float32 for k, (dtype, _) in entries.items()}
    tensors, modules = {}, []
    for key, kind, shape in meta["targets"]:
        if kind == "lora":
            for ours, name, peft_shape in zip(lora_tensor_names(key), peft_lora_names(key),
                                              peft_lora_shapes(shape, meta["rank"])):
                tensors[name] = data.tensors[ours].astype(stored[ours]).reshape(peft_shape)
            modules.append(key.rsplit(".", 1)[0])
        else:
            tensors[peft_full_name(key)] = data.tensors[key].astype(stored[key])
    if data.anchor_ws is not None:
        for ours, value in (("anchors.ws", data.anchor_ws), ("anchors.c", data.anchor_c)):
            tensors[ANCHOR_NAMES[ours]] = value.astype(stored[ours])
    config = peft_config(rank=meta["rank"], alpha=meta["alpha"], target_modules=modules,
                         modules_to_save=_modules_to_save(meta))
    from safetensors.numpy import save_file
    with atomic_dir(out_dir, overwrite=True) as tmp:
        save_file({k: np.array(v, order="C") for k, v in tensors.items()}, str(tmp / WEIGHTS_NAME),
                  metadata={"format": "pt", META_KEY: header_meta[META_KEY]})
        (tmp / CONFIG_NAME).write_text(dump_config(config), encoding="utf-8")
        (tmp / README_NAME).write_text(_model_card(meta), encoding="utf-8")
    return {"lora_modules": len(modules), "whole_tensors": len(meta["targets"]) - len(modules),
            "anchors": len(data.anchor_names), "r": meta["rank"], "lora_alpha": meta["alpha"],
            "modules_to_save": config["modules_to_save"]}


def import_peft(folder: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False, G=None
                ) -> dict[str, Any]:
    """Write the PEFT folder `folder` as adapter file `out` (atomically; checked as every adapter file is read,
    and against G when given). A folder without our metadata needs G. Returns a summary."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: pass --overwrite (overwrite=True) to replace it")
    peft = read_folder(folder)
    where = str(peft.path)
    raw = peft.metadata.get(META_KEY)
    if raw is not None:
        meta = check_metadata(raw, f"{where}/{WEIGHTS_NAME}")
        expected_shapes(meta, f"{where}/{WEIGHTS_NAME}")  # targets well formed
        _exportable(meta, where)
        _agrees(peft, meta, where)
        tensors = _adapter_tensors(peft, meta["rank"], meta["targets"], where)
        how = "metadata kept"
    else:
        if G is None:
            raise AdapterFileError(where, f"{WEIGHTS_NAME} has no '{META_KEY}' metadata (not written by "
                                          f"--export-peft, or re-saved without it): give the base model "
                                          f"(--model DIR or --preset NAME) to match its tensors against")
        raw, tensors, how = _rebuilt(peft, G, where)
    from safetensors.numpy import save_file
    with atomic_file(out) as tmp:
        save_file({k: np.array(v, order="C") for k, v in tensors.items()}, str(tmp), metadata={META_KEY: raw})
        try:  # the checks every reader makes, before the file gets its name
            data = read_adapter(tmp)
            if G is not None:
                from generator.adapter_file import load_adapter
                load_adapter(tmp, G)
        except AdapterFileError as e:
            raise AdapterFileError(where, e.reason) from None
    return {"lora_modules": len(peft.lora_modules()), "whole_tensors": len(peft.full_keys()),
            "anchors": len(data.anchor_names), "rank": data.meta["rank"], "alpha": data.meta["alpha"], "how": how}


def _agrees(peft: PeftFolder, meta: dict[str, Any], where: str) -> None:
    """adapter_config.json must say what the metadata says (an edited config is refused, not half applied)."""
    cfg, config_where = peft.config, f"{where}/{CONFIG_NAME}"
    if cfg.r != meta["rank"]:
        raise AdapterFileError(config_where, f"field 'r' is {cfg.r}, but the adapter's metadata says rank "
                                             f"{meta['rank']}")
    if cfg.use_rslora or cfg.lora_alpha != meta["alpha"]:
        field = "use_rslora" if cfg.use_rslora else "lora_alpha"
        raise AdapterFileError(config_where, f"field '{field}' gives scale {cfg.alpha / cfg.r:g}, but the adapter's "
                                             f"metadata says alpha {meta['alpha']:g} / rank {meta['rank']}")


def _adapter_tensors(peft: PeftFolder, rank: int, targets: list, where: str) -> dict[str, np.ndarray]:
    """Adapter-file tensors from the folder's, for `targets` ([key, kind, base shape]): every name and PEFT
    shape must be exactly the ones the targets imply."""
    expected: dict[str, tuple[int, ...]] = {}
    for key, kind, shape in targets:
        if kind == "lora":
            expected.update(zip(peft_lora_names(key), peft_lora_shapes(shape, rank)))
        else:
            expected[peft_full_name(key)] = tuple(shape)
    anchors = set(ANCHOR_NAMES.values())
    problems = shape_problems(expected, {k: v.shape for k, v in peft.tensors.items() if k not in anchors}, shown=5)
    if problems:
        raise AdapterFileError(f"{where}/{WEIGHTS_NAME}", "; ".join(problems))
    out: dict[str, np.ndarray] = {}
    for key, kind, shape in targets:
        if kind == "lora":
            for ours, name, our_shape in zip(lora_tensor_names(key), peft_lora_names(key),
                                             lora_shapes(shape, rank, "flat")):
                out[ours] = peft.tensors[name].reshape(our_shape)
        else:
            out[key] = peft.tensors[peft_full_name(key)]
    for ours, name in ANCHOR_NAMES.items():
        if name in peft.tensors:
            out[ours] = peft.tensors[name]
    return out


def _rebuilt(peft: PeftFolder, G, where: str) -> tuple[str, dict[str, np.ndarray], str]:
    """(metadata JSON, tensors, how) of a folder without our metadata, matched against G."""
    from generator.adapter_file import base_fingerprint
    from generator.lora import plan
    cfg = peft.config
    policy = find_policy(G, cfg.r, float(cfg.alpha), peft, where)
    targets = [[t.key, t.kind, list(t.shape)] for t in plan(G, policy)]
    tensors = _adapter_tensors(peft, cfg.r, targets, where)
    half = all(v.dtype == np.float16 for k, v in tensors.items() if k != "anchors.c")
    tensors = {k: v.astype(np.float16 if half and k != "anchors.c" else np.float32) for k, v in tensors.items()}
    k = len(tensors["anchors.ws"]) if "anchors.ws" in tensors and tensors["anchors.ws"].ndim else 0
    meta = adapter_metadata(rank=cfg.r, alpha=policy.alpha, layout="flat", policy=dataclasses.asdict(policy),
                            targets=targets, base_fingerprint=base_fingerprint(G),
                            dtype="float16" if half else "float32", anchor_names=[f"anchor{i}" for i in range(k)],
                            extra={"imported_from": "PEFT adapter folder",
                                   "base_model_name_or_path": cfg.base_model_name_or_path})
    return json.dumps(meta), tensors, "policy matched on the model"


def _subsets(items: tuple[str, ...], first: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The non-empty subsets of `items` (in their order), `first` first."""
    subsets = [c for n in range(len(items), 0, -1) for c in itertools.combinations(items, n)]
    return [first] + [s for s in subsets if s != first]


def find_policy(G, rank: int, alpha: float, peft: PeftFolder, where: str):
    """The adapter policy ('flat', `rank`, `alpha`) whose plan on G has exactly the folder's LoRA modules and whole
    tensors (the default's parts and layer kinds tried first); an AdapterFileError saying how the folder differs
    from the default policy's plan when none has."""
    from generator.lora import LAYER_KINDS, PARTS, AdapterPolicy, plan
    lora, whole = set(peft.lora_modules()), set(peft.full_keys())
    default = AdapterPolicy()
    for parts, kinds, decoder, biases in itertools.product(_subsets(PARTS, default.parts),
                                                           _subsets(LAYER_KINDS, default.layer_kinds),
                                                           (True, False), (True, False)):
        policy = AdapterPolicy(rank=rank, alpha=alpha, layout="flat", parts=parts, layer_kinds=kinds,
                               train_decoder=decoder, train_biases=biases)
        targets = plan(G, policy)
        if ({t.key.rsplit(".", 1)[0] for t in targets if t.kind == "lora"} == lora
                and {t.key for t in targets if t.kind == "full"} == whole):
            return policy
    names = {n for t in plan(G, AdapterPolicy(rank=rank, alpha=alpha, layout="flat"))
             for n in (peft_lora_names(t.key) if t.kind == "lora" else (peft_full_name(t.key),))}
    found = {n for n in peft.tensors if n not in ANCHOR_NAMES.values()}
    problems = shape_problems({n: () for n in names}, {n: () for n in found}, shown=4)
    raise AdapterFileError(f"{where}/{WEIGHTS_NAME}", f"its {len(lora)} LoRA modules and {len(whole)} whole tensors "
                                                      f"match no adapter policy of this model; against the default "
                                                      f"policy: " + "; ".join(problems))
