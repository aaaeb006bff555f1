#!/usr/bin/env python3
"""Time to a certificate: Portico against certbot, against the same Pebble on this machine.

Portico: seconds from starting `portico serve` (fresh state: new ACME account, HTTP-01) to the first
HTTPS response that verifies against Pebble's root. certbot: seconds for
`certbot certonly --standalone` (fresh state) to exit with a certificate — certbot alone, which
does not serve anything. Pebble runs with PEBBLE_VA_NOSLEEP=1 and resolves every name to
127.0.0.1 through pebble-challtestsrv. Rounds interleave the two; medians are reported.

  bench/acme.py [--rounds 5]

Needs: pebble certbot curl openssl (Debian packages); builds Portico release.
"""

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORTICO = ROOT / "target" / "release" / "portico"
ACME, MGMT, HTTP, HTTPS, DNS = 19400, 19401, 19402, 19403, 19404
DOMAIN = "app.example.test"


def wait_port(port, deadline=20):
    end = time.time() + deadline
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing on {port}")


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def make_pki(d):
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
       "-subj", "/CN=bench CA", "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))
    sh("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=localhost",
       "-keyout", str(d / "pebble.key"), "-out", str(d / "pebble.csr"))
    (d / "ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    sh("openssl", "x509", "-req", "-in", str(d / "pebble.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
       "-CAcreateserial", "-days", "2", "-extfile", str(d / "ext"), "-out", str(d / "pebble.crt"))


def start_pebble(d):
    (d / "pebble.json").write_text(f"""{{"pebble": {{"listenAddress": "127.0.0.1:{ACME}",
      "managementListenAddress": "127.0.0.1:{MGMT}", "certificate": "{d}/pebble.crt", "privateKey": "{d}/pebble.key",
      "httpPort": {HTTP}, "tlsPort": {HTTPS}, "ocspResponderURL": "", "externalAccountBindingRequired": false}}}}""")
    env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0")
    dns = subprocess.Popen(["pebble-challtestsrv", "-dns01", f"127.0.0.1:{DNS}", "-http01", "", "-https01", "",
                            "-tlsalpn01", "", "-management", "127.0.0.1:19405", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    peb = subprocess.Popen(["pebble", "-config", str(d / "pebble.json"), "-dnsserver", f"127.0.0.1:{DNS}",
                            "-strict=false"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    wait_port(ACME)
    return [dns, peb]


def kill(p):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


def portico_run(d):
    run = d / f"portico-{time.time_ns()}"
    run.mkdir()
    (run / "portico.toml").write_text(f"""state_dir = "{run}/state"
[log]
level = "warn"
[acme]
directory = "https://localhost:{ACME}/dir"
ca_roots = ["{d}/ca.pem"]
http_port = {HTTP}
# The name's zone, so that the self-check before ordering resolves it as Pebble does.
[[zone]]
name = "example.test"
[[zone.record]]
name = "app"
type = "A"
values = ["127.0.0.1"]
[[certificate]]
name = "app"
domains = ["{DOMAIN}"]
[[listener]]
name = "http"
bind = "127.0.0.1:{HTTP}"
protocol = "http"
default_action = {{ redirect = {{ protocol = "https", port = {HTTPS} }} }}
[[listener]]
name = "https"
bind = "127.0.0.1:{HTTPS}"
protocol = "https"
certificates = ["app"]
default_action = {{ fixed_response = {{ status = 200, body = "ok" }} }}
""")
    t0 = time.monotonic()
    p = subprocess.Popen([str(PORTICO), "serve", "-c", str(run / "portico.toml")], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while True:
            r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(d / "root.pem"),
                                "--resolve", f"{DOMAIN}:{HTTPS}:127.0.0.1", f"https://{DOMAIN}:{HTTPS}/"],
                               capture_output=True, text=True)
            if r.stdout == "200":
                return time.monotonic() - t0
            if time.monotonic() - t0 > 120:
                raise RuntimeError("Portico did not serve a Pebble certificate in 120 s")
            time.sleep(0.01)
    finally:
        kill(p)
        time.sleep(0.2)


def certbot_run(d):
    run = d / f"certbot-{time.time_ns()}"
    run.mkdir()
    env = dict(os.environ, REQUESTS_CA_BUNDLE=str(d / "ca.pem"))
    t0 = time.monotonic()
    sh("certbot", "certonly", "--standalone", "--non-interactive", "--agree-tos", "--register-unsafely-without-email",
       "--server", f"https://localhost:{ACME}/dir", "--http-01-port", str(HTTP), "--http-01-address", "127.0.0.1",
       "-d", DOMAIN, "--config-dir", str(run / "etc"), "--work-dir", str(run / "work"), "--logs-dir", str(run / "logs"),
       env=env)
    return time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    for tool in ["pebble", "pebble-challtestsrv", "certbot", "curl", "openssl"]:
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: apt-get install pebble certbot curl openssl")
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "portico"], cwd=ROOT, check=True)
    d = Path(tempfile.mkdtemp(prefix="portico-acmebench-"))
    make_pki(d)
    procs = start_pebble(d)
    try:
        sh("curl", "-s", "--cacert", str(d / "ca.pem"), "-o", str(d / "root.pem"), f"https://localhost:{MGMT}/roots/0")
        portico, certbot = [], []
        for i in range(args.rounds):
            portico.append(portico_run(d))
            certbot.append(certbot_run(d))
            print(f"round {i + 1}: portico {portico[-1]:.2f} s (serve to first HTTPS response), "
                  f"certbot {certbot[-1]:.2f} s (certonly alone)", flush=True)
        p, c = statistics.median(portico), statistics.median(certbot)
        print()
        print("| | median seconds | what is timed |")
        print("|---|---|---|")
        print(f"| portico | {p:.2f} | `portico serve` start to the first HTTPS response with the Pebble certificate |")
        print(f"| certbot | {c:.2f} | `certbot certonly --standalone` start to exit (no serving) |")
        print(f"| ratio | {c / p:.1f}x | certbot / portico |")
    finally:
        for p in procs:
            kill(p)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
