#!/usr/bin/env bash
# Placement's run-to-run spread (issue 18): replays the mixed trace with
# placement only (`gpuq-bench --mixed --mixed-skip-naive`) RUNS times for
# each seed and worker count, on the release build, and prints one line per
# run and the spread (min / median / max of makespan / LB) per case.
#
#   scripts/placement-stability.sh [RUNS] [SEEDS] [WORKER_COUNTS] [-- more gpuq-bench args]
#   scripts/placement-stability.sh 5 "3 8 21 5 13" "3 4 6"
#
# Each run is a fresh system of about a minute; 5 x 5 x 3 runs take about
# 80 minutes on the project's 2-core machine. Run nothing else meanwhile.
# The JSON of every run is kept under target/placement-stability/.
# GPUQ_BENCH=path/to/gpuq-bench runs that build instead (its dispatcher and
# worker binaries beside it), without building.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
seeds=${2:-"3 8 21 5 13"}
worker_counts=${3:-"3 4 6"}
shift $(( $# < 3 ? $# : 3 ))
[ "${1:-}" = "--" ] && shift
scripts/services.sh >&2
bench=${GPUQ_BENCH:-}
if [ -z "$bench" ]; then
    cargo build --locked --release --workspace --bins >&2
    bench=target/release/gpuq-bench
fi
out=target/placement-stability
mkdir -p "$out"
# Interleaved (run outermost), so drift of the machine spreads over every case.
for run in $(seq 1 "$runs"); do
    for workers in $worker_counts; do
        for seed in $seeds; do
            file="$out/w${workers}-s${seed}-r${run}.json"
            "$bench" --mixed --mixed-skip-naive --json \
                --seed "$seed" --mixed-workers "$workers" "$@" > "$file"
            scripts/placement-run-line.py "$file" "workers $workers seed $seed run $run"
        done
    done
done
python3 - "$out" "$runs" "$seeds" "$worker_counts" <<'EOF'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
seeds, counts = sys.argv[3].split(), sys.argv[4].split()
print("\n| workers | seed | min | median | max | runs |\n|---|---|---:|---:|---:|---|")
worst = 0.0
for workers in counts:
    for seed in seeds:
        ratios = []
        for run in range(1, runs + 1):
            report = json.load(open(f"{out}/w{workers}-s{seed}-r{run}.json"))
            ratios.append(report["placement_over_lower_bound"])
        worst = max(worst, max(ratios))
        cells = ", ".join(f"{r:.2f}" for r in ratios)
        print(f"| {workers} | {seed} | {min(ratios):.2f} | {statistics.median(ratios):.2f} | {max(ratios):.2f} | {cells} |")
print(f"\nworst makespan/LB: {worst:.3f} (target <= 1.15: {'met' if worst <= 1.15 else 'NOT met'})")
EOF
