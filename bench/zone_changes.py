#!/usr/bin/env python3
"""Zone changes at scale (issue 19): the time from a change to its acknowledgement and to the
new answer, on zones of 10,000, 200,000 and 1,000,000 records, Portico beside Knot.

Portico: one change batch (UPSERT of `_acme-challenge` TXT, as an ACME order makes) POSTed to
the admin API over a kept-alive connection; acknowledged = the HTTP answer; answered = the first
UDP query that returns the new TXT. Knot 3.2 (journal on: `journal-content: changes`): the same
change with `knotc zone-begin`, `zone-set`, `zone-commit` (acknowledged = zone-commit returned;
the three commands are also timed together, as a user runs them). p50/p99 over --changes
changes per zone size, the servers one at a time.

Then the restart: each server applies --restart-changes changes to the largest zone (Portico by
the API, Knot by RFC 2136 with nsupdate), is killed with SIGKILL (no clean shutdown, so the
journal must be replayed), and is timed from start until it answers the last change.

With --nodes 3, Portico also runs as three nodes on one etcd (127.0.0.1-3, `portico-3-nodes`):
the change goes to node 1, and answered = the first moment all three nodes answer the new TXT.

  bench/zone_changes.py [--sizes 10000,200000,1000000] [--changes 100] [--restart-changes 10000]
                        [--nodes 3]

PORTICO_BIN=path measures that binary instead of building target/release/portico (built with
`--features etcd` for --nodes 3).
Needs: knot, knot-dnsutils, bind9-dnsutils (Debian packages); etcd-server, etcd-client for --nodes.
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORTICO = Path(os.environ.get("PORTICO_BIN", ROOT / "target" / "release" / "portico"))
DNS_PORT = 19153
ADMIN_PORT = 19180
ZONE = "bench.test"
SECRET = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="


def write_zone(path, n):
    with open(path, "w") as f:
        f.write(f"$ORIGIN {ZONE}.\n$TTL 300\n")
        f.write("@ SOA ns1 hostmaster 1 7200 900 1209600 300\n@ NS ns1\nns1 A 192.0.2.1\n")
        for i in range(n):
            f.write(f"host{i} A 10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}\n")


def query(name, qtype, port=DNS_PORT, timeout=0.2, ip="127.0.0.1"):
    """One UDP query; the raw answer or None."""
    qid = os.getpid() & 0xFFFF
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack(">HH", qtype, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        # Connected, so that a query sent before the server binds fails at once (ICMP port
        # unreachable) instead of waiting out the timeout: restart times are read to the ms.
        s.connect((ip, port))
        s.send(q)
        data = s.recv(4096)
        return data
    except OSError:
        return None
    finally:
        s.close()


def wait_txt(token, deadline=60.0, ips=("127.0.0.1",)):
    """Waits until the TXT answer holds `token` at every address of `ips`; seconds waited."""
    t0 = time.perf_counter()
    want = token.encode()
    left = list(ips)
    while time.perf_counter() - t0 < deadline:
        left = [ip for ip in left if not ((a := query(f"_acme-challenge.{ZONE}", 16, ip=ip)) and want in a)]
        if not left:
            return time.perf_counter() - t0
    raise RuntimeError(f"{token} not answered after {deadline}s")


def wait_soa(deadline, proc=None, ip="127.0.0.1"):
    end = time.time() + deadline
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}) before answering")
        a = query(ZONE, 6, ip=ip)
        if a and a[3] & 0x0F == 0 and a[6:8] != b"\x00\x00":
            return
        time.sleep(0.01)
    raise RuntimeError(f"no SOA answer after {deadline}s")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Portico:
    name = "portico"
    ips = ("127.0.0.1",)

    def __init__(self, work, zonefile):
        self.d = work / "portico"
        shutil.rmtree(self.d, ignore_errors=True)
        self.d.mkdir()
        shutil.copy(zonefile, self.d / f"{ZONE}.zone")
        (self.d / "portico.toml").write_text(f"""
state_dir = "{self.d}/state"
[log]
level = "warn"
[admin]
listen = "127.0.0.1:{ADMIN_PORT}"
[dns]
listen = ["127.0.0.1:{DNS_PORT}"]
[[zone]]
name = "{ZONE}"
file = "{ZONE}.zone"
""")
        self.proc = None
        self.conn = None

    def start(self):
        self.proc = subprocess.Popen([str(PORTICO), "serve", "-c", str(self.d / "portico.toml")],
                                     stdout=subprocess.DEVNULL, stderr=open(self.d / "stderr", "a"),
                                     start_new_session=True)

    def connect(self):
        self.token = (self.d / "state" / "admin.token").read_text().strip()
        self.conn = http.client.HTTPConnection("127.0.0.1", ADMIN_PORT, timeout=60)

    def change(self, token):
        body = json.dumps({"changes": [{"action": "UPSERT", "name": "_acme-challenge", "type": "TXT",
                                        "ttl": 60, "values": [token]}]})
        t0 = time.perf_counter()
        self.conn.request("POST", f"/api/v1/zones/{ZONE}/changes", body,
                          {"authorization": f"Bearer {self.token}", "content-type": "application/json"})
        r = self.conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"change refused: {r.status} {data[:300]}")
        return time.perf_counter() - t0, None

    def kill(self):
        if self.conn:
            self.conn.close()
            self.conn = None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


class PorticoCluster(Portico):
    """Three Portico nodes on one etcd (started here, on loopback, with its own data)."""
    name = "portico-3-nodes"
    ips = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
    ETCD = "http://127.0.0.1:19379"

    def __init__(self, work, zonefile):
        self.d = work / "cluster"
        shutil.rmtree(self.d, ignore_errors=True)
        self.d.mkdir()
        shutil.copy(zonefile, self.d / f"{ZONE}.zone")
        for n, ip in enumerate(self.ips, 1):
            nd = self.d / f"node{n}"
            nd.mkdir()
            (nd / "portico.toml").write_text(f"""
state_dir = "{nd}/state"
[log]
level = "warn"
[admin]
listen = "{ip}:{ADMIN_PORT}"
[dns]
listen = ["{ip}:{DNS_PORT}"]
[[zone]]
name = "{ZONE}"
file = "../{ZONE}.zone"
[store]
etcd = ["{self.ETCD}"]
""")
        self.procs, self.proc, self.conn = [], None, None

    def start(self):
        etcd = subprocess.Popen(
            ["etcd", "--name", "b", "--data-dir", str(self.d / "etcd"), "--listen-client-urls", self.ETCD,
             "--advertise-client-urls", self.ETCD, "--listen-peer-urls", "http://127.0.0.1:19380",
             "--initial-advertise-peer-urls", "http://127.0.0.1:19380",
             "--initial-cluster", "b=http://127.0.0.1:19380", "--quota-backend-bytes", str(8 << 30)],
            stdout=subprocess.DEVNULL, stderr=open(self.d / "etcd.stderr", "a"), start_new_session=True)
        self.procs = [etcd]
        for _ in range(300):
            r = subprocess.run(["etcdctl", "--endpoints", self.ETCD, "endpoint", "health"],
                               capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"})
            if "is healthy" in r.stdout + r.stderr:
                break
            time.sleep(0.1)
        for n, ip in enumerate(self.ips, 1):
            nd = self.d / f"node{n}"
            p = subprocess.Popen([str(PORTICO), "serve", "-c", str(nd / "portico.toml")],
                                 stdout=subprocess.DEVNULL, stderr=open(nd / "stderr", "a"),
                                 start_new_session=True)
            self.procs.append(p)
            # Node 1 writes the zone into etcd; the others read it from there.
            wait_soa(900, p, ip=ip)
        self.proc = self.procs[1]

    def connect(self):
        self.token = (self.d / "node1" / "state" / "admin.token").read_text().strip()
        self.conn = http.client.HTTPConnection("127.0.0.1", ADMIN_PORT, timeout=60)

    def kill(self):
        if self.conn:
            self.conn.close()
            self.conn = None
        for p in reversed(self.procs):
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


class Knot:
    name = "knot"
    ips = ("127.0.0.1",)

    def __init__(self, work, zonefile):
        self.d = work / "knot"
        shutil.rmtree(self.d, ignore_errors=True)
        self.d.mkdir()
        shutil.copy(zonefile, self.d / f"{ZONE}.zone")
        self.sock = self.d / "knot.sock"
        (self.d / "db").mkdir()  # the journal's database (knotd does not create it)
        (self.d / "knot.conf").write_text(f"""
server:
    listen: 127.0.0.1@{DNS_PORT}
    rundir: "{self.d}"
    udp-workers: 2
    tcp-workers: 1
    background-workers: 1
control:
    listen: "{self.sock}"
database:
    storage: "{self.d}/db"
key:
  - id: upd
    algorithm: hmac-sha256
    secret: {SECRET}
acl:
  - id: update
    key: upd
    action: update
template:
  - id: default
    storage: "{self.d}"
    file: "%s.zone"
    journal-content: changes
    zonefile-sync: -1
    semantic-checks: off
    acl: update
zone:
  - domain: {ZONE}
log:
  - target: stderr
    any: error
""")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(["knotd", "-c", str(self.d / "knot.conf")], stdout=subprocess.DEVNULL,
                                     stderr=open(self.d / "stderr", "a"), start_new_session=True)

    def connect(self):
        pass

    def knotc(self, *args):
        subprocess.run(["knotc", "-s", str(self.sock), *args], check=True, stdout=subprocess.DEVNULL)

    def change(self, token):
        t0 = time.perf_counter()
        self.knotc("zone-begin", ZONE)
        if self._has:  # an UPSERT: the old TXT set goes
            self.knotc("zone-unset", ZONE, "_acme-challenge", "TXT")
        self.knotc("zone-set", ZONE, "_acme-challenge", "60", "TXT", f'"{token}"')
        t1 = time.perf_counter()
        self.knotc("zone-commit", ZONE)
        t2 = time.perf_counter()
        self._has = True
        return t2 - t1, t2 - t0

    _has = False

    def kill(self):
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def nsupdate_many(start, count):
    """Applies `count` RFC 2136 changes through one nsupdate process (for Knot's restart case)."""
    lines = [f"server 127.0.0.1 {DNS_PORT}", f"zone {ZONE}"]
    for i in range(start, start + count):
        lines += [f"update delete _acme-challenge.{ZONE} TXT", f"update add _acme-challenge.{ZONE} 60 TXT \"r{i}\"", "send"]
    subprocess.run(["nsupdate", "-y", f"hmac-sha256:upd:{SECRET}"], input="\n".join(lines) + "\n",
                   text=True, check=True, stdout=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,200000,1000000")
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--restart-changes", type=int, default=10000)
    ap.add_argument("--only", default="portico,knot")
    ap.add_argument("--nodes", type=int, default=1, choices=[1, 3])
    args = ap.parse_args()
    os.environ["PATH"] += ":/usr/sbin"
    for tool in ["knotd", "knotc", "nsupdate"]:
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install knot knot-dnsutils bind9-dnsutils")
    if "PORTICO_BIN" not in os.environ:
        features = ["--features", "etcd"] if args.nodes == 3 else []
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "portico", *features], cwd=ROOT, check=True)
    work = Path(tempfile.mkdtemp(prefix="portico-zchanges-"))
    kinds = {"portico": Portico, "knot": Knot, "portico-3-nodes": PorticoCluster}
    names = args.only.split(",")
    if args.nodes == 3:
        names.append("portico-3-nodes")
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for size in sizes:
        zonefile = work / f"{size}.zone"
        write_zone(zonefile, size)
        for name in names:
            srv = kinds[name](work, zonefile)
            t0 = time.time()
            srv.start()
            try:
                wait_soa(900, srv.proc)
                loaded = time.time() - t0
                srv.connect()
                acks, alls, seen = [], [], []
                for i in range(args.changes):
                    token = f"t{size}-{i}"
                    ack, whole = srv.change(token)
                    acks.append(ack * 1000)
                    if whole is not None:
                        alls.append(whole * 1000)
                    seen.append((ack + wait_txt(token, ips=srv.ips)) * 1000)
                row = (f"| {size:,} | {name} | {pct(acks, 50):.2f} / {pct(acks, 99):.2f} ms | "
                       + (f"{pct(alls, 50):.2f} / {pct(alls, 99):.2f} ms" if alls else "–")
                       + f" | {pct(seen, 50):.2f} / {pct(seen, 99):.2f} ms | {loaded:.1f} s |")
                print(row, flush=True)
                rows.append(row)
            finally:
                srv.kill()
            time.sleep(0.3)
    print()
    print("| zone records | server | acknowledged p50 / p99 | knotc begin+set+commit p50 / p99 | answered p50 / p99 | first load |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(r)

    if args.restart_changes:
        size = sizes[-1]
        zonefile = work / f"{size}.zone"
        print()
        print(f"| server | restart of the {size:,}-record zone after {args.restart_changes:,} changes, killed with SIGKILL |")
        print("|---|---|")
        for name in [n for n in names if n in ("portico", "knot")]:
            srv = kinds[name](work, zonefile)
            srv.start()
            try:
                wait_soa(900)
                srv.connect()
                last = f"r{args.restart_changes - 1}"
                if name == "portico":
                    for i in range(args.restart_changes):
                        srv.change(f"r{i}")
                else:
                    nsupdate_many(0, args.restart_changes)
                wait_txt(last)
            finally:
                srv.kill()
            t0 = time.time()
            srv.start()
            try:
                wait_soa(900)
                wait_txt(last, 900)
                took = time.time() - t0
                extra = ""
                if name == "portico":
                    j = srv.d / "state" / "zones" / f"{ZONE}.journal"
                    extra = f" (journal {j.stat().st_size / 1e6:.1f} MB)" if j.exists() else ""
                print(f"| {name} | {took:.2f} s{extra} |", flush=True)
            finally:
                srv.kill()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
