#!/usr/bin/env bash
# Install, then run the main job end to end on the built-in tiny model and the bundled sample person:
# personalize (W inversion + LoRA with the symmetry loss), render the person, export to ONNX with swappable
# adapters, and render a novel view with the torch-free runtime. Results land in demo_out/ (a few minutes on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
PY=.venv/bin/python
OUT=${OUT:-demo_out}
rm -rf "$OUT" && mkdir -p "$OUT"
echo "== 1/4 personalize the tiny model to samples/tiny_person (10 photos + cameras)"
$PY cli.py train --preset tiny --data samples/tiny_person --out "$OUT/person.safetensors"
echo "== 2/4 render the person from new viewpoints"
$PY cli.py render --preset tiny --adapter "$OUT/person.safetensors" --anchor 0 \
  --grid-yaws=-0.5,-0.25,0,0.25,0.5 --grid-pitches=-0.15,0.15 --depth --out "$OUT/person_grid.png"
echo "== 3/4 export ONNX graphs with adapters as inputs (one graph serves every person)"
$PY cli.py export --preset tiny --keep-lora --out "$OUT/export"
echo "== 4/4 novel view with the torch-free runtime"
$PY -m runtime "$OUT/export" "$OUT/person.safetensors" --yaw 0.3 --out "$OUT/runtime_view.png"
echo "demo finished: see $OUT/ (person_grid.png, ${OUT}/person_train/preview.png, runtime_view.png)"
