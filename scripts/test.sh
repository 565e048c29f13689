#!/usr/bin/env bash
# The test command: unit tests, and end-to-end tests that run the real binaries
# against the local RabbitMQ and Redis (started here if they are down).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
scripts/python-env.sh
# The end-to-end tests run the built binaries, so build them first.
cargo build --locked --workspace --bins
cargo test --locked --workspace "$@"
