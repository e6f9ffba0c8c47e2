#!/usr/bin/env bash
# Install, then run the main job end to end on the built-in pretrained head-world model (models/heads, docs/HEADS.md):
# personalize it to a held-out person from 10 photos with their cameras (inversion through the mapping network,
# --inversion-space z, which this adversary-free generator needs, + LoRA with the symmetry loss,
# using the head-world identity network the model directory carries, models/heads/identity.safetensors), render
# the person from new viewpoints next to the TRUE views of those viewpoints, export to ONNX with swappable adapters,
# and render a novel view with the torch-free runtime.
# Results land in demo_out/ (about 10 minutes on a 2-core CPU, install included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
PY=.venv/bin/python
OUT=${OUT:-demo_out}
MODEL=models/heads
PERSON=samples/heads_person
rm -rf "$OUT" && mkdir -p "$OUT"
echo "== 1/5 personalize $MODEL to $PERSON (10 photos + cameras of a person the model never saw)"
$PY cli.py train --model "$MODEL" --data "$PERSON" \
  --iterations 200 --inversion-steps 50 --inversion-batch 10 --inversion-space z --inversion-pixel-weight 1 \
  --out "$OUT/person.safetensors"
echo "== 2/5 render the person from new viewpoints, with depth"
$PY cli.py render --model "$MODEL" --adapter "$OUT/person.safetensors" --anchor 0 \
  --grid-yaws=-0.6,-0.35,0,0.35,0.6 --grid-pitches=-0.15,0.15 --depth --out "$OUT/person_grid.png"
echo "== 3/5 novel views next to the true views (rows: truth, anchors on the base model, personalized; then depth)"
$PY scripts/heads_figures.py compare --model "$MODEL" --person "$PERSON" --adapter "$OUT/person.safetensors" \
  --png "$OUT/novel_vs_truth.png"
echo "== 4/5 export ONNX graphs with adapters as inputs (one graph serves every person)"
$PY cli.py export --model "$MODEL" --keep-lora --out "$OUT/export"
echo "== 5/5 novel view with the torch-free runtime"
$PY -m runtime "$OUT/export" "$OUT/person.safetensors" --yaw 0.3 --backend onnxruntime --out "$OUT/runtime_view.png"
echo "demo finished: see $OUT/ (novel_vs_truth.png, person_grid.png, person_train/preview.png, runtime_view.png)"
