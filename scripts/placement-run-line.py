#!/usr/bin/env python3
"""One line for one `gpuq-bench --mixed --json` run of placement:
makespan / LB, loads, jobs completed. Used by placement-stability.sh and
placement-compare.sh.

    scripts/placement-run-line.py FILE LABEL
"""
import json
import sys

report = json.load(open(sys.argv[1]))
run = next(r for r in report["runs"] if r["mode"] == "placement")
print(f"{sys.argv[2]}: makespan/LB {report['placement_over_lower_bound']:.3f} "
      f"loads {run['loads']} completed {run['completed']}/{run['jobs']}", flush=True)
