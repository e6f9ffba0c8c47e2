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


# ---------------------------------------------------------------------------------- the identity network member

def _identity_copy(path):
    """A copy of the committed head-world identity network (models/heads/identity.safetensors) at `path`."""
    import shutil

    from perception.heads_identity import HEADS_IDENTITY_WEIGHTS
    shutil.copyfile(HEADS_IDENTITY_WEIGHTS, path)
    return path


def test_models_heads_carries_its_identity_network():
    from formats.model_dir import identity_file
    from perception.heads_identity import HEADS_IDENTITY_WEIGHTS, HeadsIdentity, load_model_identity
    from tests.conftest import REPO
    assert identity_file(REPO / "models" / "heads") == REPO / "models" / "heads" / "identity.safetensors"
    assert HEADS_IDENTITY_WEIGHTS == REPO / "models" / "heads" / "identity.safetensors"
    encoder, path = load_model_identity(REPO / "models" / "heads")
    assert isinstance(encoder, HeadsIdentity) and path == HEADS_IDENTITY_WEIGHTS


def test_a_model_dir_without_identity_has_none(tiny_dir):
    from perception.heads_identity import load_model_identity
    path, _ = tiny_dir
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    assert load_model_identity(path) is None


def test_save_writes_and_overwrite_keeps_the_identity_network(tmp_path):
    """Re-exporting a model (scripts/pretrain_heads.py export, save_model_dir with overwrite) must not drop the
    identity network the directory carries; `identity=` writes one deliberately."""
    G = build_generator(preset_name="tiny", seed=1)
    source = _identity_copy(tmp_path / "net.safetensors")
    out = save_model_dir(G, tmp_path / "m", identity=source)
    member = out / "identity.safetensors"
    assert member.read_bytes() == source.read_bytes()
    save_model_dir(build_generator(preset_name="tiny", seed=2), out, overwrite=True)
    assert member.read_bytes() == source.read_bytes()
    assert not torch.equal(load_model_dir(out).state_dict()["decoder.net.0.weight"],
                           G.state_dict()["decoder.net.0.weight"])  # the weights were replaced, the network kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "net.safetensors"]
    from headworld.pretrain import PretrainConfig, export_generator  # scripts/pretrain_heads.py export
    export_generator(build_generator(preset_name="tiny", seed=3), out, 1, PretrainConfig(preset="tiny"))
    assert member.read_bytes() == source.read_bytes()


def test_a_file_that_is_not_an_identity_network_is_refused_naming_it(tiny_dir, tmp_path):
    from safetensors.torch import save_file as save

    from perception.heads_identity import load_model_identity
    path, G = tiny_dir
    member = path / "identity.safetensors"
    member.write_bytes(b"\x00" * 100)
    with pytest.raises(ModelDirError, match=r"identity\.safetensors"):
        load_model_identity(path)
    save(G.state_dict(), str(member), metadata={"format": "my3dgen-model"})  # safetensors, but another format
    with pytest.raises(ModelDirError, match=r"identity\.safetensors: not an identity network: .*'my3dgen-model'"):
        load_model_identity(path)
    save({"x": torch.zeros(2)}, str(member),  # the right tag, the wrong tensors
         metadata={"format": "my3dgen-heads-identity", "widths": "[32, 64, 128, 192]", "dim": "128"})
    with pytest.raises(ValueError, match=r"identity\.safetensors: missing"):
        load_model_identity(path)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(ModelDirError, match="bad.safetensors"):
        save_model_dir(G, tmp_path / "new", identity=bad)
    assert not (tmp_path / "new").exists()


def test_an_identity_symlink_is_refused(tiny_dir, tmp_path):
    """An attacker writes model directories too: the identity network is a file inside the directory, never one a
    link points to elsewhere."""
    from perception.heads_identity import load_model_identity
    path, G = tiny_dir
    (path / "identity.safetensors").symlink_to(_identity_copy(tmp_path / "elsewhere.safetensors"))
    with pytest.raises(ModelDirError, match="symbolic link"):
        load_model_identity(path)
    with pytest.raises(ModelDirError, match="symbolic link"):
        save_model_dir(G, path, overwrite=True)
