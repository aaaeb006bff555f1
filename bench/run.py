#!/usr/bin/env python3
"""Load balancer benchmark: Portico against nginx, HAProxy and Caddy, side by side in one run.

Each proxy terminates TLS with the same ECDSA P-256 certificate in front of the same keep-alive
backend (an nginx instance answering a fixed 200) on loopback, and is measured in four scenarios:

  S1  HTTP/1.1 keep-alive over TLS            wrk
  S2  a new TLS connection per request        wrk with Connection: close
  S3  HTTP/2, 10 streams per connection        h2load -c 10 -m 10
  S4  plain HTTP through the proxy            wrk
  S5  one of two targets killed (SIGKILL) in the middle of a plain-HTTP GET load: failed
      requests (wrk's non-2xx and socket errors), for Portico and for nginx (whose default
      `proxy_next_upstream error timeout` retries idempotent requests) as the reference

All proxies are started at once, each on ports of its own, and stay up for the whole run; they are
measured one at a time (the others idle). Within a round each scenario is run for every proxy in
turn before the next scenario, so that the figures compared with each other are taken within
seconds of each other (throughput on a shared 2-core machine drifts by 10-20 % over minutes), and
each round rotates who goes first (round 1: portico, nginx, haproxy, caddy; round 2: nginx,
haproxy, caddy, portico; ...). Each figure is the median over rounds. Peak RSS is the sum of VmHWM
over the proxy's processes at the end of the run (S1-S4, every round). S5 runs with a proxy
instance of its own after each round's S1-S4. A second table gives, per scenario, Portico's
req/s over the best of nginx and HAProxy in each round and the median of those ratios: figures
paired within a round, which the machine's drift between rounds does not move. Usage:

  bench/run.py [--duration 8] [--rounds 2] [--only portico,nginx] [--scenarios S1,S4,S5]

PORTICO_BIN=path measures that binary instead of building target/release/portico.

Needs: nginx haproxy caddy wrk nghttp2-client openssl (Debian packages); builds Portico release.
"""

import argparse
import json
import os
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
BACKEND_PORT = 18900
S5_BACKENDS = [18901, 18902]
TLS_PORT = 18943
HTTP_PORT = 18980
CONNS = 64


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def wait_port(port, deadline=15):
    end = time.time() + deadline
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {deadline}s")


def wait_port_free(port, deadline=15):
    end = time.time() + deadline
    while time.time() < end:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.close()
            return
        except OSError:
            s.close()
            time.sleep(0.05)
    raise RuntimeError(f"port {port} still busy")


def tree_pids(pid):
    pids = [pid]
    try:
        out = sh(["pgrep", "-P", str(pid)]).stdout.split()
    except subprocess.CalledProcessError:
        out = []
    for c in out:
        pids += tree_pids(int(c))
    return pids


def peak_rss_kb(pid):
    total = 0
    for p in tree_pids(pid):
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


class Proxy:
    """One proxy instance. `slot` picks its ports (TLS_PORT + slot, HTTP_PORT + slot) and names its
    files, so that several instances run side by side."""

    def __init__(self, name, work, targets=(BACKEND_PORT,), slot=0):
        self.name, self.work, self.proc, self.targets = name, work, None, list(targets)
        self.tls_port, self.http_port = TLS_PORT + slot, HTTP_PORT + slot
        self.tag = f"{name}-{slot}"

    def start(self):
        cmd = self.command()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.work / f"{self.tag}.err", "w"),
                                     start_new_session=True)
        wait_port(self.tls_port)
        wait_port(self.http_port)

    def stop(self):
        rss = peak_rss_kb(self.proc.pid)
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        wait_port_free(self.tls_port)
        wait_port_free(self.http_port)
        return rss


def portico_config(work, targets=(BACKEND_PORT,), extra="", tls_port=TLS_PORT, http_port=HTTP_PORT, tag="portico"):
    """The benchmark's Portico config (TLS and plain listeners in front of `targets`), with
    `extra` TOML appended; returns its path."""
    conf = work / f"{tag}.toml"
    conf.write_text(f"""
state_dir = "{work}/{tag}-state"
[log]
level = "warn"
[[certificate]]
name = "bench"
cert_file = "{work}/cert.pem"
key_file = "{work}/key.pem"
[[target_group]]
name = "backend"
targets = [{", ".join(f'"127.0.0.1:{p}"' for p in targets)}]
[[listener]]
name = "https"
bind = "127.0.0.1:{tls_port}"
protocol = "https"
certificates = ["bench"]
default_action = {{ forward = "backend" }}
[[listener]]
name = "http"
bind = "127.0.0.1:{http_port}"
protocol = "http"
default_action = {{ forward = "backend" }}
{extra}""")
    return conf


def make_cert(work):
    """The ECDSA P-256 certificate every proxy serves (work/cert.pem, work/key.pem)."""
    sh(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "30",
        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-keyout", str(work / "key.pem"), "-out", str(work / "cert.pem")])


class Portico(Proxy):
    def command(self):
        conf = portico_config(self.work, self.targets, tls_port=self.tls_port, http_port=self.http_port, tag=self.tag)
        return [str(PORTICO), "serve", "-c", str(conf)]


class Nginx(Proxy):
    def command(self):
        conf = self.work / f"nginx-proxy-{self.tag}.conf"
        conf.write_text(f"""
worker_processes auto;
daemon off;
pid {self.work}/{self.tag}.pid;
error_log {self.work}/{self.tag}.error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  upstream backend {{ {" ".join(f"server 127.0.0.1:{p};" for p in self.targets)} keepalive 128; }}
  ssl_session_cache shared:SSL:10m;
  ssl_session_tickets on;
  server {{
    listen 127.0.0.1:{self.tls_port} ssl http2;
    ssl_certificate {self.work}/cert.pem;
    ssl_certificate_key {self.work}/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
  server {{
    listen 127.0.0.1:{self.http_port};
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
        return ["nginx", "-c", str(conf), "-e", str(self.work / f"{self.tag}.error.log")]


class Haproxy(Proxy):
    def command(self):
        pem = self.work / "combined.pem"
        pem.write_text((self.work / "cert.pem").read_text() + (self.work / "key.pem").read_text())
        conf = self.work / f"haproxy-{self.tag}.cfg"
        conf.write_text(f"""
global
  nbthread 2
  maxconn 8000
  tune.ssl.default-dh-param 2048
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend tls
  bind 127.0.0.1:{self.tls_port} ssl crt {pem} alpn h2,http/1.1
  default_backend be
frontend plain
  bind 127.0.0.1:{self.http_port}
  default_backend be
backend be
{chr(10).join(f"  server s{i} 127.0.0.1:{p}" for i, p in enumerate(self.targets))}
""")
        return ["haproxy", "-f", str(conf), "-db"]


class Caddy(Proxy):
    def command(self):
        conf = self.work / f"Caddyfile-{self.tag}"
        conf.write_text(f"""
{{
  admin off
  auto_https off
}}
https://127.0.0.1:{self.tls_port}, https://localhost:{self.tls_port} {{
  tls {self.work}/cert.pem {self.work}/key.pem
  reverse_proxy {" ".join(f"127.0.0.1:{p}" for p in self.targets)}
}}
http://127.0.0.1:{self.http_port} {{
  reverse_proxy {" ".join(f"127.0.0.1:{p}" for p in self.targets)}
}}
""")
        env_home = self.work / "caddy-home"
        env_home.mkdir(exist_ok=True)
        os.environ["XDG_DATA_HOME"] = str(env_home)
        os.environ["XDG_CONFIG_HOME"] = str(env_home)
        return ["caddy", "run", "--config", str(conf), "--adapter", "caddyfile"]


PROXIES = {"portico": Portico, "nginx": Nginx, "haproxy": Haproxy, "caddy": Caddy}


def parse_wrk(out):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def lat(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    return {"rps": rps, "p50_ms": lat(50), "p99_ms": lat(99), "errors": errors}


def run_wrk(url, duration, close=False):
    cmd = ["wrk", "-t2", f"-c{CONNS if not close else 16}", f"-d{duration}s", "--latency"]
    if close:
        cmd += ["-H", "Connection: close"]
    return parse_wrk(sh(cmd + [url]).stdout)


def run_h2load(duration, work, port=TLS_PORT):
    # h2load appends to its log file: a fresh file per run, or a run's percentiles would include
    # every earlier run's requests. On tmpfs when there is one (no disk writeback during the load).
    shm = Path("/dev/shm")
    log = (shm if shm.is_dir() and os.access(shm, os.W_OK) else work) / f"portico-bench-h2load-{os.getpid()}.log"
    log.unlink(missing_ok=True)
    try:
        out = sh(["h2load", "-c", "10", "-m", "10", "-t", "2", "-D", str(duration), "--log-file", str(log),
                  f"https://localhost:{port}/"]).stdout
        rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
        times = sorted(int(l.split("\t")[2]) / 1000 for l in log.read_text().splitlines() if l.strip())
    finally:
        log.unlink(missing_ok=True)
    m = re.search(r"(\d+) failed, (\d+) errored", out)
    errors = int(m.group(1)) + int(m.group(2)) if m else 0
    return {"rps": rps, "p50_ms": times[len(times) // 2], "p99_ms": times[int(len(times) * 0.99)], "errors": errors}


def start_backend(work, port):
    conf = work / f"backend-{port}.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {work}/backend-{port}.pid;
error_log {work}/backend-{port}.error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "hello from the backend\\n"; }} }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-e", str(work / f"backend-{port}.error.log")],
                            start_new_session=True, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc


def run_s5(name, duration, work):
    """One of two targets SIGKILLed halfway through a GET load; returns wrk's figures."""
    procs = [start_backend(work, p) for p in S5_BACKENDS]
    proxy = PROXIES[name](name, work, targets=S5_BACKENDS, slot=S5_SLOT)
    proxy.start()
    try:
        wrk = subprocess.Popen(["wrk", "-t2", f"-c{CONNS}", f"-d{duration}s", "--latency",
                                f"http://127.0.0.1:{proxy.http_port}/"], stdout=subprocess.PIPE, text=True)
        time.sleep(duration / 2)
        os.killpg(procs[1].pid, signal.SIGKILL)
        procs[1].wait()
        out, _ = wrk.communicate(timeout=duration * 3 + 30)
        return parse_wrk(out)
    finally:
        proxy.stop()
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


SCENARIOS = {
    "S1 h1 keep-alive TLS": lambda d, w, p: run_wrk(f"https://localhost:{p.tls_port}/", d),
    "S2 new TLS conn/request": lambda d, w, p: run_wrk(f"https://localhost:{p.tls_port}/", d, close=True),
    "S3 h2 10 streams/conn": lambda d, w, p: run_h2load(d, w, p.tls_port),
    "S4 plain HTTP": lambda d, w, p: run_wrk(f"http://127.0.0.1:{p.http_port}/", d),
}
# Run with a proxy of its own (two targets), for these proxies only.
S5 = "S5 target killed, failed req"
S5_PROXIES = ("portico", "nginx")
S5_SLOT = 9  # the S5 instance's ports, apart from the slots of the instances measured in S1-S4


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", default=",".join(PROXIES))
    ap.add_argument("--scenarios", default="S1,S2,S3,S4,S5", help="prefixes of the scenarios to run")
    ap.add_argument("--json", help="write raw results here")
    args = ap.parse_args()
    wanted = args.scenarios.split(",")
    scenarios = {k: v for k, v in SCENARIOS.items() if k.split()[0] in wanted}
    for tool in ["nginx", "haproxy", "caddy", "wrk", "h2load", "openssl"]:
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install nginx haproxy caddy wrk nghttp2-client openssl")
    if "PORTICO_BIN" not in os.environ:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "portico"], cwd=ROOT, check=True)
    work = Path(tempfile.mkdtemp(prefix="portico-bench-"))
    make_cert(work)
    backend = start_backend(work, BACKEND_PORT)
    results = {}  # (proxy, scenario) -> list of runs
    rss = {}
    proxies = {}
    try:
        names = args.only.split(",")
        for slot, name in enumerate(names):
            proxies[name] = PROXIES[name](name, work, slot=slot)
            proxies[name].start()
        for rnd in range(args.rounds):
            # Each round starts with the next proxy, so that no proxy always goes first or last.
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for sc, fn in scenarios.items():
                for name in order:
                    r = fn(args.duration, work, proxies[name])
                    results.setdefault((name, sc), []).append(r)
                    print(f"round {rnd + 1} {name:8} {sc:26} {r['rps']:>10.0f} req/s  p50 {r['p50_ms']:.2f} ms"
                          f"  p99 {r['p99_ms']:.2f} ms  errors {r['errors']}", flush=True)
            for name in order:
                if "S5" in wanted and name in S5_PROXIES:
                    r = run_s5(name, args.duration, work)
                    results.setdefault((name, S5), []).append(r)
                    print(f"round {rnd + 1} {name:8} {S5:26} {r['rps']:>10.0f} req/s  failed {r['errors']}", flush=True)
    finally:
        for name, proxy in proxies.items():
            if proxy.proc is not None:
                rss[name] = proxy.stop()
        os.killpg(backend.pid, signal.SIGKILL)
        backend.wait()
    report(results, rss, names, scenarios)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": {f"{k[0]}|{k[1]}": v for k, v in results.items()},
                                               "peak_rss_kb": rss}, indent=1))
    shutil.rmtree(work, ignore_errors=True)


def paired_ratios(results, scenarios):
    """Per scenario, Portico's req/s over the best of nginx and HAProxy in each round (figures
    taken seconds apart), and per round whether Portico's p99 is no worse than the lower of
    theirs. The machine drifts between rounds; the median of each proxy's own figures can then
    set one proxy's fast round against another's slow one, while these ratios cannot."""
    out = {}
    for sc in scenarios:
        mine = results.get(("portico", sc))
        peers = [results[(n, sc)] for n in ("nginx", "haproxy") if (n, sc) in results]
        if not mine or not peers:
            continue
        rounds = min(len(mine), *(len(p) for p in peers))
        ratios = [mine[i]["rps"] / max(p[i]["rps"] for p in peers) for i in range(rounds)]
        p99_ok = [mine[i]["p99_ms"] <= min(p[i]["p99_ms"] for p in peers) for i in range(rounds)]
        out[sc] = (ratios, p99_ok)
    return out


def report(results, rss, names, scenarios):
    med = {k: {m: statistics.median(r[m] for r in v) for m in ["rps", "p50_ms", "p99_ms", "errors"]}
           for k, v in results.items()}
    print()
    print("| scenario | " + " | ".join(names) + " | portico / best of nginx, haproxy |")
    print("|---|" + "---|" * len(names) + "---|")
    for sc in scenarios:
        cells = []
        for n in names:
            m = med[(n, sc)]
            cells.append(f"{m['rps']:.0f} req/s, p50 {m['p50_ms']:.2f} / p99 {m['p99_ms']:.2f} ms")
        peers = [med[(n, sc)]["rps"] for n in ("nginx", "haproxy") if (n, sc) in med]
        ratio = f"{med[('portico', sc)]['rps'] / max(peers):.2f}x" if peers and ("portico", sc) in med else "-"
        print(f"| {sc} | " + " | ".join(cells) + f" | {ratio} |")
    print("| peak RSS | " + " | ".join(f"{rss[n] / 1024:.1f} MB" for n in names) + " | |")
    paired = paired_ratios(results, scenarios)
    if paired:
        print()
        print("| scenario | portico / best of nginx, haproxy in each round | median | rounds ahead "
              "| rounds with p99 no worse |")
        print("|---|---|---|---|---|")
        for sc, (ratios, p99_ok) in paired.items():
            print(f"| {sc} | " + ", ".join(f"{r:.3f}" for r in ratios) + f" | {statistics.median(ratios):.2f}x"
                  f" | {sum(r >= 1 for r in ratios)} of {len(ratios)} | {sum(p99_ok)} of {len(p99_ok)} |")
    if any(k[1] == S5 for k in results):
        print()
        print(f"| {S5} (each round) | " + " | ".join(n for n in names if (n, S5) in results) + " |")
        print("|---|" + "---|" * sum(1 for n in names if (n, S5) in results))
        print("| failed requests | " + " | ".join(
            ", ".join(str(r["errors"]) for r in results[(n, S5)]) for n in names if (n, S5) in results) + " |")


if __name__ == "__main__":
    main()
