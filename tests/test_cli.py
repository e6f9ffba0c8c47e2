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
