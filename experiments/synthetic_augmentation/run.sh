#!/usr/bin/env bash
# Synthetic augmentation on BreastMNIST: a class-conditional GAN and a diffusion model trained on
# the training split, 300 images per class sampled from each, their quality measured, then the CNN
# trained on real, augmented, real + synthetic (two ratios per generator), augmented + diffusion
# images, and synthetic alone, three seeds each; the report and the generators' pictures go into results/.
#   bash experiments/synthetic_augmentation/run.sh [override ...]      e.g. device=cuda
# DATA_ROOT (default ../shared/data/medmnist) holds breastmnist.npz.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$(cd "${DATA_ROOT:-../shared/data/medmnist}" && pwd)"
MEDIMG="${MEDIMG:-.venv/bin/medimg}"  # word-split on purpose: MEDIMG="python -m medimg_cli" works too
BENCH=runs/benchmark/synthetic_augmentation
OUT=experiments/synthetic_augmentation/results
DATA=(data=medmnist data.name=breastmnist "data.root=$ROOT" data.download=false)

generator() {  # name epochs: train (or finish) the generator, then sample 300 images per class
  local name=$1 epochs=$2 run=$BENCH/$1
  if [ ! -f "$run/summary.json" ]; then
    local resume=false
    [ -f "$run/checkpoints/last.pt" ] && resume=true
    $MEDIMG synth train "synth=$name" "synth.epochs=$epochs" synth.sample_every=50 "${DATA[@]}" \
      "hydra.run.dir=$run" "resume=$resume" "${@:3}"
  fi
  [ -f "$BENCH/samples-$name/manifest.csv" ] || $MEDIMG synth sample "checkpoint=$run/checkpoints/last.pt" \
    synth.per_class=300 "hydra.run.dir=$BENCH/samples-$name" "${@:3}"
}
generator dcgan "${GAN_EPOCHS:-200}" "$@"
generator diffusion "${DIFFUSION_EPOCHS:-150}" "$@"
$MEDIMG benchmark experiment=synthetic_augmentation "data.root=$ROOT" "$@"
$MEDIMG report "$BENCH" --out "$OUT"
# quality in the features of the real-data CNN of seed 0, and the generators' pictures
real=$(ls -d "$BENCH"/runs/training-real_seed-0-*)
for name in dcgan diffusion; do
  $MEDIMG synth quality "manifest=$BENCH/samples-$name/manifest.csv" "classifier=$real/checkpoints/best.pt" \
    "hydra.run.dir=$OUT/quality-$name" hydra.output_subdir=null "$@"
  mkdir -p "$OUT/generator-$name"
  cp "$BENCH/$name/metrics.csv" "$BENCH/$name/summary.json" "$BENCH/samples-$name/grid.png" \
    "$BENCH/samples-$name/generated.csv" "$BENCH/$name"/samples/epoch_*.png "$OUT/generator-$name/"
done
