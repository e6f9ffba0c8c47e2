"""Person and model names: they become file and folder names, so nothing that could address another path is allowed."""
from __future__ import annotations

import re
from typing import Any

NAME_CHARS = r"[A-Za-z0-9_-]"
"""The characters a name may use (no '.', '/', NUL, spaces or newlines)."""
NAME_PATTERN = NAME_CHARS + "{1,64}"
"""1-64 NAME_CHARS."""
NAME_RULE = "1-64 characters from A-Z a-z 0-9 _ -"
"""The rule in words, for error messages."""


def is_valid_name(value: Any) -> bool:
    """True for a str made only of NAME_PATTERN characters (the whole string: re.fullmatch, so no trailing newline)."""
    return isinstance(value, str) and re.fullmatch(NAME_PATTERN, value) is not None


def check_name(value: Any, what: str = "person") -> str:
    """`value` when it is a valid name, else ValueError saying which name and the rule."""
    if not is_valid_name(value):
        raise ValueError(f"{what} name {value!r} is not valid: use {NAME_RULE}")
    return value
