#!/usr/bin/env bash
# Install everything from scratch (idempotent), lint, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check .   # the rule set and why: [tool.ruff] in pyproject.toml
exec .venv/bin/python -m pytest -q "$@"
