#!/usr/bin/env bash
# Usage, on a GPU machine from the repository root: bash benchmarks/gpu_checks.sh OUT [HIPPOCAMPUS_DIR]
# Everything medimg checks on a GPU in one go (about 8 minutes on an H200): the patch-pipeline
# benchmark against MONAI (synthetic volumes, and the MSD Hippocampus when its folder is given),
# then tests/test_cuda.py. Logs and result tables land in OUT; copy the tables to benchmarks/results.
set -uo pipefail
out=${1:?usage: gpu_checks.sh OUT [HIPPOCAMPUS_DIR]}
hippocampus=${2:-}
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.txt" 2>&1

bench() {  # name, then the benchmark's arguments
    local name=$1
    shift
    timeout 90 "$python" benchmarks/patch_pipeline.py --device cuda --out "$out/$name" "$@" 2>&1 | tail -3
}
# the CPU table's settings, then a GPU-sized batch with loader workers on MONAI's side
bench synthetic --repeats 5
bench synthetic_b8_w4 --batch 8 --workers 4 --steps 40 --repeats 5
[ -n "$hippocampus" ] && bench hippocampus --hippocampus "$hippocampus" --batch 8 --workers 4 --steps 40 --repeats 5

timeout 300 "$python" -m pytest tests/test_cuda.py -q -p no:cacheprovider --durations=5 2>&1 | tee "$out/test_cuda.log" | tail -25
