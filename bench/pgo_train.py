#!/usr/bin/env python3
"""Training run for a profile-guided build (scripts/build-pgo): one instrumented Portico serves
the load balancer's benchmark loads (bench/run.py's S4, S1, S3, S2) and the DNS benchmark's
queries (bench/dns.py: UDP and TCP against a 10,000-name zone), then stops with SIGTERM so that
the LLVM profile runtime writes its counts (to LLVM_PROFILE_FILE).

  bench/pgo_train.py PORTICO_BINARY [SECONDS_PER_LOAD]

Needs nginx (the backend), wrk, h2load, dnsperf and openssl.
"""

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dns  # noqa: E402
import run  # noqa: E402


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    binary = Path(sys.argv[1]).resolve()
    secs = int(sys.argv[2]) if len(sys.argv) == 3 else 8
    work = Path(tempfile.mkdtemp(prefix="portico-pgo-"))
    run.make_cert(work)
    zone, queries = work / f"{dns.ZONE}.zone", work / "queries"
    dns.write_zone(zone, 10_000)
    dns.write_queries(queries, 10_000)
    conf = run.portico_config(work, extra=f"""
[dns]
listen = ["127.0.0.1:{dns.PORT}"]
[[zone]]
name = "{dns.ZONE}"
file = "{zone}"
""")
    backend = run.start_backend(work, run.BACKEND_PORT)
    proxy = subprocess.Popen([str(binary), "serve", "-c", str(conf)], stdout=subprocess.DEVNULL,
                             stderr=open(work / "portico.err", "w"), start_new_session=True)
    try:
        run.wait_port(run.TLS_PORT)
        run.wait_port(run.HTTP_PORT)
        dns.wait_answers(dns.PORT, 60)
        # The loads of bench/run.py's scenarios, through its own functions.
        loads = [
            ("S4 plain HTTP", lambda: run.run_wrk(f"http://127.0.0.1:{run.HTTP_PORT}/", secs)),
            ("S1 HTTPS keep-alive", lambda: run.run_wrk(f"https://localhost:{run.TLS_PORT}/", secs)),
            ("S3 HTTP/2", lambda: run.run_h2load(secs, work)),
            ("S2 new TLS connections", lambda: run.run_wrk(f"https://localhost:{run.TLS_PORT}/", 3, close=True)),
        ]
        for label, load in loads:
            print(f"{label}: {load()['rps']:.0f} req/s", flush=True)
        for mode in ("udp", "tcp"):
            out = subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(dns.PORT), "-d", str(queries),
                                  "-l", str(secs), "-c", "8", "-T", "2", "-q", "100", "-t", "1", "-m", mode],
                                 capture_output=True, text=True, check=True).stdout
            qps = [line.strip() for line in out.splitlines() if "Queries per second" in line]
            print(f"DNS over {mode}: {qps}", flush=True)
    finally:
        os.killpg(proxy.pid, signal.SIGTERM)
        os.killpg(backend.pid, signal.SIGKILL)
        code = proxy.wait(timeout=60)
    if code != 0:
        sys.exit(f"portico exited with {code} (see {work}/portico.err): its profile may be missing")


if __name__ == "__main__":
    main()
