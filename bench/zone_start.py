#!/usr/bin/env python3
"""Start time of a large zone (issue 19), Portico builds side by side: the time from
`portico serve` to the first SOA answer on a zone of --records records with nothing to replay,
each build started --rounds times, alternating. Uses bench/zone_changes.py's zone and setup.

  bench/zone_start.py BUILD [BUILD ...] [--records 1000000] [--rounds 3]

Each BUILD is a path to a portico binary (copy target/release/portico aside between builds).
"""

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("zone_changes", HERE / "zone_changes.py")
zc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(zc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("builds", nargs="+")
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="portico-zstart-") as tmp:
        work = Path(tmp)
        zone = work / "zone.txt"
        zc.write_zone(zone, args.records)
        servers = {}
        for i, b in enumerate(args.builds):
            zc.PORTICO = Path(b)
            d = work / f"build{i}"
            d.mkdir()
            s = zc.Portico(d, zone)
            # The first start imports the file and stores the zone; it is not timed.
            s.start()
            zc.wait_soa(900, s.proc)
            s.kill()
            servers[b] = s
        for _ in range(args.rounds):
            for b in args.builds:
                zc.PORTICO = Path(b)
                s = servers[b]
                t0 = time.perf_counter()
                s.start()
                zc.wait_soa(900, s.proc)
                print(f"{b}: {time.perf_counter() - t0:.3f} s", flush=True)
                s.kill()


if __name__ == "__main__":
    main()
