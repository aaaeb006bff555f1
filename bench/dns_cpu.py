#!/usr/bin/env python3
"""Portico's CPU time per answered query, for comparing builds (alternate them: A B A B).

Serves bench/dns.py's 10,000-record zone with each binary in turn, runs its dnsperf load for 6 s
and reads /proc/<pid>/task/*/stat before and after.

  bench/dns_cpu.py BINARY [BINARY ...]
"""

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dns  # noqa: E402


def ticks(pid):
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        fields = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    os.environ["PATH"] += ":/usr/sbin"
    work = Path(tempfile.mkdtemp(prefix="portico-dnscpu-"))
    zone, queries = work / "10k.zone", work / "queries.txt"
    dns.write_zone(zone, 10_000)
    dns.write_queries(queries, 10_000)
    for binary in sys.argv[1:]:
        dns.PORTICO = Path(binary)
        p = dns.start("portico", work, zone)
        try:
            dns.wait_answers(dns.PORT, 60)
            t0 = ticks(p.pid)
            r = dns.dnsperf(queries, 6)
            t1 = ticks(p.pid)
        finally:
            dns.stop(p)
        per = (t1 - t0) / os.sysconf("SC_CLK_TCK") / (r["qps"] * 6) * 1e6
        print(f"{binary}: {r['qps']:.0f} q/s, Portico CPU {per:.2f} us/query")


if __name__ == "__main__":
    main()
