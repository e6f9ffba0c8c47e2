"""Translate the official `TriPlaneGenerator` init_kwargs/rendering_kwargs into a GeneratorConfig."""
from __future__ import annotations

from typing import Any

from generator.config import GeneratorConfig, RenderingConfig, SuperResolutionConfig

SUPPORTED_SR = "training.superresolution.SuperresolutionHybrid8XDC"
RENDERING_FIELDS = ("depth_resolution", "depth_resolution_importance", "ray_start", "ray_end", "box_warp",
                    "clamp_mode", "disparity_space_sampling", "white_back", "density_noise",
                    "c_gen_conditioning_zero", "c_scale", "avg_camera_radius", "avg_camera_pivot")
SR_OWN_FIELDS = ("superresolution_noise_mode", "sr_antialias", "decoder_lr_mul", "decoder_output_dim")


def config_from_official(init_kwargs: dict[str, Any], rendering_kwargs: dict[str, Any] | None = None,
                         neural_rendering_resolution: int | None = None) -> GeneratorConfig:
    """Build the config that reproduces an official generator; refuse settings this port does not implement.

    `rendering_kwargs` and `neural_rendering_resolution` are the attributes stored on the pickled G_ema (they
    can differ from init_kwargs: training changes both), falling back to init_kwargs and EG3D's 64.
    """
    kw = dict(init_kwargs)
    rk = dict(rendering_kwargs if rendering_kwargs is not None else kw.get("rendering_kwargs", {}))

    def need(cond: bool, what: str) -> None:
        if not cond:
            raise ValueError(f"unsupported official generator setting: {what}")

    need(kw.get("img_resolution", 512) == 512, f"img_resolution={kw.get('img_resolution')} (8XDC needs 512)")
    need(kw.get("img_channels", 3) == 3, f"img_channels={kw.get('img_channels')}")
    sr_module = rk.get("superresolution_module", SUPPORTED_SR)
    need(sr_module == SUPPORTED_SR, f"superresolution_module={sr_module!r} (only {SUPPORTED_SR})")
    for key in ("ray_start", "ray_end"):
        need(rk.get(key) != "auto", f"rendering_kwargs['{key}']='auto'")
    rendering_args = {k: rk[k] for k in RENDERING_FIELDS if k in rk}
    if "avg_camera_pivot" in rendering_args:
        rendering_args["avg_camera_pivot"] = tuple(float(v) for v in rendering_args["avg_camera_pivot"])
    training = {k: v for k, v in rk.items() if k not in RENDERING_FIELDS and k not in SR_OWN_FIELDS}
    sr_fp16 = int(kw.get("sr_num_fp16_res", 0))
    mapping_kwargs = dict(kw.get("mapping_kwargs", {}))
    return GeneratorConfig(
        z_dim=kw["z_dim"], w_dim=kw["w_dim"], c_dim=kw["c_dim"],
        mapping_layers=mapping_kwargs.get("num_layers", 8),
        channel_base=kw.get("channel_base", 32768), channel_max=kw.get("channel_max", 512),
        conv_clamp=kw.get("conv_clamp"),
        fused_modconv_default=kw.get("fused_modconv_default", "inference_only"),
        decoder_lr_mul=float(rk.get("decoder_lr_mul", 1.0)),
        decoder_output_dim=int(rk.get("decoder_output_dim", 32)),
        neural_rendering_resolution=int(neural_rendering_resolution or 64),
        rendering=RenderingConfig(training_options=training, **rendering_args),
        superresolution=SuperResolutionConfig(
            conv_clamp=256.0 if sr_fp16 > 0 else None,
            antialias=bool(rk.get("sr_antialias", True)),
            noise_mode=rk.get("superresolution_noise_mode", "none"),
        ),
    ).validate()
