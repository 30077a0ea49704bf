#!/usr/bin/env bash
# Federated learning across simulated sites: FedAvg and FedProx against centralised training on the
# pooled images and each site training alone, on two kinds of site shift, three seeds each:
#   phantom:     3 scanners with their own gain, offset and noise (data.sites=3), classification;
#   breastmnist: 3 sites of a Dirichlet(0.5) label partition (label skew).
# 10 rounds of 2 local epochs (the baselines train 20 epochs), CNN, Adam lr 0.001, batch 32; best.pt
# by validation AUC (the validation loss of these small sets jumps in the first epochs, and picking
# by it would keep near-untrained models).
#   bash experiments/federated_sites/run.sh [override ...]      e.g. device=cuda
# DATA_ROOT (default ../shared/data/medmnist) holds breastmnist.npz.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$(cd "${DATA_ROOT:-../shared/data/medmnist}" && pwd)"
MEDIMG="${MEDIMG:-.venv/bin/medimg}"  # word-split on purpose: MEDIMG="python -m medimg_cli" works too
PYTHON="${PYTHON:-.venv/bin/python}"
BENCH=runs/benchmark/federated_sites
OUT=experiments/federated_sites/results
COMMON=(model=cnn optim.lr=0.001 trainer.batch_size=32 federated.rounds=10 federated.local_epochs=2
        trainer.monitor=val_auc trainer.table_every=5)
PHANTOM=(data=phantom data.task=classification data.sites=3 data.site_column=site)
BREAST=(data=medmnist data.name=breastmnist "data.root=$ROOT" data.download=false
        federated.partition=dirichlet federated.alpha=0.5 federated.clients=3)

federated() {  # dataset strategy seed [override ...]: one run, finished or resumed
  local folder=$BENCH/$1/$2_seed$3 resume=false
  [ -f "$folder/summary.json" ] && return
  [ -f "$folder/checkpoints/last.pt" ] && resume=true
  $MEDIMG federated "federated=$2" "seed=$3" "${COMMON[@]}" "hydra.run.dir=$folder" "trainer.resume=$resume" "${@:4}"
}
for seed in 0 1 2; do
  # the baselines train with the FedAvg runs (the same seeds and epochs serve FedProx)
  federated phantom fedavg "$seed" "${PHANTOM[@]}" federated.baselines=true "$@"
  federated phantom fedprox "$seed" "${PHANTOM[@]}" "$@"
  federated breastmnist fedavg "$seed" "${BREAST[@]}" federated.baselines=true "$@"
  federated breastmnist fedprox "$seed" "${BREAST[@]}" "$@"
done
$PYTHON experiments/federated_sites/summarise.py "$BENCH" "$OUT"
