#!/usr/bin/env bash
# The hybrid CNN-attention model against plain CNNs on the synthetic multitask default (700 lesion
# phantoms of 32x32, Adam 0.001, batch 32, 50 epochs: seed 001 Table 3), five seeds each:
#   cnn      the default plain CNN, channels [16,32,64] (74 k parameters)
#   cnn      a plain CNN of the hybrid's size, channels [26,52,104], decoder 24 (195 k)
#   hybrid   the default hybrid (190 k)
# then the mean +- sd table of the test metrics (best validation-loss checkpoint of each run).
#   bash experiments/hybrid_vs_cnn/run.sh [override ...]       e.g. device=cuda
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS="${RUNS:-runs/hybrid_vs_cnn}"
MEDIMG="${MEDIMG:-.venv/bin/medimg}"  # word-split on purpose: MEDIMG="python -m medimg_cli" works too
SEEDS="${SEEDS:-0,1,2,3,4}"
common=(data.task=multitask "seed=$SEEDS" "hydra.sweep.dir=$RUNS" "$@")
$MEDIMG train -m model=cnn "${common[@]}" 'hydra.sweep.subdir=cnn_seed${seed}'
$MEDIMG train -m model=cnn 'model.channels=[26,52,104]' model.decoder_channels=24 "${common[@]}" \
  'hydra.sweep.subdir=cnn195k_seed${seed}'
$MEDIMG train -m model=hybrid "${common[@]}" 'hydra.sweep.subdir=hybrid_seed${seed}'
$MEDIMG report "$RUNS" --by model model.channels --out experiments/hybrid_vs_cnn/results
