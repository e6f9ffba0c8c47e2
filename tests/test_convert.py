"""`cli.py convert`: an official-format pickle (built here) -> model directory that reproduces the fixture."""
import json

import numpy as np
import torch
from safetensors.torch import load_file

from generator.model_dir import load_model_dir
from tests.helpers.cli import run_cli
from tests.helpers.official_pickle_writer import write_official_pickle


def test_convert_official_pickle_reproduces_fixture(official_dir, official_io, tmp_path):
    meta = json.loads((official_dir / "small_init_kwargs.json").read_text())
    attrs = meta["attributes_not_in_init_kwargs"]
    pkl = tmp_path / "network-snapshot.pkl"
    write_official_pickle(pkl, load_file(str(official_dir / "small_G_ema.safetensors")), meta["init_kwargs"],
                          attrs["rendering_kwargs"], attrs["neural_rendering_resolution"])
    proc = run_cli("convert", pkl, "--out", tmp_path / "model")
    assert "neural rendering 32^2" in proc.stdout
    G = load_model_dir(tmp_path / "model")
    assert G.neural_rendering_resolution == 32 and G.cfg.rendering.depth_resolution == 8
    z, c = torch.from_numpy(official_io["z"]), torch.from_numpy(official_io["c"])
    with torch.no_grad():
        out = G(z, c, truncation_psi=0.7)
    np.testing.assert_allclose(out["image"].numpy(), official_io["image"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(out["image_depth"].numpy(), official_io["image_depth"], rtol=0, atol=1e-4)


def test_convert_refuses_unsafe_pickle_and_writes_nothing(tmp_path):
    import pickle
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(pickle.dumps({"G_ema": Evil()}))
    proc = run_cli("convert", pkl, "--out", tmp_path / "model", check=False)
    assert proc.returncode != 0 and "system" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists() and not (tmp_path / "model").exists()
