"""The example batch of an export, and the check of its ONNX graphs against eager PyTorch on it.

The graphs are traced from an example batch (`Example`: z, cameras, eager PyTorch's W+ latents and tri-planes) and,
when verifying, checked on it: onnxruntime runs the three graphs and its outputs are compared with eager PyTorch's
(`verify_graphs`; an fp32 export that misses FP32_TOLERANCE is refused), and the static mixed-batch graphs are
compared with the dynamic-batch graphs run one sample at a time (`verify_mixed`). A keep-LoRA export without an
adapter file is verified with a perturbed copy of the zero adapter (`verification_adapter`), so every input counts.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from export.options import ExportError, ExportOptions
from generator.lora import PersonAdapter, attach
from generator.triplane import TriPlaneGenerator
from generator.views import camera_batch

FP32_TOLERANCE = 1e-3
"""Max abs difference (images in [-1, 1], depth in scene units) allowed between eager PyTorch and onnxruntime."""
FP16_TOLERANCE = 5e-2
"""The same for fp16 exports (float16 weights and tri-planes); recorded, not enforced."""
EXAMPLE_PSI = 0.7

Feeds = Callable[[str], dict[str, np.ndarray]]
"""graph name -> the values of its keep-LoRA inputs, by input name (empty without keep-LoRA inputs)."""


@dataclass
class Example:
    """The example batch the graphs are traced from and verified on: z and cameras c, eager PyTorch's W+ latents
    and tri-planes of them, and (when verifying) its images, rendered with the verification adapter attached."""

    z: torch.Tensor
    c: torch.Tensor
    ws: torch.Tensor
    planes: torch.Tensor
    reference: dict[str, torch.Tensor] | None

    @classmethod
    def make(cls, G: TriPlaneGenerator, opts: ExportOptions, adapter: PersonAdapter | None) -> Example:
        """opts.example_batch samples of seed opts.seed at a spread of views; `adapter` is attached (not merged)
        while eager PyTorch runs."""
        gen = torch.Generator().manual_seed(opts.seed)
        b = opts.example_batch
        z = torch.randn(b, G.z_dim, generator=gen)
        c = camera_batch(G, [(0.3 * ((i % 3) - 1) + 0.05 * i, 0.1 * ((i % 2) * 2 - 1)) for i in range(b)])
        handle = attach(G, adapter) if adapter is not None else None
        try:
            with torch.no_grad():
                ws = G.mapping(z, c, truncation_psi=EXAMPLE_PSI)
                planes = G.planes(ws, noise_mode="const", fused_modconv=False)
                ref = G.render_planes(planes, ws, c, sampling="deterministic", fused_modconv=False) \
                    if opts.verify else None
        finally:
            if handle is not None:
                handle.detach()
        return cls(z, c, ws, planes, ref)


def mixed_example(n: int, tensors: list[torch.Tensor], *batch: torch.Tensor) -> list:
    """Examples of a static mixed batch n: the batch tensors cycled to n samples, each adapter tensor given a
    leading per-sample axis n."""
    idx = torch.arange(n) % batch[0].shape[0]
    return [t[idx] for t in batch] + [[t.detach().unsqueeze(0).expand(n, *t.shape).contiguous() for t in tensors]]


def verification_adapter(adapter: PersonAdapter, seed: int) -> PersonAdapter:
    """A copy of `adapter` whose LoRA B and full tensors are perturbed, so verification exercises every input."""
    ad = copy.deepcopy(adapter)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for pair in ad.lora.values():
            pair.lora_B.add_(torch.randn(pair.lora_B.shape, generator=g) * 0.02)
        for p in ad.full.values():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    return ad


def _ort_session(path: Path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _max_diff(a: np.ndarray, b: torch.Tensor) -> float:
    return float(np.abs(a.astype(np.float32) - b.detach().float().numpy()).max())


def verify_graphs(graphs: dict[str, Path], example: Example, feeds: Feeds, fp16: bool) -> dict[str, Any]:
    """Run the graphs ('mapping', 'synthesis', 'render' -> file) with onnxruntime on the example batch, their
    keep-LoRA inputs fed `feeds`, and compare with eager PyTorch; returns the manifest's 'verification'. An fp32
    export beyond FP32_TOLERANCE is refused."""
    ex = example

    def run(graph: str, **own: np.ndarray) -> list[np.ndarray]:
        return _ort_session(graphs[graph]).run(None, {**own, **feeds(graph)})
    ws_o = run("mapping", z=ex.z.numpy(), c=ex.c.numpy(), truncation_psi=np.array([EXAMPLE_PSI], np.float32))[0]
    planes_o = run("synthesis", ws=ex.ws.numpy())[0]
    image, image_raw, depth = run("render", planes=planes_o, ws=ex.ws.numpy(), c=ex.c.numpy())
    ref = ex.reference
    diffs = {"ws": _max_diff(ws_o, ex.ws), "planes": _max_diff(planes_o, ex.planes),
             "image": _max_diff(image, ref["image"]), "image_raw": _max_diff(image_raw, ref["image_raw"]),
             "depth": _max_diff(depth, ref["image_depth"])}
    tol = FP16_TOLERANCE if fp16 else FP32_TOLERANCE
    passed = all(v <= tol for v in diffs.values())
    if not passed and not fp16:
        raise ExportError(f"onnxruntime differs from eager PyTorch by more than {tol}: {diffs}")
    return {"batch": int(ex.z.shape[0]), "reference": "eager PyTorch (adapter attached, not merged)",
            "max_abs_diff": diffs, "tolerance": tol, "passed": passed}


def verify_mixed(graphs: dict[str, Path], mixed: dict[str, Path], n: int, example: Example, feeds: Feeds,
                 base_feeds: Feeds) -> float:
    """Max abs difference between the static mixed-batch-n graphs `mixed` (sample k: the keep-LoRA inputs `feeds`
    for odd k, the base model's `base_feeds` for even k) and each sample run alone through the dynamic-batch
    `graphs`."""
    idx = np.arange(n) % example.ws.shape[0]
    ws_n, c_n = example.ws.numpy()[idx], example.c.numpy()[idx]

    def person(k: int, graph: str) -> dict[str, np.ndarray]:
        return feeds(graph) if k % 2 else base_feeds(graph)

    def stacked(graph: str) -> dict[str, np.ndarray]:
        samples = [person(k, graph) for k in range(n)]
        return {name: np.stack([s[name] for s in samples]) for name in samples[0]}
    syn, ren = _ort_session(graphs["synthesis"]), _ort_session(graphs["render"])
    planes = _ort_session(mixed["synthesis"]).run(None, {"ws": ws_n, **stacked("synthesis")})[0]
    outs = [planes, *_ort_session(mixed["render"]).run(None, {"planes": planes, "ws": ws_n, "c": c_n,
                                                              **stacked("render")})]
    worst = 0.0
    for k in range(n):
        p1 = syn.run(None, {"ws": ws_n[k:k + 1], **person(k, "synthesis")})[0]
        one = [p1, *ren.run(None, {"planes": p1, "ws": ws_n[k:k + 1], "c": c_n[k:k + 1], **person(k, "render")})]
        worst = max(worst, *(float(np.abs(a[0].astype(np.float32) - b[k].astype(np.float32)).max())
                             for a, b in zip(one, outs)))
    return worst
