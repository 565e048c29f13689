#!/usr/bin/env bash
# Builds release binaries and runs gpuq-bench against the local RabbitMQ and
# Redis (started here if they are down). Arguments go to gpuq-bench; see
# `scripts/bench.sh --help` and docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh >&2
cargo build --locked --release --workspace --bins >&2
exec target/release/gpuq-bench "$@"
