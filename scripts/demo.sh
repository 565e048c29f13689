#!/usr/bin/env bash
# The main job: start a dispatcher on the GPU inventory declared in
# config/gpuq.example.toml (one 24 GiB GPU; synthetic echo and sleep models),
# run demo jobs end to end against the local RabbitMQ and Redis, show the
# system, then stop everything.
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG="${GPUQ_CONFIG:-config/gpuq.example.toml}"
scripts/services.sh
cargo build --locked --workspace --bins
BIN=target/debug
LOG="$(mktemp -t gpuq-dispatcher.XXXXXX.log)"

"$BIN/gpuq-dispatcher" --config "$CONFIG" >"$LOG" 2>&1 &
DISPATCHER=$!
stop() {
  kill -TERM "$DISPATCHER" 2>/dev/null || true
  wait "$DISPATCHER" 2>/dev/null || true
}
trap stop EXIT

echo "dispatcher pid $DISPATCHER, log $LOG"
for _ in $(seq 1 100); do
  if "$BIN/gpuq" --config "$CONFIG" system --json 2>/dev/null | grep -q '"state": "idle"'; then break; fi
  if ! kill -0 "$DISPATCHER" 2>/dev/null; then cat "$LOG"; exit 1; fi
  sleep 0.2
done

echo
echo '$ gpuq submit echo --input prompt="a wooden chair" --input seed=7 --wait'
"$BIN/gpuq" --config "$CONFIG" submit echo --input 'prompt=a wooden chair' --input seed=7 --wait
echo
echo '$ gpuq submit sleep --input duration_ms=300 --wait   # synthetic GPU-bound job'
"$BIN/gpuq" --config "$CONFIG" submit sleep --input duration_ms=300 --wait
echo
echo '$ gpuq system'
"$BIN/gpuq" --config "$CONFIG" system
