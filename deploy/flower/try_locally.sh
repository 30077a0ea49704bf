#!/usr/bin/env bash
# medimg federated on Flower's deployment engine, all on this machine: a SuperLink, two SuperNodes
# (each with its own phantom images, as two hospitals would have), then `flwr run` of two rounds.
# The same commands, each on its own machine with TLS instead of --insecure, run across real sites.
#   bash deploy/flower/try_locally.sh [work folder]      (default: /tmp/medimg-flower)
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK="${1:-/tmp/medimg-flower}"
BIN="$(pwd)/.venv/bin"
export PATH="$BIN:$PATH" FLWR_HOME="$WORK/flwr"
mkdir -p "$FLWR_HOME"
cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "local-deployment"

[superlink.local-deployment]
address = "127.0.0.1:8000"
insecure = true
TOML
# The shared config (the server's data are its held-out images) and each site's own data.
SMALL=(data.num_samples=64 data.image_size=32 data.task=classification)
medimg federated --cfg job "${SMALL[@]}" trainer.batch_size=8 federated.clients=2 federated.rounds=2 \
  > "$WORK/federated.yaml"
for k in 0 1; do
  medimg federated --cfg job "${SMALL[@]}" "data.seed=$((k + 1))" \
    | python -c "import sys, yaml; print(yaml.safe_dump(yaml.safe_load(sys.stdin)['data']))" > "$WORK/site$k.yaml"
done
# Every party has medimg[federated] installed, so the SuperLink installs nothing per run.
flower-superlink --insecure --disable-runtime-dependency-installation > "$WORK/superlink.log" 2>&1 &
PIDS=($!)
trap 'kill "${PIDS[@]}" 2>/dev/null' EXIT
sleep 5
for k in 0 1; do
  flower-supernode --insecure --superlink 127.0.0.1:8000 --port "$((9095 + k))" \
    --node-config "site-index=$k data='$WORK/site$k.yaml' folder='$WORK/site$k'" > "$WORK/supernode$k.log" 2>&1 &
  PIDS+=($!)
done
sleep 5
flwr run deploy/flower local-deployment --stream \
  --run-config "medimg-config='$WORK/federated.yaml' run-dir='$WORK/run'"
echo "the global run: $WORK/run; the sites' own files: $WORK/site0, $WORK/site1"
