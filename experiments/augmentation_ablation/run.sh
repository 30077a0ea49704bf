#!/usr/bin/env bash
# Augmentation ablation (seed 000's question): the CNN on BreastMNIST (28 px, official splits) with each
# recipe, 50 epochs (seed 001's setup), three seeds each; then the mean +- sd table of the test metrics.
#   bash experiments/augmentation_ablation/run.sh [override ...]
# DATA_ROOT (default ../shared/data/medmnist) holds breastmnist.npz; RUNS is where the runs go.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$(cd "${DATA_ROOT:-../shared/data/medmnist}" && pwd)"
RUNS="${RUNS:-runs/augmentation_ablation}"
MEDIMG="${MEDIMG:-.venv/bin/medimg}"  # word-split on purpose: MEDIMG="python -m medimg_cli" works too
$MEDIMG train -m data=medmnist data.name=breastmnist "data.root=$ROOT" model=cnn \
  augment=none,flip,paper,geometric,intensity,strong,mix seed=0,1,2 \
  "hydra.sweep.dir=$RUNS" 'hydra.sweep.subdir=${augment.name}_seed${seed}' "$@"
$MEDIMG report "$RUNS" --by augment --out experiments/augmentation_ablation/results
