#!/usr/bin/env python3
"""Cluster mode: three Portico nodes on one etcd, on 127.0.0.1-3 of one machine.

Measures
  1. record change on node 1 -> answered by nodes 2 and 3 (DNS, queried directly),
  2. certificate renewal asked of node 1 -> the new certificate served by all three (TLS),
  3. HTTPS requests per second with wrk against one node, then against all three at once
     (the same total connections), a fixed 200 answered by each node's listener.

  bench/cluster.py [--rounds 10] [--duration 6]      (PORTICO_BIN=path: that binary instead of a fresh build)

Needs: etcd-server, etcd-client, wrk (Debian packages), protoc; builds Portico release with
--features etcd. All three nodes, etcd and wrk share the machine's cores, so (3) says what one
machine does with three nodes, not what three machines would.
"""

import argparse
import json
import os
import random
import re
import shutil
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORTICO = Path(os.environ.get("PORTICO_BIN", ROOT / "target" / "release" / "portico"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait(cond, what, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        time.sleep(0.02)
    sys.exit(f"timed out waiting for {what}")


def dns_a(ip, port, name):
    """The A records for name, asked of ip:port directly (no recursion)."""
    qid = random.randrange(65536)
    q = struct.pack(">HHHHHH", qid, 0, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1)
    try:
        s.sendto(q, (ip, port))
        r, _ = s.recvfrom(4096)
    except OSError:
        return []
    finally:
        s.close()
    an = struct.unpack(">H", r[6:8])[0]
    i = 12 + len(q) - 12  # skip the question, echoed
    out = []
    for _ in range(an):
        if r[i] & 0xC0 == 0xC0:
            i += 2
        else:
            while r[i]:
                i += r[i] + 1
            i += 1
        rtype, _, _, rdlen = struct.unpack(">HHIH", r[i : i + 10])
        i += 10
        if rtype == 1:
            out.append(".".join(str(b) for b in r[i : i + 4]))
        i += rdlen
    return out


def leaf(ip, port, sni):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((ip, port), timeout=2) as raw:
            with ctx.wrap_socket(raw, server_hostname=sni) as s:
                return s.getpeercert(binary_form=True)
    except OSError:
        return None


class Node:
    def __init__(self, base, n, etcd, dns, https):
        self.ip = f"127.0.0.{n}"
        self.state = base / f"node{n}"
        self.config = base / f"node{n}.toml"
        self.config.write_text(
            f"""state_dir = "{self.state}"
[log]
level = "warn"
[admin]
listen = "{self.ip}:0"
[store]
etcd = ["{etcd}"]
[dns]
listen = ["{self.ip}:{dns}"]
[[zone]]
name = "example.test"
[[certificate]]
name = "app"
domains = ["app.example.test"]
issuer = "internal"
[[listener]]
name = "https"
bind = "{self.ip}:{https}"
protocol = "https"
certificates = ["app"]
default_action = {{ fixed_response = {{ status = 200, body = "ok" }} }}
"""
        )
        self.proc = None

    def start(self):
        url = self.state / "admin.url"
        if url.exists():
            url.unlink()
        self.proc = subprocess.Popen([str(PORTICO), "serve", "-c", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait(url.exists, f"node {self.ip}")
        self.admin = url.read_text().strip()
        self.token = (self.state / "admin.token").read_text().strip()

    def call(self, method, path, body=None):
        req = urllib.request.Request(self.admin + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": "Bearer " + self.token,
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read() or b"null")


def wrk(targets, duration, conns):
    procs = [subprocess.Popen(["wrk", "-t1", f"-c{conns}", f"-d{duration}s", url],
                              stdout=subprocess.PIPE, text=True) for url in targets]
    total = 0.0
    for p in procs:
        out = p.communicate()[0]
        m = re.search(r"Requests/sec:\s+([\d.]+)", out)
        total += float(m.group(1)) if m else 0.0
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--duration", type=int, default=6)
    args = ap.parse_args()
    for tool in ["etcd", "wrk"]:
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install etcd-server wrk")
    if "PORTICO_BIN" not in os.environ:
        subprocess.run(["cargo", "build", "--release", "--features", "etcd", "-q"], cwd=ROOT, check=True)
    base = Path(tempfile.mkdtemp(prefix="portico-cluster-bench-"))
    procs = []
    try:
        cport, pport = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{cport}"
        peer = f"http://127.0.0.1:{pport}"
        procs.append(subprocess.Popen(
            ["etcd", "--name", "b", "--data-dir", str(base / "etcd"), "--listen-client-urls", etcd_url,
             "--advertise-client-urls", etcd_url, "--listen-peer-urls", peer,
             "--initial-advertise-peer-urls", peer, "--initial-cluster", f"b={peer}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait(lambda: subprocess.run(["etcdctl", "--endpoints", etcd_url, "endpoint", "health"],
                                    capture_output=True, env={**os.environ, "ETCDCTL_API": "3"}).returncode == 0,
             "etcd")
        dns, https = free_port(), free_port()
        nodes = [Node(base, n, etcd_url, dns, https) for n in (1, 2, 3)]
        for n in nodes:
            n.start()
            procs.append(n.proc)
        wait(lambda: all(leaf(n.ip, https, "app.example.test") for n in nodes), "certificates served")

        # 1. record change -> answered by the other two nodes
        record = []
        for i in range(args.rounds):
            value = f"192.0.2.{i + 1}"
            t0 = time.monotonic()
            nodes[0].call("POST", "/api/v1/zones/example.test/changes",
                          {"changes": [{"action": "UPSERT", "name": "bench", "type": "A", "values": [value]}]})
            wait(lambda: all(dns_a(n.ip, dns, "bench.example.test") == [value] for n in nodes[1:]), "record")
            record.append((time.monotonic() - t0) * 1000)

        # 2. renewal on node 1 -> all three serve the new certificate
        renew = []
        for _ in range(max(3, args.rounds // 2)):
            before = [leaf(n.ip, https, "app.example.test") for n in nodes]
            t0 = time.monotonic()
            nodes[0].call("POST", "/api/v1/certificates/app/renew")
            wait(lambda: all(leaf(n.ip, https, "app.example.test") not in (None, b)
                             for n, b in zip(nodes, before)), "renewal served", timeout=60)
            renew.append((time.monotonic() - t0) * 1000)

        # 3. requests per second: one node, then all three (same total connections)
        one = wrk([f"https://127.0.0.1:{https}/"], args.duration, 48)
        three = wrk([f"https://{n.ip}:{https}/" for n in nodes], args.duration, 16)

        q = lambda xs: (statistics.median(xs), sorted(xs)[int(len(xs) * 0.9) - 1 if len(xs) > 1 else 0])
        print(f"record change on node 1 answered by nodes 2 and 3: median {q(record)[0]:.0f} ms, p90 {q(record)[1]:.0f} ms ({len(record)} changes)")
        print(f"renewal on node 1 served by all three nodes:       median {q(renew)[0]:.0f} ms, p90 {q(renew)[1]:.0f} ms ({len(renew)} renewals)")
        print(f"HTTPS req/s, one node (48 connections):            {one:.0f}")
        print(f"HTTPS req/s, three nodes (3 x 16 connections):     {three:.0f}  ({three / one:.2f}x)")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
