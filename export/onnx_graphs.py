"""The three exported graphs as torch modules: mapping, tri-plane synthesis, rendering + super-resolution.

Each wrapper calls the generator as it is, in the deterministic inference mode (const noise,
sampling='deterministic') with the non-fused modulated convolution, so that the batch axis stays dynamic in ONNX:

    MappingGraph    (z [B, z_dim], c [B, 25], truncation_psi [1])            -> ws [B, num_ws, w_dim]
    SynthesisGraph  (ws [B, num_ws, w_dim], [adapter tensors])               -> planes [B, 3, C, H, W]
    RenderGraph     (planes, ws, c [B, 25], [adapter tensors])               -> image, image_raw, depth

With `adapter_inputs` (keep-LoRA export) the personal tensors of a LoRA policy are graph inputs: the exporter
attaches an `AdapterTensors` to G (generator.lora.attach, as for any adapter), and each forward binds the graph's
inputs into it, so the layers compute W0 + scale * reshape(B @ A) from them with the eager code itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from generator.lora import AdapterTensors, Target
from generator.triplane import TriPlaneGenerator

GRAPH_OF_PART = {"synthesis": "synthesis", "superresolution": "render", "decoder": "render"}
"""Which graph holds each generator part (generator.lora.Role.part); the mapping network has no adapter inputs."""


@dataclass(frozen=True)
class AdapterInput:
    """One adapter tensor that is a graph input."""

    input_name: str
    """Name of the ONNX graph input (the adapter file's tensor name, sanitised)."""
    tensor_name: str
    """Name of the tensor in the adapter file ('<module>.lora_A', '<module>.lora_B' or a base key)."""
    target_key: str
    """Base state-dict key the tensor personalises."""
    role: str
    """'lora_A', 'lora_B' or 'full'."""
    shape: tuple[int, ...]
    """Shape of the input (static: adapters of one policy all have it)."""
    graph: str
    """'synthesis' or 'render'."""


def graph_of(target: Target) -> str | None:
    """The graph that owns `target` (None for the mapping network, which keep-LoRA leaves frozen)."""
    return GRAPH_OF_PART.get(target.part)


def bind(adapter: AdapterTensors | None, inputs: list[AdapterInput], tensors: list[torch.Tensor]) -> None:
    """Put a graph's adapter-input tensors into the attached `adapter`, where its layers read them."""
    if len(tensors) != len(inputs):
        raise ValueError(f"expected {len(inputs)} adapter tensors, got {len(tensors)}")
    if inputs and adapter is None:
        raise ValueError("adapter inputs given but no AdapterTensors is attached to the generator")
    for spec, t in zip(inputs, tensors):
        adapter.tensors[spec.tensor_name] = t


class MappingGraph(nn.Module):
    """(z, c, truncation_psi) -> ws, truncating every w toward w_avg (truncation_cutoff = None)."""

    def __init__(self, G: TriPlaneGenerator):
        super().__init__()
        self.G = G

    def forward(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: torch.Tensor) -> torch.Tensor:
        ws = self.G.mapping(z, c, truncation_psi=1)
        w_avg = self.G.backbone.mapping.w_avg
        return w_avg + truncation_psi.reshape(1, 1, 1) * (ws - w_avg)


class SynthesisGraph(nn.Module):
    """ws (+ adapter tensors) -> tri-planes [B, 3, C, H, W]: the StyleGAN2 backbone in const-noise mode."""

    def __init__(self, G: TriPlaneGenerator, adapter_inputs: list[AdapterInput] | None = None,
                 adapter: AdapterTensors | None = None, planes_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.G, self.inputs, self.adapter, self.planes_dtype = G, list(adapter_inputs or []), adapter, planes_dtype

    def forward(self, ws: torch.Tensor, adapter: list[torch.Tensor] | None = None) -> torch.Tensor:
        bind(self.adapter, self.inputs, adapter or [])
        return self.G.planes(ws, noise_mode="const", fused_modconv=False).to(self.planes_dtype)


class RenderGraph(nn.Module):
    """(planes, ws, c) (+ adapter tensors) -> image, image_raw, depth with deterministic sampling."""

    def __init__(self, G: TriPlaneGenerator, adapter_inputs: list[AdapterInput] | None = None,
                 adapter: AdapterTensors | None = None):
        super().__init__()
        self.G, self.inputs, self.adapter = G, list(adapter_inputs or []), adapter
        sr = G.superresolution
        if G.neural_rendering_resolution > sr.input_resolution and sr.antialias:
            raise ValueError(f"neural_rendering_resolution {G.neural_rendering_resolution} > superresolution "
                             f"input {sr.input_resolution}: the antialiased downsampling does not export to ONNX")

    def forward(self, planes: torch.Tensor, ws: torch.Tensor, c: torch.Tensor,
                adapter: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bind(self.adapter, self.inputs, adapter or [])
        out = self.G.render_planes(planes.to(torch.float32), ws, c, sampling="deterministic", fused_modconv=False)
        return out["image"], out["image_raw"], out["image_depth"]
