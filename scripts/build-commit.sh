#!/usr/bin/env bash
# Builds one commit's release binaries and copies them into a directory of
# their own, for the scripts that run two builds side by side
# (bench-compare.sh, placement-compare.sh):
#
#   scripts/build-commit.sh COMMIT BIN_DIR
#
# The commit is checked out in a temporary git worktree; every commit shares
# one target dir (target/bench-compare), so a second build compiles only
# what differs.
set -euo pipefail
cd "$(dirname "$0")/.."
commit=$(git rev-parse --verify "$1^{commit}")
bin_dir=$2
ROOT=$(pwd)
src=$(mktemp -d /tmp/gpuq-build-commit.XXXXXX)
trap 'git -C "$ROOT" worktree remove --force "$src" >/dev/null 2>&1 || true; rm -rf "$src"' EXIT
rmdir "$src"
git worktree add --detach "$src" "$commit" >/dev/null 2>&1
(cd "$src" && CARGO_TARGET_DIR="$ROOT/target/bench-compare" \
  cargo build --locked --release --workspace --bins >&2)
mkdir -p "$bin_dir"
find "$ROOT/target/bench-compare/release" -maxdepth 1 -type f -perm -u+x \
  -exec cp {} "$bin_dir/" \;
