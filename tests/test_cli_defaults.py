"""Every command option that sets a config field defaults to that field's value, so each default is written once
(cli_defaults.py), and the reader of the config modules' source agrees with the imported dataclasses.

The options are read from the command line's own definition (`typer.main.get_command(cli.app)`): an option named
like a field of its command's configs (CONFIGS; the first config that has it) or listed in RENAMED is compared with
that field, unless NOT_THE_FIELD gives it another default on purpose.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

import cli
from cli_defaults import field_default, field_help
from evaluation.protocol import EvalConfig
from evaluation.pti import PTIConfig
from generator.lora_targets import AdapterPolicy
from generator.mesh import MeshConfig
from train.config import RECIPE_FIELDS, ProjectorConfig, TrainConfig

REPO = Path(__file__).resolve().parents[1]

TRAIN_COMMANDS = ("train", "train-many")
"""`train-many` takes every training option of `train` (train/many_command.py)."""

CONFIGS = {**{command: (TrainConfig, ProjectorConfig) for command in TRAIN_COMMANDS},
           "invert": (PTIConfig,), "eval": (EvalConfig, PTIConfig), "mesh": (MeshConfig,),
           "adapters": (AdapterPolicy,)}
"""The configs each command fills from its options."""

RENAMED = {**{(command, option): (ProjectorConfig, name) for command in TRAIN_COMMANDS
              for option, name in (("inversion_steps", "steps"), ("inversion_lr", "lr"),
                                   ("projector_noise", "optimize_noise"), ("inversion_space", "space"),
                                   ("inversion_pixel_weight", "pixel_weight"))},
           ("adapters", "decoder"): (AdapterPolicy, "train_decoder"),
           ("adapters", "biases"): (AdapterPolicy, "train_biases")}
"""Options that set a field of another name: (command, option) -> (config, field)."""

NOT_THE_FIELD = {
    **{(command, name): None for command in TRAIN_COMMANDS for name in RECIPE_FIELDS},  # the recipe's value
    **{(command, "inversion_steps"): None for command in TRAIN_COMMANDS},  # the field's, or DEMO_SCALE's (--preset)
    **{(command, "inversion_lr"): None for command in TRAIN_COMMANDS},  # the field's in w, Z_SPACE_LR in z
    **{("eval", name): None for name in ("pairs", "views", "weights", "latent_steps", "tune_steps",
                                         "anchor_steps")},  # the field's, or QUICK's with --quick
    **{("eval", name): None for name in ("inversion_yaws", "inversion_pitches")},  # text; None: as above
    ("eval", "lpips_threshold"): 0.0, ("invert", "lpips_threshold"): 0.0,  # 0 for the field's None: no early stop
    ("adapters", "alpha"): None,  # the rank (scale 1)
}
"""Options whose default is not their field's on purpose: (command, option) -> the option's default."""


def _commands():
    """(name, click command) of every command of cli.py that fills a config."""
    group = typer.main.get_command(cli.app)
    return [(name, group.commands[name]) for name in CONFIGS]


def _field(command: str, option: str):
    """(config, field) that `option` of `command` sets, or None."""
    if (command, option) in RENAMED:
        return RENAMED[(command, option)]
    for config in CONFIGS[command]:
        if option in {f.name for f in dataclasses.fields(config)}:
            return config, option
    return None


def _default(config, name):
    (f,) = [f for f in dataclasses.fields(config) if f.name == name]
    return f.default


def _rows():
    """(command, option, its default, config, field) of every option that sets a config field."""
    rows = []
    for command, click_command in _commands():
        for param in click_command.params:
            target = _field(command, param.name)
            if target is not None:
                rows.append((command, param.name, param.default, *target))
    return rows


def test_every_option_that_sets_a_field_defaults_to_it():
    rows = _rows()
    assert len(rows) > 40, rows  # the walk found the options (train alone sets about twenty fields)
    wrong = []
    for command, option, default, config, name in rows:
        why = "NOT_THE_FIELD" if (command, option) in NOT_THE_FIELD else f"{config.__name__}.{name}"
        expected = NOT_THE_FIELD.get((command, option), _default(config, name))
        if type(default) is not type(expected) or default != expected:
            wrong.append(f"{command} {option}: default {default!r}, expected {expected!r} ({why})")
    assert not wrong, "\n".join(wrong)


def test_the_exception_tables_name_existing_options():
    """A renamed or removed option must not leave a stale entry that would hide a new one."""
    options = {(command, param.name) for command, click_command in _commands() for param in click_command.params}
    assert not set(RENAMED) - options
    assert not set(NOT_THE_FIELD) - options
    fields_set = {(command, option) for command, option, *_ in _rows()}
    assert not set(NOT_THE_FIELD) - fields_set


@pytest.mark.parametrize("config", sorted({c for configs in CONFIGS.values() for c in configs}, key=str))
def test_the_source_reader_agrees_with_the_dataclass(config):
    spec = f"{config.__module__}:{config.__qualname__}"
    for f in dataclasses.fields(config):
        if f.default is dataclasses.MISSING:
            with pytest.raises(ValueError):
                field_default(spec, f.name)
        else:
            assert field_default(spec, f.name) == f.default, (spec, f.name)


def test_field_help_is_the_docstring_on_one_line():
    assert field_help("train.config:TrainConfig", "rank") == "LoRA rank r (paper §3.2: r = 4 gives ~0.6M parameters)."
    assert field_help("train.config:TrainConfig", "iterations").startswith("Optimizer steps. Neither the paper ")
    assert "\n" not in field_help("train.config:TrainConfig", "iterations")
    assert field_help("generator.mesh:MeshConfig", "resolution") == ""
    with pytest.raises(ValueError, match="no field"):
        field_default("train.config:TrainConfig", "no_such_field")


def test_reading_the_defaults_imports_no_config_module():
    """The point of reading the source: `cli.py --help` stays free of torch and of the modules that import it."""
    code = ("import sys, cli; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or m in "
            "('train.config', 'evaluation.protocol', 'evaluation.pti', 'generator.mesh', 'generator.lora_targets')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout[:500]
