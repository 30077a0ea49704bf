#!/usr/bin/env bash
# Patch training at native resolution against resizing whole images, at the same wall-clock
# budget: for each dataset both arms train side by side, each pinned to one CPU core, then
# medimg eval scores each on the test split and compare_table.py writes results/compare.md.
#   bash experiments/real_segmentation/compare.sh [seed ...]      (default: seed 0; about 25 min per seed)
# DATA_ROOT as in run.sh. Needs two cores (taskset -c 0 and -c 1).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$(cd "${DATA_ROOT:-../shared/data/segmentation}" && pwd)"
MEDIMG="${MEDIMG:-.venv/bin/medimg}"
OUT=runs/real_segmentation/compare
python3 experiments/real_segmentation/manifests.py "$ROOT" "$OUT"
COMMON=(data=manifest data.task=segmentation data.normalize=zscore model=unet trainer.epochs=1000
        trainer.monitor=val_dice tracking.image_every=1000)
HIPPO=("data.path=$OUT/hippocampus.csv" trainer.eval_batch_size=8 trainer.max_minutes=12)
CHASE=("data.path=$OUT/chase_db1.csv" data.channels=3 "data.split=[0.6,0.1,0.3]" trainer.eval_batch_size=2
       trainer.max_minutes=10)
# native: random patches of the full images, 50 steps per epoch; resize: whole images at one size
HIPPO_NATIVE=(data.image_size=null "data.patch_size=[32,32,32]" trainer.steps_per_epoch=50 trainer.batch_size=4)
HIPPO_RESIZE=(data.image_size=48 trainer.batch_size=4)
CHASE_NATIVE=(data.image_size=null "data.patch_size=[96,96]" trainer.steps_per_epoch=50 trainer.batch_size=8)
CHASE_RESIZE=(data.image_size=384 trainer.batch_size=4)

arm() {  # core, run folder, overrides...
  local core=$1 dir=$2
  shift 2
  OMP_NUM_THREADS=1 taskset -c "$core" $MEDIMG train "${COMMON[@]}" "$@" "hydra.run.dir=$dir" >"$dir.log" 2>&1
  OMP_NUM_THREADS=1 taskset -c "$core" $MEDIMG eval "checkpoint=$dir/checkpoints/best.pt" eval.bootstrap=500 \
    >>"$dir.log" 2>&1
}

for seed in "${@:-0}"; do
  arm 0 "$OUT/hippocampus_native_s$seed" "${HIPPO[@]}" "${HIPPO_NATIVE[@]}" "seed=$seed" &
  arm 1 "$OUT/hippocampus_resize_s$seed" "${HIPPO[@]}" "${HIPPO_RESIZE[@]}" "seed=$seed" &
  wait
  arm 0 "$OUT/chase_db1_native_s$seed" "${CHASE[@]}" "${CHASE_NATIVE[@]}" "seed=$seed" &
  arm 1 "$OUT/chase_db1_resize_s$seed" "${CHASE[@]}" "${CHASE_RESIZE[@]}" "seed=$seed" &
  wait
done
.venv/bin/python experiments/real_segmentation/compare_table.py "$OUT" experiments/real_segmentation/results/compare.md
