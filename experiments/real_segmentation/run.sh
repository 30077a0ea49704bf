#!/usr/bin/env bash
# Native-resolution segmentation on real data: MSD Hippocampus (3D MRI) and CHASE_DB1 (retinal
# vessels), patch training with a wall-clock budget, then medimg eval on the test split.
#   bash experiments/real_segmentation/run.sh [override ...]      e.g. device=cuda trainer.max_minutes=25
# DATA_ROOT (default ../shared/data/segmentation) holds hippocampus/ (MSD layout) and chase_db1/.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$(cd "${DATA_ROOT:-../shared/data/segmentation}" && pwd)"
MEDIMG="${MEDIMG:-.venv/bin/medimg}"  # word-split on purpose: MEDIMG="python -m medimg_cli" works too
OUT=runs/real_segmentation
mkdir -p "$OUT"

python3 experiments/real_segmentation/manifests.py "$ROOT" "$OUT"

$MEDIMG train data=manifest "data.path=$OUT/hippocampus.csv" data.task=segmentation data.image_size=null \
  data.normalize=zscore "data.patch_size=[32,32,32]" model=unet trainer.epochs=100 trainer.steps_per_epoch=50 \
  trainer.batch_size=4 trainer.eval_batch_size=8 trainer.max_minutes=12 trainer.monitor=val_dice \
  "hydra.run.dir=$OUT/hippocampus" "$@"
$MEDIMG eval "checkpoint=$OUT/hippocampus/checkpoints/best.pt"

$MEDIMG train data=manifest "data.path=$OUT/chase_db1.csv" data.task=segmentation data.channels=3 \
  data.image_size=null data.normalize=zscore "data.patch_size=[96,96]" "data.split=[0.6,0.1,0.3]" model=unet \
  trainer.epochs=100 trainer.steps_per_epoch=50 trainer.batch_size=8 trainer.eval_batch_size=2 \
  trainer.max_minutes=10 trainer.monitor=val_dice "hydra.run.dir=$OUT/chase_db1" "$@"
$MEDIMG eval "checkpoint=$OUT/chase_db1/checkpoints/best.pt" eval.save_probabilities=true

for name in hippocampus chase_db1; do
  mkdir -p "experiments/real_segmentation/results/$name"
  cp "$OUT/$name/table.md" "$OUT/$name/eval/test/metrics.csv" "experiments/real_segmentation/results/$name/"
done
