#!/usr/bin/env bash
# Multi-modal fusion on the two-modality phantom: early, late, attention and late with modality
# dropout against each modality alone, three seeds (conf/experiment/fusion_phantom.yaml), the report
# into results/, and the fusion table with each fused model tested without each modality (summarise.py).
#   bash experiments/fusion/run.sh [override ...]       e.g. device=cuda
set -euo pipefail
cd "$(dirname "$0")/../.."
MEDIMG="${MEDIMG:-.venv/bin/medimg}"  # word-split on purpose: MEDIMG="python -m medimg_cli" works too
$MEDIMG benchmark experiment=fusion_phantom "$@"
$MEDIMG report runs/benchmark/fusion_phantom --out experiments/fusion/results
"${PYTHON:-.venv/bin/python}" experiments/fusion/summarise.py runs/benchmark/fusion_phantom > experiments/fusion/results/fusion.md
