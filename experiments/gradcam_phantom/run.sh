#!/usr/bin/env bash
# Where does a phantom classifier look? A CNN trained on the lesion phantom with and without
# per-image min-max normalisation, then `medimg eval` with Grad-CAM and Grad-CAM++ on the test
# split, scored by the pointing game against the lesion masks (about 2 min on 2 CPU cores).
#   bash experiments/gradcam_phantom/run.sh              # add device=cuda on a GPU
set -euo pipefail
cd "$(dirname "$0")/../.."
MEDIMG="${MEDIMG:-.venv/bin/medimg}"  # word-split on purpose: MEDIMG="python -m medimg_cli" works too
OUT=experiments/gradcam_phantom/results
for normalize in minmax none; do
  run="runs/gradcam_phantom/$normalize"
  [ -f "$run/summary.json" ] || $MEDIMG train model=cnn data.task=classification "data.normalize=$normalize" \
    data.image_size=64 data.num_samples=400 trainer.epochs=10 "hydra.run.dir=$run" "$@"
  for method in gradcam gradcam++; do
    # data.task=multitask: the same images with their lesion masks, for the pointing game
    $MEDIMG eval "checkpoint=$run/checkpoints/best.pt" data.task=multitask "eval.explain=$method" \
      eval.cases=6 "out=$run/eval/$method" "$@"
    mkdir -p "$OUT/$normalize/$method"  # the numbers and one overlay grid; the rest stays in runs/
    cp "$run/eval/$method"/{metrics.json,metrics.csv} "$run/eval/$method/explain"/{explain.csv,most_confident.png} \
      "$OUT/$normalize/$method/"
  done
done
