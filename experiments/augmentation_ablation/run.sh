#!/usr/bin/env bash
# Augmentation ablation (Musa's question): the CNN on BreastMNIST (28 px, official splits) with each
# recipe, 50 epochs (Gomathi and Roopa Chandrika's setup), three seeds each; then the report into results/.
#   bash experiments/augmentation_ablation/run.sh [override ...]      e.g. device=cuda benchmark.parallel=2
# DATA_ROOT (default ../shared/data/medmnist) holds breastmnist.npz.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$(cd "${DATA_ROOT:-../shared/data/medmnist}" && pwd)"
MEDIMG="${MEDIMG:-.venv/bin/medimg}"  # word-split on purpose: MEDIMG="python -m medimg_cli" works too
$MEDIMG benchmark experiment=augmentation_ablation "data.root=$ROOT" "$@"
$MEDIMG report runs/benchmark/augmentation_ablation --out experiments/augmentation_ablation/results
