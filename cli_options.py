"""Options and parsers shared by the `cli.py` commands of several packages.

Every command that takes a base model offers the same pair, `--model DIR | --preset NAME`, declared once here as
`ModelDir` and `PresetName` and checked by `one_model_source`. This module imports only typer (and the torch-free
`formats.limits`), so the command modules that use it (and `cli.py --help`) stay fast; torch is imported by
`build_model_source` when a command runs.

Numbers: every int and float option of every command is a finite number within a stated range, or the command
line is a usage error (one line naming the option, the value and the range; exit code 2) before any work starts.
A command declares the range where it declares the option: typer's own `min=`/`max=` (shown by `--help`), or
`up_to(LIMIT)` when the upper bound is a `formats.limits.Limits` field, so that MY3DGEN_LIMITS raises it.
`bounded_numbers`, which cli.py's `build_app` applies to every command, turns each declaration into a `Bounded`
parser (typer's own range check lets no nan through but names neither the value nor the range) and refuses to
build a command whose numeric option declares no range. Comma-separated lists of numbers go through
`parse_floats`, which checks each number the same way and their count against a limit; the ends of an
interpolation video (`render --from/--to`: seed:N, anchor:NAME or a latent file) through `parse_endpoint`.
"""
from __future__ import annotations

import copy
import inspect
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, NamedTuple, Optional

import typer
from typer.models import ParameterInfo

from formats.limits import LIMITS_ENV, MAX_ABS_PITCH, MAX_ABS_YAW, Limits, current_limits, raise_hint

ModelDir = Annotated[Optional[Path], typer.Option(
    "--model", help="Base model directory (from `cli.py convert`).")]
PresetName = Annotated[Optional[str], typer.Option(
    "--preset", help="Random-weight preset instead of --model (demos, smoke tests): tiny | ffhq512-128.")]

SEED_RANGE = {"min": 0, "max": 2**32 - 1}
"""Seeds: numpy's RandomState, which seeds z as the official gen_samples.py does, takes 0..2^32 - 1."""
YAW_RANGE = {"min": -MAX_ABS_YAW, "max": MAX_ABS_YAW}
"""Camera yaw offsets (radians from frontal) of every command: the range the runtime, the server and the web page
render (formats.limits.MAX_ABS_YAW)."""
PITCH_RANGE = {"min": -MAX_ABS_PITCH, "max": MAX_ABS_PITCH}
"""Camera pitch offsets (radians from frontal), as YAW_RANGE (formats.limits.MAX_ABS_PITCH)."""
TRUNCATION_RANGE = {"min": 0.0, "max": 2.0}
"""Truncation psi: 1 is no truncation, EG3D's scripts use 0.5-0.7 and 0 is the average face; above 1 exaggerates a
latent's distance from the average, and no use of it goes past 2."""

Truncation = Annotated[float, typer.Option("--truncation", **TRUNCATION_RANGE,
                                           help="Truncation psi (1: none; EG3D's scripts use 0.5-0.7).")]


def one_model_source(model: Optional[Path], preset: Optional[str]) -> None:
    """Refuse a command line that gives both or neither of --model and --preset."""
    if (model is None) == (preset is None):
        raise typer.BadParameter("give exactly one of --model DIR or --preset NAME")


def build_model_source(model: Optional[Path], preset: Optional[str]):
    """The `TriPlaneGenerator` named by --model or --preset."""
    from generator.model_dir import build_generator
    one_model_source(model, preset)
    return build_generator(model=model, preset_name=preset)


def _hint(option: str | None) -> str | None:
    """`option` quoted as click quotes the options it names."""
    return None if option is None else f"'{option}'"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class Bounded:
    """Parser of a numeric option: a finite `kind` (int or float) within [low, high], else a usage error naming the
    value and the range. `high` is a number, the name of a `Limits` field (read at every parse, so MY3DGEN_LIMITS
    raises it), or None when the bound is known only once the model is built: `later` says what it is, and the
    command checks it then."""

    kind: type
    low: float
    high: float | str | None = None
    later: str = ""

    @property
    def limit(self) -> str | None:
        """The `Limits` field that bounds the value, if any."""
        return self.high if isinstance(self.high, str) else None

    def upper(self) -> float | None:
        """The upper bound now: a limit is read with MY3DGEN_LIMITS' overrides."""
        if self.limit is None:
            return self.high
        try:
            return getattr(current_limits(), self.limit)
        except ValueError as e:  # a malformed MY3DGEN_LIMITS
            raise typer.BadParameter(str(e)) from None

    def describe(self) -> str:
        """The range as the messages and `--help` say it, e.g. '[0, 2]'."""
        high = self.upper()
        return f"[{_number(self.low)}, {self.later if high is None else _number(high)}]"

    def check(self, value: Any, option: str | None = None) -> int | float:
        """`value` (text or number) as a `kind` in range; a usage error naming `option` (when given) otherwise."""
        text = str(value).strip()
        try:
            number = self.kind(text)
        except ValueError:
            raise typer.BadParameter(f"{text!r} is not {'an integer' if self.kind is int else 'a number'}",
                                     param_hint=_hint(option)) from None
        high = self.upper()
        if not math.isfinite(number):
            raise typer.BadParameter(f"must be finite and in {self.describe()}, got {text}", param_hint=_hint(option))
        if self.limit is not None and number > high:
            raise typer.BadParameter(f"{text} is outside {self.describe()}, above the limit {self.limit}; "
                                     f"{raise_hint(self.limit, for_a_file=False)}", param_hint=_hint(option))
        if number < self.low or (high is not None and number > high):
            raise typer.BadParameter(f"{text} is outside {self.describe()}", param_hint=_hint(option))
        return number

    def __call__(self, value: Any) -> int | float:
        return self.check(value)


TruncationCutoff = Annotated[Optional[int], typer.Option(
    "--truncation-cutoff", min=0, parser=Bounded(int, 0, later="the model's num_ws"),
    help="Truncate only the first N ws, N in 0..num_ws of the model (checked once the model is built).")]


def up_to(limit: str, low: float = 1, kind: type = int) -> dict[str, Any]:
    """`typer.Option` keywords of a `kind` in [low, Limits.<limit>]: a count or size a user sets."""
    return {"min": low, "parser": Bounded(kind, low, limit)}


RANK_RANGE = up_to("max_rank")
"""LoRA rank of every command: 1 up to the limit every adapter file is read with."""
ALPHA_RANGE = up_to("max_alpha", 0.001, float)
"""LoRA alpha of every command: positive (the delta is scaled by alpha / rank), up to the limit every adapter file
is read with."""


def check_limit(count: int, limit: str, option: str, what: str) -> None:
    """A usage error naming `option` and the limit when `count` `what` (views, steps...) exceed Limits.<limit>;
    for totals that several options make together."""
    high = Bounded(int, 0, limit).upper()
    if count > high:
        raise typer.BadParameter(f"{count} {what}, more than the limit {limit}={_number(high)}; "
                                 f"{raise_hint(limit, for_a_file=False)}", param_hint=_hint(option))


def check_truncation_cutoff(cutoff: Optional[int], num_ws: int) -> None:
    """The upper bound of --truncation-cutoff, known once the model is: its num_ws."""
    if cutoff is not None and cutoff > num_ws:
        raise typer.BadParameter(f"{cutoff} is outside [0, {num_ws}] (the model's num_ws)",
                                 param_hint=_hint("--truncation-cutoff"))


def parse_floats(text: str, option: str, bounds: dict[str, float], limit: str = "max_views") -> tuple[float, ...]:
    """'-0.4,0,0.4' -> (-0.4, 0.0, 0.4): at most Limits.<limit> finite numbers, each within `bounds` (min, max); an
    empty list, too many or a bad number is a usage error naming `option`."""
    items = [v.strip() for v in text.split(",") if v.strip()]
    if not items:
        raise typer.BadParameter("is empty", param_hint=_hint(option))
    check_limit(len(items), limit, option, "values")
    number = Bounded(float, bounds["min"], bounds["max"])
    return tuple(float(number.check(v, option)) for v in items)


def parse_seeds(text: str, option: str = "--seeds") -> tuple[int, ...]:
    """'0-3,7' -> (0, 1, 2, 3, 7), as EG3D's gen_samples.py reads --seeds: comma-separated seeds and inclusive
    ranges, each seed in SEED_RANGE, at most Limits.max_seeds in all; anything else is a usage error naming
    `option`."""
    number = Bounded(int, SEED_RANGE["min"], SEED_RANGE["max"])
    seeds: list[int] = []
    for item in (v.strip() for v in text.split(",")):
        if not item:
            continue
        first, dash, last = item.partition("-")
        lo = int(number.check(first.strip(), option))
        hi = int(number.check(last.strip(), option)) if dash else lo
        if hi < lo:
            raise typer.BadParameter(f"range {item!r} runs backwards", param_hint=_hint(option))
        check_limit(len(seeds) + hi - lo + 1, "max_seeds", option, "seeds")
        seeds += range(lo, hi + 1)
    if not seeds:
        raise typer.BadParameter("is empty", param_hint=_hint(option))
    return tuple(seeds)


ENDPOINT_FORMS = "seed:N, anchor:NAME or a .npz/.npy latent file"
"""What one end of an interpolation video may be (`render --video interpolate --from/--to`)."""


class Endpoint(NamedTuple):
    """One end of an interpolation video as the command line gives it: `option` ('--from', '--to' or '--anchor',
    which errors name), `kind` ('seed', 'anchor' or 'file') and `value` (a seed, an anchor name or index, a path)."""

    option: str
    kind: str
    value: int | str | Path


def parse_endpoint(text: str, option: str) -> Endpoint:
    """One end of `render --video interpolate`: 'seed:N' (N in SEED_RANGE), 'anchor:NAME' (a name or index),
    a path ending in .npz or .npy (an existing regular file), or a bare NAME, an anchor (what `--to B` always
    meant). Any other 'prefix:...' and a bad seed or file are usage errors naming `option` and the value."""
    from formats.latent_file import is_latent_path
    prefix, colon, rest = text.partition(":")
    if colon and prefix == "seed":
        try:
            return Endpoint(option, "seed", int(Bounded(int, SEED_RANGE["min"], SEED_RANGE["max"]).check(rest)))
        except typer.BadParameter as e:
            raise typer.BadParameter(f"{text!r}: {e.message}", param_hint=_hint(option)) from None
    if colon and prefix == "anchor":
        if not rest:
            raise typer.BadParameter(f"{text!r}: no anchor name or index after 'anchor:'", param_hint=_hint(option))
        return Endpoint(option, "anchor", rest)
    if is_latent_path(text):
        if not Path(text).is_file():
            what = "not a regular file" if Path(text).exists() else "no such latent file"
            raise typer.BadParameter(f"{text!r}: {what}", param_hint=_hint(option))
        return Endpoint(option, "file", Path(text))
    if colon:
        raise typer.BadParameter(f"{text!r}: unknown prefix {prefix + ':'!r}; give {ENDPOINT_FORMS} (an anchor "
                                 f"whose name holds ':' is anchor:NAME)", param_hint=_hint(option))
    if not text:
        raise typer.BadParameter(f"is empty; give {ENDPOINT_FORMS}", param_hint=_hint(option))
    return Endpoint(option, "anchor", text)


def _regular_file(value: Optional[Path]) -> Optional[Path]:
    """Callback of a file parameter that must exist: it must also be a regular file. A device, FIFO or socket
    (/dev/zero, /dev/stdin) has no size to check and may never end."""
    if value is not None and not Path(value).is_file():
        raise typer.BadParameter(f"{value}: not a regular file")
    return value


def _plain_type(annotation: Any) -> Any:
    """int for `int`, `Optional[int]` and `Annotated[Optional[int], ...]`; likewise for any other type."""
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is typing.Union:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = members[0] if len(members) == 1 else annotation
    return annotation


def _bounded_info(info: ParameterInfo, kind: type, where: str) -> ParameterInfo:
    """A copy of a numeric option's declaration whose parser is its `Bounded` (made from min=/max= unless `up_to`
    gave one); a RuntimeError naming `where` if the declaration states no finite range."""
    if info.parser is not None and not isinstance(info.parser, Bounded):
        raise RuntimeError(f"{where}: a numeric option's parser must be a cli_options.Bounded")
    parser = info.parser or Bounded(kind, info.min, info.max)
    low_ok = parser.low is not None and math.isfinite(parser.low)
    high_ok = parser.limit is not None or (parser.high is None and bool(parser.later)) or (
        parser.high is not None and math.isfinite(parser.high))
    if not (low_ok and high_ok):
        raise RuntimeError(f"{where}: a numeric option needs a finite range: typer.Option(min=..., max=...) or "
                           f"cli_options.up_to(LIMIT)")
    bounded = copy.copy(info)
    bounded.parser = parser
    if parser.limit is not None:
        bounded.help = (f"{info.help or ''} At most {_number(getattr(Limits(), parser.limit))} by default "
                        f"({parser.limit} in {LIMITS_ENV}).").strip()
    return bounded


def _checked_info(info: Any, annotation: Any, where: str) -> Any:
    """The declaration typer should see for one parameter: numbers bounded, files that must exist regular."""
    kind = _plain_type(annotation)
    if kind in (int, float):
        if not isinstance(info, ParameterInfo):
            raise RuntimeError(f"{where}: a numeric parameter needs typer.Option(min=..., max=...)")
        return _bounded_info(info, kind, where)
    if (isinstance(info, ParameterInfo) and info.exists and not info.dir_okay and info.callback is None
            and kind is Path):
        regular = copy.copy(info)
        regular.callback = _regular_file
        return regular
    return info


def bounded_numbers(function: Callable, command: str) -> Callable:
    """`function` as typer should see it (see the module docstring): each int or float parameter parsed by the
    `Bounded` its declaration states (help naming a limit's default), each file that must exist required to be a
    regular file. A numeric parameter without a finite range is a RuntimeError naming it, raised when cli.py builds
    the app, so no command ships without one. `function` itself is not changed."""
    params = []
    for p in inspect.signature(function, eval_str=True).parameters.values():
        where = f"{command} {p.name}"
        extras = typing.get_args(p.annotation)[1:] if typing.get_origin(p.annotation) is Annotated else ()
        if any(isinstance(e, ParameterInfo) for e in extras):
            extras = [_checked_info(e, p.annotation, where) if isinstance(e, ParameterInfo) else e for e in extras]
            params.append(p.replace(annotation=Annotated[(typing.get_args(p.annotation)[0], *extras)]))
        else:
            params.append(p.replace(default=_checked_info(p.default, p.annotation, where)))

    def checked(**kwargs):
        return function(**kwargs)

    checked.__name__, checked.__qualname__, checked.__doc__ = function.__name__, function.__qualname__, function.__doc__
    checked.__signature__ = inspect.Signature(params)
    checked.__annotations__ = {p.name: p.annotation for p in params}
    return checked
