"""Every number a user gives a command is finite and within a stated range, and every count or size stops at a
`formats.limits.Limits` field, before any work starts: a usage error of one line, exit code 2 (cli_options.py,
cli.build_app, runtime/__main__.py).

The walks read the options from the command lines' own definitions (`typer.main.get_command(cli.app)`, recursing
into groups, and `python -m runtime`'s argparse parser), so an option added later is covered without a test
change, and one added without a range makes `build_app` fail.
"""
from __future__ import annotations

import contextlib
import io
import math
import time
from pathlib import Path

import pytest
import typer
import typer.main
from hypothesis import example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import cli
from formats.limits import LIMITS_ENV, MAX_ABS_PITCH, MAX_ABS_YAW, Limits
from runtime.__main__ import main as runtime_main
from tests.helpers.cli import run_cli

FAST_S = 2.0
"""A refusal at parse time takes milliseconds; building even the tiny preset takes longer than this."""


def _commands(group, path=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


def _cli_numeric_options() -> list[tuple[tuple[str, ...], str, type, object]]:
    """(command path, option, int or float, its parser) of every numeric option of cli.py, from the app itself."""
    rows = []
    for path, command in _commands(typer.main.get_command(cli.app)):
        for param in command.params:
            kind = param.type_descriptor.annotation
            if kind in (int, float):
                rows.append((path, param.opts[0], kind, param.type_descriptor.parameter_info.parser))
    return rows


def _runtime_numeric_options() -> list[tuple[str, object]]:
    """(option, its type) of every numeric option of `python -m runtime`; a bare int or float type is a failure."""
    from runtime.__main__ import Number, build_parser
    rows = []
    for action in build_parser()._actions:
        assert action.type not in (int, float), f"python -m runtime {action.option_strings}: unbounded number"
        if isinstance(action.type, Number):
            rows.append((action.option_strings[0], action.type))
    return rows


CLI_OPTIONS = _cli_numeric_options()
CLI_FLOATS = [(path, option) for path, option, kind, _ in CLI_OPTIONS if kind is float]
CLI_LIMITED = [(path, option, parser) for path, option, _, parser in CLI_OPTIONS if getattr(parser, "limit", None)]


@pytest.fixture
def no_model(monkeypatch):
    """Any model build fails the test: a refusal must come before one."""
    import generator.model_dir

    def built(*args, **kwargs):
        raise AssertionError("a model was built before the bad value was refused")
    monkeypatch.setattr(generator.model_dir, "build_generator", built)


def invoke(*args: str):
    """cli.py in this process (typer's CliRunner): (exit code, non-empty output lines, seconds)."""
    t0 = time.perf_counter()
    result = CliRunner().invoke(cli.app, list(args))
    return result.exit_code, [ln for ln in result.output.splitlines() if ln.strip()], time.perf_counter() - t0


def assert_usage_error(args, *words: str) -> str:
    """`args` exits with code 2 and prints exactly one line, `error: ...`, holding every one of `words`."""
    code, lines, _ = invoke(*args)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, code, lines)
    for word in words:
        assert word in lines[0], (args, word, lines[0])
    return lines[0]


def runtime_error(tmp_path: Path, *args: str) -> list[str]:
    """`python -m runtime` (its main) on a missing export: the stderr lines of a command line it must refuse."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = runtime_main([str(tmp_path / "export"), str(tmp_path / "a.safetensors"), "--out",
                             str(tmp_path / "x.png"), *args])
    assert code == 2, args
    return err.getvalue().strip().splitlines()


# ------------------------------------------------------------------------------------------ the walks
def test_every_numeric_option_states_a_finite_range():
    """Floats: a finite min and max (a limit's default counts as the max); ints: an upper bound (a number, a limit,
    or --truncation-cutoff's num_ws of the model, checked once the model is built)."""
    from cli_options import Bounded
    runtime_options = _runtime_numeric_options()
    assert len(CLI_FLOATS) >= 25 and len(CLI_LIMITED) >= 30 and len(runtime_options) == 5
    for path, option, kind, parser in CLI_OPTIONS:
        where = f"{' '.join(path)} {option}"
        assert isinstance(parser, Bounded) and parser.kind is kind, where
        assert parser.low is not None and math.isfinite(parser.low), where
        high = getattr(Limits(), parser.limit) if parser.limit else parser.high
        if kind is float:
            assert high is not None and math.isfinite(high) and parser.low < high, where
        else:
            assert high is not None or (option == "--truncation-cutoff" and parser.later), where
    for option, number in runtime_options:
        high = getattr(Limits(), number.limit) if number.limit else number.high
        assert math.isfinite(number.low) and math.isfinite(high) and number.low < high, option


def test_a_command_without_a_range_cannot_be_built():
    from cli_options import bounded_numbers

    def command(speed: float = typer.Option(1.0, help="Unbounded.")):
        """A command someone forgot to bound."""
    with pytest.raises(RuntimeError, match="command speed: a numeric option needs a finite range"):
        bounded_numbers(command, "command")


@settings(max_examples=6, deadline=None)
@given(value=st.one_of(st.sampled_from(["NaN", "infinity", "-1e308", "1e309"]),
                       st.floats(min_value=1e9, allow_infinity=False).map(repr),
                       st.floats(max_value=-1e9, allow_infinity=False).map(repr)))
@example(value="nan")
@example(value="inf")
@example(value="-inf")
@example(value="1e308")
def test_every_float_option_refuses_non_finite_and_out_of_range_values(value, tmp_path_factory):
    """Property: nan, inf, -inf and any |value| >= 1e9 (beyond every range) given to any float option of any
    command is a usage error naming the option, the value and the range."""
    for path, option in CLI_FLOATS:
        line = assert_usage_error([*path, f"{option}={value}"], option, value)
        assert "[" in line, line
    tmp = tmp_path_factory.mktemp("runtime")
    for option in [option for option, number in _runtime_numeric_options() if number.kind is float]:
        lines = runtime_error(tmp, f"{option}={value}")
        assert len(lines) == 1 and lines[0].startswith(f"error: argument {option}: ") and value in lines[0], lines


def test_every_count_and_size_stops_at_its_limit_before_any_work(no_model):
    """Each int or float option bounded by a Limits field, one above the limit: refused at once, naming the limit
    and MY3DGEN_LIMITS (no_model: nothing is built first)."""
    assert len(CLI_LIMITED) >= 30
    for path, option, parser in CLI_LIMITED:
        over = getattr(Limits(), parser.limit) + 1
        code, lines, seconds = invoke(*path, f"{option}={over}")
        assert code == 2 and len(lines) == 1, (path, option, lines)
        assert option in lines[0] and parser.limit in lines[0] and LIMITS_ENV in lines[0], lines[0]
        assert seconds < FAST_S, (path, option, seconds)


def test_every_runtime_count_stops_at_its_limit(tmp_path):
    for option, number in _runtime_numeric_options():
        if number.limit:
            over = getattr(Limits(), number.limit) + 1
            lines = runtime_error(tmp_path, f"{option}={over}")
            assert len(lines) == 1 and number.limit in lines[0] and LIMITS_ENV in lines[0], lines


def test_raising_a_limit_lets_the_value_through_the_parse_check(monkeypatch, no_model):
    """With MY3DGEN_LIMITS raising the limit, the same value passes the option's check (what fails next, a missing
    model or argument, is not about it)."""
    assert len(CLI_LIMITED) >= 30
    for path, option, parser in CLI_LIMITED:
        over = getattr(Limits(), parser.limit) + 1
        monkeypatch.setenv(LIMITS_ENV, f"{parser.limit}={over}")
        code, lines, _ = invoke(*path, f"{option}={over}")
        assert code != 0 and not any(parser.limit in ln for ln in lines), (path, option, lines)
    monkeypatch.setenv(LIMITS_ENV, "max_video_frames=2000000")
    assert_usage_error(["render", "--frames", "1000000", "--out", "x.png"], "give exactly one of --model")


# ------------------------------------------------------------------------------------------ the attack run's inputs
def test_render_truncation_nan_is_one_line_and_exit_2(tmp_path):
    proc = run_cli("render", "--preset", "tiny", "--truncation", "nan", "--out", tmp_path / "x.png", check=False)
    assert proc.returncode == 2 and not (tmp_path / "x.png").exists()
    assert proc.stderr.strip().splitlines() == ["error: Invalid value for '--truncation': must be finite and in "
                                                "[0, 2], got nan"]


def test_render_video_size_frames_and_grid_views_stop_at_their_limits(tmp_path, no_model):
    out = str(tmp_path / "v.mp4")
    line = assert_usage_error(["render", "--preset", "tiny", "--video", "turntable", "--size", "100000", "--out",
                               out], "--size", "max_image_size", LIMITS_ENV)
    assert "100000" in line
    assert_usage_error(["render", "--preset", "tiny", "--video", "turntable", "--frames", "1000000", "--out", out],
                       "--frames", "max_video_frames", LIMITS_ENV)
    yaws = ",".join(f"{-0.8 + 1.6 * i / 2999:.6f}" for i in range(3000))
    assert_usage_error(["render", "--preset", "tiny", f"--grid-yaws={yaws}", "--out", out],
                       "--grid-yaws", "3000", "max_views", LIMITS_ENV)
    grid = ",".join(["0.1"] * 20)
    assert_usage_error(["render", "--preset", "tiny", f"--grid-yaws={grid}", f"--grid-pitches={grid[:39]}",
                        "--out", out], "200 views", "max_views")
    assert_usage_error(["render", "--preset", "tiny", "--grid-yaws=0,nan", "--out", out], "--grid-yaws", "nan")
    assert_usage_error(["render", "--preset", "tiny", "--grid-pitches=0,0.6", "--out", out], "--grid-pitches",
                       "0.6", "[-0.5, 0.5]")


def test_angles_have_the_servers_range_everywhere(tmp_path, no_model):
    line = assert_usage_error(["render", "--preset", "tiny", "--yaw", "5", "--out", str(tmp_path / "x.png")],
                              "--yaw", "5")
    assert f"[{-MAX_ABS_YAW:g}, {MAX_ABS_YAW:g}]" in line
    ranges = {"--yaw": (-MAX_ABS_YAW, MAX_ABS_YAW), "--pitch": (-MAX_ABS_PITCH, MAX_ABS_PITCH)}
    angles = [(f"{' '.join(path)} {option}", parser) for path, option, _, parser in CLI_OPTIONS if option in ranges]
    angles += [(f"python -m runtime {option}", number) for option, number in _runtime_numeric_options()
               if option in ranges]
    assert len(angles) == 6
    for where, bounds in angles:
        assert (bounds.low, bounds.high) == ranges[where.split()[-1]], where
    help_text = CliRunner().invoke(cli.app, ["render", "--help"], terminal_width=200).output
    assert f"{-MAX_ABS_YAW}<=x<={MAX_ABS_YAW}" in help_text and f"{-MAX_ABS_PITCH}<=x<={MAX_ABS_PITCH}" in help_text
    from runtime.__main__ import build_parser
    assert f"[{-MAX_ABS_YAW:g}, {MAX_ABS_YAW:g}]" in build_parser().format_help()
    from media.orbit import Orbit  # render --video turntable's camera stays within the same range
    for yaw, pitch in Orbit().views(360):
        assert abs(yaw) <= MAX_ABS_YAW and abs(pitch) <= MAX_ABS_PITCH, (yaw, pitch)


def test_truncation_cutoff_is_0_to_num_ws(tmp_path):
    assert_usage_error(["render", "--preset", "tiny", "--truncation-cutoff", "-3", "--out",
                        str(tmp_path / "x.png")], "--truncation-cutoff", "-3")
    assert_usage_error(["render", "--preset", "tiny", "--truncation-cutoff", "99", "--out", str(tmp_path / "x.png")],
                       "--truncation-cutoff", "99", "the model's num_ws")
    assert not (tmp_path / "x.png").exists()


def test_eval_inversion_poses_are_checked_before_the_model(tmp_path, no_model):
    (tmp_path / "d").mkdir()
    yaws = ",".join(["0.1"] * 3000)
    base = ["eval", "--preset", "tiny", "--test-data", str(tmp_path / "d"), "--reference-data", str(tmp_path / "d"),
            "--models", "base=pretrained", "--identity", "heads", "--out", str(tmp_path / "o")]
    assert_usage_error([*base, f"--inversion-yaws={yaws}"], "--inversion-yaws", "max_views")
    assert_usage_error([*base, "--inversion-pitches=inf"], "--inversion-pitches", "inf")


def test_a_device_or_missing_file_is_named_for_what_it_is(tmp_path):
    """people add NAME PERSON /dev/zero: not a regular file (it is no missing file); a missing file: missing."""
    store = ["--model-store", str(tmp_path / "store")]
    assert_usage_error(["people", "add", "m", "x", "/dev/zero", *store], "/dev/zero: not a regular file")
    assert_usage_error(["people", "add", "m", "x", str(tmp_path / "absent.safetensors"), *store], "does not exist")
    assert_usage_error(["convert", "/dev/zero", "--out", str(tmp_path / "m")], "not a regular file")


def test_usage_errors_are_one_line():
    assert_usage_error(["render", "--no-such-option"], "--no-such-option")
    assert_usage_error(["no-such-command"], "no-such-command")
    assert_usage_error(["render", "--seed", "x"], "--seed", "'x' is not an integer")
