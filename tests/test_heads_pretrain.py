"""Pretraining on the head world: shards round-trip, a resumed run equals an uninterrupted one, export loads."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from generator.model_dir import load_model_dir
from headworld.params import HELDOUT_SEEDS, TRAIN_SEEDS
from headworld.pretrain import (CHECKPOINT, PretrainConfig, config_from_json, export_checkpoint, load_checkpoint,
                                new_generator, train)
from headworld.shards import ShardSpec, load_shards, render_shard, shard_path

SPEC = ShardSpec(per_shard=2, views=2)
CFG = PretrainConfig(batch=2, first_shards=1, steps_per_shard=2, total_shards=2, save_every=1000, log_every=1000)


def _data(folder):
    (folder / "data").mkdir(parents=True)
    for k in range(2):
        save_file(render_shard(SPEC, k), str(shard_path(folder / "data", k)))


def test_shards_hold_multi_view_training_people_only(tmp_path):
    _data(tmp_path)
    data = load_shards(tmp_path / "data")
    assert data["image"].shape == (8, 3, 128, 128) and data["image"].dtype == torch.uint8
    assert data["person"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    same = data["params"][0] == data["params"][1]
    assert same.all() and not torch.equal(data["label"][0], data["label"][1])
    assert all(s in TRAIN_SEEDS and s not in HELDOUT_SEEDS for k in range(100) for s in ShardSpec().seeds(k))


def test_resumed_pretraining_equals_an_uninterrupted_run_and_exports(tmp_path):
    torch.set_num_threads(1)
    a, b = tmp_path / "a", tmp_path / "b"
    _data(a)
    _data(b)
    log = lambda m: None  # noqa: E731
    assert train(CFG, a, minutes=5, max_steps=3, log=log) == 3
    assert train(CFG, b, minutes=5, max_steps=2, log=log) == 2
    assert train(CFG, b, minutes=5, max_steps=3, log=log) == 3
    sa, sb = load_checkpoint(a), load_checkpoint(b)
    assert sa["step"] == sb["step"] == 3
    for key, value in sa["G"].items():
        assert torch.equal(value, sb["G"][key]), key
    other = dataclasses.replace(CFG, lr=1e-3)
    try:
        train(other, b, minutes=5, max_steps=4, log=log)
    except ValueError as e:
        assert CHECKPOINT in str(e)
    else:
        raise AssertionError("a checkpoint made with other settings was resumed")
    G = load_model_dir(export_checkpoint(a, tmp_path / "model"))
    assert G.cfg.rendering.c_gen_conditioning_zero and torch.isfinite(G.backbone.mapping.w_avg).all()


def test_a_perceptual_stage_starts_from_a_model_and_older_checkpoints_keep_loading(tmp_path):
    torch.set_num_threads(1)
    log = lambda m: None  # noqa: E731
    first = tmp_path / "first"
    _data(first)
    train(CFG, first, minutes=5, max_steps=1, log=log)
    start = export_checkpoint(first, tmp_path / "start")

    # A checkpoint written before w_lpips/init_from existed resumes as the l1 config it was.
    ck = load_checkpoint(first)
    old = json.loads(ck["config"])
    for added in ("w_lpips", "init_from"):
        old.pop(added)
    ck["config"] = json.dumps(old)
    torch.save(ck, first / CHECKPOINT)
    assert config_from_json(ck["config"]) == CFG
    assert train(CFG, first, minutes=5, max_steps=2, log=log) == 2

    second = tmp_path / "second"
    _data(second)
    stage = dataclasses.replace(CFG, w_lpips=1.0, init_from=str(start))
    G = new_generator(stage)
    for key, value in load_model_dir(start).state_dict().items():
        assert torch.equal(G.state_dict()[key], value), key
    records = []
    assert train(dataclasses.replace(stage, log_every=1), second, minutes=5, max_steps=1, log=records.append) == 1
    logged = json.loads(next(r for r in records if r.startswith("{")))
    assert 0 < logged["lpips"] < 2 and logged["loss"] > logged["image"] + logged["lpips"]
    with pytest.raises(ValueError, match="not the 'tiny' preset"):
        new_generator(dataclasses.replace(stage, preset="tiny"))
