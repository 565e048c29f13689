#!/usr/bin/env bash
# The test command: unit tests, and end-to-end tests that run the real binaries
# against the local RabbitMQ and Redis (started here if they are down), with the
# TorchScript runtime built in (libtorch is installed once into a cached venv).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
scripts/python-env.sh
# The dashboard test drives Debian's Chromium through chromedriver.
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
  echo "test: installing chromium and chromium-driver"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
# The end-to-end tests run the built binaries, so build them first
# (scripts/cargo.sh adds the torch and s3 features).
scripts/cargo.sh build --bins
scripts/cargo.sh test "$@"
