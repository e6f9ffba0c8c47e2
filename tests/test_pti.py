"""PTI on the tiny preset: it reduces reconstruction error, writes a loadable adapter, never touches the base."""
import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.pti import PTIConfig, full_adapter_from, pti_invert, reconstruction_error, save_pti_adapter
from generator.adapter_file import load_adapter, read_adapter_meta
from generator.lora import attach, attachment_of, detach
from tests.conftest import REPO


@pytest.fixture(scope="module")
def setup():
    """G0 (tiny), the ground-truth person G* = G0 + known LoRA, and a held-out view of G* as the photo."""
    from fixtures.synthetic import HELDOUT_VIEWS, ground_truth_person, person_latent, render_views
    G, truth = ground_truth_person()
    images, cams = render_views(G, person_latent(G), HELDOUT_VIEWS[:1], adapter=truth)
    return G, truth, images[0], cams[0]


def state(G):
    return {k: v.detach().clone() for k, v in G.state_dict().items()}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@torch.no_grad()
def render(G, adapter, ws, c):
    attach(G, adapter)
    try:
        return G.synthesis(ws, c.reshape(1, 25), noise_mode="const")["image"][0]
    finally:
        detach(G)


@pytest.fixture(scope="module")
def pti_run(setup):
    G, _, photo, c = setup
    before = state(G)
    config = PTIConfig(latent_steps=60, tune_steps=40)
    result = pti_invert(G, photo, c, config=config)
    return result, before, config


def test_pti_reduces_error_below_latent_only_below_start(setup, pti_run):
    from train.projector import w_stats
    G, _, photo, c = setup
    result, _, _ = pti_run
    w_avg, _ = w_stats(G, c)
    start = render(G, None, w_avg.reshape(1, 1, -1).repeat(1, G.num_ws, 1), c)
    e_start = reconstruction_error(start, photo)
    e_latent = reconstruction_error(result.image_latent, photo)
    e_pti = reconstruction_error(result.image, photo)
    assert e_pti < e_latent < e_start, (e_start, e_latent, e_pti)
    assert e_pti < 0.5 * e_latent
    assert result.tune_steps_run == 40 and len(result.history["lpips"]) == 40
    assert result.history["lpips"][-1] < result.history["lpips"][0]


def test_pti_leaves_base_unchanged(setup, pti_run):
    G, _, _, _ = setup
    result, before, _ = pti_run
    assert_same_state(before, state(G))
    assert attachment_of(G) is None
    assert all(p.requires_grad for p in G.parameters())  # frozen only while PTI ran


def test_pti_adapter_file_loads_and_reproduces(setup, pti_run, tmp_path):
    G, _, _, c = setup
    result, _, config = pti_run
    path = save_pti_adapter(tmp_path / "pti.safetensors", result, G, name="heldout0", config=config)
    meta = read_adapter_meta(path)
    assert meta["policy"]["mode"] == "full" and meta["anchor_names"] == ["heldout0"]
    assert meta["extra"]["pti"]["tune_steps_run"] == 40 and meta["extra"]["pti"]["config"]["latent_steps"] == 60
    adapter, anchors, _ = load_adapter(path, G)
    assert torch.equal(anchors.c[0], c)
    again = render(G, adapter, anchors.ws_plus(G.num_ws)[:1], anchors.c[0])
    assert torch.allclose(again, result.image, atol=1e-5), float((again - result.image).abs().max())


def test_full_adapter_from_person_renders_like_the_person(setup):
    """The start of full-mode PTI from a LoRA person is exactly that person (LoRA deltas baked into copies)."""
    from fixtures.synthetic import person_latent
    G, truth, _, c = setup
    ws = person_latent(G)
    full, dropped = full_adapter_from(G, truth)
    assert dropped == []
    assert torch.allclose(render(G, full, ws, c), render(G, truth, ws, c), atol=1e-5)


def test_pti_from_person_adapter_tunes_a_copy(setup):
    """--adapter: PTI starts from the person (stage 1 renders through it); the person object is not modified."""
    G, truth, photo, c = setup
    kept = copy.deepcopy(truth.state_dict())
    before = state(G)
    result = pti_invert(G, photo, c, person=truth, config=PTIConfig(latent_steps=15, tune_steps=5, tune="adapter"))
    assert torch.allclose(result.image_latent, render(G, truth, result.ws, c), atol=1e-5)
    assert result.adapter is not truth and result.adapter.policy.mode == "lora"
    assert all(torch.equal(kept[k], v) for k, v in truth.state_dict().items())
    assert_same_state(before, state(G))
    assert reconstruction_error(result.image, photo) < reconstruction_error(result.image_latent, photo)


def test_pti_uses_given_pivot_and_stops_early(setup):
    G, _, photo, c = setup
    pivot = torch.zeros(G.w_dim)
    result = pti_invert(G, photo, c, pivot=pivot, config=PTIConfig(tune_steps=30, lpips_threshold=10.0))
    assert torch.equal(result.w, pivot)
    assert result.tune_steps_run == 0 and len(result.history["lpips"]) == 1  # LPIPS <= 10 at once: no update
    assert torch.allclose(result.image, result.image_latent)


def test_pti_stop_lpips_stops_at_the_first_step_under_the_threshold(setup):
    from evaluation.pti import EG3D_PTI_STOP_LPIPS
    G, _, photo, c = setup
    pivot = torch.zeros(G.w_dim)
    full = pti_invert(G, photo, c, pivot=pivot, config=PTIConfig(tune_steps=6))
    assert full.tune_steps_run == 6
    threshold = sorted(full.history["lpips"][1:])[2] + 1e-6
    expected = next(k for k, v in enumerate(full.history["lpips"]) if v <= threshold)
    stopped = pti_invert(G, photo, c, pivot=pivot, config=PTIConfig(tune_steps=6, lpips_threshold=threshold))
    assert 0 < stopped.tune_steps_run == expected < 6
    assert stopped.history["lpips"] == pytest.approx(full.history["lpips"][:expected + 1], rel=1e-5)
    assert EG3D_PTI_STOP_LPIPS == 0.06
    with pytest.raises(ValueError, match="lpips_threshold"):
        PTIConfig(lpips_threshold=0.0).validate()
    from tests.helpers.cli import run_cli
    for command in ("invert", "eval"):
        assert "--pti-stop-lpips" in run_cli(command, "--help").stdout


def test_locality_regularization_is_zero_before_tuning(setup):
    """PTI's locality term compares tuned and starting renders of a nearby latent: exactly 0 at the first step."""
    G, truth, photo, c = setup
    result = pti_invert(G, photo, c, person=truth, pivot=torch.zeros(G.w_dim),
                        config=PTIConfig(tune_steps=3, locality_regularization=True))
    loc = result.history["locality"]
    assert len(loc) == 3 and loc[0] == 0.0 and loc[2] > 0.0


def test_pti_config_and_input_errors(setup):
    G, _, photo, c = setup
    for bad, match in ((dict(tune="lora"), "tune"), (dict(latent_steps=0), "latent_steps"),
                       (dict(projector={"steps": 3}), "steps")):
        with pytest.raises(ValueError, match=match):
            PTIConfig(**bad).validate()
    with pytest.raises(ValueError, match=r"\[3, 128, 128\]"):
        pti_invert(G, photo[:, :64, :64], c, config=PTIConfig(latent_steps=1, tune_steps=0))


def test_invert_command_writes_pictures_and_adapter(setup, tmp_path):
    from generator.imaging import save_png, to_uint8
    G, _, photo, c = setup
    from formats.cameras import yaw_pitch_of
    png = tmp_path / "photo.png"
    save_png(to_uint8(photo), png)
    yaw, pitch = yaw_pitch_of(c.numpy())
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "cli.py"), "invert", str(png), "--preset", "tiny",
                           "--yaw", str(yaw), "--pitch", str(pitch), "--latent-steps", "10", "--tune-steps", "5",
                           "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for name in ("reconstruction.png", "comparison.png", "novel_views.png", "pti_adapter.safetensors",
                 "metrics.json"):
        assert (out / name).is_file(), name
    assert np.asarray(Image.open(out / "novel_views.png")).shape == (3 * 128 + 4, 5 * 128 + 8, 3)
    numbers = json.loads((out / "metrics.json").read_text())
    assert numbers["tune_steps_run"] == 5 and numbers["lpips"] < numbers["lpips_latent_only"]
    adapter, anchors, _ = load_adapter(out / "pti_adapter.safetensors", G)
    recon = render(G, adapter, anchors.ws_plus(G.num_ws)[:1], anchors.c[0])
    saved = np.asarray(Image.open(out / "reconstruction.png")).astype(int)
    assert np.abs(to_uint8(recon).astype(int) - saved).max() <= 1
    missing = subprocess.run([sys.executable, str(REPO / "cli.py"), "invert", str(png), "--preset", "tiny",
                              "--out", str(tmp_path / "x")], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert missing.returncode != 0 and "--camera-from" in missing.stderr
