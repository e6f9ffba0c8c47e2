"""docs/SECURITY.md's table of promises names tests that exist: a renamed or deleted test fails here, not silently."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_test_the_promises_table_names_exists():
    doc = (REPO / "docs" / "SECURITY.md").read_text()
    table = doc[doc.index("## Promises and the tests that hold them"):]
    named, missing = 0, []
    for cell in re.findall(r"\| (`tests/[^|]+)\|\n", table):
        current = None
        for ref in re.findall(r"`([^`]+)`", cell):
            if ref.startswith("tests/"):
                current, name = ref.split("::")
            else:
                name = ref.lstrip(":")
            named += 1
            if not re.search(rf"^def {re.escape(name)}\(", (REPO / current).read_text(), re.M):
                missing.append(f"{current}::{name}")
    assert named >= 40 and not missing, (named, missing)
