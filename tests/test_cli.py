"""The command line as a user runs it: the command table, --model/--preset everywhere, error handling."""
import sys

import numpy as np
from PIL import Image

from tests.conftest import REPO
from tests.helpers.cli import run_cli


def test_help_lists_every_command_of_the_table():
    import cli
    out = run_cli("--help").stdout
    for path, _ in cli.COMMANDS:
        assert path.split()[0] in out, path
    assert "--debug" in out
    people = run_cli("people", "--help").stdout
    for path, _ in cli.COMMANDS:
        if path.startswith("people "):
            assert path.split()[1] in people, path


def test_every_command_that_takes_a_model_offers_model_and_preset():
    """One spelling everywhere: --model DIR | --preset NAME (no positional model argument)."""
    import typer.main
    import cli
    group = typer.main.get_command(cli.app)
    takes_model = {"render", "mesh", "web", "adapters", "train", "train-many", "invert", "eval", "export"}
    for path, _ in cli.COMMANDS:
        command = group
        for part in path.split():
            command = command.commands[part]
        options = {opt for p in command.params if p.param_type_name == "option" for opt in p.opts}
        visible_args = [p.name for p in command.params if p.param_type_name == "argument" and not p.hidden]
        if path in takes_model:
            assert {"--model", "--preset"} <= options, path
            assert not any("model" in a for a in visible_args), (path, visible_args)
        else:
            assert "--preset" not in options, path


def _main_with(monkeypatch, error: BaseException, *args: str):
    """Run cli.main() on a one-command app that raises `error`; return the SystemExit (or the raised error)."""
    import typer
    import cli

    def boom():
        raise error

    app = typer.Typer(pretty_exceptions_enable=False)
    app.callback()(cli._root_options)
    app.command(name="boom")(boom)
    monkeypatch.setattr(cli, "app", app)
    monkeypatch.setattr(cli._Settings, "debug", False)
    monkeypatch.setattr(sys, "argv", ["cli.py", *args, "boom"])
    try:
        cli.main()
    except BaseException as e:  # noqa: B036 - SystemExit is the result being tested
        return e
    raise AssertionError("main() returned without exiting")


def test_expected_errors_are_one_line_with_exit_code_2(monkeypatch, capsys):
    exc = _main_with(monkeypatch, FileNotFoundError("model/config.json: missing"))
    assert isinstance(exc, SystemExit) and exc.code == 2
    assert capsys.readouterr().err == "error: model/config.json: missing\n"
    exc = _main_with(monkeypatch, ValueError("--rank must be >= 1"))
    assert isinstance(exc, SystemExit) and exc.code == 2
    from runtime.trt import TensorRTUnavailable
    exc = _main_with(monkeypatch, TensorRTUnavailable("TensorRT is not installed"))
    assert isinstance(exc, SystemExit) and exc.code == 2
    assert isinstance(_main_with(monkeypatch, RuntimeError("an unexpected state")), RuntimeError)


def test_programming_errors_keep_their_traceback(monkeypatch, capsys):
    exc = _main_with(monkeypatch, TypeError("unsupported operand"))
    assert isinstance(exc, TypeError)
    exc = _main_with(monkeypatch, KeyError("a missing dict key is a bug"))
    assert isinstance(exc, KeyError)
    assert "error:" not in capsys.readouterr().err


def test_debug_flag_and_environment_show_expected_errors_with_traceback(monkeypatch):
    error = ValueError("bad value")
    assert _main_with(monkeypatch, error, "--debug") is error
    monkeypatch.setenv("MY3DGEN_DEBUG", "1")
    assert _main_with(monkeypatch, error) is error
    monkeypatch.setenv("MY3DGEN_DEBUG", "0")
    assert isinstance(_main_with(monkeypatch, error), SystemExit)


def test_bad_model_directory_is_one_line_and_debug_shows_the_traceback(tmp_path):
    proc = run_cli("render", "--model", tmp_path / "absent", "--out", tmp_path / "x.png", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path / 'absent' / 'config.json'}: missing (is "
                                                f"{tmp_path / 'absent'} a model directory made by `cli.py "
                                                f"convert`?)"]
    proc = run_cli("--debug", "render", "--model", tmp_path / "absent", "--out", tmp_path / "x.png", check=False)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ModelDirError" in proc.stderr


def test_export_positional_model_is_deprecated_but_still_read(tmp_path):
    proc = run_cli("export", tmp_path / "absent", "--base", "--out", tmp_path / "e", check=False)
    assert proc.returncode == 2
    assert "`export MODEL_DIR` is deprecated; use `export --model MODEL_DIR`" in proc.stderr
    assert f"{tmp_path / 'absent' / 'config.json'}: missing" in proc.stderr
    proc = run_cli("export", tmp_path / "a", "--model", tmp_path / "b", "--out", tmp_path / "e", check=False)
    assert proc.returncode == 2 and "once" in proc.stderr


def test_export_says_what_it_exports(tmp_path):
    """No silent base export: one of --keep-lora, --merge-lora, --base, and only one."""
    none = run_cli("export", "--preset", "tiny", "--out", tmp_path / "e", check=False)
    assert none.returncode == 2 and "say what to export" in none.stderr and "--base" in none.stderr
    two = run_cli("export", "--preset", "tiny", "--base", "--keep-lora", "--out", tmp_path / "e", check=False)
    assert two.returncode == 2 and "choose one of --keep-lora and --base" in two.stderr
    assert not (tmp_path / "e").exists()


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
    # same weights (preset seed 0), same seed and camera: the grid's bottom-right tile is this image, up to float
    # rounding (a batch of 6 views and a batch of 1 differ by ~1e-7 in the matmuls, which can flip a pixel level)
    diff = np.abs(one.astype(np.int16) - img[130:258, 260:388].astype(np.int16))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999, (diff.max(), (diff == 0).mean())


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
    from formats.cameras import lookat_label
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


def test_render_writes_the_format_its_suffix_names(tmp_path):
    jpg = tmp_path / "view.jpg"
    run_cli("render", "--preset", "tiny", "--out", jpg)
    with Image.open(jpg) as im:
        assert im.format == "JPEG" and im.size == (128, 128)
    bad = run_cli("render", "--preset", "tiny", "--out", tmp_path / "view.bmp", check=False)
    assert bad.returncode == 2 and "--out" in bad.stderr and ".png or .jpg" in bad.stderr
    assert not (tmp_path / "view.bmp").exists()


def test_help_and_usage_errors_load_no_heavy_library():
    """`--help` and argument checks answer before torch, scipy or onnxruntime load (bench/startup.py times it)."""
    import subprocess
    code = ("import sys; import cli; heavy = [m for m in ('torch', 'scipy', 'onnxruntime') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_render_seed_ranges_into_an_outdir_like_gen_samples(tmp_path):
    from cli_options import parse_seeds
    assert parse_seeds("0-3,7") == (0, 1, 2, 3, 7) and parse_seeds(" 5 ") == (5,)
    for bad in ("3-1", "", "x", "-1", "0-5000"):
        try:
            parse_seeds(bad)
        except Exception as e:  # typer.BadParameter
            assert "--seeds" in str(getattr(e, "param_hint", "")) or "--seeds" in str(e), (bad, e)
        else:
            raise AssertionError(f"--seeds {bad!r} was accepted")
    out = tmp_path / "samples"
    run_cli("render", "--preset", "tiny", "--seeds", "2-3", "--outdir", out)
    assert sorted(p.name for p in out.iterdir()) == ["seed0002.png", "seed0003.png"]
    single = tmp_path / "one.png"
    run_cli("render", "--preset", "tiny", "--seed", 3, "--out", single)
    assert np.array_equal(np.asarray(Image.open(single)), np.asarray(Image.open(out / "seed0003.png")))
    both = run_cli("render", "--preset", "tiny", "--seeds", "1", "--out", single, check=False)
    assert both.returncode == 2 and "--seeds LIST --outdir DIR" in both.stderr


def test_serve_binds_listeners_explicitly_and_refuses_bad_ports():
    import typer

    from serve.commands import parse_ports
    from serve.server import ServeConfig
    ports = parse_ports(["metrics=9102", " grpc_inference = 17070"])
    assert ports == {"metrics": 9102, "grpc_inference": 17070}
    resolved = ServeConfig(model_store=REPO, models="all", ports=ports, port_offset=1).resolved_ports()
    assert resolved["metrics"] == 9102 and resolved["grpc_inference"] == 17070 and resolved["inference"] == 8081
    for bad, why in ((["metric=1"], "ROLE=PORT"), (["metrics"], "ROLE=PORT"), (["metrics=0"], "1..65535"),
                     (["metrics=x"], "1..65535"), (["metrics=1", "metrics=2"], "twice")):
        try:
            parse_ports(bad)
        except typer.BadParameter as e:
            assert why in str(e), (bad, e)
        else:
            raise AssertionError(f"--port {bad} was accepted")


def test_piped_help_is_120_columns_and_cuts_nothing():
    """`cli.py train --help | less` (not a terminal) gets the width the help is written for, not rich's 80, so no
    option name or type is cut with an ellipsis."""
    import os
    import subprocess
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "TERMINAL_WIDTH")}
    out = subprocess.run([sys.executable, "cli.py", "train", "--help"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120).stdout
    assert "--quick" in out and "…" not in out
    assert max(len(line) for line in out.splitlines()) == 120
