"""Personalization (paper §3): ground-truth recovery, resume parity, data checks, sample data, the CLI.

The ground truth is fixtures/synthetic.py's G* = tiny preset + a known random rank-4 LoRA change. Training runs
through the real `Trainer` with the known latent as anchors (inversion is tested in test_projector.py) and
without the symmetry loss (`--no-sym`); the resume test turns the symmetry loss on with a RANDOM IR-SE50.
"""
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from generator.adapter_file import Anchors, load_adapter, read_adapter_meta, save_adapter
from generator.model_dir import build_generator, save_model_dir, weights_fingerprint
from perception.identity import IdentityEncoder
from tests.conftest import REPO
from tests.helpers.cli import help_words, run_cli
from fixtures.synthetic import (HELDOUT_VIEWS, TRAIN_VIEWS, ground_truth_person, person_latent, render_views,
                                     write_sample_dataset)
from train.checkpoint import CHECKPOINT_FILE, CheckpointError, load_checkpoint
from train.config import TrainConfig
from train.data import TrainingDataError, TrainingSet, load_training_set
from train.trainer import LOG_FILE, IdentityNetworkRequired, Trainer

SAMPLES = REPO / "samples" / "tiny_person"


@pytest.fixture(scope="module")
def person():
    G0, truth = ground_truth_person()
    ws = person_latent(G0)
    images, cams = render_views(G0, ws, TRAIN_VIEWS, truth)
    held, held_cams = render_views(G0, ws, HELDOUT_VIEWS, truth)
    base_held, _ = render_views(G0, ws, HELDOUT_VIEWS)
    data = TrainingSet(images, cams, [f"view_{i:02d}.png" for i in range(len(images))])
    return {"G0": G0, "ws": ws, "data": data, "held": held, "base_held": base_held,
            "anchors": ws[:, 0].expand(len(images), -1).clone()}


def _mse(a, b):
    return float((a - b).square().mean())


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_ground_truth_recovery(person, mode, tmp_path):
    """Training G0 on 10 views of G* halves (at least) the error on 6 held-out views; the file reproduces it."""
    import time
    G0, ws, data = person["G0"], person["ws"], person["data"]
    base_fp = weights_fingerprint(G0.state_dict())
    config = TrainConfig(mode=mode, iterations=30, sym=False, checkpoint_every=1000)
    t0 = time.perf_counter()
    result = Trainer(G0, data, person["anchors"], config, checkpoint_dir=tmp_path / "ck").run()
    seconds = time.perf_counter() - t0
    learned, _ = render_views(G0, ws, HELDOUT_VIEWS, result.adapter)
    fit, _ = render_views(G0, ws, TRAIN_VIEWS, result.adapter)
    base_err, learned_err = _mse(person["base_held"], person["held"]), _mse(learned, person["held"])
    print(f"{mode}: held-out MSE G0 {base_err:.5f} -> learned {learned_err:.5f} "
          f"(ratio {learned_err / base_err:.3f}); train-view MSE {_mse(fit, data.images):.5f}; "
          f"{config.iterations} steps in {seconds:.1f} s; {result.adapter.num_parameters():,} parameters")
    assert learned_err <= 0.5 * base_err
    assert weights_fingerprint(G0.state_dict()) == base_fp           # the base model never changes
    if mode == "lora":
        moved = [float(p.lora_B.detach().abs().max()) for p in result.adapter.lora.values()]
        assert min(moved) > 0                                       # every LoRA pair learned something
    else:
        assert len(result.adapter.lora) == 0 and len(result.adapter.full) > 0

    path = save_adapter(tmp_path / f"{mode}.safetensors", result.adapter, G0,
                        anchors=Anchors(person["anchors"], data.cameras, data.names), extra={"mode": mode})
    loaded, anchors, meta = load_adapter(path, G0)
    again, _ = render_views(G0, ws, HELDOUT_VIEWS, loaded)
    assert torch.equal(again, learned)                              # bit-exact round trip (fp32 file)
    assert anchors.names == data.names and torch.equal(anchors.c, data.cameras)
    assert meta["policy"]["mode"] == mode


def _resume_config(**kw):
    return TrainConfig(iterations=8, batch=2, sym=True, sym_every=4, checkpoint_every=3, stochastic_render=True,
                       **kw)


@pytest.fixture(scope="module")
def encoder():
    return IdentityEncoder.random("ir_se50", seed=0, crop="full")


def test_resume_matches_uninterrupted_run(person, encoder, tmp_path, monkeypatch):
    """8 steps straight == 4 steps, crash (last checkpoint at 3), resume in a fresh generator, to 8.

    Symmetry loss on (random IR-SE50), stochastic rendering (global RNG) and W+ anchors, so every random
    source and both anchor shapes are exercised."""
    data, config = person["data"], _resume_config()
    anchors = person["ws"].expand(len(data), -1, -1).clone()        # W+ anchors [N, num_ws, w_dim]
    caller_rng = torch.get_rng_state()
    straight = Trainer(build_generator(preset_name="tiny"), data, anchors, config, tmp_path / "a",
                       identity=encoder).run()

    original = Trainer._train_step

    def crash_at_step_4(self, step):
        if step == 4:
            raise RuntimeError("simulated crash")
        return original(self, step)
    monkeypatch.setattr(Trainer, "_train_step", crash_at_step_4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(build_generator(preset_name="tiny"), data, anchors, config, tmp_path / "b", identity=encoder).run()
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "b" / CHECKPOINT_FILE).step == 3
    assert len((tmp_path / "b" / LOG_FILE).read_text().splitlines()) == 4   # step 4 was logged, not checkpointed

    resumed_trainer = Trainer(build_generator(preset_name="tiny"), data, anchors, config, tmp_path / "b",
                              identity=encoder)
    assert resumed_trainer.step == 3
    resumed = resumed_trainer.run()
    assert resumed.resumed_from == 3 and resumed.step == straight.step == 8
    a, b = straight.adapter.state_dict(), resumed.adapter.state_dict()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, f"resumed adapter differs from the uninterrupted one by {worst}"
    log_a = [json.loads(line) for line in (tmp_path / "a" / LOG_FILE).read_text().splitlines()]
    log_b = [json.loads(line) for line in (tmp_path / "b" / LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in log_b] == list(range(1, 9))
    for ra, rb in zip(log_a, log_b):
        assert ra.keys() == rb.keys() and abs(ra["loss"] - rb["loss"]) <= 1e-6 * max(1.0, abs(ra["loss"]))
    assert [r["step"] for r in log_a if "sym" in r] == [1, 5]          # L_sym on steps 0 and 4 (every 4th)
    assert all(set(r) >= {"step", "loss", "rec", "lpips", "l2", "lpips_raw", "l2_raw", "lr", "seconds"}
               for r in log_a)
    assert resumed.losses == pytest.approx(straight.losses, rel=1e-6)
    assert torch.equal(torch.get_rng_state(), caller_rng)            # the caller's RNG is left alone

    with pytest.raises(CheckpointError, match="lr"):
        Trainer(build_generator(preset_name="tiny"), data, anchors, _resume_config(lr=0.01), tmp_path / "b",
                identity=encoder)
    fresh = Trainer(build_generator(preset_name="tiny"), data, anchors, _resume_config(lr=0.01), tmp_path / "b",
                    identity=encoder, restart=True)
    assert fresh.step == 0 and not (tmp_path / "b" / LOG_FILE).exists()


def test_symmetry_needs_an_identity_network(person):
    with pytest.raises(IdentityNetworkRequired, match="--id-weights"):
        Trainer(person["G0"], person["data"], person["anchors"], TrainConfig(sym=True))


def test_folder_of_photos_is_refused_with_instructions(tmp_path):
    shutil.copy(SAMPLES / "view_00.png", tmp_path / "me.png")
    with pytest.raises(TrainingDataError, match="cli.py preprocess") as err:
        load_training_set(tmp_path, 128)
    assert "1 image file" in str(err.value)
    with pytest.raises(TrainingDataError, match="no such dataset folder"):
        load_training_set(tmp_path / "missing", 128)


def test_loads_the_sample_dataset_at_any_size(tmp_path):
    data = load_training_set(SAMPLES, 128)
    assert data.images.shape == (10, 3, 128, 128) and data.cameras.shape == (10, 25)
    assert data.images.min() >= -1 and data.images.max() <= 1
    assert data.names == [f"view_{i:02d}.png" for i in range(10)]
    small = load_training_set(SAMPLES, 64)
    assert small.images.shape == (10, 3, 64, 64)
    Image.new("RGB", (64, 48)).save(tmp_path / "wide.png")
    labels = json.loads((SAMPLES / "dataset.json").read_text())["labels"][:1]
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": [["wide.png", labels[0][1]]]}))
    with pytest.raises(TrainingDataError, match="square"):
        load_training_set(tmp_path, 64)


def test_sample_data_is_what_the_script_makes(tmp_path):
    total = sum(p.stat().st_size for p in SAMPLES.iterdir())
    assert total < 1_500_000
    out = write_sample_dataset(tmp_path / "again")
    committed = json.loads((SAMPLES / "dataset.json").read_text())["labels"]
    made = json.loads((out / "dataset.json").read_text())["labels"]
    assert [n for n, _ in made] == [n for n, _ in committed]
    assert np.allclose([label for _, label in made], [label for _, label in committed], atol=1e-6)
    for name, _ in committed:
        a = np.asarray(Image.open(SAMPLES / name), dtype=np.int16)
        b = np.asarray(Image.open(out / name), dtype=np.int16)
        assert np.abs(a - b).max() <= 2, name                        # float rounding may move a pixel level


@pytest.mark.slow
def test_cli_end_to_end_on_the_sample_data(tmp_path):
    out = tmp_path / "person.safetensors"
    args = ["train", "--preset", "tiny", "--data", SAMPLES, "--out", out, "--iterations", 20,
            "--inversion-steps", 20, "--batch", 2, "--id-network", "random:ir_se50"]
    first = run_cli(*args)
    ckpt = tmp_path / "person_train"
    G = build_generator(preset_name="tiny")
    adapter, anchors, meta = load_adapter(out, G)
    assert anchors.names == [f"view_{i:02d}.png" for i in range(10)]
    assert anchors.ws.shape == (10, G.w_dim)
    assert torch.allclose(anchors.c, load_training_set(SAMPLES, 128).cameras)
    extra = meta["extra"]
    assert extra["steps"] == 20 and extra["train_config"]["projector"]["steps"] == 20
    assert set(extra["final_losses"]) >= {"loss", "rec", "sym"} and "RANDOM" in extra["identity_network"]
    records = [json.loads(line) for line in (ckpt / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 21))
    from train.preview import LABEL_WIDTH
    preview = np.asarray(Image.open(ckpt / "preview.png"))
    assert preview.shape == (4 * 128 + 3 * 2, LABEL_WIDTH + 6 * 128 + 5 * 2, 3)
    assert (preview[:, :LABEL_WIDTH] < 128).any(axis=2).sum() > 100     # the row labels are drawn
    assert len(list((ckpt / "inversions").glob("*.safetensors"))) == 10
    assert "wrote" in first.stdout and "preview:" in first.stdout

    second = run_cli(*args)                                          # resumes at the end: no inversion, no steps
    assert "resuming" in second.stdout
    again, _, _ = load_adapter(out, G)
    assert all(torch.equal(x, y) for x, y in zip(adapter.state_dict().values(), again.state_dict().values()))


@pytest.mark.slow
def test_cli_with_a_model_dir(tmp_path):
    model = save_model_dir(build_generator(preset_name="tiny"), tmp_path / "model")
    refused = run_cli("train", "--model", model, "--data", SAMPLES, "--out", tmp_path / "x.safetensors",
                      check=False)
    assert refused.returncode == 2
    for option in ("--id-weights", "random:ir_se50", "--no-sym"):
        assert option in refused.stderr
    raw = tmp_path / "photos"
    raw.mkdir()
    shutil.copy(SAMPLES / "view_00.png", raw / "me.png")
    no_labels = run_cli("train", "--model", model, "--data", raw, "--out", tmp_path / "y.safetensors",
                        "--no-sym", check=False)
    assert no_labels.returncode == 2 and "cli.py preprocess" in no_labels.stderr
    out = tmp_path / "fp16.safetensors"
    run_cli("train", "--model", model, "--data", SAMPLES, "--out", out, "--no-sym", "--iterations", 3,
            "--inversion-steps", 3, "--fp16", "--mode", "full", "--no-preview")
    meta = read_adapter_meta(out)
    assert meta["dtype"] == "float16" and meta["policy"]["mode"] == "full"
    assert meta["extra"]["identity_network"] is None
    load_adapter(out, build_generator(model=model))


# ---------------------------------------------------------------------------------------------- recipes

def test_recipes_set_the_paper_and_the_authors_values():
    from train.config import RECIPES, config_from_recipe, describe_recipe, iterations_for_kimg
    paper = config_from_recipe("paper", rank=4)
    assert (paper.alpha, paper.train_decoder, paper.sym_weight, paper.sym_every, paper.sym_poses, paper.sym_step) \
        == (4.0, True, 4.0, 4, "uniform", "joint")
    assert paper.kimg == 10 and paper.recipe == "paper" and paper.recipe_overrides == ()
    authors = config_from_recipe("authors", rank=4)
    assert (authors.alpha, authors.train_decoder, authors.sym_weight, authors.sym_every, authors.sym_poses,
            authors.sym_step, authors.kimg) == (16.0, False, 1.0, 4, "orbit", "separate", 500)
    assert not authors.policy().train_decoder
    mixed = config_from_recipe("authors", {"sym_weight": 4.0, "alpha": None, "iterations": 30}, rank=1)
    assert mixed.sym_weight == 4.0 and mixed.alpha == 16.0 and mixed.iterations == 30
    assert mixed.recipe_overrides == ("sym_weight", "iterations")
    assert mixed.to_dict()["recipe_overrides"] == ["sym_weight", "iterations"]
    assert config_from_recipe("paper", rank=2).alpha == 2.0          # W = W0 + BA: alpha = r
    line = describe_recipe(mixed)
    assert line.startswith("recipe authors: alpha 16, decoder frozen, L_sym weight 4 every 4 steps (separate step, "
                           "orbit poses), 30 steps x batch 4") and "(set by options: sym_weight, iterations)" in line
    assert iterations_for_kimg(10, 4) == 2500 and iterations_for_kimg(0.001, 4) == 1
    assert set(RECIPES) == {"paper", "authors"}
    with pytest.raises(ValueError, match="recipe 'mine'"):
        config_from_recipe("mine")
    with pytest.raises(ValueError, match="sym_poses"):
        config_from_recipe("paper", {"sym_poses": "spiral"})
    # the recipe name is a label: a checkpoint made under one name resumes under the other if the values agree
    same = config_from_recipe("paper", {"alpha": 16.0, "train_decoder": False, "sym_weight": 1.0,
                                        "sym_poses": "orbit", "sym_step": "separate"}, rank=4)
    assert same.resume_key() == config_from_recipe("authors", {"iterations": 2500}, rank=4).resume_key()


def test_orbit_pairs_are_the_authors_orbit():
    from formats.cameras import yaw_pitch_of
    from train.losses import orbit_symmetric_cameras
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        c1, c2, poses = orbit_symmetric_cameras(3, g)
        assert c1.shape == (3, 25) and torch.equal(c1[0], c1[2])          # one pair for the whole batch
        (y1, p1), (y2, p2) = poses.tolist()
        assert abs(y1 + y2) < 0.025   # mirrored to within one frame (0.018) and their 3.14 for pi (0.003)
        assert abs(p1 - p2) <= 0.25 * 2 * np.pi / 120 + 1e-3 and -0.31 <= p1 <= 0.21
        cam2world = c1[0, :16].reshape(4, 4).numpy()
        forward, origin = cam2world[:3, 2], cam2world[:3, 3]
        assert np.allclose(np.cross(forward, -origin), 0, atol=1e-5)      # looking at the origin, not (0, 0, 0.2)
        assert yaw_pitch_of(c1[0].numpy())[0] == pytest.approx(y1, abs=1e-4)


def test_authors_separate_sym_step_and_frozen_decoder(person, encoder):
    from train.config import config_from_recipe
    config = config_from_recipe("authors", {"iterations": 2, "batch": 2}, checkpoint_every=100)
    trainer = Trainer(build_generator(preset_name="tiny"), person["data"], person["anchors"], config,
                      identity=encoder)
    calls = []
    original = trainer._apply

    def counting(loss):
        calls.append(float(loss.detach()))
        return original(loss)
    trainer._apply = counting
    result = trainer.run()
    assert len(calls) == 3                        # step 0: reconstruction step + its own L_sym step; step 1: one
    assert result.losses["sym"] == pytest.approx(calls[1], rel=1e-6)  # weight 1
    assert not [k for k in result.adapter.state_dict() if "decoder" in k]  # the OSG decoder stays frozen


@pytest.mark.slow
def test_cli_recipes_are_printed_and_stored(tmp_path):
    small = tmp_path / "two"
    small.mkdir()
    labels = json.loads((SAMPLES / "dataset.json").read_text())["labels"][:2]
    for name, _ in labels:
        shutil.copy(SAMPLES / name, small / name)
    (small / "dataset.json").write_text(json.dumps({"labels": labels}))
    common = ["train", "--preset", "tiny", "--data", small, "--steps", 2, "--inversion-steps", 2, "--batch", 2,
              "--no-preview"]
    authors = run_cli(*common, "--recipe", "authors", "--sym-weight", 2, "--out", tmp_path / "a.safetensors")
    assert "recipe authors: alpha 16, decoder frozen, L_sym weight 2 every 4 steps (separate step, orbit poses)" \
        in authors.stdout and "set by options: sym_weight, iterations, batch" in authors.stdout
    paper = run_cli(*common, "--recipe", "paper", "--no-projector-noise", "--out", tmp_path / "p.safetensors")
    assert "recipe paper: alpha 4, decoder trained, L_sym weight 4 every 4 steps (joint step, uniform poses)" \
        in paper.stdout
    a = read_adapter_meta(tmp_path / "a.safetensors")["extra"]["train_config"]
    p = read_adapter_meta(tmp_path / "p.safetensors")["extra"]["train_config"]
    assert (a["recipe"], a["alpha"], a["train_decoder"], a["sym_weight"], a["sym_poses"], a["sym_step"]) == \
        ("authors", 16.0, False, 2.0, "orbit", "separate")
    assert a["recipe_overrides"] == ["sym_weight", "iterations", "batch"] and a["projector"]["optimize_noise"]
    assert (p["recipe"], p["alpha"], p["train_decoder"], p["sym_weight"], p["sym_step"]) == \
        ("paper", 4.0, True, 4.0, "joint") and not p["projector"]["optimize_noise"]
    both = run_cli(*common, "--kimg", 1, "--out", tmp_path / "x.safetensors", check=False)
    assert both.returncode == 2 and "--kimg" in both.stderr


def test_cli_out_of_memory_names_the_batch_and_the_fix(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import train.trainer
    from cli import app

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(train.trainer, "personalize", oom)
    out = tmp_path / "p.safetensors"
    result = CliRunner().invoke(app, ["train", "--preset", "tiny", "--data", str(SAMPLES), "--out", str(out),
                                      "--no-sym", "--batch", "4", "--checkpoint-dir", str(tmp_path / "ck")])
    assert result.exit_code == 2, result.output
    assert "out of CPU memory with batch 4" in result.output and "a smaller --batch" in result.output
    assert "--checkpointing on" in result.output and "--precision bf16" in result.output  # the switches that fit
    assert "Tried to allocate 2.00 GiB" in result.output and "same command resumes" in result.output
    assert not out.exists()


def test_version1_checkpoint_resumes_only_under_its_own_lora_rule(person, tmp_path):
    """A training checkpoint of format 1 (before adapter format 2) has no 'lora_fc_after_gain' in its config: it
    was trained with the FC delta before the gain. Resuming it under the new default is refused naming the
    setting; with lora_fc_after_gain=False it resumes."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from train.checkpoint import META_KEY
    data = person["data"]
    config = TrainConfig(iterations=2, batch=2, sym=False, checkpoint_every=1, lora_fc_after_gain=False)
    Trainer(build_generator(preset_name="tiny"), data, person["anchors"], config, tmp_path).run(stop_at=1)
    path = tmp_path / CHECKPOINT_FILE
    with safe_open(str(path), framework="pt") as f:
        record = json.loads(f.metadata()[META_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert record["format_version"] == 2 and record["config"]["lora_fc_after_gain"] is False
    record["format_version"] = 1
    del record["config"]["lora_fc_after_gain"]
    save_file(tensors, str(path), metadata={META_KEY: json.dumps(record)})
    assert load_checkpoint(path).meta["format_version"] == 1

    with pytest.raises(CheckpointError, match="lora_fc_after_gain False -> True"):
        Trainer(build_generator(preset_name="tiny"), data, person["anchors"],
                dataclasses.replace(config, lora_fc_after_gain=True), tmp_path)
    resumed = Trainer(build_generator(preset_name="tiny"), data, person["anchors"], config, tmp_path)
    assert resumed.step == 1 and resumed.adapter.fc_after_gain is False
    assert resumed.run().step == 2


def test_one_sided_reference_sets_are_named_with_the_missing_side(tmp_path):
    from formats.cameras import yaw_pitch_of
    from formats.dataset import read_dataset_json, write_dataset_json
    from train.data import one_sided_warning
    from train.trainer import personalize
    assert one_sided_warning([-0.45, 0.0, 0.3], sym=True) is None          # both sides
    assert one_sided_warning([0.05, -0.05, 0.0], sym=True) is None         # all near-frontal
    left = one_sided_warning([0.05, 0.3, 0.7], sym=True)
    assert "none from yaw < 0" in left and "+0.70" in left and "symmetry loss (on)" in left
    right = one_sided_warning([-0.2, -0.5], sym=False)
    assert "none from yaw > 0" in right and "--no-sym" in right

    one_sided = tmp_path / "one_sided"
    one_sided.mkdir()
    kept = [(name, label) for name, label in read_dataset_json(SAMPLES) if yaw_pitch_of(label)[0] > 0.05]
    for name, _ in kept:
        shutil.copy(SAMPLES / name, one_sided / name)
    write_dataset_json(one_sided, kept)
    said = []
    cfg = dataclasses.replace(TrainConfig(), iterations=1, sym=False,
                              projector=dataclasses.replace(TrainConfig().projector, steps=1))
    personalize(build_generator(preset_name="tiny"), one_sided, tmp_path / "p.safetensors", cfg, preview=False,
                echo=said.append)
    assert any("one-sided reference set" in m and f"all {len(kept)} photos" in m for m in said), said


def test_the_plan_and_measured_estimates_come_before_the_work(tmp_path):
    """Both phases are announced with the option that sets each, and each gets an estimate from its first steps."""
    from train.projector import duration
    from train.trainer import personalize
    assert (duration(40), duration(240), duration(9060)) == ("40 s", "4 min", "2 h 31 min")
    said = []
    cfg = dataclasses.replace(TrainConfig(), iterations=6, sym=False,
                              projector=dataclasses.replace(TrainConfig().projector, steps=4))
    personalize(build_generator(preset_name="tiny"), SAMPLES, tmp_path / "p.safetensors", cfg, preview=False,
                echo=said.append, inversion_batch=5)
    text = "\n".join(said)
    assert said.index(next(m for m in said if m.startswith("plan:"))) < said.index(
        next(m for m in said if "s/step measured" in m))
    assert "--inversion-steps" in text and "--iterations" in text
    assert "10 photo(s) to invert (0 cached): 4 steps x 2 batch(es) of up to 5" in text
    assert "W inversion: " in text and "s/step measured; 4 steps x 2 batch(es): about" in text
    assert "training: " in text and "3 steps left: about" in text


def test_quick_is_a_short_run_that_says_what_it_set(tmp_path):
    from formats.dataset import read_dataset_json, write_dataset_json
    two = tmp_path / "two"                                  # two photos keep the 50 inversion steps short
    two.mkdir()
    kept = read_dataset_json(SAMPLES)[:2]
    for name, _ in kept:
        shutil.copy(SAMPLES / name, two / name)
    write_dataset_json(two, kept)
    out = tmp_path / "q.safetensors"
    proc = run_cli("train", "--preset", "tiny", "--data", two, "--out", out, "--quick", "--iterations", 2,
                   "--no-sym", "--no-preview")
    assert "--quick: --inversion-steps 50" in proc.stdout and "plan:" in proc.stdout
    extra = read_adapter_meta(out)["extra"]
    assert extra["steps"] == 2 and extra["train_config"]["projector"]["steps"] == 50
    both = run_cli("train", "--preset", "tiny", "--data", SAMPLES, "--out", out, "--quick", "--kimg", 1, check=False)
    assert both.returncode == 2 and "--quick sets the length" in both.stderr


# ---------------------------------------------------------------------------------- the model's identity network

def _train_until_personalize(monkeypatch, *args):
    """`cli.py train ARGS` in-process up to `personalize`, which records what it was given and stops the run;
    (result, what personalize got or {})."""
    from typer.testing import CliRunner

    import train.trainer
    from cli import app
    seen = {}

    def stop(G, data, out, config, identity=None, identity_name=None, **kwargs):
        seen.update(identity=identity, identity_name=identity_name)
        raise KeyboardInterrupt  # the command's Ctrl-C path: exit 130, nothing trained
    monkeypatch.setattr(train.trainer, "personalize", stop)
    monkeypatch.chdir(REPO)
    return CliRunner().invoke(app, ["train", *map(str, args)]), seen


def test_cli_model_dir_brings_its_identity_network(tmp_path, monkeypatch):
    """`train --model models/heads` needs no --id-weights: the directory's identity.safetensors is used and named;
    an explicit option still wins, and --help says what the default is."""
    from perception.heads_identity import HeadsIdentity
    common = ["--data", "samples/heads_person", "--out", tmp_path / "p.safetensors"]
    result, seen = _train_until_personalize(monkeypatch, "--model", "models/heads", *common)
    assert result.exit_code == 130, result.output
    assert ("identity network: head-world identity network from models/heads/identity.safetensors (the model "
            "directory's)") in result.output
    assert isinstance(seen["identity"], HeadsIdentity) and seen["identity_name"].endswith("(the model directory's)")
    result, seen = _train_until_personalize(monkeypatch, "--model", "models/heads", *common,
                                            "--id-network", "random:ir_se50")
    assert result.exit_code == 130 and "RANDOM" in seen["identity_name"]
    assert not isinstance(seen["identity"], HeadsIdentity)
    result, seen = _train_until_personalize(monkeypatch, "--model", "models/heads", *common, "--no-sym")
    assert result.exit_code == 130 and seen["identity"] is None and "identity network:" not in result.output
    assert ("Default: the --model directory's identity.safetensors if it has one (models/heads does)"
            in help_words("train"))


def test_cli_model_dir_without_identity_lists_every_way_to_give_one(tmp_path, monkeypatch):
    model = save_model_dir(build_generator(preset_name="tiny"), tmp_path / "model")
    result, seen = _train_until_personalize(monkeypatch, "--model", model, "--data", SAMPLES, "--out",
                                            tmp_path / "p.safetensors")
    assert result.exit_code == 2 and not seen
    assert "A --model directory that holds one (identity.safetensors" in result.output
    for option in ("--id-weights", "random:ir_se50", "--no-sym"):
        assert option in result.output


def test_cli_refuses_a_model_identity_file_that_is_not_one(tmp_path):
    model = save_model_dir(build_generator(preset_name="tiny"), tmp_path / "model")
    (model / "identity.safetensors").write_bytes(b"\x00" * 64)
    refused = run_cli("train", "--model", model, "--data", SAMPLES, "--out", tmp_path / "p.safetensors",
                      check=False)
    assert refused.returncode == 2 and not (tmp_path / "p.safetensors").exists()
    assert f"{model / 'identity.safetensors'}:" in refused.stderr and "Traceback" not in refused.stderr
