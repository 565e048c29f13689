#!/usr/bin/env bash
# cargo with exactly the features of the test command, for development:
#   scripts/cargo.sh build --bins
#   scripts/cargo.sh test --test gateway -- some_test
#   scripts/cargo.sh clippy --all-targets -- -D warnings
# One feature set for every build means no build undoes another's artifacts
# (a cold build takes minutes on two cores).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/libtorch.sh)"
FEATURES=(--features gpuq-worker/torch --features gpuq-worker/s3 --features gpuq-producer/s3 --features gpuq-dispatcher/s3 --features gpuq-integration-tests/torch --features gpuq-integration-tests/s3)
sub="$1"
shift
exec cargo "$sub" --locked --workspace "${FEATURES[@]}" "$@"
