#!/usr/bin/env bash
# Anomaly detection trained on normal images only: five reconstruction methods on the lesion
# phantom and BreastMNIST, three seeds each (conf/experiment/anomaly_detection.yaml), then PaDiM on
# the encoder of each autoencoder run (same data and seed), then the report into results/.
#   bash experiments/anomaly_detection/run.sh [override ...]       e.g. device=cuda
set -euo pipefail
cd "$(dirname "$0")/../.."
MEDIMG="${MEDIMG:-.venv/bin/medimg}"  # word-split on purpose: MEDIMG="python -m medimg_cli" works too
PYTHON="${PYTHON:-.venv/bin/python}"
ROOT=runs/benchmark/anomaly_detection
$MEDIMG benchmark experiment=anomaly_detection "$@"
# PaDiM needs a trained encoder: each autoencoder run's best.pt, with that run's overrides
for run in "$ROOT"/runs/*model-autoencoder_*/; do
  mapfile -t overrides < <($PYTHON - "$run" <<'PY'
import sys, yaml
for item in yaml.safe_load(open(sys.argv[1] + ".hydra/overrides.yaml")):
    if not item.startswith(("model=", "hydra.", "trainer.epochs=", "trainer.resume=")):
        print(item)
PY
)
  target="$ROOT/runs/padim-$(basename "$run")"
  if [ ! -f "$target/summary.json" ]; then
    $MEDIMG train "${overrides[@]}" model=padim "model.pretrained=${run}checkpoints/best.pt" trainer.epochs=1 \
      "hydra.run.dir=$target" "$@" > /dev/null
  fi
done
$MEDIMG report "$ROOT" --out experiments/anomaly_detection/results
