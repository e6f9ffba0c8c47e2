#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): one command, under 8 minutes on one H100/H200, no network, no .venv needed.
#
#   bash scripts/gpu_check.sh              # on the GPU machine: results in $OUT (default gpu_out/)
#   bash scripts/gpu_check.sh --dry-run    # anywhere: CPU, tiny preset, the same code (CI runs this)
#
# Before going to the GPU machine, run scripts/gpu_wheels.sh here once: it fills gpu_wheels/ (git-ignored) with
# the pure-Python wheels the machine lacks and a copy of the official EG3D fixture. This script installs those
# wheels into a temporary folder with pip --no-index (never the network), puts the repository on PYTHONPATH and
# runs the check with $PYTHON (default python3), stopping it at GPU_CHECK_TIMEOUT seconds (default 470); every
# section's results are written as soon as it ends, so a stopped run keeps what it measured. `--sections a,b`
# reruns only those sections; `python -m bench.gpu_record OUT [OUT2 ...]` then files the results (merged, later
# runs winning) in docs/gpu/ and the GPU section of docs/BENCHMARKS.md.
# The `serve` section (bench/gpu_serve.py, right after parity) exports ffhq512-128 keep-LoRA with mixed graphs
# (ONNX tracing on the CPU: most of its time), then measures the handler on the torch backend per precision; over
# TorchServe too where Java and `ts` are present, else in-process only (the report says which).
# `--serve-export DIR` serves an existing keep-LoRA export with mixed graphs instead of exporting one.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
OUT="${OUT:-$REPO/gpu_out}"
WHEELS="${GPU_WHEELS:-$REPO/gpu_wheels}"
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

mkdir -p "$OUT"
SITE="$(mktemp -d)"
trap 'rm -rf "$SITE"' EXIT
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if ((${#wheels[@]})); then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "${wheels[@]}"
fi
if [[ -z "${MY3DGEN_FIXTURES:-}" && -f "$WHEELS/fixtures/eg3d_official_small/small_io.npz" ]]; then
  export MY3DGEN_FIXTURES="$WHEELS/fixtures/eg3d_official_small"
fi
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
cd "$REPO"
timeout "${GPU_CHECK_TIMEOUT:-470}" "$PY" -m bench.gpu_check --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
