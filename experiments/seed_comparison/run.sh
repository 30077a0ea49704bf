#!/usr/bin/env bash
# Gomathi and Roopa Chandrika's comparison (Tables 3-7): CNN, U-Net, Transformer and the hybrid on the lesion phantom
# (multitask) and on BreastMNIST (classification), 3 seeds, then the report into results/.
#   bash experiments/seed_comparison/run.sh                                  # the committed CPU results
#   EXPERIMENT=seed_comparison bash experiments/seed_comparison/run.sh device=cuda   # the full 50 epochs
# DATA_ROOT (default ../shared/data/medmnist) holds breastmnist.npz.
set -euo pipefail
cd "$(dirname "$0")/../.."
EXPERIMENT="${EXPERIMENT:-seed_comparison_cpu}"  # seed_comparison_cpu: 20 epochs, Transformer patches of 8
ROOT="$(cd "${DATA_ROOT:-../shared/data/medmnist}" && pwd)"
MEDIMG="${MEDIMG:-.venv/bin/medimg}"  # word-split on purpose: MEDIMG="python -m medimg_cli" works too
# data.root only matters to the breastmnist variant; the phantom ignores it
$MEDIMG benchmark "experiment=$EXPERIMENT" "$@"
$MEDIMG report "runs/benchmark/$EXPERIMENT" --out experiments/seed_comparison/results
