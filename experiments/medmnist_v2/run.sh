#!/usr/bin/env bash
# MedMNIST v2's protocol on a 2D MedMNIST dataset, our mean +- sd beside the published AUC/ACC.
#   bash experiments/medmnist_v2/run.sh                          # the committed CPU cell: ResNet-18 at 28 px
#   DATASET=pneumoniamnist CELLS="size=28,224 model=resnet18,resnet50" bash experiments/medmnist_v2/run.sh device=cuda
# DATA_ROOT (default ../shared/data/medmnist) holds <dataset>.npz (downloaded there when missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
DATASET="${DATASET:-breastmnist}"
read -r -a CELLS <<< "${CELLS:-size=28 model=resnet18}"
ROOT="$(mkdir -p "${DATA_ROOT:-../shared/data/medmnist}" && cd "${DATA_ROOT:-../shared/data/medmnist}" && pwd)"
MEDIMG="${MEDIMG:-.venv/bin/medimg}"  # word-split on purpose: MEDIMG="python -m medimg_cli" works too
$MEDIMG benchmark experiment=medmnist_v2 "data.name=$DATASET" "data.root=$ROOT" "${CELLS[@]}" "$@"
$MEDIMG report "runs/benchmark/medmnist_v2_$DATASET" --out "experiments/medmnist_v2/results/$DATASET"
