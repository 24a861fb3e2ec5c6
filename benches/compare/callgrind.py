#!/usr/bin/env python3
"""Instructions switchyard's own code executes per request, under callgrind.

Starts the comparison's upstream (see compare.py) and switchyard (release
build) under `valgrind --tool=callgrind` with instrumentation off, warms it
up, turns counting on for a fixed load (wrk, keep-alive connections), and
divides the instructions counted by the requests served. Run it for the
proxied small GET and for the gate's 503:

    cargo build --release && python3 benches/compare/callgrind.py --conns 50
    python3 benches/compare/callgrind.py --conns 50 --maintenance

Figures are exact for a given build and load, unlike timings: they move only
when the code (or the libraries) do. Each run also leaves the profile in the
printed directory, for `callgrind_annotate`.
"""

import argparse
import glob
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conns", type=int, default=50, help="keep-alive connections")
    parser.add_argument("--duration", type=int, default=5, help="seconds of counted load")
    parser.add_argument("--maintenance", action="store_true", help="measure the gate's 503")
    parser.add_argument("--access-log", action="store_true", help="with the access log on, to a file")
    args = parser.parse_args()

    bench = compare.Bench(argparse.Namespace(duration=args.duration))
    try:
        bench.start_upstream()
        port = compare.free_port()
        bench.config_switchyard(port, args.maintenance, "blue")
        config = os.path.join(bench.dir, "switchyard", "switchyard.toml")
        if args.access_log:
            # Counted with the writer thread's work: callgrind counts every thread.
            with open(config, "a") as f:
                f.write(f'\n[log]\naccess = "{os.path.join(bench.dir, "access.log")}"\n')
        out = os.path.join(bench.dir, "callgrind.out")
        proc = bench.procs.start(
            [
                "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                compare.SWITCHYARD, "serve", "--config",
                os.path.join(bench.dir, "switchyard", "switchyard.toml"),
            ],
            compare.CPU_PROXY,
            env=dict(os.environ, RUST_LOG="warn"),
            log=os.path.join(bench.dir, "switchyard.log"),
        )
        compare.wait_port(port, deadline=60)
        bench.wrk(port, "/", args.conns, 2)
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
        figures = bench.wrk(port, "/", args.conns, args.duration)
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True, capture_output=True)
        bench.procs.stop(proc, sig=compare.signal.SIGINT)
        time.sleep(0.5)
        profile = sorted(glob.glob(out + "*"))[-1]
        totals = subprocess.run(["callgrind_annotate", profile], capture_output=True, text=True).stdout
        instructions = next(
            int(line.split()[0].replace(",", ""))
            for line in totals.splitlines()
            if "PROGRAM TOTALS" in line
        )
        what = "503 from the gate" if args.maintenance else "proxied small GET"
        if args.access_log:
            what += " (access log on)"
        print(
            f"{what}, {args.conns} keep-alive connections: {figures['requests']} requests, "
            f"{instructions / max(figures['requests'], 1):,.0f} instructions per request (profile: {profile})"
        )
    finally:
        bench.procs.stop_all()


if __name__ == "__main__":
    main()
