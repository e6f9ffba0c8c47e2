#!/usr/bin/env bash
# Install, then run the main job end to end on the built-in tiny model; results land in demo_out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
PY=.venv/bin/python
OUT=${OUT:-demo_out}
mkdir -p "$OUT"
$PY cli.py render --preset tiny --seed 1 --grid-yaws=-0.5,-0.25,0,0.25,0.5 --grid-pitches=-0.15,0.15 --depth \
  --out "$OUT/tiny_grid.png"
echo "demo finished: see $OUT/"
