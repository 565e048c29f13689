#!/usr/bin/env bash
# Placement of two commits side by side (issue 18): builds A and B like
# scripts/bench-compare.sh (release, a git worktree each, one shared target
# dir: scripts/build-commit.sh), then replays the mixed trace with placement
# only (`gpuq-bench --mixed --mixed-skip-naive`) for each case, A then B, RUNS
# times, interleaved (every case of both builds once, then again), so both
# see the same machine in the same minutes.
#
#   scripts/placement-compare.sh A B [RUNS] [CASES]
#   scripts/placement-compare.sh HEAD~1 HEAD 3 "3:21 3:8 4:13 4:5 6:3"
#
# CASES are WORKERS:SEED pairs. Each run is about a minute. Prints one line
# per run and, per case, makespan / LB of every run of A and of B. The JSON
# of every run stays in the printed directory.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
  echo "usage: scripts/placement-compare.sh A B [RUNS] [WORKERS:SEED ...]" >&2
  exit 2
fi
A=$(git rev-parse --verify "$1^{commit}")
B=$(git rev-parse --verify "$2^{commit}")
runs=${3:-3}
cases=${4:-"3:21 3:8 4:13 4:5 6:3"}
WORK=$(mktemp -d /tmp/gpuq-placement-compare.XXXXXX)
scripts/services.sh >&2

for side in A B; do
  echo "placement-compare: building $side = ${!side}" >&2
  scripts/build-commit.sh "${!side}" "$WORK/$side"
done

for run in $(seq 1 "$runs"); do
  for case in $cases; do
    workers=${case%%:*}
    seed=${case##*:}
    for side in A B; do
      file="$WORK/$side-w$workers-s$seed-r$run.json"
      "$WORK/$side/gpuq-bench" --mixed --mixed-skip-naive --json \
        --seed "$seed" --mixed-workers "$workers" > "$file"
      scripts/placement-run-line.py "$file" "$side workers $workers seed $seed run $run"
    done
  done
done

python3 - "$WORK" "$runs" "$cases" "$A" "$B" <<'EOF'
import json, statistics, sys
work, runs, cases, a, b = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4], sys.argv[5]
print(f"\nA = {a[:12]}  B = {b[:12]}  ({runs} interleaved runs per case; makespan / LB)")
print("| workers | seed | A runs | A median (max) | B runs | B median (max) |")
print("|---|---|---|---|---|---|")
over = {"A": 0, "B": 0}
for case in cases:
    workers, seed = case.split(":")
    cells = []
    for side in ("A", "B"):
        ratios = [json.load(open(f"{work}/{side}-w{workers}-s{seed}-r{r}.json"))["placement_over_lower_bound"]
                  for r in range(1, runs + 1)]
        over[side] += sum(1 for x in ratios if x > 1.15)
        cells += [", ".join(f"{x:.2f}" for x in ratios), f"{statistics.median(ratios):.2f} ({max(ratios):.2f})"]
    print(f"| {workers} | {seed} | " + " | ".join(cells) + " |")
print(f"\nruns over 1.15: A {over['A']}, B {over['B']} of {runs * len(cases)} each")
print(f"JSON of every run: {work}")
EOF
