#!/usr/bin/env bash
# Anomaly detection trained on normal images only: five reconstruction methods on the lesion
# phantom and BreastMNIST, three seeds each, then PaDiM on the encoder of each autoencoder run
# (same data and seed), all in one grid (conf/experiment/anomaly_detection.yaml); the report
# goes into results/.
#   bash experiments/anomaly_detection/run.sh [override ...]       e.g. device=cuda
set -euo pipefail
cd "$(dirname "$0")/../.."
MEDIMG="${MEDIMG:-.venv/bin/medimg}"  # word-split on purpose: MEDIMG="python -m medimg_cli" works too
PYTHON="${PYTHON:-.venv/bin/python}"
ROOT=runs/benchmark/anomaly_detection
$MEDIMG benchmark experiment=anomaly_detection model=autoencoder,vae,memae,denoising_autoencoder,hybrid_autoencoder "$@"
# PaDiM's encoders: each autoencoder's best.pt where the grid's padim entry looks (by data and seed)
$PYTHON - "$ROOT" <<'PY'
import json, shutil, sys
from pathlib import Path
root = Path(sys.argv[1])
(root / "encoders").mkdir(exist_ok=True)
for run in json.loads((root / "benchmark.json").read_text())["runs"]:
    axes = run["axes"]
    if axes["model"] == "autoencoder":
        target = root / "encoders" / f"{axes['data']}-seed{axes['seed']}.pt"
        shutil.copyfile(root / run["folder"] / "checkpoints" / "best.pt", target)
PY
$MEDIMG benchmark experiment=anomaly_detection "$@"  # the autoencoders' runs are found finished
$MEDIMG report "$ROOT" --out experiments/anomaly_detection/results
# medimg eval of the first seed's denoising autoencoder: CIs, score histograms, anomaly maps
for data in phantom breastmnist; do
  run=$(ls -d "$ROOT"/runs/data-"$data"_model-denoising_autoencoder_seed-0-*)
  $MEDIMG eval "checkpoint=$run/checkpoints/best.pt" "out=experiments/anomaly_detection/results/eval-$data-denoising_autoencoder-seed0"
done
