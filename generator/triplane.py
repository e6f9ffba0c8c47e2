"""TriPlaneGenerator: EG3D's generator with the official module tree, state-dict keys and call signatures.

    ws     = G.mapping(z, c, truncation_psi, truncation_cutoff)                     [N, num_ws, w_dim]
    planes = G.backbone.synthesis(ws)                                               [N, 3*32, 256, 256]
    out    = G.synthesis(ws, c) -> {'image' [N,3,512,512], 'image_raw' [N,3,R,R], 'image_depth' [N,1,R,R]}
    out    = G(z, c, truncation_psi=..., ...)

Defaults are the deterministic inference mode (noise_mode='const', sampling='deterministic'); the official
stochastic behaviour is `noise_mode='random', sampling='stochastic'`.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from generator.config import GeneratorConfig
from generator.layers import to_layout
from generator.rendering import ImportanceRenderer, OSGDecoder, sample_rays
from generator.stylegan2 import Backbone
from generator.precision import superresolution_precision
from generator.superresolution import SuperresolutionHybrid8XDC


class TriPlaneGenerator(nn.Module):
    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.z_dim, self.c_dim, self.w_dim = cfg.z_dim, cfg.c_dim, cfg.w_dim
        self.img_resolution, self.img_channels = cfg.img_resolution, cfg.img_channels
        self.neural_rendering_resolution = cfg.neural_rendering_resolution
        self.rendering_kwargs = cfg.rendering
        self.renderer = ImportanceRenderer(cfg.rendering)
        self.backbone = Backbone(cfg.z_dim, cfg.c_dim, cfg.w_dim, img_resolution=cfg.triplane_resolution,
                                 img_channels=cfg.triplane_channels, channel_base=cfg.channel_base,
                                 channel_max=cfg.channel_max, mapping_layers=cfg.mapping_layers,
                                 conv_clamp=cfg.conv_clamp, fused_modconv_default=cfg.fused_modconv_default)
        self.superresolution = SuperresolutionHybrid8XDC(cfg.decoder_output_dim, cfg.w_dim, cfg.img_channels,
                                                         cfg.superresolution, cfg.fused_modconv_default)
        self.decoder = OSGDecoder(cfg.plane_features, cfg.decoder_hidden, cfg.decoder_output_dim,
                                  lr_multiplier=cfg.decoder_lr_mul)
        # Not created by the official class, but training_loop.py registers it, so G_ema's state dict has it.
        self.register_buffer("dataset_label_std", torch.ones([cfg.c_dim]))
        self._last_planes = None

    @property
    def num_ws(self) -> int:
        return self.backbone.num_ws

    def mapping(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1, truncation_cutoff: int | None = None,
                update_emas: bool = False) -> torch.Tensor:
        if update_emas:
            raise NotImplementedError("update_emas (w_avg tracking during GAN training) is not supported")
        r = self.cfg.rendering
        if r.c_gen_conditioning_zero:
            c = torch.zeros_like(c)
        return self.backbone.mapping(z, c * r.c_scale, truncation_psi=truncation_psi,
                                     truncation_cutoff=truncation_cutoff)

    def planes(self, ws: torch.Tensor, noise_mode: str = "const", fused_modconv: bool | None = None) -> torch.Tensor:
        """Tri-planes [N, 3, C, H, W] of ws: the StyleGAN2 backbone, the expensive half that caching skips."""
        img = self.backbone.synthesis(ws, noise_mode=noise_mode, fused_modconv=fused_modconv)
        # img.shape[0], not len(img): len() returns a plain int, which would fix the batch of an ONNX export
        return img.view(img.shape[0], 3, self.cfg.plane_features, img.shape[-2], img.shape[-1])

    def compile_renderer(self) -> Callable[[], None]:
        """torch.compile (inductor) the per-chunk renderer and the super-resolution network of this instance (its
        `renderer.chunk_fn` and `superresolution.forward`); returns the function that restores the eager ones.

        The first call compiles: ~1-2 min on 2 cores for ffhq512-128 (tiny: ~30 s), again after a change of
        shapes; compiled kernels are cached in $TORCHINDUCTOR_CACHE_DIR (default /tmp/torchinductor_$USER), so a
        later process with the same shapes starts in seconds. Needs a C++ compiler. Used by `render --compile`
        (`compile_for_inference`) and by training's `compile` option, which undoes it after the run.
        """
        renderer, sr = self.renderer, self.superresolution
        chunk_fn, own_forward = renderer.chunk_fn, sr.__dict__.get("forward")
        renderer.chunk_fn = torch.compile(renderer.render_rays, dynamic=False)
        sr.forward = torch.compile(sr.forward, dynamic=False)

        def undo() -> None:
            renderer.chunk_fn = chunk_fn
            if own_forward is None:
                del sr.forward
            else:
                sr.forward = own_forward
        return undo

    def compile_for_inference(self) -> "TriPlaneGenerator":
        """`compile_renderer` for good (off by default)."""
        self.compile_renderer()
        return self

    def render_planes(self, planes: torch.Tensor, ws: torch.Tensor, c: torch.Tensor,
                      neural_rendering_resolution: int | None = None, sampling: str = "deterministic",
                      fused_modconv: bool | None = None, return_internals: bool = False) -> dict:
        """Camera rays through the tri-planes, then super-resolution styled by ws[:, -1]."""
        res = neural_rendering_resolution or self.neural_rendering_resolution
        cam2world = c[:, :16].reshape(-1, 4, 4)
        intrinsics = c[:, 16:25].reshape(-1, 3, 3)
        origins, dirs = sample_rays(cam2world, intrinsics, res)
        n = origins.shape[0]
        features, depth, weights_total, fine = self.renderer(planes, self.decoder, origins, dirs, sampling=sampling,
                                                             return_fine_depths=True)
        # [N, R*R, C] seen as [N, C, R, R] is channels_last already (to_layout copies only for NCHW), as a view with
        # canonical strides: permute-then-reshape gave the size-1 batch dim stride C, which oneDNN reads as NCHW
        feature_image = to_layout(features.reshape(n, res, res, features.shape[-1]).permute(0, 3, 1, 2))
        depth_image = depth.permute(0, 2, 1).reshape(n, 1, res, res)
        rgb_image = feature_image[:, :3]
        with superresolution_precision():  # bf16/fp16 where inference_precision asks for it (generator/precision.py)
            sr_image = self.superresolution(rgb_image, feature_image, ws, fused_modconv=fused_modconv)
        out = {"image": sr_image, "image_raw": rgb_image, "image_depth": depth_image}
        if return_internals:
            out.update(ray_origins=origins, ray_directions=dirs, feature_image=feature_image,
                       weights_total=weights_total.permute(0, 2, 1).reshape(n, 1, res, res), depths_fine=fine)
        return out

    def synthesis(self, ws: torch.Tensor, c: torch.Tensor, neural_rendering_resolution: int | None = None,
                  update_emas: bool = False, cache_backbone: bool = False, use_cached_backbone: bool = False,
                  noise_mode: str = "const", sampling: str = "deterministic", fused_modconv: bool | None = None,
                  return_internals: bool = False) -> dict:
        if update_emas:
            raise NotImplementedError("update_emas is a GAN-training option and is not supported")
        if neural_rendering_resolution is not None:
            self.neural_rendering_resolution = neural_rendering_resolution
        if use_cached_backbone and self._last_planes is not None:
            planes = self._last_planes
        else:
            planes = self.planes(ws, noise_mode=noise_mode, fused_modconv=fused_modconv)
        if cache_backbone:
            self._last_planes = planes
        return self.render_planes(planes, ws, c, sampling=sampling, fused_modconv=fused_modconv,
                                  return_internals=return_internals)

    def forward(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1, truncation_cutoff: int | None = None,
                neural_rendering_resolution: int | None = None, update_emas: bool = False,
                cache_backbone: bool = False, use_cached_backbone: bool = False, **synthesis_kwargs) -> dict:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.synthesis(ws, c, neural_rendering_resolution=neural_rendering_resolution,
                              update_emas=update_emas, cache_backbone=cache_backbone,
                              use_cached_backbone=use_cached_backbone, **synthesis_kwargs)
