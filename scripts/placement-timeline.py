#!/usr/bin/env python3
"""What placement did in one mixed-benchmark run, from the files that
`gpuq-bench --mixed --mixed-timeline DIR` writes (DIR/placement-jobs.csv and
DIR/placement-dispatcher.log; pass --mode naive or "best-static" for the
other runs). Prints, per worker, the runs of consecutive jobs of one model
(start second: model x jobs) and when the worker's last job ended; the idle
time at the end (every worker's gap to the makespan); each model's bursts of
arrivals; and, with --decisions, every assignment change (second, worker,
main model, queues consumed). Times are seconds after the first job was
created.

    scripts/placement-timeline.py target/timeline [--decisions] [--mode placement]
"""
import argparse
import collections
import csv
import datetime
import re

parser = argparse.ArgumentParser()
parser.add_argument("dir")
parser.add_argument("--mode", default="placement")
parser.add_argument("--decisions", action="store_true")
args = parser.parse_args()

rows = list(csv.DictReader(open(f"{args.dir}/{args.mode}-jobs.csv")))
done = [r for r in rows if r["started_ms"] and r["finished_ms"]]
t0 = min(int(r["created_ms"]) for r in rows if r["created_ms"])
by_worker = collections.defaultdict(list)
for r in done:
    by_worker[r["worker"]].append(
        ((int(r["started_ms"]) - t0) / 1000, (int(r["finished_ms"]) - t0) / 1000, r["model"])
    )
makespan = max(f for jobs in by_worker.values() for _, f, _ in jobs)
idle = 0.0
for worker, jobs in sorted(by_worker.items()):
    jobs.sort()
    runs = []
    for start, _, model in jobs:
        if runs and runs[-1][1] == model:
            runs[-1][2] += 1
        else:
            runs.append([start, model, 1])
    last = max(f for _, f, _ in jobs)
    idle += makespan - last
    print(f"{worker}: ends {last:.1f}: " + " ".join(f"{s:.1f}:{m}x{n}" for s, m, n in runs))
print(f"makespan {makespan:.1f} s, idle at the end {idle:.1f} worker-seconds, "
      f"{len(done)} of {len(rows)} jobs ran")

arrivals = collections.defaultdict(list)
for r in rows:
    arrivals[r["model"]].append((int(r["created_ms"]) - t0) / 1000)
for model in sorted(arrivals):
    times = sorted(arrivals[model])
    bursts = [[times[0], times[0], 1]]
    for t in times[1:]:
        if t - bursts[-1][1] > 3:  # gaps inside a burst average under 0.1 s
            bursts.append([t, t, 1])
        else:
            bursts[-1][1] = t
            bursts[-1][2] += 1
    print(f"{model} bursts: " + ", ".join(f"{a:.1f}-{b:.1f} s ({n} jobs)" for a, b, n in bursts))

if args.decisions:
    for line in open(f"{args.dir}/{args.mode}-dispatcher.log"):
        if "new assignment" not in line:
            continue
        stamp = datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00"))
        at = stamp.timestamp() - t0 / 1000
        worker = re.search(r"worker=(\S+)", line).group(1)
        models = re.search(r"models=(\[.*?\])", line).group(1).replace('"', "")
        main = re.search(r"main=(\S+)", line).group(1)
        main = main.replace('Some("', "").replace('")', "")
        print(f"{at:7.2f} {worker} main {main:6s} {models}")
