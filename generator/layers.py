"""StyleGAN2 layers with equalized learning rate: fully connected, modulated 3x3 conv and toRGB.

Every layer keeps its stored (pre-gain) `weight`, as in the official state dict, and reads each of its tensors
through `in_use(name)`. While a person's adapter is attached (generator/lora.py) the layer's `adapter` view gives
`weight + LoRA delta` (before gains, modulation and demodulation) and the adapter's own copies of biases etc.
A tensor is either shared by the batch or has one leading entry per sample (a batch mixing people); the layers
handle both, so nothing above them needs to know.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from generator.ops import bias_act, filter2d, fir_filter, LRELU_GAIN

CHANNELS_LAST = True
"""Activations of the backbone and super-resolution in channels_last (NHWC) layout, which oneDNN's CPU
convolutions prefer (transposed convs that fell back to NCHW ran several times slower, docs/BENCHMARKS.md); results
agree with NCHW to float rounding. `to_layout` applies it where a network's activations start; every conv keeps its input's layout
(the fused modulated conv of a batch > 1 folds the batch into channels, which gives NCHW again)."""


def to_layout(x: torch.Tensor) -> torch.Tensor:
    """x [N, C, H, W] in the layout the convolutions run in: channels_last when CHANNELS_LAST, else NCHW."""
    return x.contiguous(memory_format=torch.channels_last if CHANNELS_LAST else torch.contiguous_format)


class Personalizable(nn.Module):
    """A layer whose tensors an adapter may change: `in_use(name)` is the tensor its forward pass uses.

    `adapter` is this layer's view of the attached adapter (a generator.lora.LayerAdapter), set and cleared only
    by the attachment that owns it; None reads the base tensors. It is a plain attribute, not a submodule, so the
    base state dict keeps its keys and the adapter's tensors never become parameters of the generator.
    """

    adapter = None

    def in_use(self, name: str) -> torch.Tensor | None:
        base = getattr(self, name)
        if self.adapter is None or base is None:
            return base
        return self.adapter.read(name, base)


class FullyConnectedLayer(Personalizable):
    """y = act(x @ (weight * lr_mul / sqrt(in))^T + bias * lr_mul)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.in_use("weight") * self.weight_gain
        b = self.in_use("bias")
        b = None if b is None else b * self.bias_gain
        if w.ndim == 3 or (b is not None and b.ndim == 2):  # one weight / bias per sample: x is [N, ..., in]
            n = x.shape[0]
            w = w.expand(n, -1, -1) if w.ndim == 3 else w.unsqueeze(0).expand(n, -1, -1)
            y = torch.matmul(x.reshape(n, -1, x.shape[-1]), w.transpose(1, 2))
            if b is not None:
                y = y + (b.unsqueeze(1) if b.ndim == 2 else b)
            return bias_act(y, None, self.activation).reshape(*x.shape[:-1], -1)
        if x.ndim != 2:  # e.g. the decoder's [N, M, C]: one matrix product over all leading axes
            return self._linear(x.reshape(-1, x.shape[-1]), w, b).reshape(*x.shape[:-1], -1)
        return self._linear(x, w, b)

    def _linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, noise: torch.Tensor | None = None,
                     up: int = 1, padding: int = 0, resample_filter: torch.Tensor | None = None,
                     demodulate: bool = True, fused: bool = True) -> torch.Tensor:
    """StyleGAN2 modulated convolution.

    Wm[n] = weight[n?] * styles[n] (per input channel); with demodulation each output channel of Wm[n] is divided
    by its L2 norm. `up=2` is a stride-2 transposed conv followed by the 4x4 FIR filter (gain 4). The fused form
    runs one grouped conv over the batch; the non-fused form scales activations instead of weights and exports to
    ONNX with a dynamic batch. A per-sample `weight` [N, O, I, k, k] forces the fused form.
    """
    n = x.shape[0]
    per_sample = weight.ndim == 5
    out_c, in_c, kh, kw = weight.shape[-4:]
    w = None
    dcoefs = None
    fused = fused or per_sample
    if demodulate or fused:
        w = (weight if per_sample else weight.unsqueeze(0)) * styles.reshape(n, 1, -1, 1, 1)
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
    if not fused:
        x = x * styles.reshape(n, -1, 1, 1)
        x = _conv(x, weight, up, padding, resample_filter, groups=1)
        if demodulate:
            x = x * dcoefs.reshape(n, -1, 1, 1)
        if noise is not None:
            x = x + noise
        return x
    if demodulate:
        w = w * dcoefs.reshape(n, -1, 1, 1, 1)
    w = w.reshape(-1, in_c, kh, kw)
    if n == 1:  # one sample: a plain conv, whose input keeps its (channels_last) layout
        x = _conv(x, w, up, padding, resample_filter, groups=1)
    else:
        x = x.reshape(1, -1, *x.shape[2:])
        x = _conv(x, w, up, padding, resample_filter, groups=n)
        x = x.reshape(n, -1, *x.shape[2:])
    if noise is not None:
        x = x + noise if torch.is_grad_enabled() else x.add_(noise)  # x is the conv's fresh output
    return x


def _conv(x, w, up, padding, f, groups):
    """Plain conv (up=1), or transposed stride-2 conv + FIR filter (up=2) as in StyleGAN2's conv2d_resample."""
    if up == 1:
        return F.conv2d(x, w, padding=padding, groups=groups)
    if up != 2:
        raise ValueError(f"up={up} is not supported (only 1 or 2)")
    out_c, in_per_group, kh, kw = w.shape
    # conv_transpose2d takes [in, out/groups, kh, kw]
    w = w.reshape(groups, out_c // groups, in_per_group, kh, kw).transpose(1, 2)
    # contiguous: a strided weight makes oneDNN's transposed conv drop channels_last and run 2-4x slower
    w = w.reshape(groups * in_per_group, out_c // groups, kh, kw).contiguous()
    x = F.conv_transpose2d(x, w, stride=2, groups=groups)
    fw = f.shape[-1]
    p0 = padding + (fw + 1) // 2 - (kw - 1)
    p1 = padding + (fw - 2) // 2 - (kw - 2)
    return filter2d(x, f, (p0, p1, p0, p1), gain=4.0)


def resolve_fused(fused_modconv: bool | None, default: str, training: bool) -> bool:
    """The official 'inference_only' rule: fused when not training, unless the caller decides."""
    if fused_modconv is not None:
        return bool(fused_modconv)
    return {"always": True, "never": False}.get(default, not training)


class SynthesisLayer(Personalizable):
    """Modulated 3x3 conv (optionally 2x up) + noise + bias + lrelu; style from w through `affine`."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: int = 1,
                 conv_clamp: float | None = None, fused_modconv_default: str = "inference_only"):
        super().__init__()
        self.in_channels, self.out_channels, self.resolution, self.up = in_channels, out_channels, resolution, up
        self.conv_clamp = conv_clamp
        self.fused_modconv_default = fused_modconv_default
        self.padding = 1
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, 3, 3]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.register_buffer("resample_filter", fir_filter())
        self.register_buffer("noise_const", torch.randn([resolution, resolution]))
        self.noise_strength = nn.Parameter(torch.zeros([]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "const",
                fused_modconv: bool | None = None) -> torch.Tensor:
        styles = self.affine(w)
        noise = None
        strength = self.in_use("noise_strength")
        if strength.ndim == 1:  # one per sample
            strength = strength.reshape(-1, 1, 1, 1)
        if noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device) * strength
        elif noise_mode == "const":
            noise = self.noise_const * strength
        elif noise_mode != "none":
            raise ValueError(f"noise_mode={noise_mode!r}: expected 'random', 'const' or 'none'")
        fused = resolve_fused(fused_modconv, self.fused_modconv_default, self.training)
        x = modulated_conv2d(x, self.in_use("weight"), styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, fused=fused)
        return bias_act(x, self.in_use("bias"), "lrelu", gain=LRELU_GAIN, clamp=self.conv_clamp, inplace=True)

    def extra_repr(self) -> str:
        return f"in={self.in_channels}, out={self.out_channels}, resolution={self.resolution}, up={self.up}"


class ToRGBLayer(Personalizable):
    """Modulated 1x1 conv without demodulation: features -> image channels (96 tri-plane channels in EG3D)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: float | None = None,
                 fused_modconv_default: str = "inference_only"):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.conv_clamp = conv_clamp
        self.fused_modconv_default = fused_modconv_default
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, 1, 1]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / np.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool | None = None) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        fused = resolve_fused(fused_modconv, self.fused_modconv_default, self.training)
        x = modulated_conv2d(x, self.in_use("weight"), styles, demodulate=False, fused=fused)
        return bias_act(x, self.in_use("bias"), "linear", clamp=self.conv_clamp, inplace=True)
