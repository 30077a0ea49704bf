#!/usr/bin/env bash
# Registration on the phantom's known deformations: LocalNet (MSE and LNCC), VoxelMorph, GlobalNet,
# three seeds (conf/experiment/registration_phantom.yaml), the report into results/, and the
# before/after table with the identity baseline (summarise.py).
#   bash experiments/registration/run.sh [override ...]       e.g. device=cuda
set -euo pipefail
cd "$(dirname "$0")/../.."
MEDIMG="${MEDIMG:-.venv/bin/medimg}"  # word-split on purpose: MEDIMG="python -m medimg_cli" works too
$MEDIMG benchmark experiment=registration_phantom "$@"
$MEDIMG report runs/benchmark/registration_phantom --out experiments/registration/results
"${PYTHON:-.venv/bin/python}" experiments/registration/summarise.py runs/benchmark/registration_phantom \
  > experiments/registration/results/registration.md
