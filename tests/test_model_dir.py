"""Model directories: round trip, atomic writes, and clear errors for bad tensors or config."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from generator.model_dir import ModelDirError, build_generator, load_model_dir, save_model_dir


@pytest.fixture()
def tiny_dir(tmp_path):
    G = build_generator(preset_name="tiny", seed=3)
    return save_model_dir(G, tmp_path / "model"), G


def test_round_trip_is_exact(tiny_dir):
    path, G = tiny_dir
    H = load_model_dir(path)
    for k, v in G.state_dict().items():
        assert torch.equal(v, H.state_dict()[k]), k
    assert H.cfg == G.cfg


def _rewrite(path, edit):
    sd = load_file(str(path / "model.safetensors"))
    edit(sd)
    save_file(sd, str(path / "model.safetensors"))


def test_missing_extra_and_misshaped_tensors_are_named(tiny_dir):
    path, _ = tiny_dir
    _rewrite(path, lambda sd: sd.pop("decoder.net.0.bias"))
    with pytest.raises(ModelDirError, match=r"missing tensors: decoder\.net\.0\.bias"):
        load_model_dir(path)
    _rewrite(path, lambda sd: sd.update({"decoder.net.0.bias": torch.zeros(32), "extra.weight": torch.zeros(1)}))
    with pytest.raises(ModelDirError, match=r"unexpected tensors: extra\.weight"):
        load_model_dir(path)
    _rewrite(path, lambda sd: (sd.pop("extra.weight"), sd.update({"decoder.net.0.bias": torch.zeros(5)})))
    with pytest.raises(ModelDirError, match=r"mis-shaped tensors: decoder\.net\.0\.bias \(5,\) \(expected \(32,\)\)"):
        load_model_dir(path)


def test_bad_config_is_named(tiny_dir):
    path, _ = tiny_dir
    raw = json.loads((path / "config.json").read_text())
    raw["generator"]["plane_featurez"] = 3
    (path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelDirError, match="plane_featurez"):
        load_model_dir(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(ModelDirError, match="not valid JSON"):
        load_model_dir(path)


def test_corrupt_weights_file(tiny_dir):
    path, _ = tiny_dir
    (path / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ModelDirError, match="model.safetensors"):
        load_model_dir(path)


def test_existing_dir_is_not_clobbered_and_failed_write_leaves_nothing(tmp_path, monkeypatch):
    G = build_generator(preset_name="tiny")
    out = save_model_dir(G, tmp_path / "m")
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError):
        save_model_dir(G, out)
    import generator.model_dir as md

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(md, "save_file", boom)
    with pytest.raises(OSError):
        save_model_dir(G, out, overwrite=True)
    with pytest.raises(OSError):
        save_model_dir(G, tmp_path / "fresh")
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
