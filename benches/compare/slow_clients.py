#!/usr/bin/env python3
"""Latency of ordinary clients while others refuse to read or to send.

Starts an nginx upstream (a small answer on /, 1 MiB on /big) and the
release build of switchyard in front of it, on loopback, then measures
ordinary keep-alive GETs with wrk three times: alone; while N clients ask
for /big and never read it; while N clients send a request body one byte
every few seconds. Prints wrk's latency percentiles and switchyard's RSS for
each. Run from the repository root after `cargo build --release`:

    python3 benches/compare/slow_clients.py [--clients 500] [--duration 8]

Bounded: every attacking socket is closed when its phase ends, and every
process started here is stopped at the end.
"""

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SWITCHYARD = os.path.join(ROOT, "target", "release", "switchyard")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, deadline=10):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wrk(port, duration):
    out = subprocess.run(
        ["wrk", "-t1", "-c10", f"-d{duration}s", "--latency", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    latency_max = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out).group(1)
    timeouts = re.search(r"timeout (\d+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": pct.get("50"), "p99": pct.get("99"), "max": latency_max,
            "timeouts": int(timeouts.group(1)) if timeouts else 0,
            "non2xx": int(errors.group(1)) if errors else 0}


def non_readers(port, n):
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        socks.append(s)
    return socks


def slow_senders(port, n):
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\nx")
        socks.append(s)
    return socks


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--duration", type=int, default=8)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="switchyard-slow-")
    up = free_port()
    with open(os.path.join(tmp, "big"), "wb") as f:
        f.write(b"x" * (1 << 20))
    with open(os.path.join(tmp, "nginx.conf"), "w") as f:
        f.write(f"""worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/nginx.log;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{up}; root {tmp};
    location = / {{ return 200 "ok\\n"; }}
    location = /big {{ }}
    location = /upload {{ return 200 "read\\n"; }}
    location = /health {{ return 200 "ok\\n"; }} }} }}
""")
    port = free_port()
    os.makedirs(os.path.join(tmp, "run"))
    with open(os.path.join(tmp, "switchyard.toml"), "w") as f:
        f.write(f'[listener]\nbind = "127.0.0.1:{port}"\n[pools.blue]\nupstreams = ["127.0.0.1:{up}"]\n'
                f'[pools.green]\nupstreams = ["127.0.0.1:{up}"]\n')
    nginx = subprocess.Popen(["nginx", "-c", os.path.join(tmp, "nginx.conf"), "-g", "daemon off;"])
    proxy = subprocess.Popen([SWITCHYARD, "serve", "--config", os.path.join(tmp, "switchyard.toml")],
                             stderr=subprocess.DEVNULL)
    try:
        wait_port(up)
        wait_port(port)
        phases = [("alone", None), (f"{args.clients} clients not reading 1 MiB", non_readers),
                  (f"{args.clients} clients sending a body a byte at a time", slow_senders)]
        print("| phase | req/s | p50 | p99 | max | timeouts | non-2xx | switchyard RSS MiB |\n|---|---|---|---|---|---|---|---|")
        for name, attack in phases:
            socks = attack(port, args.clients) if attack else []
            time.sleep(1)
            figures = wrk(port, args.duration)
            rss = rss_kib(proxy.pid) / 1024
            for s in socks:
                s.close()
            print(f"| {name} | {figures['rps']:.0f} | {figures['p50']} | {figures['p99']} | {figures['max']} "
                  f"| {figures['timeouts']} | {figures['non2xx']} | {rss:.1f} |")
            time.sleep(1)
    finally:
        proxy.send_signal(signal.SIGTERM)
        nginx.send_signal(signal.SIGQUIT)
        for p in (proxy, nginx):
            try:
                p.wait(timeout=35)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
