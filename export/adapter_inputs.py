"""The adapter inputs of a keep-LoRA export: what each graph input is called and what the base model feeds it.

A keep-LoRA export makes every LoRA A/B and personal full tensor of an adapter policy an input of the synthesis or
render graph (export.onnx_graphs.AdapterInput). Adapter tensor names ('<module>.lora_A', state-dict keys) are not
all valid, unique graph input names, so `sanitize_names` maps them, away from the graphs' own inputs and outputs
(RESERVED_NAMES). `base_adapter_values` gives the base model's value of each input: the export writes them as the
base values file and as the inputs' defaults in the graphs.
"""
from __future__ import annotations

import re

import numpy as np

from export.onnx_graphs import AdapterInput, graph_of
from export.options import ExportError
from generator.lora import PersonAdapter, lora_tensor_names
from generator.triplane import TriPlaneGenerator

RESERVED_NAMES = {"z", "c", "truncation_psi", "ws", "planes", "image", "image_raw", "depth"}
"""The graphs' own input and output names, which no adapter input may take."""


def sanitize_names(names: list[str]) -> dict[str, str]:
    """Adapter tensor name -> graph input name: characters outside [A-Za-z0-9_.] become '_', clashes get a suffix."""
    out: dict[str, str] = {}
    used = set(RESERVED_NAMES)
    for name in names:
        base = re.sub(r"[^A-Za-z0-9_.]", "_", name) or "tensor"
        cand, k = base, 1
        while cand in used:
            cand, k = f"{base}_{k}", k + 1
        used.add(cand)
        out[name] = cand
    return out


def adapter_inputs_for(adapter: PersonAdapter) -> list[AdapterInput]:
    """The graph inputs of a keep-LoRA export, in the adapter's target order (A before B)."""
    rows = []
    for t in adapter.targets.values():
        graph = graph_of(t)
        if graph is None:
            raise ExportError(f"adapter policy puts {t.key} in the mapping network (parts={adapter.policy.parts}): "
                              f"keep-LoRA exports leave mapping frozen; use --merge-lora or a policy without "
                              f"'mapping'")
        if t.kind == "lora":
            a, b = lora_tensor_names(t.key)
            rows += [(a, t.key, "lora_A", t.lora_shapes[0], graph), (b, t.key, "lora_B", t.lora_shapes[1], graph)]
        else:
            rows.append((t.key, t.key, "full", t.shape, graph))
    names = sanitize_names([r[0] for r in rows])
    return [AdapterInput(names[r[0]], r[0], r[1], r[2], tuple(int(s) for s in r[3]), r[4]) for r in rows]


def base_adapter_values(G: TriPlaneGenerator, inputs: list[AdapterInput]) -> dict[str, np.ndarray]:
    """The base model's value of every keep-LoRA input, by input name: the base tensor for a personal full tensor,
    zeros for LoRA A and B (B @ A = 0). The base values file and the graphs' input defaults both hold these."""
    base = dict(G.named_parameters())
    return {i.input_name: base[i.target_key].detach().float().numpy().reshape(i.shape) if i.role == "full"
            else np.zeros(i.shape, np.float32) for i in inputs}
