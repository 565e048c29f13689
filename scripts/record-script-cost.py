#!/usr/bin/env python3
"""The Redis-side cost of the job record scripts of two commits, side by side:

    scripts/record-script-cost.py A B [jobs]

For each commit, alternately (A B A B ..., six rounds each), loads its
`queued`, claim and outcome scripts (Lua taken from the commit's Rust
sources with `git show`), runs each for `jobs` jobs (default 3000) pipelined
from one client against the local Redis in a namespace of its own, and
prints the `EVALSHA` time Redis spent per call (INFO commandstats), then
deletes the namespace's keys. A shared VM's speed drifts by a third between
rounds, so each round's claim and outcome are also given relative to its
`queued` script (the same Lua in both when only claim and outcome changed),
and the summary is the median of those ratios per commit.
"""
import re, socket, subprocess, time, sys, uuid, json
def git_show(commit, path):
    return subprocess.run(["git", "show", f"{commit}:{path}"], capture_output=True, text=True, check=True).stdout
def body(path, name):
    s = path
    m = re.search(r'(?:pub(?:\(super\))? )?const %s: &str = r#"(.*?)"#;' % name, s, re.S)
    return m.group(1)
FINAL = "local function gpuq_is_final(status) return status == 'completed' or status == 'failed' or status == 'cancelled' or status == 'timed_out' end"
def source(ver, name):
    path = "common/src/job_record/scripts.rs" if name != "QUEUED" else "common/src/job_record/scripts/queued.rs"
    return FINAL + "\n" + body(git_show(ver, "common/src/job_index.rs"), "REINDEX_LUA") + "\n" + body(git_show(ver, path), name)
def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)
s = socket.create_connection(("127.0.0.1", 6379)); f = s.makefile("rb")
def read():
    line = f.readline(); t = line[:1]
    if t == b"$":
        n = int(line[1:]); return f.read(n + 2)[:-2] if n >= 0 else None
    if t == b"*": return [read() for _ in range(int(line[1:]))]
    if t == b"-": raise RuntimeError(line)
    return line.strip()
def cmd(*a): s.sendall(resp(*a)); return read()
def usec():
    info = cmd("INFO", "commandstats").decode()
    for line in info.splitlines():
        if line.startswith("cmdstat_evalsha:"):
            return int(dict(p.split("=") for p in line.split(":",1)[1].split(","))["usec"])
    return 0
A, B = sys.argv[1], sys.argv[2]
N = int(sys.argv[3]) if len(sys.argv) > 3 else 3000
ratios = {A: [], B: []}
for ver in (A, B) * 6:
    ns = "lm" + uuid.uuid4().hex[:8]
    shas = {k: cmd("SCRIPT", "LOAD", source(ver, k)).decode() for k in ("QUEUED", "CLAIM", "FINISH")}
    now = int(time.time() * 1000)
    ids = [f"j{i}" for i in range(N)]
    def run(kind, calls):
        before = usec(); t = time.perf_counter()
        s.sendall(b"".join(calls))
        for _ in calls: read()
        return usec() - before, time.perf_counter() - t
    q = [resp("EVALSHA", shas["QUEUED"], 3, f"{ns}:job:{i}", f"{ns}:events", f"{ns}:jobs", "{}", now, i, now - 86400000, "", "", "",
              "status", "queued", "feature", "echo", "model", "echo", "tenant", "acme", "attempts", "0", "created_ms", now) for i in ids]
    c = [resp("EVALSHA", shas["CLAIM"], 3, f"{ns}:job:{i}", f"{ns}:events", f"{ns}:jobs", now, "echo", "echo", "w1", "h1", "0", i, "", "acme", "", "") for i in ids]
    e = json.dumps({"job_id": "x", "status": "completed"})
    fin = [resp("EVALSHA", shas["FINISH"], 2, f"{ns}:job:{i}", f"{ns}:events", "completed", now, 600, "{}", "", "", e, "echo", "echo", "acme") for i in ids]
    uq, _ = run("q", q); uc, wc = run("c", c); uf, wf = run("f", fin)
    print(f"{ver:8s} queued {uq/N:6.1f}  claim {uc/N:6.1f}  finish {uf/N:6.1f} us/call (Redis-side)   claim+finish wall {(wc+wf)/N*1e6:6.1f} us/job")
    ratios[ver].append((uc / uq, uf / uq, uq / N))
    keys = cmd("KEYS", f"{ns}:*")
    for i in range(0, len(keys), 500): cmd("DEL", *keys[i:i+500])
import statistics
for ver in (A, B):
    claim = statistics.median(r[0] for r in ratios[ver])
    finish = statistics.median(r[1] for r in ratios[ver])
    queued = statistics.median(r[2] for r in ratios[ver])
    print(f"{ver}: median over rounds: claim {claim:.3f} x queued, outcome {finish:.3f} x queued (queued {queued:.1f} us)")
