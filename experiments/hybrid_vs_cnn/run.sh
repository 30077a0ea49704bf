#!/usr/bin/env bash
# The hybrid CNN-attention model against plain CNNs on the synthetic multitask default (700 lesion
# phantoms of 32x32, Adam 0.001, batch 32, 50 epochs: Gomathi and Roopa Chandrika, Table 3), five seeds each
# (conf/experiment/hybrid_vs_cnn.yaml), then the report into results/.
#   bash experiments/hybrid_vs_cnn/run.sh [override ...]       e.g. device=cuda seed=0,1,2
set -euo pipefail
cd "$(dirname "$0")/../.."
MEDIMG="${MEDIMG:-.venv/bin/medimg}"  # word-split on purpose: MEDIMG="python -m medimg_cli" works too
$MEDIMG benchmark experiment=hybrid_vs_cnn "$@"
$MEDIMG report runs/benchmark/hybrid_vs_cnn --out experiments/hybrid_vs_cnn/results
