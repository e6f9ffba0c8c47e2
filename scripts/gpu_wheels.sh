#!/usr/bin/env bash
# Fill gpu_wheels/ (git-ignored) with what scripts/gpu_check.sh needs on the GPU machine and that machine lacks:
#   * pure-Python wheels for Python 3.12 (the machine has torch, numpy, scipy, onnx, onnxruntime, safetensors,
#     pillow, tqdm, typer, scikit-image, matplotlib; bench/gpu_check.py imports nothing else but the `lpips`
#     package's calibrated LPIPS heads, read as files, so only that wheel travels);
#   * a copy of the official EG3D fixture ($MY3DGEN_FIXTURES or ../shared/fixtures/eg3d_official_small),
#     since only the repository travels to that machine.
# Run here (PyPI reachable), from anywhere: bash scripts/gpu_wheels.sh [DEST]. Fails if DEST exceeds 60 MB.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$REPO/gpu_wheels}"
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x "$REPO/.venv/bin/python" ]]; then PY="$REPO/.venv/bin/python"
else PY=python3; fi
LIMIT_MB=60
WHEELS=("lpips==0.1.4")

mkdir -p "$DEST"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation py \
  --platform any -d "$DEST" "${WHEELS[@]}"
FIX="${MY3DGEN_FIXTURES:-$REPO/../shared/fixtures/eg3d_official_small}"
if [[ ! -f "$FIX/small_io.npz" ]]; then
  echo "error: official fixture not found at $FIX (set MY3DGEN_FIXTURES)" >&2
  exit 2
fi
mkdir -p "$DEST/fixtures/eg3d_official_small"
for f in small_io.npz small_G_ema.safetensors small_init_kwargs.json; do
  cp "$FIX/$f" "$DEST/fixtures/eg3d_official_small/$f"
done
size_mb=$(( $(du -sb "$DEST" | cut -f1) / 1000000 ))
if (( size_mb > LIMIT_MB )); then
  echo "error: $DEST is $size_mb MB, over the $LIMIT_MB MB that may travel" >&2
  exit 2
fi
echo "gpu_wheels: $DEST ($size_mb MB): $(cd "$DEST" && ls *.whl | tr '\n' ' ')+ fixtures/eg3d_official_small"
