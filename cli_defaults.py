"""Defaults and help texts of command options, read from the config dataclass fields they set.

An option that sets a config field (`cli.py train --rank` -> `TrainConfig.rank`) takes its default from the field,
and its help from the field's docstring (the string literal right after the field) where that reads as help, so
each value is written once, in the config. The config modules (and the `generator` package) import torch and
`cli.py --help` must not, so the fields are read from the modules' source with `ast`, without importing them: a
default read here must be a constant expression (numbers, strings, tuples, arithmetic on them, module-level
constants).
tests/test_cli_defaults.py compares every such option with the imported dataclasses.

A config is named "module:Class", e.g. "train.config:TrainConfig".
"""
from __future__ import annotations

import ast
import functools
import importlib.util
import operator
from pathlib import Path
from typing import Any

import typer

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow, ast.LShift: operator.lshift,
              ast.USub: operator.neg, ast.UAdd: operator.pos}


def _source(module: str) -> Path:
    """The source file of `module`, found without importing it or its packages (`generator`'s imports torch)."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)  # a top-level name is found without being imported
    if spec is None or spec.origin is None:
        raise ValueError(f"{module}: no such module")
    if not rest:
        return Path(spec.origin)
    path = Path(spec.submodule_search_locations[0]).joinpath(*rest)
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py"


@functools.cache
def _module(module: str) -> ast.Module:
    """The parsed source of `module`."""
    path = _source(module)
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@functools.cache
def _fields(config: str) -> dict[str, tuple[ast.expr | None, str]]:
    """Field name -> (its default expression or None, its docstring with whitespace collapsed) of `config`."""
    module, name = config.split(":")
    classes = [node for node in _module(module).body if isinstance(node, ast.ClassDef) and node.name == name]
    if not classes:
        raise ValueError(f"{config}: no class {name} in {module}")
    body, fields = classes[0].body, {}
    for node, after in zip(body, body[1:] + [None]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            doc = after.value.value if (isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                                        and isinstance(after.value.value, str)) else ""
            fields[node.target.id] = (node.value, " ".join(doc.split()))
    return fields


def _constant(node: ast.expr, module: str) -> Any:
    """The value of a constant expression of `module`; a ValueError for anything else (a call, an attribute...)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Tuple):
        return tuple(_constant(item, module) for item in node.elts)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_constant(node.operand, module))
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_constant(node.left, module), _constant(node.right, module))
    if isinstance(node, ast.Name):
        for statement in _module(module).body:
            targets = statement.targets if isinstance(statement, ast.Assign) else (
                [statement.target] if isinstance(statement, ast.AnnAssign) and statement.value else [])
            if any(isinstance(t, ast.Name) and t.id == node.id for t in targets):
                return _constant(statement.value, module)
    raise ValueError(f"{module}: {ast.unparse(node)!r} is not a constant expression")


def _field(config: str, name: str) -> tuple[ast.expr | None, str]:
    try:
        return _fields(config)[name]
    except KeyError:
        raise ValueError(f"{config} has no field {name!r}") from None


def field_default(config: str, name: str) -> Any:
    """The default of field `name` of `config` ("module:Class"), e.g. field_default(TRAIN, "rank") -> 4."""
    default, _ = _field(config, name)
    if default is None:
        raise ValueError(f"{config}.{name} has no default")
    return _constant(default, config.split(":")[0])


def module_constant(module: str, name: str) -> Any:
    """The value of the module-level constant `name` of `module`, read from its source (no import)."""
    return _constant(ast.Name(id=name), module)


def field_help(config: str, name: str) -> str:
    """The docstring of field `name` of `config` on one line ('' when it has none)."""
    return _field(config, name)[1]


def field_option(config: str, name: str, *param_decls: str, help: str | None = None, **options: Any) -> Any:
    """`typer.Option` of field `name` of `config`: the field's default, and its docstring unless `help` is given
    (typer reads help as rich markup: a docstring with a `[name]` in it needs its own `help`); `param_decls` and
    `options` (min=, max=, ...) as typer.Option takes them."""
    return typer.Option(field_default(config, name), *param_decls,
                        help=field_help(config, name) if help is None else help, **options)
