"""The command line as a user runs it."""
import subprocess
import sys

import numpy as np
from PIL import Image

from tests.conftest import REPO


def run_cli(*args, check=True):
    proc = subprocess.run([sys.executable, str(REPO / "cli.py"), *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"cli {args} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_help_lists_commands():
    out = run_cli("--help").stdout
    for cmd in ("convert", "render"):
        assert cmd in out


def test_render_grid_from_preset_and_model_dir(tmp_path):
    from generator.model_dir import build_generator, save_model_dir
    png = tmp_path / "grid.png"
    run_cli("render", "--preset", "tiny", "--seed", 2, "--grid-yaws=-0.4,0,0.4", "--grid-pitches=-0.1,0.1",
            "--out", png)
    img = np.asarray(Image.open(png))
    assert img.shape == (2 * 128 + 2, 3 * 128 + 4, 3)
    model = save_model_dir(build_generator(preset_name="tiny"), tmp_path / "m")
    single = tmp_path / "one.png"
    run_cli("render", "--model", model, "--seed", 2, "--yaw", 0.4, "--pitch", 0.1, "--out", single)
    one = np.asarray(Image.open(single))
    # same weights (preset seed 0), same seed and camera: the grid's bottom-right tile is this image
    assert np.array_equal(one, img[130:258, 260:388])


def test_render_needs_exactly_one_source(tmp_path):
    proc = run_cli("render", "--out", tmp_path / "x.png", check=False)
    assert proc.returncode != 0 and "exactly one" in proc.stderr


def test_adapters_table_shows_the_paper_budget():
    out = run_cli("adapters", "--preset", "ffhq512-128").stdout
    assert "590,096" in out and "LoRA superresolution conv" in out
    out = run_cli("adapters", "--preset", "ffhq512-128", "--no-decoder").stdout
    assert "585,839" in out


def test_render_person_anchor_matches_python_api(tmp_path):
    import torch
    from generator.adapter_file import Anchors, save_adapter
    from generator.cameras import lookat_label
    from generator.imaging import to_uint8
    from generator.lora import PersonAdapter, attach
    from generator.model_dir import build_generator
    from generator.views import render_views
    G = build_generator(preset_name="tiny")
    person = PersonAdapter.create(G)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in person.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    ws = torch.randn(2, G.w_dim, generator=g)
    path = save_adapter(tmp_path / "p.safetensors", person, G,
                        Anchors(ws, torch.from_numpy(np.stack([lookat_label(0, 0)] * 2)), ["front", "side"]))
    png = tmp_path / "p.png"
    run_cli("render", "--preset", "tiny", "--adapter", path, "--anchor", "side", "--yaw", 0.3, "--out", png)
    attach(G, person)
    expected = to_uint8(render_views(G, ws[1:2].unsqueeze(1).repeat(1, G.num_ws, 1), [(0.3, 0.0)])[0]["image"])
    assert np.array_equal(np.asarray(Image.open(png)), expected)
    proc = run_cli("render", "--preset", "tiny", "--adapter", path, "--anchor", "nobody", "--out", png, check=False)
    assert proc.returncode != 0 and "unknown anchor 'nobody'" in proc.stderr


def test_preprocess_command_on_a_real_photo(tmp_path):
    import skimage.data
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(skimage.data.astronaut()).save(photos / "astronaut.png")
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    proc = run_cli("preprocess", photos, "--out", tmp_path / "data")
    assert "1 photo(s) kept, 1 skipped" in proc.stdout
    assert (tmp_path / "data" / "dataset.json").is_file()
