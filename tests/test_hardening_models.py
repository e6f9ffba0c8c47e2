"""Issue 13, torch side: model directories, converted pickles and training checkpoints are checked against the
sizes they state and the tensors they hold before a network is built; non-finite weights and numbers refused."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from formats.errors import ModelDirError
from generator import model_dir as md
from generator.convert import convert_official_pickle
from generator.model_dir import build_generator, load_model_dir, save_model_dir
from generator.official_pickle import OfficialPickleError
from tests.helpers.cli import run_cli
from tests.helpers.official_pickle_writer import write_official_pickle


@pytest.fixture()
def tiny_dir(tmp_path):
    return save_model_dir(build_generator(preset_name="tiny", seed=3), tmp_path / "model")


def _edit_config(path, edit):
    cfg_path = path / "config.json"
    record = json.loads(cfg_path.read_text())
    edit(record["generator"])
    cfg_path.write_text(json.dumps(record))


def test_config_sizes_are_checked_against_the_weights_before_building(tiny_dir, monkeypatch):
    """Why: "networks are built from the sizes in a config.json before any check": a within-limits w_dim that
    does not match the tensors present is refused from a 'meta' generator, before a real one is allocated."""
    _edit_config(tiny_dir, lambda g: g.update(w_dim=4096))
    built = []
    real_init = md.TriPlaneGenerator.__init__

    def spy(self, cfg):
        built.append(torch.empty(0).device.type)  # the device in force while a generator is being built
        real_init(self, cfg)
    monkeypatch.setattr(md.TriPlaneGenerator, "__init__", spy)
    with pytest.raises(ModelDirError, match="mis-shaped tensors: backbone.mapping"):
        load_model_dir(tiny_dir)
    assert built == ["meta"]


@pytest.mark.parametrize("edit,field", [
    (lambda g: g.update(neural_rendering_resolution=1_000_000), "neural_rendering_resolution"),
    (lambda g: g["rendering"].update(depth_resolution=5_000_000), "depth_resolution"),
    (lambda g: g.update(mapping_layers=10 ** 6), "mapping_layers"),
    (lambda g: g.update(w_dim="512"), "w_dim"),
    (lambda g: g.update(w_dim=True), "w_dim"),
    (lambda g: g["rendering"].update(ray_start=float("nan")), "ray_start"),
    (lambda g: g.update(rendering=[1, 2]), "rendering"),
])
def test_config_fields_of_wrong_type_or_range_are_one_line_errors(tiny_dir, edit, field):
    """Why: "neural_rendering_resolution or depth_resolution of millions are accepted and fail only at render
    time"; "tracebacks instead of one-line errors" for a config of the wrong JSON type."""
    _edit_config(tiny_dir, edit)
    with pytest.raises(ModelDirError, match=field):
        load_model_dir(tiny_dir)


def test_config_json_of_the_wrong_type(tiny_dir):
    (tiny_dir / "config.json").write_text("[1, 2, 3]")
    with pytest.raises(ModelDirError, match="not a JSON object"):
        load_model_dir(tiny_dir)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_by_name(tiny_dir, value):
    """Why: "NaN/Inf weights in a converted model ... render an all-black image with exit 0"."""
    sd = load_file(str(tiny_dir / "model.safetensors"))
    sd["decoder.net.0.weight"][0, 0] = value
    save_file(sd, str(tiny_dir / "model.safetensors"))
    with pytest.raises(ModelDirError, match=r"non-finite .*decoder\.net\.0\.weight"):
        load_model_dir(tiny_dir)


@pytest.fixture(scope="module")
def official_small(official_dir):
    meta = json.loads((official_dir / "small_init_kwargs.json").read_text())
    extra = meta["attributes_not_in_init_kwargs"]
    return (load_file(official_dir / "small_G_ema.safetensors"), meta["init_kwargs"], extra["rendering_kwargs"],
            extra["neural_rendering_resolution"])


def _pickle(tmp_path, official_small, init_changes=None, resolution=None, weights_edit=None):
    sd, init_kwargs, rendering_kwargs, res = official_small
    sd = {k: v.clone() for k, v in sd.items()}
    if weights_edit:
        weights_edit(sd)
    path = tmp_path / "g.pkl"
    write_official_pickle(path, sd, {**init_kwargs, **(init_changes or {})}, rendering_kwargs,
                          res if resolution is None else resolution)
    return path


@pytest.mark.parametrize("changes,resolution,match", [
    ({"w_dim": 10 ** 6}, None, "w_dim"),
    ({"w_dim": 2048}, None, "mis-shaped tensors"),
    ({}, 10 ** 6, "neural_rendering_resolution"),
])
def test_pickle_init_kwargs_are_validated_before_a_network_is_built(tmp_path, official_small, monkeypatch, changes,
                                                                    resolution, match):
    """Why: "networks are built from the sizes in a pickle's init_kwargs ... before any check"."""
    import generator.convert as conv
    monkeypatch.setattr(conv, "TriPlaneGenerator", lambda cfg: pytest.fail("a network was built"))
    with pytest.raises(ValueError, match=match):
        convert_official_pickle(_pickle(tmp_path, official_small, changes, resolution), tmp_path / "out")


def test_convert_refuses_non_finite_weights(tmp_path, official_small):
    def poison(sd):
        next(v for k, v in sd.items() if v.is_floating_point()).view(-1)[0] = float("nan")
    with pytest.raises(ModelDirError, match="non-finite"):
        convert_official_pickle(_pickle(tmp_path, official_small, weights_edit=poison), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_pickle_claiming_a_terabyte_is_a_clear_error(tmp_path):
    from generator.official_pickle import read_official_pickle
    path = tmp_path / "x.pkl"
    path.write_bytes(b"\x80\x04\x8e" + (1 << 40).to_bytes(8, "little") + b"tiny")
    with pytest.raises(OfficialPickleError, match="truncated or corrupt"):
        read_official_pickle(path)


def test_negative_checkpoint_step_is_refused(tmp_path):
    """Why: "a negative checkpoint `step` is accepted"; a crafted checkpoint is a one-line error."""
    from train.checkpoint import CheckpointError, META_KEY, load_checkpoint
    path = tmp_path / "checkpoint.safetensors"
    record = {"format": "my3dgen-train-checkpoint", "format_version": 1, "step": -5}
    from train import checkpoint as ck
    record.update(format=ck.FORMAT, format_version=ck.FORMAT_VERSION)
    save_file({"rng.torch": torch.zeros(4, dtype=torch.uint8)}, str(path), metadata={META_KEY: json.dumps(record)})
    with pytest.raises(CheckpointError, match="'step' is -5"):
        load_checkpoint(path)
    record["step"] = "7"
    save_file({"rng.torch": torch.zeros(4, dtype=torch.uint8)}, str(path), metadata={META_KEY: json.dumps(record)})
    with pytest.raises(CheckpointError, match="'step'"):
        load_checkpoint(path)


@pytest.mark.parametrize("args", [("--yaw", "nan"), ("--pitch", "inf"), ("--grid-yaws", "0,nan")])
def test_render_refuses_non_finite_angles(tmp_path, args):
    """Why: "`--yaw nan` ... render an all-black image with exit 0"."""
    proc = run_cli("render", "--preset", "tiny", *args, "--out", tmp_path / "v.png", check=False)
    assert proc.returncode == 2 and "finite" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert not (tmp_path / "v.png").exists()
