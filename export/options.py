"""What an export is asked for (`ExportOptions`) and the error it refuses with (`ExportError`).

The options are checked (`ExportOptions.validate`) before any work starts, so a refusal names the option and comes
before a file exists. Every export module raises `ExportError`; it lives here, below them all, so that the
exporter's helpers (graph edits, adapter inputs, verification) can raise it without importing the exporter.
"""
from __future__ import annotations

from dataclasses import dataclass

from formats.names import NAME_RULE, is_valid_name
from generator.lora import AdapterPolicy

MIN_OPSET = 18
MAX_OPSET = 20
MODES = ("base", "merge", "keep")


class ExportError(ValueError):
    """An export that cannot be made as asked; the message names the option, file or tensor."""


@dataclass
class ExportOptions:
    """How to export."""

    mode: str = "base"
    """'base' (no adapter), 'merge' (bake one adapter in) or 'keep' (adapter tensors are graph inputs)."""
    fp16: bool = False
    """Store weights as float16 (cast to float32 in the graph) and pass tri-planes as float16."""
    opset: int = MIN_OPSET
    """ONNX opset of the graphs (18..20; the dynamo exporter targets 18+, TensorRT prefers 18 for GridSample)."""
    trt: bool = False
    """Also build fp16 TensorRT engines (fails with install instructions where TensorRT is missing)."""
    max_batch: int = 8
    """Largest batch of the TensorRT optimization profiles (the ONNX batch axis is unbounded)."""
    example_batch: int = 2
    """Batch of the example inputs used for tracing and verification (>= 2, so the batch cannot specialise)."""
    verify: bool = True
    """Compare onnxruntime with eager PyTorch on the example batch and record the differences."""
    person: str | None = None
    """Name of the merged person (default: the adapter file's stem)."""
    policy: AdapterPolicy | None = None
    """Keep-LoRA without an adapter file: the policy whose tensors become inputs (default AdapterPolicy())."""
    overwrite: bool = False
    """Replace an existing export directory."""
    seed: int = 0
    """Seed of the example inputs."""
    mixed_batch: int = 0
    """Keep-LoRA: also export the synthesis and render graphs at a static batch N whose adapter inputs carry one
    person per sample (leading axis N), so one run renders N requests of N people (0: none). Static because an
    ONNX Conv's group count (the per-sample weights' grouped convolution) cannot follow a dynamic batch."""

    def validate(self, has_adapter: bool) -> "ExportOptions":
        if self.mode not in MODES:
            raise ExportError(f"mode={self.mode!r}: expected one of {MODES}")
        if self.mode == "merge" and not has_adapter:
            raise ExportError("--merge-lora needs --adapter FILE (the person to bake into the weights)")
        if self.mode == "base" and has_adapter:
            raise ExportError("--adapter given: choose --merge-lora (bake it in) or --keep-lora (adapters as inputs)")
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ExportError(f"opset={self.opset}: supported {MIN_OPSET}..{MAX_OPSET} (torch.onnx's dynamo exporter "
                              f"emits opset 18+; TensorRT handles GridSample best at 18)")
        if self.example_batch < 2:
            raise ExportError(f"example_batch={self.example_batch}: must be >= 2 so the batch axis stays dynamic")
        if self.mixed_batch and (self.mode != "keep" or not 2 <= self.mixed_batch <= 1024 or self.fp16):
            raise ExportError(f"mixed_batch={self.mixed_batch}: needs --keep-lora, fp32 (not --fp16) and 2..1024")
        if self.max_batch < 1:
            raise ExportError(f"max_batch={self.max_batch}: must be >= 1")
        if self.person is not None and not is_valid_name(self.person):
            raise ExportError(f"person={self.person!r}: use {NAME_RULE}")
        return self
