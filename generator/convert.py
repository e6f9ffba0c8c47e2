"""`cli.py convert`: an official EG3D network pickle -> a model directory, without executing the pickle's code."""
from __future__ import annotations

import os
from pathlib import Path

from generator.model_dir import ModelDirError, check_weights, expected_state, refuse_nonfinite, save_model_dir
from generator.official_config import config_from_official
from generator.official_pickle import read_official_pickle
from generator.triplane import TriPlaneGenerator


def convert_official_pickle(pkl: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Read G_ema (tensors, init kwargs, neural_rendering_resolution, rendering_kwargs) and write `out`.

    The init kwargs' sizes are checked (GeneratorConfig.validate, formats.limits) and the pickle's tensors against
    the shapes they imply, on a 'meta'-device generator, before the real network is built; NaN/Inf weights are
    refused."""
    ckpt = read_official_pickle(pkl)
    try:
        cfg = config_from_official(ckpt.init_kwargs, ckpt.rendering_kwargs, ckpt.neural_rendering_resolution)
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise ModelDirError(f"{pkl} (G_ema init_kwargs)", f"invalid network options: {e}") from None
    state = dict(ckpt.state_dict)
    where = f"{pkl} (G_ema)"
    check_weights(expected_state(cfg), {k: tuple(v.shape) for k, v in state.items()}, where)  # before building G
    refuse_nonfinite(state, where)
    G = TriPlaneGenerator(cfg)
    expected = G.state_dict()
    try:
        G.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    except RuntimeError as e:
        raise ModelDirError(str(pkl), str(e)) from None
    source = {"official_pickle": Path(pkl).name, "class_name": ckpt.class_name}
    return save_model_dir(G, out, source=source, overwrite=overwrite)
