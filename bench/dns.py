#!/usr/bin/env python3
"""Authoritative DNS benchmark: Portico against Knot and NSD, side by side in one run.

All three serve the same 10,000-record zone (8 dnsperf clients), then the same 1,000-record zone
(4 clients), on 127.0.0.1, with the same dnsperf query mix
(70 % existing names, 15 % NXDOMAIN, 15 % wildcard hits). Servers run one at a time; rounds
interleave them; each figure is the median over rounds. NSD runs with rrl-ratelimit 0 (Debian's
default rate-limits). Then each of Portico and Knot loads a 1,000,000-record zone and its resident
memory is read once it answers.

  bench/dns.py [--duration 10] [--rounds 2] [--big 1000000] [--only portico,knot,nsd]

PORTICO_BIN=path measures that binary instead of building target/release/portico.

Needs: knot nsd dnsperf (Debian packages); builds Portico release.
"""

import argparse
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORTICO = Path(os.environ.get("PORTICO_BIN", ROOT / "target" / "release" / "portico"))
PORT = 19053
ZONE = "bench.test"


def write_zone(path, n):
    with open(path, "w") as f:
        f.write(f"$ORIGIN {ZONE}.\n$TTL 300\n")
        f.write("@ SOA ns1 hostmaster 1 7200 900 1209600 300\n@ NS ns1\nns1 A 192.0.2.1\n")
        f.write("*.wild A 192.0.2.99\n")
        for i in range(n):
            f.write(f"host{i} A 10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}\n")


def write_queries(path, n, count=50000):
    rnd = random.Random(7)
    with open(path, "w") as f:
        for _ in range(count):
            r = rnd.random()
            if r < 0.70:
                f.write(f"host{rnd.randrange(n)}.{ZONE} A\n")
            elif r < 0.85:
                f.write(f"missing{rnd.randrange(10 * n)}.{ZONE} A\n")
            else:
                f.write(f"w{rnd.randrange(n)}.wild.{ZONE} A\n")


def answers(port):
    """True once the server answers an SOA query over UDP with the SOA (not REFUSED or SERVFAIL
    while the zone loads)."""
    q = bytes.fromhex("1234010000010000000000000562656e63680474657374000006" + "0001")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.05)
    try:
        s.sendto(q, ("127.0.0.1", port))
        data, _ = s.recvfrom(4096)
        return data[:2] == b"\x12\x34" and data[3] & 0x0F == 0 and data[6:8] != b"\x00\x00"
    except OSError:
        return False
    finally:
        s.close()


def wait_answers(port, deadline):
    end = time.time() + deadline
    while time.time() < end:
        if answers(port):
            return
        time.sleep(0.02)
    raise RuntimeError(f"no DNS answers on {port} after {deadline}s")


def rss_kb(pid):
    total = {"VmRSS": 0, "VmHWM": 0}
    pids = [pid]
    try:
        pids += [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]
    except Exception:
        pass
    for p in pids:
        try:
            for line in open(f"/proc/{p}/status"):
                k = line.split(":")[0]
                if k in total:
                    total[k] += int(line.split()[1])
        except OSError:
            pass
    return total


def start(name, work, zonefile):
    d = work / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    shutil.copy(zonefile, d / f"{ZONE}.zone")
    if name == "portico":
        (d / "portico.toml").write_text(f"""
state_dir = "{d}/state"
[log]
level = "warn"
[dns]
listen = ["127.0.0.1:{PORT}"]
[[zone]]
name = "{ZONE}"
file = "{ZONE}.zone"
""")
        cmd = [str(PORTICO), "serve", "-c", str(d / "portico.toml")]
    elif name == "knot":
        (d / "knot.conf").write_text(f"""
server:
    listen: 127.0.0.1@{PORT}
    rundir: "{d}"
    udp-workers: 2
    tcp-workers: 1
    background-workers: 1
database:
    storage: "{d}/db"
template:
  - id: default
    storage: "{d}"
    file: "%s.zone"
    zonefile-sync: -1
    journal-content: none
    semantic-checks: off
zone:
  - domain: {ZONE}
log:
  - target: stderr
    any: error
""")
        cmd = ["knotd", "-c", str(d / "knot.conf")]
    elif name == "nsd":
        (d / "nsd.conf").write_text(f"""
server:
    ip-address: 127.0.0.1@{PORT}
    username: ""
    zonesdir: "{d}"
    database: ""
    pidfile: "{d}/nsd.pid"
    xfrdfile: "{d}/xfrd.state"
    zonelistfile: "{d}/zone.list"
    server-count: 2
    rrl-ratelimit: 0
    verbosity: 0
remote-control:
    control-enable: no
zone:
    name: {ZONE}
    zonefile: "{ZONE}.zone"
""")
        cmd = ["nsd", "-d", "-c", str(d / "nsd.conf")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(d / "stderr", "w"), start_new_session=True)
    return proc


def stop(proc):
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.3)


def dnsperf(queries, duration, clients=8):
    out = subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(PORT), "-d", str(queries), "-l", str(duration),
                          "-c", str(clients), "-T", "2", "-q", "100", "-t", "1"], capture_output=True, text=True).stdout
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
    lat = float(re.search(r"Average Latency \(s\):\s+([\d.]+)", out).group(1)) * 1000
    lost = int(re.search(r"Queries lost:\s+(\d+)", out).group(1))
    return {"qps": qps, "avg_ms": lat, "lost": lost}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--only", default="portico,knot,nsd")
    args = ap.parse_args()
    for tool in ["knotd", "nsd", "dnsperf"]:
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"{tool} is missing: apt-get install knot nsd dnsperf")
    os.environ["PATH"] += ":/usr/sbin"
    if "PORTICO_BIN" not in os.environ:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "portico"], cwd=ROOT, check=True)
    work = Path(tempfile.mkdtemp(prefix="portico-dnsbench-"))
    # (label, zone size, dnsperf clients)
    cases = [("10,000-record zone, 8 clients", 10_000, 8), ("1,000-record zone, 4 clients", 1_000, 4)]
    files = {}
    for label, size, _ in cases:
        zone, queries = work / f"{size}.zone", work / f"{size}.queries"
        write_zone(zone, size)
        write_queries(queries, size)
        files[label] = (zone, queries)
    names = args.only.split(",")
    results = {}
    for rnd in range(args.rounds):
        for label, _, clients in cases:
            zone, queries = files[label]
            for name in names:
                p = start(name, work, zone)
                try:
                    wait_answers(PORT, 60)
                    r = dnsperf(queries, args.duration, clients)
                    results.setdefault((label, name), []).append(r)
                    print(f"round {rnd + 1} {label:30} {name:8} {r['qps']:>10.0f} q/s  avg {r['avg_ms']:.3f} ms"
                          f"  lost {r['lost']}", flush=True)
                finally:
                    stop(p)
    med = {k: {m: statistics.median(r[m] for r in v) for m in ["qps", "avg_ms", "lost"]} for k, v in results.items()}
    for label, _, _ in cases if args.rounds else []:
        print()
        print(f"| {label} | queries/s | avg latency | lost | vs Knot | vs NSD |")
        print("|---|---|---|---|---|---|")
        for n in names:
            m = med[(label, n)]
            vs = [f"{m['qps'] / med[(label, peer)]['qps']:.2f}x" if (label, peer) in med else "-"
                  for peer in ("knot", "nsd")]
            print(f"| {n} | {m['qps']:.0f} | {m['avg_ms']:.3f} ms | {m['lost']:.0f} | {vs[0]} | {vs[1]} |")

    if args.big:
        big = work / "big.zone"
        write_zone(big, args.big)
        print()
        print(f"| server | {args.big:,}-record zone: load time | RSS | peak RSS |")
        print("|---|---|---|---|")
        for name in ["portico", "knot"]:
            t0 = time.time()
            p = start(name, work, big)
            try:
                wait_answers(PORT, 600)
                # Knot answers SOA before the zone is fully loaded only if it is; ask for a record too.
                loaded = time.time() - t0
                time.sleep(1)
                m = rss_kb(p.pid)
                print(f"| {name} | {loaded:.1f} s | {m['VmRSS'] / 1024:.0f} MB | {m['VmHWM'] / 1024:.0f} MB |", flush=True)
            finally:
                stop(p)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
