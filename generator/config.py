"""Typed configuration of the tri-plane generator; field names follow EG3D's `init_kwargs`/`rendering_kwargs`."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from formats.limits import Limits, current_limits, raise_hint


@dataclass
class RenderingConfig:
    """How tri-planes become images: ray limits, samples per ray, density activation, pose conditioning."""

    depth_resolution: int = 48
    """Coarse (stratified) samples per ray."""
    depth_resolution_importance: int = 48
    """Fine (importance) samples per ray; 0 disables the fine pass."""
    ray_start: float = 2.25
    """Distance along the unit ray direction where sampling starts."""
    ray_end: float = 3.3
    """Distance along the unit ray direction where sampling ends."""
    box_warp: float = 1.0
    """Side of the cube (centred at the origin) that the tri-planes span."""
    clamp_mode: str = "softplus"
    """Density activation in the ray marcher (EG3D uses softplus(sigma - 1))."""
    disparity_space_sampling: bool = False
    """Sample uniformly in inverse depth instead of depth (off for FFHQ)."""
    white_back: bool = False
    """Composite over a white background."""
    density_noise: float = 0.0
    """Std of Gaussian noise added to raw densities (training regulariser; 0 at inference)."""
    c_gen_conditioning_zero: bool = False
    """Zero the camera label before the mapping network (no pose conditioning)."""
    c_scale: float = 1.0
    """Scale of the camera label fed to the mapping network."""
    avg_camera_radius: float = 2.7
    """Radius of the average training camera."""
    avg_camera_pivot: tuple[float, float, float] = (0.0, 0.0, 0.2)
    """Point the average training camera looks at."""
    training_options: dict[str, Any] = field(default_factory=dict)
    """Training-only entries of the official rendering_kwargs (gpc_reg_prob, density_reg, ...), kept for round trips."""


@dataclass
class SuperResolutionConfig:
    """The SuperresolutionHybrid8XDC head: two StyleGAN2 blocks that each double the resolution."""

    channels: tuple[int, int] = (256, 128)
    """Feature channels of block0 and block1 (EG3D hard-codes 256 and 128)."""
    input_resolution: int = 128
    """Feature images are resized (bilinear, antialiased) to this size before block0."""
    conv_clamp: float | None = 256.0
    """Activation clamp of both blocks (EG3D: 256 when sr_num_fp16_res > 0, which also holds in fp32)."""
    antialias: bool = True
    """Antialias flag of the input resize (matters only when downsampling)."""
    noise_mode: str = "none"
    """Noise of the SR layers; EG3D ignores the caller's noise_mode here."""


@dataclass
class GeneratorConfig:
    """Everything needed to build a TriPlaneGenerator; `preset()` gives the released and tiny ones."""

    z_dim: int = 512
    """Latent z size."""
    w_dim: int = 512
    """Intermediate latent w size."""
    c_dim: int = 25
    """Camera label size (16 cam2world + 9 intrinsics)."""
    mapping_layers: int = 2
    """Fully connected layers in the mapping network."""
    channel_base: int = 32768
    """Backbone channels at resolution r are min(channel_base // r, channel_max)."""
    channel_max: int = 512
    """Upper bound on backbone channels."""
    triplane_resolution: int = 256
    """Side of each tri-plane (the backbone's output resolution)."""
    plane_features: int = 32
    """Features per plane; the backbone outputs 3 * plane_features channels."""
    conv_clamp: float | None = None
    """Activation clamp of the backbone layers (None for ffhq512-128)."""
    fused_modconv_default: str = "inference_only"
    """'inference_only' = grouped (fused) modulated conv in eval mode, non-fused in train mode; or 'always'/'never'."""
    decoder_hidden: int = 64
    """Hidden width of the OSG decoder MLP."""
    decoder_output_dim: int = 32
    """Colour features produced by the decoder (the first 3 are the raw RGB image)."""
    decoder_lr_mul: float = 1.0
    """Learning-rate multiplier (equalized lr) of the decoder layers."""
    neural_rendering_resolution: int = 128
    """Rays per side of the raw render."""
    img_channels: int = 3
    """Output image channels."""
    rendering: RenderingConfig = field(default_factory=RenderingConfig)
    """Volume rendering options."""
    superresolution: SuperResolutionConfig = field(default_factory=SuperResolutionConfig)
    """Super-resolution head options."""

    @property
    def img_resolution(self) -> int:
        """Final image side: the SR head doubles its input resolution twice."""
        return self.superresolution.input_resolution * 4

    @property
    def triplane_channels(self) -> int:
        return 3 * self.plane_features

    def validate(self, limits: Limits | None = None) -> "GeneratorConfig":
        """Raise ValueError naming the field whose value cannot build a generator, or would build one larger than
        `limits` (formats.limits: widths, layers, resolutions, samples per ray) allow; checked before anything
        is allocated, since a config.json or a pickle's init_kwargs is a small file that states these sizes."""
        def need(cond: bool, name: str, value: Any, why: str) -> None:
            if not cond:
                raise ValueError(f"GeneratorConfig.{name}={value!r}: {why}")
        self._check_sizes(current_limits(limits), need)
        res = self.triplane_resolution
        need(res >= 4 and res & (res - 1) == 0, "triplane_resolution", res, "must be a power of two >= 4")
        need(self.plane_features > 0, "plane_features", self.plane_features, "must be positive")
        need(self.decoder_output_dim >= 3, "decoder_output_dim", self.decoder_output_dim, "needs >= 3 (RGB)")
        need(self.fused_modconv_default in ("inference_only", "always", "never"), "fused_modconv_default",
             self.fused_modconv_default, "must be 'inference_only', 'always' or 'never'")
        r = self.rendering
        need(r.depth_resolution >= 2, "rendering.depth_resolution", r.depth_resolution, "needs >= 2 samples")
        need(r.depth_resolution_importance >= 0, "rendering.depth_resolution_importance",
             r.depth_resolution_importance, "must be >= 0")
        need(r.clamp_mode == "softplus", "rendering.clamp_mode", r.clamp_mode, "only 'softplus' is implemented")
        need(not r.disparity_space_sampling, "rendering.disparity_space_sampling", True, "not implemented")
        need(float(r.ray_end) > float(r.ray_start), "rendering.ray_end", r.ray_end, "must exceed ray_start")
        sr = self.superresolution
        need(sr.noise_mode in ("none", "const", "random"), "superresolution.noise_mode", sr.noise_mode,
             "must be 'none', 'const' or 'random'")
        need(len(sr.channels) == 2, "superresolution.channels", sr.channels, "needs two entries")
        return self

    def _check_sizes(self, lim: Limits, need) -> None:
        """Every size field an int (not a bool) in its range, every float field finite."""
        r, sr = self.rendering, self.superresolution
        dims = {"z_dim": self.z_dim, "w_dim": self.w_dim, "c_dim": self.c_dim, "channel_max": self.channel_max,
                "plane_features": self.plane_features, "decoder_hidden": self.decoder_hidden,
                "decoder_output_dim": self.decoder_output_dim, "img_channels": self.img_channels,
                "superresolution.channels[0]": _item(sr.channels, 0),
                "superresolution.channels[1]": _item(sr.channels, 1)}
        sizes = {**{k: (v, 1, lim.max_model_dim) for k, v in dims.items()},
                 "channel_base": (self.channel_base, 1, lim.max_model_dim * lim.max_resolution),
                 "mapping_layers": (self.mapping_layers, 0, lim.max_layers),
                 "triplane_resolution": (self.triplane_resolution, 1, lim.max_resolution),
                 "neural_rendering_resolution": (self.neural_rendering_resolution, 1, lim.max_resolution),
                 "superresolution.input_resolution": (sr.input_resolution, 1, lim.max_resolution),
                 "rendering.depth_resolution": (r.depth_resolution, 1, lim.max_depth_resolution),
                 "rendering.depth_resolution_importance": (r.depth_resolution_importance, 0,
                                                           lim.max_depth_resolution)}
        for name, (value, lo, hi) in sizes.items():
            need(isinstance(value, int) and not isinstance(value, bool), name, value, "must be an integer")
            need(lo <= value <= hi, name, value, f"must be in {lo}..{hi:g} (formats.limits; "
                                                 f"{raise_hint(_limit_of(name))})")
        floats = {"decoder_lr_mul": self.decoder_lr_mul, "rendering.ray_start": r.ray_start,
                  "rendering.ray_end": r.ray_end, "rendering.box_warp": r.box_warp,
                  "rendering.density_noise": r.density_noise, "rendering.c_scale": r.c_scale,
                  "rendering.avg_camera_radius": r.avg_camera_radius}
        for name, value in floats.items():
            need(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value), name,
                 value, "must be a finite number")
        for name, value in (("conv_clamp", self.conv_clamp), ("superresolution.conv_clamp", sr.conv_clamp)):
            need(value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                   and math.isfinite(value) and value > 0), name, value,
                 "must be null or a positive finite number")
        pivot = r.avg_camera_pivot
        need(isinstance(pivot, tuple) and len(pivot) == 3 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in pivot),
            "rendering.avg_camera_pivot", pivot, "must be 3 finite numbers")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GeneratorConfig":
        """Inverse of `to_dict`; unknown keys are an error naming them."""
        if not isinstance(d, dict):
            raise ValueError(f"generator config must be an object, got {type(d).__name__}")
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown generator config field(s): {', '.join(unknown)}")
        rendering = _sub(RenderingConfig, d.pop("rendering", {}), "rendering")
        sr = _sub(SuperResolutionConfig, d.pop("superresolution", {}), "superresolution")
        return cls(rendering=rendering, superresolution=sr, **d).validate()


def _item(seq: Any, i: int) -> Any:
    """seq[i], or None when `seq` is not a sequence that long (the size check then names the field)."""
    return seq[i] if isinstance(seq, (tuple, list)) and len(seq) > i else None


def _limit_of(field_name: str) -> str:
    """The formats.limits.Limits field that bounds a config field."""
    if "depth_resolution" in field_name:
        return "max_depth_resolution"
    if "resolution" in field_name:
        return "max_resolution"
    return "max_layers" if field_name == "mapping_layers" else "max_model_dim"


def _sub(cls, d: dict[str, Any], name: str):
    if not isinstance(d, dict):
        raise ValueError(f"{name} config must be an object, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {name} config field(s): {', '.join(unknown)}")
    d = dict(d)
    for k in ("avg_camera_pivot", "channels"):
        if k in d:
            if not isinstance(d[k], (list, tuple)):
                raise ValueError(f"{name}.{k} must be a list, got {type(d[k]).__name__}")
            d[k] = tuple(d[k])
    return cls(**d)
