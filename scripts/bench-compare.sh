#!/usr/bin/env bash
# Compares two commits on this machine in one run:
#
#   scripts/bench-compare.sh A B [gpuq-bench arguments...]
#
# Builds A and B (release, each in a git worktree; one shared target dir, so
# the second build compiles only what differs), keeps each build's binaries
# apart, then runs the two gpuq-bench builds alternately (A B A B ...,
# BENCH_COMPARE_ROUNDS times, default 3; each `--json --runs 1` plus the
# arguments given) so both see the same machine in the same minutes.
# Prints, per figure both report, the median over rounds of A and of B and
# the ratio B / A. The JSON of every round stays in the printed directory.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
  echo "usage: scripts/bench-compare.sh A B [gpuq-bench arguments...]" >&2
  exit 2
fi
A=$(git rev-parse --verify "$1^{commit}")
B=$(git rev-parse --verify "$2^{commit}")
shift 2
ROUNDS=${BENCH_COMPARE_ROUNDS:-3}
WORK=$(mktemp -d /tmp/gpuq-bench-compare.XXXXXX)
scripts/services.sh >&2

for side in A B; do
  echo "bench-compare: building $side = ${!side}" >&2
  scripts/build-commit.sh "${!side}" "$WORK/$side"
done

for round in $(seq 1 "$ROUNDS"); do
  for side in A B; do
    echo "bench-compare: round $round, $side" >&2
    "$WORK/$side/gpuq-bench" --json --runs 1 "$@" > "$WORK/$side-$round.json"
  done
done

python3 - "$WORK" "$ROUNDS" "$A" "$B" <<'EOF'
import json, statistics, sys
work, rounds, a, b = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def medians(side):
    values = {}
    for r in range(1, rounds + 1):
        with open(f"{work}/{side}-{r}.json") as f:
            for figure in json.load(f):
                values.setdefault((figure["name"], figure["unit"]), []).append(figure["median"])
    return {k: statistics.median(v) for k, v in values.items()}
ma, mb = medians("A"), medians("B")
print(f"A = {a[:12]}  B = {b[:12]}  ({rounds} alternating rounds; medians over rounds)")
print(f"{'figure':58} {'unit':>7} {'A':>11} {'B':>11} {'B / A':>7}")
for key in [k for k in ma if k in mb]:
    name, unit = key
    x, y = ma[key], mb[key]
    ratio = f"{y / x:.3f}" if x else "-"
    print(f"{name[:58]:58} {unit:>7} {x:11.3f} {y:11.3f} {ratio:>7}")
for key in [k for k in ma if k not in mb] + [k for k in mb if k not in ma]:
    print(f"(only in {'A' if key in ma else 'B'}: {key[0]})")
print(f"JSON of every round: {work}")
EOF
