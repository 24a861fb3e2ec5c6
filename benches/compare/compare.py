#!/usr/bin/env python3
"""Side-by-side load comparison of switchyard, nginx and HAProxy (and the
upstream reached directly, the ceiling), on one machine, in one run.

Every proxy gets the same upstream (an nginx serving "blue" and "green"
from two ports, each answer tagged with its color), the same load (wrk),
the same core, and is started fresh for every measurement; the targets are
interleaved (A B C D, A B C D, ...) so that a drift of the machine hits all
of them alike. Everything binds 127.0.0.1; every process started is
stopped, also on Ctrl-C.

Usage: benches/compare/run [--rounds 3] [--duration 10] [--only SCENARIO,...]
The table goes to stdout; raw figures to benches/compare/runs/.
"""

import argparse
import asyncio
import datetime
import http.client
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
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SWITCHYARD = os.path.join(ROOT, "target", "release", "switchyard")

# CPU pinning on a 2-core machine: the proxy under test gets core 1 to
# itself; the load generator and the upstream share core 0. Every proxy
# runs on exactly one core (one nginx worker, one HAProxy thread, one tokio
# worker: tokio sizes its pool from the affinity mask), so the comparison is
# per core, and no proxy competes with the load it is measured under.
CPU_PROXY = "1"
CPU_OTHERS = "0"

TARGETS = ["direct", "switchyard", "nginx", "haproxy"]
PROXIES = ["switchyard", "nginx", "haproxy"]
MAINTENANCE_MESSAGE = "Service is undergoing maintenance"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, deadline=10.0):
    end = time.time() + deadline
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {deadline}s")


def process_tree(root):
    """`root` and every descendant (nginx and HAProxy masters fork workers)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(pids):
    """User and kernel CPU seconds of `pids`, as a pair."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return user / CLK_TCK, system / CLK_TCK


def memory_kib(pids, field):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


class Procs:
    """Every process this run starts, stopped on exit whatever happens."""

    def __init__(self):
        self.running = []

    def start(self, argv, cpu, env=None, log=None):
        out = open(log, "ab") if log else subprocess.DEVNULL
        proc = subprocess.Popen(
            ["taskset", "-c", cpu] + argv,
            stdout=out,
            stderr=out,
            env=env,
            start_new_session=True,
        )
        self.running.append(proc)
        return proc

    def stop(self, proc, sig=signal.SIGTERM):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self):
        for proc in list(self.running):
            self.stop(proc)


class Bench:
    def __init__(self, args):
        self.args = args
        self.dir = tempfile.mkdtemp(prefix="switchyard-compare-")
        self.procs = Procs()
        self.blue, self.green = free_port(), free_port()
        self.upstream = None

    # -- the upstream ------------------------------------------------------

    def start_upstream(self):
        # nginx workers drop privileges: let them read the directory.
        os.chmod(self.dir, 0o755)
        with open(os.path.join(self.dir, "big.bin"), "wb") as f:
            f.write(b"x" * 65536)
        os.chmod(os.path.join(self.dir, "big.bin"), 0o644)
        servers = ""
        for color, port in (("blue", self.blue), ("green", self.green)):
            servers += f"""
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    client_max_body_size 4m;
    client_body_buffer_size 2m;
    add_header X-Color {color} always;
    location / {{ return 200 "{color}\\n"; }}
    location = /big {{ alias {self.dir}/big.bin; }}
  }}"""
        conf = f"""
worker_processes 1;
daemon off;
pid {self.dir}/upstream.pid;
error_log {self.dir}/upstream.err warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  default_type text/plain;
  {servers}
}}
"""
        path = os.path.join(self.dir, "upstream.conf")
        with open(path, "w") as f:
            f.write(conf)
        self.upstream = self.procs.start(
            ["nginx", "-c", path, "-p", self.dir], CPU_OTHERS, log=os.path.join(self.dir, "upstream.log")
        )
        wait_port(self.blue)
        wait_port(self.green)

    # -- the targets -------------------------------------------------------

    def start_target(self, target, maintenance=False, live="blue"):
        """Starts `target` fresh; returns (port, process or None)."""
        if target == "direct":
            return (self.blue if live == "blue" else self.green), None
        port = free_port()
        getattr(self, f"config_{target}")(port, maintenance, live)
        return port, self.launch(target, port)

    def launch(self, target, port):
        log = os.path.join(self.dir, f"{target}.log")
        if target == "switchyard":
            env = dict(os.environ, RUST_LOG="warn")
            env.pop("TOKIO_WORKER_THREADS", None)
            proc = self.procs.start(
                [SWITCHYARD, "serve", "--config", os.path.join(self.dir, "switchyard", "switchyard.toml")],
                CPU_PROXY,
                env=env,
                log=log,
            )
        elif target == "nginx":
            # By its full path: a binary upgrade (USR2) runs argv[0] again.
            proc = self.procs.start(
                [shutil.which("nginx"), "-c", os.path.join(self.dir, "nginx.conf"), "-p", self.dir], CPU_PROXY, log=log
            )
        else:
            proc = self.procs.start(
                ["haproxy", "-W", "-f", os.path.join(self.dir, "haproxy.cfg")], CPU_PROXY, log=log
            )
        wait_port(port)
        return proc

    def config_switchyard(self, port, maintenance, live):
        d = os.path.join(self.dir, "switchyard")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(os.path.join(d, "run"))
        if maintenance or live != "blue":
            with open(os.path.join(d, "run", "state.json"), "w") as f:
                json.dump(
                    {
                        "version": 1,
                        "live_pool": live,
                        "previous_pool": None,
                        "maintenance": {
                            "enabled": maintenance,
                            "message": None,
                            "retry_after_s": None,
                            "since": "2026-01-01T00:00:00Z" if maintenance else None,
                        },
                        "generation": 1,
                    },
                    f,
                )
        self.switchyard_config_text = f"""
[listener]
bind = "127.0.0.1:{port}"
[admin]
socket = "run/admin.sock"
[maintenance]
message = "{MAINTENANCE_MESSAGE}"
allow_paths = []
[pools.blue]
upstreams = ["127.0.0.1:{self.blue}"]
[pools.green]
upstreams = ["127.0.0.1:{self.green}"]
[timeouts]
header = "120s"
drain = "1s"
"""
        with open(os.path.join(d, "switchyard.toml"), "w") as f:
            f.write(self.switchyard_config_text)

    def nginx_live_file(self, live):
        with open(os.path.join(self.dir, "nginx-live.conf"), "w") as f:
            f.write(f"set $live {live};\n")

    def config_nginx(self, port, maintenance, live):
        self.nginx_live_file(live)
        if maintenance:
            location = f"""
      add_header Retry-After 300 always;
      add_header Cache-Control no-store always;
      default_type application/json;
      return 503 '{{"message":"{MAINTENANCE_MESSAGE}"}}';"""
        else:
            location = f"""
      include {self.dir}/nginx-live.conf;
      proxy_pass http://$live;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
      proxy_request_buffering off;"""
        conf = f"""
worker_processes 1;
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/nginx.err warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 20000; multi_accept on; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  client_max_body_size 4m;
  upstream blue {{ server 127.0.0.1:{self.blue}; keepalive 256; keepalive_requests 100000000; }}
  upstream green {{ server 127.0.0.1:{self.green}; keepalive 256; keepalive_requests 100000000; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{ {location}
    }}
  }}
}}
"""
        with open(os.path.join(self.dir, "nginx.conf"), "w") as f:
            f.write(conf)

    def config_haproxy(self, port, maintenance, live):
        with open(os.path.join(self.dir, "haproxy-live.map"), "w") as f:
            f.write(f"live {live}\n")
        gate = (
            f"  http-request return status 503 content-type application/json "
            f"string '{{\"message\":\"{MAINTENANCE_MESSAGE}\"}}' hdr Retry-After 300 hdr Cache-Control no-store\n"
            if maintenance
            else ""
        )
        conf = f"""
global
  nbthread 1
  # HAProxy wants 2 descriptors per connection up front; 9900 fits a
  # 20 000 descriptor limit (what containers commonly allow).
  maxconn 9900
  stats socket {self.dir}/haproxy.sock mode 600 level admin expose-fd listeners
defaults
  mode http
  timeout connect 2s
  timeout client 300s
  timeout server 30s
  timeout http-keep-alive 300s
  option http-keep-alive
  option forwardfor
  http-reuse always
frontend public
  bind 127.0.0.1:{port}
  maxconn 9900
{gate}  use_backend %[str(live),map({self.dir}/haproxy-live.map,blue)]
backend blue
  server blue1 127.0.0.1:{self.blue} maxconn 10000
backend green
  server green1 127.0.0.1:{self.green} maxconn 10000
"""
        with open(os.path.join(self.dir, "haproxy.cfg"), "w") as f:
            f.write(conf)

    # -- load --------------------------------------------------------------

    def wrk(self, port, path, conns, duration, body=0, close=False):
        env = dict(os.environ)
        if body:
            env["WRK_BODY_BYTES"] = str(body)
        if close:
            env["WRK_CLOSE"] = "1"
        threads = 1
        cmd = [
            "taskset", "-c", CPU_OTHERS, "wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s",
            "--timeout", "5s", "-s", os.path.join(HERE, "report.lua"), f"http://127.0.0.1:{port}{path}",
        ]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + 60).stdout
        for line in out.splitlines():
            if line.startswith("JSON "):
                return json.loads(line[5:])
        raise RuntimeError(f"wrk gave no figures:\n{out}")

    def measure(self, target, scenario):
        maintenance = scenario.get("maintenance", False)
        port, proc = self.start_target(target, maintenance=maintenance)
        try:
            pids = process_tree(proc.pid) if proc else []
            # Warm up (connections, caches), then measure.
            self.wrk(port, scenario["path"], scenario["conns"], 1, scenario.get("body", 0), scenario.get("close", False))
            pids = process_tree(proc.pid) if proc else []
            cpu_before = cpu_seconds(pids)
            figures = self.wrk(
                port, scenario["path"], scenario["conns"], self.args.duration,
                scenario.get("body", 0), scenario.get("close", False),
            )
            user, system = (after - before for after, before in zip(cpu_seconds(pids), cpu_before))
            figures["rps"] = figures["requests"] / (figures["duration_us"] / 1e6)
            figures["errors"] = figures["connect"] + figures["read"] + figures["write"] + figures["timeout"]
            if proc:
                requests = max(figures["requests"], 1)
                figures["cpu_per_100k"] = (user + system) / requests * 100000
                # The split shows what a proxy can change (its own code) and
                # what it mostly cannot (the kernel's socket work).
                figures["user_us"] = user / requests * 1e6
                figures["kernel_us"] = system / requests * 1e6
                figures["rss_peak_kib"] = memory_kib(pids, "VmHWM")
            return figures
        finally:
            if proc:
                self.procs.stop(proc)

    # -- switch and reload under load ---------------------------------------

    def flip(self, target, to):
        if target == "switchyard":
            conn = UnixHTTPConnection(os.path.join(self.dir, "switchyard", "run", "admin.sock"))
            conn.request("POST", "/v1/switch", body=json.dumps({"to": to}), headers={"Host": "switchyard"})
            response = conn.getresponse()
            response.read()
            conn.close()
            if response.status != 200:
                raise RuntimeError(f"switch answered {response.status}")
        elif target == "haproxy":
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(os.path.join(self.dir, "haproxy.sock"))
                s.sendall(f"set map {self.dir}/haproxy-live.map live {to}\n".encode())
                s.recv(4096)
        else:
            self.nginx_live_file(to)
            with open(os.path.join(self.dir, "nginx.pid")) as f:
                os.kill(int(f.read().strip()), signal.SIGHUP)

    def load_while(self, port, action, stop):
        """Runs `action` in a thread while wrk loads `port` (50 connections,
        --switch-duration seconds); sets `stop` when the load is done."""
        thread = threading.Thread(target=action)
        thread.start()
        try:
            return self.wrk(port, "/", 50, self.args.switch_duration)
        finally:
            stop.set()
            thread.join()

    def switch_under_load(self, target):
        port, proc = self.start_target(target)
        try:
            delays, first, stop = [], [], threading.Event()

            def flipper():
                color = "blue"
                probe = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                time.sleep(1)
                while not stop.is_set():
                    color = "green" if color == "blue" else "blue"
                    self.flip(target, color)
                    returned = time.perf_counter()
                    attempt = 0
                    while True:
                        attempt += 1
                        try:
                            probe.request("GET", "/")
                            response = probe.getresponse()
                            response.read()
                            seen = response.getheader("X-Color")
                        except (OSError, http.client.HTTPException):
                            probe = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                            continue
                        if seen == color:
                            delays.append((time.perf_counter() - returned) * 1000)
                            first.append(attempt == 1)
                            break
                        if time.perf_counter() - returned > 5:
                            delays.append(float("inf"))
                            break
                    stop.wait(1)

            figures = self.load_while(port, flipper, stop)
            return {
                "flips": len(delays),
                "first_request_new_color": sum(first),
                "failed": failed(figures),
                "requests": figures["requests"],
                "new_color_ms_median": statistics.median(delays) if delays else None,
                "new_color_ms_max": max(delays) if delays else None,
            }
        finally:
            if proc:
                self.procs.stop(proc)

    def reload(self, target, proc, n):
        if target == "switchyard":
            path = os.path.join(self.dir, "switchyard", "switchyard.toml")
            with open(path + ".new", "w") as f:
                f.write(self.switchyard_config_text + f"# reload {n}\n")
            os.rename(path + ".new", path)
        elif target == "nginx":
            with open(os.path.join(self.dir, "nginx.pid")) as f:
                os.kill(int(f.read().strip()), signal.SIGHUP)
        else:
            os.kill(proc.pid, signal.SIGUSR2)

    def reload_under_load(self, target):
        port, proc = self.start_target(target)
        try:
            stop = threading.Event()

            def reloader():
                n = 0
                while not stop.wait(1):
                    n += 1
                    self.reload(target, proc, n)

            figures = self.load_while(port, reloader, stop)
            return {
                "failed": failed(figures),
                "requests": figures["requests"],
            }
        finally:
            self.procs.stop(proc)

    def upgrade(self, target, running):
        """Replaces `target`'s running binary with the installed one, its
        own way; `running` is the process serving now, and the one serving
        afterwards is returned."""
        if target == "switchyard":
            conn = UnixHTTPConnection(os.path.join(self.dir, "switchyard", "run", "admin.sock"))
            conn.request("POST", "/v1/upgrade", headers={"Host": "switchyard"})
            response = conn.getresponse()
            body = response.read()
            conn.close()
            if response.status != 200:
                raise RuntimeError(f"upgrade answered {response.status}: {body!r}")
            return running
        if target == "nginx":
            # USR2 starts the new binary beside the old master, which then
            # leaves on QUIT (finishing its requests).
            pid_file = os.path.join(self.dir, "nginx.pid")
            with open(pid_file) as f:
                old = int(f.read().strip())
            os.kill(old, signal.SIGUSR2)
            deadline = time.monotonic() + 10
            while not (os.path.exists(pid_file + ".oldbin") and os.path.exists(pid_file)):
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx did not start its new binary")
                time.sleep(0.01)
            os.kill(old, signal.SIGQUIT)
            return running
        # HAProxy: a new process takes the listeners over the stats socket
        # (-x), and tells the old one to finish (-sf).
        argv = [
            "haproxy", "-f", os.path.join(self.dir, "haproxy.cfg"),
            "-x", os.path.join(self.dir, "haproxy.sock"), "-sf", str(running.pid),
        ]
        return self.procs.start(argv, CPU_PROXY, log=os.path.join(self.dir, "haproxy.log"))

    def upgrade_under_load(self, target):
        port = free_port()
        getattr(self, f"config_{target}")(port, False, "blue")
        if target == "haproxy":
            # Standalone (not master-worker): the upgrade is the new process's own.
            proc = self.procs.start(
                ["haproxy", "-f", os.path.join(self.dir, "haproxy.cfg")],
                CPU_PROXY,
                log=os.path.join(self.dir, "haproxy.log"),
            )
            wait_port(port)
        elif target == "nginx":
            # nginx ignores USR2 unless its master is a daemon (its parent
            # gone): it takes a parent for an older binary it was started from.
            conf = os.path.join(self.dir, "nginx.conf")
            with open(conf) as f:
                text = f.read().replace("daemon off;", "daemon on;")
            with open(conf, "w") as f:
                f.write(text)
            proc = self.launch(target, port)
        else:
            proc = self.launch(target, port)
        group = proc.pid
        serving = [proc]
        try:
            stop, done = threading.Event(), []

            def upgrader():
                while not stop.wait(2):
                    serving.append(self.upgrade(target, serving[-1]))
                    done.append(1)

            figures = self.load_while(port, upgrader, stop)
            return {"upgrades": len(done), "failed": failed(figures), "requests": figures["requests"]}
        finally:
            # A new switchyard or nginx is the old one's child, in its
            # process group; a new HAProxy is a process of its own.
            for proc in serving:
                self.procs.stop(proc)
            stop_group(group)
            if target == "nginx":
                stop_daemon(os.path.join(self.dir, "nginx.pid"))

    def idle(self, target, count):
        port, proc = self.start_target(target)
        try:
            pids = process_tree(proc.pid)
            before = memory_kib(pids, "VmRSS")
            opened = asyncio.run(hold_idle(port, count, lambda: memory_kib(process_tree(proc.pid), "VmRSS")))
            return {"connections": opened[0], "rss_per_conn_bytes": (opened[1] - before) * 1024 / max(opened[0], 1)}
        finally:
            self.procs.stop(proc)


def stop_group(group):
    """Ends what is left of process group `group`."""
    end_with(lambda sig: os.killpg(group, sig))


def stop_daemon(pid_file):
    """Ends the daemon whose pid `pid_file` holds."""
    try:
        with open(pid_file) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return
    end_with(lambda sig: os.kill(pid, sig))


def end_with(send):
    """Sends SIGTERM through `send`, then SIGKILL, until it finds no process."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                send(sig)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def failed(figures):
    """Requests that did not get a 2xx/3xx: non-2xx answers and socket errors."""
    return figures["status"] + figures["connect"] + figures["read"] + figures["write"] + figures["timeout"]


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("switchyard", timeout=10)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self.path)


IDLE_SETTLE_S = 3


async def hold_idle(port, count, rss):
    """Opens `count` keep-alive connections, each with one request answered,
    and measures RSS while all of them are open and idle."""
    writers, sem = [], asyncio.Semaphore(256)

    async def one():
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            await reader.readexactly(length)
            writers.append(writer)

    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    failures = [r for r in results if isinstance(r, Exception)]
    # Idle means idle: give every proxy a few seconds to settle the way it
    # keeps a quiet connection.
    await asyncio.sleep(IDLE_SETTLE_S)
    measured = rss()
    for writer in writers:
        writer.close()
    if failures:
        print(f"  {len(failures)} idle connections failed: {failures[0]!r}", file=sys.stderr)
    return len(writers), measured


SCENARIOS = [
    {"name": "small GET, 50 keep-alive", "key": "get50", "path": "/", "conns": 50},
    {"name": "small GET, 256 keep-alive", "key": "get256", "path": "/", "conns": 256},
    {"name": "new connection per request", "key": "close", "path": "/", "conns": 50, "close": True},
    {"name": "64 KiB responses", "key": "big", "path": "/big", "conns": 50},
    {"name": "1 MiB uploads", "key": "upload", "path": "/upload", "conns": 16, "body": 1 << 20},
    {"name": "maintenance gate (503 by the proxy)", "key": "gate", "path": "/", "conns": 50, "maintenance": True},
]


def first_line(argv):
    """The first line `argv` prints (on either stream), or why not."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    out = (done.stdout or done.stderr).strip().splitlines()
    return out[0] if out else "unknown"


def environment():
    """What a reader needs to reproduce or weigh the figures: the machine,
    the kernel, and the version of everything measured or measuring."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    commit = first_line(["git", "-C", ROOT, "describe", "--always", "--dirty"])
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "kernel": os.uname().release,
        "switchyard": f"{commit} ({first_line(['rustc', '--version'])}, release build)",
        "nginx": first_line(["nginx", "-v"]),
        "haproxy": first_line(["haproxy", "-v"]),
        "wrk": first_line(["wrk", "-v"]),
    }


def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "-"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--switch-duration", type=int, default=20)
    parser.add_argument(
        "--idle", type=int, default=9500,
        help="idle connections to hold (HAProxy caps at about half the descriptor limit)",
    )
    parser.add_argument("--only", default="", help="comma-separated scenario keys (get50,get256,close,big,upload,gate,switch,reload,upgrade,idle)")
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))
    bench = Bench(args)
    results = {
        "machine": os.uname().nodename,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "args": vars(args),
        "command": " ".join(["benches/compare/run"] + sys.argv[1:]),
        "environment": environment(),
        "scenarios": {},
    }

    def interrupted(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        bench.start_upstream()
        for scenario in SCENARIOS:
            if only and scenario["key"] not in only:
                continue
            targets = PROXIES if scenario.get("maintenance") else TARGETS
            runs = {t: [] for t in targets}
            for round_ in range(args.rounds):
                for target in targets:
                    figures = bench.measure(target, scenario)
                    runs[target].append(figures)
                    print(f"  [{scenario['key']} round {round_ + 1}] {target}: {figures['rps']:.0f} req/s, p99 {figures['p99'] / 1000:.2f} ms", file=sys.stderr)
            results["scenarios"][scenario["key"]] = {"name": scenario["name"], "runs": runs}
        if not only or "switch" in only:
            results["switch"] = {t: bench.switch_under_load(t) for t in PROXIES}
            print(f"  [switch] {results['switch']}", file=sys.stderr)
        if not only or "reload" in only:
            results["reload"] = {t: bench.reload_under_load(t) for t in PROXIES}
            print(f"  [reload] {results['reload']}", file=sys.stderr)
        if not only or "upgrade" in only:
            results["upgrade"] = {t: bench.upgrade_under_load(t) for t in PROXIES}
            print(f"  [upgrade] {results['upgrade']}", file=sys.stderr)
        if not only or "idle" in only:
            results["idle"] = {t: bench.idle(t, args.idle) for t in PROXIES}
            print(f"  [idle] {results['idle']}", file=sys.stderr)
    finally:
        bench.procs.stop_all()
        shutil.rmtree(bench.dir, ignore_errors=True)

    table = render(results)
    print(table)
    runs_dir = os.path.join(HERE, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    with open(os.path.join(runs_dir, f"{stamp}-{results['machine']}.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(runs_dir, f"{stamp}-{results['machine']}.md"), "w") as f:
        f.write(table)


def median_of(runs, key):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def render(results):
    lines = [
        f"switchyard vs nginx vs HAProxy, {results['machine']}, {results['started']}",
        f"medians of {results['args']['rounds']} interleaved rounds of {results['args']['duration']} s; proxy pinned to core {CPU_PROXY}, wrk and upstream to core {CPU_OTHERS}",
    ]
    if "command" in results:
        lines += ["", f"- command: `{results['command']}`"]
    for name, value in results.get("environment", {}).items():
        lines.append(f"- {name}: {value}")
    lines += [
        "",
        "| scenario | target | req/s | p50 ms | p99 ms | p99.9 ms | CPU s/100k req | of which user + kernel, µs/req | peak RSS MiB | non-2xx | socket errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    summary = []
    own_rps = {}
    for key, scenario in results["scenarios"].items():
        med = {}
        for target, runs in scenario["runs"].items():
            m = {
                k: median_of(runs, k)
                for k in ("rps", "p50", "p99", "p999", "cpu_per_100k", "user_us", "kernel_us", "rss_peak_kib", "status", "errors")
            }
            med[target] = m
            cpu = f"{m['cpu_per_100k']:.2f}" if m["cpu_per_100k"] is not None else "-"
            split = f"{m['user_us']:.1f} + {m['kernel_us']:.1f}" if m["user_us"] is not None else "-"
            rss = f"{m['rss_peak_kib'] / 1024:.1f}" if m["rss_peak_kib"] is not None else "-"
            lines.append(
                f"| {scenario['name']} | {target} | {m['rps']:.0f} | {m['p50'] / 1000:.2f} | {m['p99'] / 1000:.2f} | {m['p999'] / 1000:.2f} | {cpu} | {split} | {rss} | {m['status']:.0f} | {m['errors']:.0f} |"
            )
        sy = med.get("switchyard")
        if sy:
            own_rps[key] = sy["rps"]
        for peer in ("nginx", "haproxy"):
            if sy and peer in med:
                p = med[peer]
                summary.append(
                    f"| {scenario['name']} | {peer} | {ratio(sy['rps'], p['rps'])} | {ratio(sy['p99'], p['p99'])} | {ratio(sy['cpu_per_100k'], p['cpu_per_100k'])} | {ratio(sy['rss_peak_kib'], p['rss_peak_kib'])} |"
                )
    lines += [
        "",
        "switchyard / peer (req/s: higher is better; p99, CPU, RSS: lower is better)",
        "",
        "| scenario | peer | req/s | p99 | CPU/req | peak RSS |",
        "|---|---|---:|---:|---:|---:|",
    ] + summary
    if "gate" in own_rps and "get50" in own_rps:
        lines += [
            "",
            f"switchyard's own 503s against its proxied small GETs (50 connections): {ratio(own_rps['gate'], own_rps['get50'])}x",
        ]
    if "switch" in results:
        lines += [
            "",
            "| switch under load (flip every 1 s) | flips | first request after the call on the new color | failed requests | until a new-color answer, median ms | max ms |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for target, r in results["switch"].items():
            lines.append(
                f"| {target} | {r['flips']} | {r['first_request_new_color']} | {r['failed']} | {r['new_color_ms_median']:.2f} | {r['new_color_ms_max']:.2f} |"
            )
    if "reload" in results:
        lines += ["", "| reload under load (every 1 s) | requests | failed requests |", "|---|---:|---:|"]
        for target, r in results["reload"].items():
            lines.append(f"| {target} | {r['requests']} | {r['failed']} |")
    if "upgrade" in results:
        lines += [
            "",
            "| binary upgrade under load (every 2 s: switchyard `ctl upgrade`, nginx USR2 + QUIT, HAProxy `-x` + `-sf`) | upgrades | requests | failed requests |",
            "|---|---:|---:|---:|",
        ]
        for target, r in results["upgrade"].items():
            lines.append(f"| {target} | {r['upgrades']} | {r['requests']} | {r['failed']} |")
    if "idle" in results:
        lines += ["", "| idle keep-alive connections | held | RSS per connection, bytes |", "|---|---:|---:|"]
        for target, r in results["idle"].items():
            lines.append(f"| {target} | {r['connections']} | {r['rss_per_conn_bytes']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
