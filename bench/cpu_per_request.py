#!/usr/bin/env python3
"""CPU time per request of a running proxy, normalised by its backend's.

Throughput on a 2-core machine moves by 20-40 % between runs (wrk, the backend and the proxy
share the cores); CPU per request is the steadier figure for comparing two builds or two
proxies. Reads /proc/<pid>/task/*/stat of the processes whose command line matches each pattern
(and their children) before and after 4 s of `wrk -t2 -c64`, and prints microseconds of CPU per
answered request for the proxy, the backend and wrk. The backend's work per request is fixed, so
proxy / backend compares runs made minutes apart.

  bench/cpu_per_request.py [--h2] PROXY_PATTERN BACKEND_PATTERN URL

With --h2 the load is `h2load -c 10 -m 10 -t 2` (the benchmark's S3) instead of wrk.

Example (docs/benchmarks.md, issue 13): the backend that bench/run.py starts (its config is
backend-18900.conf) and Portico serving the benchmark's plain-HTTP listener:
  bench/cpu_per_request.py "portico serve" backend-18900.conf http://127.0.0.1:18980/
"""

import os
import re
import subprocess
import sys
import time


def ticks(pids):
    total = 0
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            fields = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total


def pids_of(pattern):
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    pids = [int(x) for x in out.split() if int(x) != os.getpid()]
    for p in list(pids):
        kids = subprocess.run(["pgrep", "-P", str(p)], capture_output=True, text=True).stdout
        pids += [int(x) for x in kids.split()]
    return pids


def main():
    args = sys.argv[1:]
    h2 = args[:1] == ["--h2"]
    if h2:
        args = args[1:]
    if len(args) != 3:
        sys.exit(__doc__)
    proxy, backend, url = pids_of(args[0]), pids_of(args[1]), args[2]
    load = ["h2load", "-c", "10", "-m", "10", "-t", "2", "-D", "5"] if h2 else ["wrk", "-t2", "-c64", "-d5s"]
    wrk = subprocess.Popen(load + [url], stdout=subprocess.PIPE, text=True)
    time.sleep(0.1)
    before = (ticks(proxy), ticks(backend), ticks([wrk.pid]))
    t0 = time.time()
    time.sleep(4)
    after = (ticks(proxy), ticks(backend), ticks([wrk.pid]))
    t1 = time.time()
    out = wrk.communicate()[0]
    if h2:
        rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    else:
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    hz = os.sysconf("SC_CLK_TCK")
    per = [(a - b) / hz / (rps * (t1 - t0)) * 1e6 for a, b in zip(after, before)]
    print(f"{args[0]}: {rps:.0f} req/s; CPU us/request: proxy {per[0]:.1f} backend {per[1]:.1f} "
          f"wrk {per[2]:.1f}; proxy/backend {per[0] / per[1]:.2f}")


if __name__ == "__main__":
    main()
