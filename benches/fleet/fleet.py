#!/usr/bin/env python3
"""Switching a fleet: five switchyard instances holding one decision through a
real etcd, all on this machine (127.0.0.1 only).

1. Latency: SWITCHES switches through one instance, each acknowledged by all
   five; the time until the call answers, p50 / p99 / max.
2. Under load: clients send keep-alive GETs through all five instances while
   SWITCHES more switches are made; every failed request is counted, and
   every request sent after a switch's call returned that still reached the
   old pool.

Usage: benches/fleet/run [--switches 100] [--clients 10]
Needs: the release binary (built by run), etcd (Debian's etcd-server).
"""

import argparse
import datetime
import http.client
import http.server
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
BINARY = os.path.join(ROOT, "target", "release", "switchyard")
INSTANCES = 5


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Color(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    color = b""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.color)))
        self.end_headers()
        self.wfile.write(self.color)

    def log_message(self, *args):
        pass


def upstream(color):
    handler = type(color, (Color,), {"color": color.encode()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self.path)


def admin(socket_path, method, path, body=None):
    conn = UnixConnection(socket_path)
    conn.request(method, path, body=json.dumps(body) if body else None,
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, json.loads(data or b"null")


def wait_for(what, check, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"never happened: {what}")


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--switches", type=int, default=100)
    parser.add_argument("--clients", type=int, default=10)
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="switchyard-fleet-")
    processes = []
    try:
        client_port, peer_port = free_port(), free_port()
        endpoint = f"http://127.0.0.1:{client_port}"
        processes.append(subprocess.Popen(
            ["etcd", "--name", "bench", "--data-dir", os.path.join(work, "etcd"),
             "--listen-client-urls", endpoint, "--advertise-client-urls", endpoint,
             "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
             "--initial-cluster", f"bench=http://127.0.0.1:{peer_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        def etcd_up():
            conn = http.client.HTTPConnection("127.0.0.1", client_port, timeout=1)
            conn.request("GET", "/health")
            return b"true" in conn.getresponse().read()
        wait_for("etcd answers", etcd_up)

        blue, green = upstream("blue"), upstream("green")
        instances = []
        for i in range(1, INSTANCES + 1):
            directory = os.path.join(work, f"edge-{i}")
            os.makedirs(os.path.join(directory, "run"))
            port = free_port()
            config = os.path.join(directory, "switchyard.toml")
            with open(config, "w") as f:
                f.write(f"""[listener]
bind = "127.0.0.1:{port}"
[pools.blue]
upstreams = ["127.0.0.1:{blue}"]
[pools.green]
upstreams = ["127.0.0.1:{green}"]
[health]
interval = "1s"
[cluster]
endpoints = ["{endpoint}"]
prefix = "/bench"
instance = "edge-{i}"
ack_timeout = "5s"
lease_ttl = "10s"
""")
            processes.append(subprocess.Popen(
                [BINARY, "serve", "--config", config],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            instances.append((port, os.path.join(directory, "run", "admin.sock")))
        socket_path = instances[0][1]
        wait_for("every instance registered", lambda: len(
            admin(socket_path, "GET", "/v1/status")[1]["cluster"]["instances"]) == INSTANCES)

        colors = ["green", "blue"]

        def switch(n):
            started = time.monotonic()
            status, doc = admin(socket_path, "POST", "/v1/switch", {"to": colors[n % 2]})
            if status != 200:
                sys.exit(f"switch answered {status}: {doc}")
            return started, time.monotonic()

        latencies = []
        for n in range(args.switches):
            started, returned = switch(n)
            latencies.append((returned - started) * 1000)

        # Under load: every request records when it was sent and what answered.
        stop = threading.Event()
        records = []
        failures = [0]
        lock = threading.Lock()

        def client(port):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            mine = []
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    conn.request("GET", "/")
                    response = conn.getresponse()
                    body = response.read().decode()
                    if response.status != 200:
                        with lock:
                            failures[0] += 1
                    mine.append((sent, time.monotonic(), body))
                except (OSError, http.client.HTTPException):
                    with lock:
                        failures[0] += 1
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            with lock:
                records.extend(mine)

        threads = [threading.Thread(target=client, args=(instances[i % INSTANCES][0],))
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        switches = []
        base = args.switches
        for n in range(base, base + args.switches):
            started, returned = switch(n)
            switches.append((started, returned, colors[n % 2]))
            time.sleep(0.02)
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join()

        # A request sent after a switch's call returned, and answered before
        # the next switch began, must have reached that switch's pool.
        stale = 0
        judged = 0
        for sent, answered, body in records:
            for k, (_, returned, color) in enumerate(switches):
                next_start = switches[k + 1][0] if k + 1 < len(switches) else float("inf")
                if returned <= sent and answered < next_start:
                    judged += 1
                    if body != color:
                        stale += 1
                    break

        now = datetime.datetime.now(datetime.timezone.utc)
        lines = [
            f"switchyard fleet switching, {now.isoformat(timespec='seconds')}",
            "",
            f"- command: `benches/fleet/run --switches {args.switches} --clients {args.clients}`",
            f"- {INSTANCES} instances and one etcd ({subprocess.run(['etcd', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}) on one machine, {os.cpu_count()} cores",
            "",
            f"switch through one instance, acknowledged by all {INSTANCES} ({args.switches} switches):"
            f" p50 {statistics.median(latencies):.1f} ms, p99 {percentile(latencies, 99):.1f} ms,"
            f" max {max(latencies):.1f} ms",
            "",
            f"under load through all {INSTANCES} ({args.clients} keep-alive clients, {args.switches} switches):"
            f" {len(records)} requests, {failures[0]} failed; of the {judged} sent after a switch returned and"
            f" answered before the next began, {stale} reached the old pool",
        ]
        print("\n".join(lines))
        runs = os.path.join(HERE, "runs")
        os.makedirs(runs, exist_ok=True)
        with open(os.path.join(runs, now.strftime("%Y-%m-%dT%H%M%S") + ".md"), "w") as f:
            f.write("\n".join(lines) + "\n")
    finally:
        for p in reversed(processes):
            p.terminate()
        for p in processes:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
