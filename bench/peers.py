#!/usr/bin/env python3
"""handoff against its peers: same child, same load, same machine, one run.

Targets, each serving examples/rust/http_server.rs (`http-server`) on 127.0.0.1:
  handoff         handoff --listen, child takes fd 3 and sends READY=1 after --ready-delay-ms
  Server::Starter start_server (libserver-starter-perl), child takes SERVER_STARTER_PORT's fd;
                  SIGHUP = spawn, sleep --interval (default 1 s), SIGTERM the old worker
  einhorn         einhorn -m manual (Ruby; --einhorn PATH or $EINHORN, else left out), child
                  takes EINHORN_FD_0 and ACKs on EINHORN_SOCK_PATH; SIGHUP = einhorn's upgrade
                  (master re-exec, new worker, USR2 to the old one at the ACK)
  systemd restart a real systemd 252 as PID 1 of a systemd-nspawn container sharing the host's
                  network (root, and the root file system `bash .ci/systemd` caches; else left
                  out): socket unit + Type=notify service; `systemctl restart` = stop the old
                  child, then start the new one while PID 1 queues connections
  naive restart   SIGTERM the child that bound the port itself, wait for it to exit, start a
                  new one on the same port (ready after --ready-delay-ms)
  no wrapper      the child binding the port itself, never reloaded: the reference

Under load (wrk keep-alive + Python clients opening a new connection per request, running
concurrently) each reloadable target is reloaded N times; then footprint (parent RSS, parent
CPU while idle) and keep-alive throughput (wrk, interleaved rounds) relative to the no-wrapper
child; then the slow child (ready after 2.5 s) under two paced clients, a few reloads per tool:
worst latency, p99, failures. Run it through bench/peers.sh, which builds the binaries and
checks the tools. Python 3.8+, standard library only. Everything listens on 127.0.0.1 (port 0:
the kernel picks; systemd's socket unit gets a port found free just before), every run is
bounded in count and time, and every process started here is killed by pid (the container is
powered off) in a `finally` block.
"""
import argparse
import datetime
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections import Counter

from benchlib import fails, loadavg, log, machine_busy, proc_status, yes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQ_CLOSE = b"GET / HTTP/1.1\r\nHost: peers\r\nConnection: close\r\n\r\n"
# Abortive close once the response is read: no TIME_WAIT, so thousands of connections per
# second cannot exhaust the client's ephemeral ports (which would be a client-side failure).
LINGER0 = struct.pack("ii", 1, 0)
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_DELAY_MS = 200
SLOW_DELAY_MS = 2500  # the slow-child section
TOOLS = ("handoff", "starter", "einhorn", "systemd", "naive", "direct")
NAMES = {"handoff": "handoff", "starter": "Server::Starter", "einhorn": "einhorn",
         "systemd": "systemd restart", "naive": "naive restart", "direct": "no wrapper"}


def pct(values, p):
    """Nearest-rank percentile (with 50 samples, p99 is the largest)."""
    s = sorted(v for v in values if v is not None)
    if not s:
        return float("nan")
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


# ------------------------------------------------------------------ new-connection client
def http_get(port, timeout):
    """One request on a new connection. Returns (status, body); raises OSError or ValueError."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        s.connect(("127.0.0.1", port))
        s.sendall(REQ_CLOSE)
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = s.recv(65536)
            if not d:
                raise EOFError("eof" if not buf else "eof-partial")
            buf += d
        head, body = buf.split(b"\r\n\r\n", 1)
        m = re.search(rb"\r\ncontent-length:\s*(\d+)", head.lower())
        need = int(m.group(1)) if m else 0
        while len(body) < need:
            d = s.recv(65536)
            if not d:
                raise EOFError("eof-partial")
            body += d
        return int(head[9:12]), body
    finally:
        s.close()


REQ_KA = b"GET / HTTP/1.1\r\nHost: peers\r\n\r\n"


class KeepAlive:
    """One keep-alive connection, reopened when the server closes it. A request that fails with
    no byte received on a *reused* connection (the server closed it between two requests, as a
    draining server does) is retried once on a new connection, as HTTP clients do, and
    counted in `retries`, not as a failure."""

    def __init__(self, port, timeout):
        self.port, self.timeout, self.sock, self.retries = port, timeout, None, 0

    def _connect(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        try:
            s.connect(("127.0.0.1", self.port))
        except OSError:
            s.close()
            raise
        return s

    def _once(self):
        s = self.sock
        s.sendall(REQ_KA)
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = s.recv(65536)
            if not d:
                raise EOFError("eof" if not buf else "eof-partial")
            buf += d
        head, body = buf.split(b"\r\n\r\n", 1)
        low = head.lower()
        m = re.search(rb"\r\ncontent-length:\s*(\d+)", low)
        need = int(m.group(1)) if m else 0
        while len(body) < need:
            d = s.recv(65536)
            if not d:
                raise EOFError("eof-partial")
            body += d
        if b"\r\nconnection: close" in low:
            self.close()
        return int(head[9:12]), body

    def get(self):
        reused = self.sock is not None
        try:
            if self.sock is None:
                self.sock = self._connect()
            return self._once()
        except (OSError, EOFError, ValueError) as e:
            self.close()
            if not (reused and kind_of(e) in ("eof", "reset")):
                raise
        self.retries += 1  # closed by the server between two requests: once more, anew
        try:
            self.sock = self._connect()
            return self._once()
        except (OSError, EOFError, ValueError):
            self.close()
            raise

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def kind_of(e):
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(e, EOFError):
        return str(e)  # eof (closed without a byte) or eof-partial
    return f"error:{type(e).__name__}:{getattr(e, 'errno', '')}"


def body_pid(body):
    m = re.search(rb"pid (\d+)", body)
    return int(m.group(1)) if m else None


def client_main(argv):
    """`peers.py _client PORT MAX_S [INTERVAL_S [NICE [KEEPALIVE [TIMEOUT_S]]]]`: one request
    at a time, as fast as it can (or one every INTERVAL_S), on a new connection each (or, with
    KEEPALIVE 1, on a keep-alive connection), until stdin closes (or MAX_S). Prints one JSON
    object: counts, failures by kind with their times, latency percentiles, the slowest
    requests, and for each server pid the first and last time it answered (CLOCK_MONOTONIC,
    shared by every process on the machine)."""
    port, max_s = int(argv[0]), float(argv[1])
    interval = float(argv[2]) if len(argv) > 2 else 0.0
    if len(argv) > 3 and int(argv[3]):
        try:
            os.nice(int(argv[3]))
        except OSError:
            pass  # not allowed to raise our priority: measure at the default one
    keepalive = len(argv) > 4 and argv[4] == "1"
    timeout = float(argv[5]) if len(argv) > 5 else 5.0
    ka = KeepAlive(port, timeout) if keepalive else None
    stop = threading.Event()

    def watch_stdin():
        sys.stdin.buffer.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    ok, fail, fail_times, pids, lats, slow = 0, Counter(), [], {}, array("d"), []
    end = time.monotonic() + max_s
    next_t = time.monotonic()
    while not stop.is_set() and time.monotonic() < end:
        if interval:
            next_t = max(next_t + interval, time.monotonic() - interval)
            time.sleep(max(0.0, next_t - time.monotonic()))
        t0 = time.monotonic()
        try:
            status, body = ka.get() if ka else http_get(port, timeout)
            kind = None if 200 <= status < 300 else f"http-{status}"
        except (OSError, EOFError, ValueError) as e:
            kind = kind_of(e)
        t1 = time.monotonic()
        lats.append(t1 - t0)
        if t1 - t0 > 0.1 and len(slow) < 20000:
            slow.append((t0, t1 - t0, kind))
        if kind is None:
            ok += 1
            pid = body_pid(body)
            if pid in pids:
                pids[pid][1] = t1
                pids[pid][2] += 1
            else:
                pids[pid] = [t1, t1, 1]
        else:
            fail[kind] += 1
            if len(fail_times) < 20000:
                fail_times.append((t0, kind))
            if kind == "refused":
                time.sleep(0.005)  # nobody listens: retry in 5 ms rather than spin
    if ka:
        ka.close()
    s = sorted(lats)
    q = (lambda p: s[max(0, math.ceil(p / 100 * len(s)) - 1)] * 1e3) if s else (lambda p: 0.0)
    json.dump({"ok": ok, "fail": fail, "fail_times": fail_times, "pids": pids, "n": len(s),
               "p50_ms": q(50), "p99_ms": q(99), "max_ms": q(100),
               "over100": sum(v > 0.1 for v in s), "over1000": sum(v > 1.0 for v in s),
               "slowest": sorted(slow, key=lambda x: -x[1])[:5],
               "retries": ka.retries if ka else 0}, sys.stdout)


# ------------------------------------------------------------------ processes
class Procs:
    """Everything started here, so that cleanup() can kill it by pid."""

    def __init__(self, server):
        self.popens = []
        self.pids = set()  # supervisors' children, learned from their logs
        self.hooks = []  # more cleanup (the systemd container), run first
        self.server_name = os.path.basename(server).encode()

    def start(self, cmd, **kw):
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(cmd, **kw)
        self.popens.append(p)
        return p

    def cleanup(self):
        for hook in reversed(self.hooks):
            try:
                hook()
            except Exception as e:  # noqa: BLE001 - go on cleaning up the rest
                log(f"cleanup: {e!r}")
        for p in reversed(self.popens):
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                    p.wait(timeout=8)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for pid in self.pids:  # only if it still is our server (pids get reused)
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if self.server_name in f.read():
                        os.kill(pid, signal.SIGKILL)
                        log(f"killed leftover child {pid}")
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                pass


class LineReader:
    """Reads a pipe line by line in a thread; each line with its arrival time (monotonic)."""

    def __init__(self, pipe, parse=None):
        self.lines, self.cond = [], threading.Condition()
        self.parse = parse
        self.eof = False
        threading.Thread(target=self._run, args=(pipe,), daemon=True).start()

    def _run(self, pipe):
        for raw in pipe:
            t = time.monotonic()
            line = raw.decode(errors="replace").rstrip("\n")
            item = self.parse(line, t) if self.parse else {"line": line, "_t": t}
            with self.cond:
                self.lines.append(item)
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def mark(self):
        with self.cond:
            return len(self.lines)

    def wait(self, pred, timeout, start=0):
        deadline = time.monotonic() + timeout
        with self.cond:
            i = start
            while True:
                while i < len(self.lines):
                    if pred(self.lines[i]):
                        return self.lines[i]
                    i += 1
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    tail = [x.get("line") or x.get("message") for x in self.lines[-6:]]
                    raise TimeoutError(f"{'exited' if self.eof else 'timed out'} waiting; "
                                       f"last lines: {tail}")
                self.cond.wait(left)

    def all(self, start=0):
        with self.cond:
            return self.lines[start:]


def wall_of(ts):
    """handoff's JSON timestamp (RFC 3339, UTC) → seconds since the epoch."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$", ts or "")
    if not m:
        return None
    base = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")
    frac = float("0." + (m.group(2) or "0"))
    return base.replace(tzinfo=datetime.timezone.utc).timestamp() + frac


def parse_json_line(line, t):
    cut = line.find('{"timestamp"')  # a child's text may precede handoff's line
    try:
        ev = json.loads(line[max(cut, 0):])
        ev["_t"] = t
        ev["_wall"] = wall_of(ev.get("timestamp"))
        return ev
    except ValueError:
        return {"event": "_child", "line": line, "_t": t}


def clean_env():
    """Our environment minus anything a child could mistake for its own sockets."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("LISTEN_", "NOTIFY_SOCKET", "SERVER_STARTER_", "HANDOFF_",
                                 "EINHORN_"))}


def listen_port_of(pid):
    """The TCP port a process listens on, from its socket fds and /proc/PID/net/tcp."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    with open(f"/proc/{pid}/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:  # LISTEN
                return int(parts[1].split(":")[1], 16)
    return None


def exited(pid):
    """True once pid is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def wait_exit(pid, timeout):
    deadline = time.monotonic() + timeout
    while not exited(pid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"pid {pid} still running after {timeout} s")
        time.sleep(0.002)


def probe_pid(port, want, timeout):
    """Controller's probe: new connections until `want` answers (not counted as load)."""
    deadline, errors = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        try:
            status, body = http_get(port, 5.0)
            if status == 200 and body_pid(body) == want:
                return errors
        except (OSError, EOFError, ValueError):
            errors += 1
        time.sleep(0.002)
    raise TimeoutError(f"pid {want} did not answer on port {port} within {timeout} s")


def proc_cpu(pid):
    """(utime+stime in s, on-CPU ns summed over all threads from schedstat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ns = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return (int(fields[11]) + int(fields[12])) / CLK_TCK, ns


# ------------------------------------------------------------------ the four targets
class Handoff:
    name = "handoff"

    def __init__(self, procs, args, pin=()):
        self.cmd = [*pin, args.handoff, "--control", "none", "--log-format", "json",
                    "--listen", "127.0.0.1:0", "--", args.server,
                    "--ready-delay-ms", str(args.ready_delay_ms)]
        self.p = procs.start(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env=clean_env())
        self.procs, self.parent = procs, self.p.pid
        self.log = LineReader(self.p.stderr, parse_json_line)
        ev = self.log.wait(lambda e: e.get("event") == "listening", 10)
        self.port = int(ev["addr"].rsplit(":", 1)[1])
        sp = self.log.wait(lambda e: e.get("event") == "spawned", 10)
        self.log.wait(lambda e: e.get("event") == "ready", 15)
        self.pid, self.gen = sp["pid"], sp["gen"]
        procs.pids.add(self.pid)

    def reload(self):
        mark = self.log.mark()
        old, old_gen = self.pid, self.gen
        t, w = time.monotonic(), time.time()
        os.kill(self.parent, signal.SIGHUP)
        fin = self.log.wait(lambda e: e.get("event") == "reload_finished", 30, mark)
        evs = self.log.all(mark)
        sp = next(e for e in evs if e.get("event") == "spawned")
        self.procs.pids.add(sp["pid"])
        if fin.get("result") != "ok":
            raise RuntimeError(f"handoff reload failed: {fin}")
        st = next(e for e in evs if e.get("event") == "stopping" and e.get("gen") == old_gen)
        rq = next((e for e in evs if e.get("event") == "reload_requested"), None)
        rd = next(e for e in evs if e.get("event") == "ready" and e.get("gen") == sp["gen"])
        self.pid, self.gen = sp["pid"], sp["gen"]
        return {"t": t, "old": old, "new": sp["pid"],
                # the stop signal's time from handoff's own timestamp (µs), on our clock
                "t_stop": t + (st["_wall"] - w), "t_stop_read": st["_t"],
                "ready_at_ms": (rd["_wall"] - w) * 1e3,
                "ready_ms": rd.get("ready_ms"), "spawn_ms": sp.get("request_to_spawn_ms"),
                "handover_us": st.get("handover_us"), "duration_ms": fin.get("duration_ms"),
                "log_req_to_stop_ms": (st["_wall"] - rq["_wall"]) * 1e3 if rq else None}

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(timeout=15)

    def gone(self, pid):
        wait_exit(pid, 15)


class Starter:
    """start_server (Server::Starter, Perl) with its default --interval (1 s)."""
    name = "starter"
    WORKER = re.compile(r"^starting new worker (\d+)")

    def __init__(self, procs, args, pin=()):
        self.cmd = [*pin, args.start_server, "--port=127.0.0.1:0", "--signal-on-hup=TERM",
                    "--signal-on-term=TERM", "--", args.server,
                    "--ready-delay-ms", str(args.ready_delay_ms)]
        self.p = procs.start(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env=clean_env())
        self.procs, self.parent = procs, self.p.pid
        self.log = LineReader(self.p.stderr)
        first = self.log.wait(lambda x: self.WORKER.match(x["line"]), 10)
        self.pid = int(self.WORKER.match(first["line"]).group(1))
        procs.pids.add(self.pid)
        self.port = listen_port_of(self.parent)
        probe_pid(self.port, self.pid, 15)

    def reload(self):
        mark = self.log.mark()
        old = self.pid
        t = time.monotonic()
        os.kill(self.parent, signal.SIGHUP)
        sp = self.log.wait(lambda x: self.WORKER.match(x["line"]), 30, mark)
        self.pid = int(self.WORKER.match(sp["line"]).group(1))
        self.procs.pids.add(self.pid)
        # printed right before kill(old, TERM); its arrival time is our measure of the stop
        kill = self.log.wait(lambda x: x["line"].startswith("killing old workers"), 30, mark)
        hup = next((x["_t"] for x in self.log.all(mark)
                    if x["line"].startswith("received HUP")), None)
        return {"t": t, "old": old, "new": self.pid, "t_stop": kill["_t"],
                "t_spawn": sp["_t"], "spawn_ms": (sp["_t"] - t) * 1e3,
                "hup_seen_ms": (hup - t) * 1e3 if hup else None}

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(timeout=15)

    def gone(self, pid):
        wait_exit(pid, 15)


class Einhorn:
    """einhorn (Ruby) in manual ACK mode, one worker: `einhorn -m manual -n 1 -b ADDR`.
    A reload is SIGHUP to the master, which is einhorn's `upgrade` (smooth): the master
    re-executes itself (einhorn has no upgrade without this re-exec), spawns a new worker,
    waits for its ACK, then sends the old worker SIGUSR2 (einhorn's graceful stop)."""
    name = "einhorn"
    LAUNCHED = re.compile(r"===> Launched (\d+)")
    SPINUP_S = 1.05  # einhorn's default --seconds (1), and a margin

    def __init__(self, procs, args, pin=()):
        self.dir = tempfile.mkdtemp(prefix="peers-einhorn.")
        procs.hooks.append(lambda: shutil.rmtree(self.dir, ignore_errors=True))
        self.cmd = [*pin, args.einhorn, "-m", "manual", "-n", "1",
                    "-d", os.path.join(self.dir, "sock"), "-e", os.path.join(self.dir, "pid"),
                    "-f", os.path.join(self.dir, "lock"), "-b", "127.0.0.1:0", "--",
                    args.server, "--ready-delay-ms", str(args.ready_delay_ms)]
        self.p = procs.start(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             env=einhorn_env(args.einhorn))
        self.procs, self.parent = procs, self.p.pid
        self.log = LineReader(self.p.stdout)
        first = self.log.wait(lambda x: self.LAUNCHED.search(x["line"]), 30)
        self.pid = int(self.LAUNCHED.search(first["line"]).group(1))
        self.launched = first["_t"]
        procs.pids.add(self.pid)
        self.log.wait(lambda x: f"manual ACK from {self.pid}" in x["line"],
                      args.ready_delay_ms / 1e3 + 15)
        self.port = listen_port_of(self.parent)
        probe_pid(self.port, self.pid, 15)

    def reload(self):
        # einhorn launches at most one worker per `--seconds` (default 1 s), timed from the last
        # launch; a reload sooner than that waits for einhorn's timer. Deployments reload far
        # less often, so the benchmark waits out that second rather than measure it.
        time.sleep(max(0.0, self.launched + self.SPINUP_S - time.monotonic()))
        mark = self.log.mark()
        old = self.pid
        t = time.monotonic()
        os.kill(self.parent, signal.SIGHUP)
        sp = self.log.wait(lambda x: self.LAUNCHED.search(x["line"]), 60, mark)
        self.pid = int(self.LAUNCHED.search(sp["line"]).group(1))
        self.launched = sp["_t"]
        self.procs.pids.add(self.pid)
        # printed right before kill(old, USR2); its arrival time is our measure of the stop
        kill = self.log.wait(lambda x: f"Sending USR2 to [{old}]" in x["line"], 60, mark)
        lines = self.log.all(mark)

        def at(text):
            return next((x["_t"] for x in lines if text in x["line"]), None)
        hup, up = at("Reloading einhorn master"), at("Starting smooth upgrade")
        ack = at(f"manual ACK from {self.pid}")
        return {"t": t, "old": old, "new": self.pid, "t_stop": kill["_t"],
                "t_spawn": sp["_t"], "spawn_ms": (sp["_t"] - t) * 1e3,
                "hup_seen_ms": (hup - t) * 1e3 if hup else None,
                "reexec_ms": (up - t) * 1e3 if up else None,
                "ack_ms": (ack - t) * 1e3 if ack else None}

    def stop(self):
        self.p.send_signal(signal.SIGTERM)  # einhorn passes TERM on to its workers
        self.p.wait(timeout=15)

    def gone(self, pid):
        wait_exit(pid, 15)


def einhorn_env(path):
    """clean_env(), plus RUBYLIB=<checkout>/lib when PATH is a source checkout's bin/einhorn
    (einhorn re-executes its own $0 on upgrade, so the library must be found without -I)."""
    env = clean_env()
    lib = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(path))), "lib")
    if os.path.isfile(os.path.join(lib, "einhorn.rb")):
        env["RUBYLIB"] = lib + (":" + env["RUBYLIB"] if env.get("RUBYLIB") else "")
    return env


def free_port():
    """A port nobody listens on now (for systemd's socket unit, which cannot take port 0)."""
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


SYSTEMD_INFO = {}  # filled at the first boot: systemd's version in the container


class Systemd:
    """systemd 252 (Debian bookworm) booted as PID 1 of a systemd-nspawn container that shares
    the host's network (so our load generators reach 127.0.0.1:PORT), with a socket unit
    (ListenStream=127.0.0.1:PORT) and a Type=notify service running the same binary,
    bind-mounted read-only. A reload is `systemctl restart` of the service, run in the
    container with nsenter: systemd stops the old child (SIGTERM, waits for it to exit), then
    starts the new one; the socket stays in PID 1 and queues connections meanwhile; the
    restart job completes at READY=1. Times are systemd's own (the unit's
    ActiveExit/ExecMainStart/ActiveEnter timestamps, CLOCK_MONOTONIC: no time namespace).
    Pids in responses are the container's (its own pid namespace)."""
    name = "systemd"
    UNIT = "peers-bench"

    def __init__(self, procs, args, pin=()):
        self.procs, self.args = procs, args
        self.dir = tempfile.mkdtemp(prefix="peers-systemd.")
        procs.hooks.append(lambda: shutil.rmtree(self.dir, ignore_errors=True))
        procs.hooks.append(self._shutdown)
        self.nspawn, self.leader = None, None
        cpus = pin[-1] if pin else None  # taskset -c N: the service gets CPUAffinity=N
        for attempt in range(3):
            self.port = free_port()
            self._units(args, cpus)
            try:
                self._boot(args)
                break
            except RuntimeError as e:
                log(f"systemd: {e}; retry {attempt + 1}")
                self._shutdown()
        else:
            raise RuntimeError("systemd: could not start the socket unit")
        self.parent = self.leader  # the container's PID 1 holds the socket
        self.pid = self._show()["MainPID"]
        probe_pid(self.port, self.pid, 15)

    def _units(self, args, cpus):
        units = os.path.join(self.dir, "units")
        os.makedirs(units, exist_ok=True)
        with open(os.path.join(units, self.UNIT + ".socket"), "w") as f:
            f.write(f"[Socket]\nListenStream=127.0.0.1:{self.port}\n")
        with open(os.path.join(units, self.UNIT + ".service"), "w") as f:
            # StartLimitIntervalSec=0: restarts count as starts, and the default limit (5 in
            # 10 s) would refuse the 6th.
            f.write("[Unit]\nStartLimitIntervalSec=0\n\n"
                    "[Service]\nType=notify\nNotifyAccess=main\n"
                    f"ExecStart=/usr/local/bin/http-server --ready-delay-ms "
                    f"{args.ready_delay_ms}\nTimeoutStopSec=15\n"
                    + (f"CPUAffinity={cpus}\n" if cpus else ""))
        self.unit_text = {n: open(os.path.join(units, n)).read() for n in sorted(os.listdir(units))}

    def _boot(self, args):
        os.makedirs("/run/systemd", exist_ok=True)
        self.machine = f"peers-{os.getpid()}-{len(self.procs.popens)}"
        self.cmd = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                    'mount -t tmpfs -o mode=0755 tmpfs /run/systemd && exec "$@"', "sh",
                    "systemd-nspawn", "-D", args.systemd_rootfs, "--boot",
                    f"--machine={self.machine}", "--register=no", "--keep-unit",
                    "--volatile=overlay", "--console=read-only", "--link-journal=no",
                    "--resolv-conf=off", "--timezone=off",
                    f"--bind-ro={args.server}:/usr/local/bin/http-server",
                    f"--bind-ro={os.path.join(self.dir, 'units')}:/usr/local/lib/systemd/system"]
        with open(os.path.join(self.dir, "console.log"), "ab") as console:
            self.nspawn = self.procs.start(self.cmd, stdout=console, stderr=subprocess.STDOUT,
                                           start_new_session=True)
        deadline = time.monotonic() + 60
        while self.leader is None:  # the container's PID 1 is systemd-nspawn's child
            for c in children_of(self.nspawn.pid):
                if comm_of(c) == "systemd":
                    self.leader = c
            if self.nspawn.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the container did not start: {self._console()}")
            time.sleep(0.05)
        while True:
            state = self.ct(["systemctl", "is-system-running"], check=False).stdout.strip()
            if state in ("running", "degraded"):
                break
            if self.nspawn.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"systemd did not boot (state {state!r}): {self._console()}")
            time.sleep(0.05)
        if "version" not in SYSTEMD_INFO:
            SYSTEMD_INFO["version"] = self.ct(["systemctl", "--version"]).stdout.split("\n")[0]
        r = self.ct(["systemctl", "start", self.UNIT + ".socket"], check=False)
        if r.returncode:
            raise RuntimeError(f"{self.UNIT}.socket did not start: {r.stderr.strip()}")
        self.ct(["systemctl", "start", self.UNIT + ".service"],
                timeout=args.ready_delay_ms / 1e3 + 30)

    def _console(self):
        try:
            with open(os.path.join(self.dir, "console.log"), errors="replace") as f:
                return " | ".join(f.read().strip().split("\n")[-8:])
        except OSError:
            return "no console output"

    def ct(self, cmd, check=True, timeout=60):
        """Run a command in the container (all its namespaces, a clean environment)."""
        r = subprocess.run(["nsenter", "--target", str(self.leader), "--mount", "--uts",
                            "--ipc", "--net", "--pid", "--cgroup", "--root", "--wd", "--",
                            "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                            "SYSTEMD_PAGER=cat", "SYSTEMD_COLORS=0", *cmd],
                           capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        if check and r.returncode:
            raise RuntimeError(f"{shlex.join(cmd)} in the container: status {r.returncode}, "
                               f"{r.stderr.strip()}")
        return r

    def _show(self):
        props = ("MainPID", "ActiveExitTimestampMonotonic", "ExecMainStartTimestampMonotonic",
                 "ActiveEnterTimestampMonotonic", "InactiveEnterTimestampMonotonic", "NRestarts")
        out = self.ct(["systemctl", "show", self.UNIT + ".service",
                       *(f"--property={p}" for p in props)]).stdout
        return {k: int(v) for k, v in (ln.split("=", 1) for ln in out.split("\n") if "=" in ln)}

    def reload(self):
        old = self.pid
        t = time.monotonic()
        self.ct(["systemctl", "restart", self.UNIT + ".service"],
                timeout=self.args.ready_delay_ms / 1e3 + 60)
        t_done = time.monotonic()
        st = self._show()
        self.pid = st["MainPID"]
        t_stop = st["ActiveExitTimestampMonotonic"] / 1e6
        t_spawn = st["ExecMainStartTimestampMonotonic"] / 1e6
        t_ready = st["ActiveEnterTimestampMonotonic"] / 1e6
        return {"t": t, "old": old, "new": self.pid, "t_stop": t_stop, "t_spawn": t_spawn,
                "spawn_ms": (t_spawn - t) * 1e3, "ready_ms": (t_ready - t_spawn) * 1e3,
                "old_exit_ms": (st["InactiveEnterTimestampMonotonic"] / 1e6 - t) * 1e3,
                "restart_cmd_ms": (t_done - t) * 1e3, "systemd_ready": True}

    def gone(self, pid):
        pass  # `systemctl restart` returns once the new child is up: the old one exited before

    def stop(self):
        self._shutdown()

    def _shutdown(self):
        """Power the container off (systemd-nspawn turns SIGTERM into a clean poweroff); if it
        is still there after 30 s, SIGKILL its PID 1 (which ends its pid namespace), then
        systemd-nspawn."""
        p, self.nspawn = self.nspawn, None
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log(f"systemd: container {self.machine} did not power off in 30 s, killing it")
                if self.leader and comm_of(self.leader) == "systemd":
                    os.kill(self.leader, signal.SIGKILL)
                time.sleep(1)
                p.kill()
                p.wait()
        self.leader = None
        shutil.rmtree(os.path.join(self.dir, "units"), ignore_errors=True)
        try:
            os.unlink(os.path.join(self.dir, "console.log"))
        except OSError:
            pass


def children_of(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def comm_of(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except (FileNotFoundError, ProcessLookupError):
        return None


def start_direct(procs, server, port, ready_delay_ms, pin=()):
    """The child binding 127.0.0.1:PORT itself (PORT 0: the kernel picks); retried on
    EADDRINUSE. Returns (Popen, port, time of Popen)."""
    for attempt in range(5):
        cmd = [*pin, server, "--bind", f"127.0.0.1:{port}", "--ready-delay-ms",
               str(ready_delay_ms)]
        t = time.monotonic()
        p = procs.start(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=clean_env())
        line = p.stderr.readline().decode()
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if m:
            threading.Thread(target=p.stderr.read, daemon=True).start()  # drain its stderr
            return p, int(m.group(1)), t
        p.wait()
        log(f"child could not bind 127.0.0.1:{port} ({line.strip()}), retry {attempt + 1}")
        time.sleep(0.05)
    raise RuntimeError("cannot start the directly bound child")


class Direct:
    """The child binding the port itself. reload() = the naive restart."""

    def __init__(self, procs, args, name, pin=()):
        self.name, self.procs, self.args, self.parent = name, procs, args, None
        self.p, self.port, _ = start_direct(procs, args.server, 0, args.ready_delay_ms, pin)
        self.pid = self.p.pid
        probe_pid(self.port, self.pid, 15)

    def reload(self):
        old = self.p
        t = time.monotonic()
        old.send_signal(signal.SIGTERM)  # told to stop first: t_stop = t
        old.wait(timeout=15)
        t_exit = time.monotonic()
        self.p, _, t_spawn = start_direct(self.procs, self.args.server, self.port,
                                          self.args.ready_delay_ms)
        self.pid = self.p.pid
        return {"t": t, "old": old.pid, "new": self.pid, "t_stop": t,
                "old_exit_ms": (t_exit - t) * 1e3, "t_spawn": t_spawn,
                "spawn_ms": (t_spawn - t) * 1e3}

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(timeout=15)

    def gone(self, pid):
        pass  # reload() waited for it


def make(tool, procs, args, pin=()):
    if tool == "handoff":
        return Handoff(procs, args, pin)
    if tool == "starter":
        return Starter(procs, args, pin)
    if tool == "einhorn":
        return Einhorn(procs, args, pin)
    if tool == "systemd":
        return Systemd(procs, args, pin)
    return Direct(procs, args, tool, pin)


# ------------------------------------------------------------------ load
WRK_RE = {"rps": r"Requests/sec:\s+([\d.]+)", "requests": r"(\d+) requests in",
          "non2xx": r"Non-2xx or 3xx responses:\s+(\d+)"}


def parse_wrk(out):
    r = {k: float(m.group(1)) if (m := re.search(p, out)) else 0.0 for k, p in WRK_RE.items()}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["errors"] = dict(zip(("connect", "read", "write", "timeout"),
                           map(int, m.groups()))) if m else {}
    m = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out)
    r["max"] = m.group(1) if m else "?"
    m = re.search(r"\s99%\s+(\S+)", out)
    r["p99"] = m.group(1) if m else "?"
    r["failed"] = sum(r["errors"].values()) + int(r["non2xx"])
    return r


def wrk_cmd(threads, conns, port, secs):
    return ["wrk", f"-t{threads}", f"-c{conns}", f"-d{secs}s", "--timeout", "5s", "--latency",
            f"http://127.0.0.1:{port}/"]


class Load:
    """wrk keep-alive + N Python new-connection client processes, all on one port."""

    def __init__(self, procs, args, port, max_s):
        self.wrk = procs.start(wrk_cmd(args.wrk_threads, args.wrk_conns, port, int(max_s) + 1),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        me = [sys.executable, os.path.abspath(__file__), "_client", str(port), str(max_s)]
        self.clients = [procs.start(me, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    text=True) for _ in range(args.conn_clients)]
        # The probe: one more new-connection client, paced (one request per ms) and at a higher
        # priority, so that when a new generation first answers is seen within ~1 ms even while
        # the load saturates the CPUs. Same client code; its requests count like the others.
        self.clients.append(procs.start(me + [str(args.probe_interval), str(args.probe_nice)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True))
        self.t0 = time.monotonic()

    def finish(self):
        elapsed = time.monotonic() - self.t0
        self.wrk.send_signal(signal.SIGINT)  # wrk prints its summary on SIGINT
        for c in self.clients:
            c.stdin.close()  # the clients stop when their stdin closes
        outs = []
        for c in self.clients:
            outs.append(c.stdout.read())
            c.wait(timeout=30)
        w = parse_wrk(self.wrk.communicate(timeout=30)[0])
        cs = [json.loads(o) for o in outs]

        def by_pid(cs):
            pids = {}
            for c in cs:
                for pid, (first, last, n) in c["pids"].items():
                    f0, l0, n0 = pids.get(int(pid), (first, last, 0))
                    pids[int(pid)] = (min(f0, first), max(l0, last), n0 + n)
            return pids
        pids = by_pid(cs)
        return {"probe_pids": by_pid(cs[-1:]), "load_pids": by_pid(cs[:-1]),
                "probe_ok": cs[-1]["ok"], "probe_fail": Counter(cs[-1]["fail"]),
                "elapsed": elapsed, "wrk": w, "ok": sum(c["ok"] for c in cs),
                "fail": sum((Counter(c["fail"]) for c in cs), Counter()),
                "fail_times": sorted(tuple(x) for c in cs for x in c["fail_times"]),
                "pids": pids, "p50_ms": max(c["p50_ms"] for c in cs),
                "p99_ms": max(c["p99_ms"] for c in cs), "max_ms": max(c["max_ms"] for c in cs)}


# ------------------------------------------------------------------ phases
def reload_phase(tool, procs, args):
    """Start the target, put it under load, reload it N times (or just wait for `direct`)."""
    t = make(tool, procs, args)
    res = {"cmd": shlex.join(getattr(t, "cmd", None) or [args.server, "--bind", "127.0.0.1:0",
                                                          "--ready-delay-ms",
                                                          str(args.ready_delay_ms)])}
    budget = args.reloads * {"starter": 2.0, "einhorn": 4.0}.get(tool, 1.0) + 60
    load = Load(procs, args, t.port, budget)
    reloads, probe_errors = [], 0
    try:
        time.sleep(1.0)  # load running before the first reload
        if tool == "direct":
            time.sleep(args.direct_s)
        else:
            for i in range(args.reloads):
                r = t.reload()
                probe_errors += probe_pid(t.port, r["new"], 15)  # the new one answers ...
                t.gone(r["old"])  # ... and the old one is gone: next reload
                reloads.append(r)
                time.sleep(args.gap)
            time.sleep(0.5)
    finally:
        out = load.finish()
    res.update(out)
    res["reloads"], res["probe_errors"] = reloads, probe_errors
    if hasattr(t, "unit_text"):
        res["units"] = t.unit_text
    if t.parent:
        res["rss_kb"], res["hwm_kb"] = (proc_status(t.parent, "VmRSS"),
                                        proc_status(t.parent, "VmHWM"))
    # client-side figures per reload
    for r in reloads:
        first = out["pids"].get(r["new"], (None,))[0]  # the earliest of all our clients
        fp_, fl_ = out["probe_pids"].get(r["new"]), out["load_pids"].get(r["new"])
        r["probe_first_ms"] = (fp_[0] - r["t"]) * 1e3 if fp_ else None
        r["load_first_ms"] = (fl_[0] - r["t"]) * 1e3 if fl_ else None
        r["new_serves_ms"] = (first - r["t"]) * 1e3 if first else None
        r["stop_ms"] = (r["t_stop"] - r["t"]) * 1e3
        r["latency_ms"] = (max(r["new_serves_ms"], r["stop_ms"])
                           if r["new_serves_ms"] is not None else None)
        last_old = out["pids"].get(r["old"], (None, None))[1]
        r["old_last_ms"] = (last_old - r["t"]) * 1e3 if last_old else None
        if "t_spawn" in r and first:  # the child's own time to ready, seen from outside
            r["child_ready_ms"] = (first - r["t_spawn"]) * 1e3
        if "ready_at_ms" in r and r["latency_ms"] is not None:  # handoff's log
            r["over_ready_ms"] = r["latency_ms"] - r["ready_ms"]
            r["before_spawn_ms"] = r["ready_at_ms"] - r["ready_ms"]
            r["ready_to_served_ms"] = r["new_serves_ms"] - r["ready_at_ms"]
    res["unseen"] = sum(r["latency_ms"] is None for r in reloads)
    if tool == "handoff":
        res["odd"] = Counter(e.get("event") for e in t.log.all()
                             if e.get("level") in ("WARN", "ERROR")
                             or e.get("event") in ("failed", "exited", "killed"))
        res["drained"] = Counter(str(e.get("exit_status")) for e in t.log.all()
                                 if e.get("event") == "drained")
    t.stop()
    return res


def footprint_and_throughput(procs, args):
    """Fresh targets, no reloads: parents' idle CPU (all at once), then wrk rounds."""
    tools = args.tools
    # With 2+ CPUs: every target (supervisor and child, which inherits it) on the last CPU,
    # wrk on the others, so that run-to-run placement of wrk's and the server's threads
    # does not decide the figure.
    ncpu = os.cpu_count() or 1
    pin_srv = ["taskset", "-c", str(ncpu - 1)] if args.pin else []
    pin_wrk = ["taskset", "-c", f"0-{ncpu - 2}" if ncpu > 2 else "0"] if args.pin else []
    ts = {tool: make(tool, procs, args, pin_srv) for tool in tools}
    res = {"idle": {}, "busy_parent": {}, "runs": {tool: [] for tool in tools}}
    time.sleep(1.0)
    parents = {k: t.parent for k, t in ts.items() if t.parent}
    log(f"parents idle for {args.idle_s:g} s (no load, no reloads)")
    a, t0 = {k: proc_cpu(p) for k, p in parents.items()}, time.monotonic()
    time.sleep(args.idle_s)
    b, t1 = {k: proc_cpu(p) for k, p in parents.items()}, time.monotonic()
    for k in parents:
        res["idle"][k] = {"ticks_pct": (b[k][0] - a[k][0]) / (t1 - t0) * 100,
                          "ns_pct": (b[k][1] - a[k][1]) / 1e9 / (t1 - t0) * 100,
                          "rss_kb": proc_status(parents[k], "VmRSS")}
    log(f"throughput: {args.tp_rounds} rounds x {len(tools)} targets x {args.tp_secs:g} s, "
        f"wrk -t{args.tp_threads} -c{args.tp_conns}, order rotated each round")
    for rnd in range(args.tp_rounds):
        order = tools[rnd % len(tools):] + tools[:rnd % len(tools)]
        for tool in order:
            pc = proc_cpu(parents[tool]) if tool in parents else None
            out = subprocess.run(pin_wrk + wrk_cmd(args.tp_threads, args.tp_conns, ts[tool].port,
                                         args.tp_secs), capture_output=True, text=True,
                                 timeout=args.tp_secs + 30).stdout
            r = parse_wrk(out)
            if pc:
                pc2 = proc_cpu(parents[tool])
                r["parent_cpu_ns"] = pc2[1] - pc[1]
            res["runs"][tool].append(r)
    for t in ts.values():
        t.stop()
    med = {k: statistics.median(r["rps"] for r in v) for k, v in res["runs"].items()}
    res["median"], res["ratio_of_medians"] = med, {k: med[k] / med["direct"] for k in med}
    # Paired: each round's runs are seconds apart, so the machine's slow swings cancel out.
    res["paired"] = {k: [a["rps"] / b["rps"] for a, b in zip(v, res["runs"]["direct"])]
                     for k, v in res["runs"].items()}
    res["ratio"] = {k: statistics.median(v) for k, v in res["paired"].items()}
    allr = [r["rps"] for v in res["runs"].values() for r in v]
    res["spread_pct"] = (max(allr) - min(allr)) / statistics.median(allr) * 100
    return res


def slow_phase(tool, procs, args):
    """The slow child: ready --slow-delay-ms after its start. Two paced clients (one request
    every --slow-interval each, 8 s timeout; one opens a new connection per request, one keeps
    its connection alive) run while the target is reloaded --slow-reloads times (or, for the
    no-wrapper reference, for as long without reloads)."""
    a = argparse.Namespace(**vars(args))
    a.ready_delay_ms = args.slow_delay_ms
    t = make(tool, procs, a)
    res = {"cmd": shlex.join(getattr(t, "cmd", None) or [args.server, "--bind", "127.0.0.1:0",
                                                          "--ready-delay-ms",
                                                          str(a.ready_delay_ms)])}
    budget = args.slow_reloads * (a.ready_delay_ms / 1e3 + 10) + 60
    me = [sys.executable, os.path.abspath(__file__), "_client", str(t.port), str(budget),
          str(args.slow_interval), "0"]
    clients = {k: procs.start(me + [ka, "8"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for k, ka in (("conn", "0"), ("ka", "1"))}
    reloads = []
    try:
        time.sleep(0.5)  # clients running before the first reload
        t0 = time.monotonic()
        if tool == "direct":
            time.sleep(args.slow_direct_s)
        else:
            for _ in range(args.slow_reloads):
                r = t.reload()
                probe_pid(t.port, r["new"], a.ready_delay_ms / 1e3 + 15)
                t.gone(r["old"])
                reloads.append(r)
                time.sleep(0.3)
        res["window_s"] = time.monotonic() - t0
        time.sleep(0.2)
    finally:
        outs = {}
        for k, c in clients.items():
            c.stdin.close()  # the clients stop when their stdin closes
        for k, c in clients.items():
            outs[k] = json.loads(c.stdout.read() or "{}")
            c.wait(timeout=30)
    res["clients"] = outs
    pids = {}
    for c in outs.values():
        for pid, (first, _, _) in c.get("pids", {}).items():
            pids[int(pid)] = min(pids.get(int(pid), first), first)
    for r in reloads:
        first = pids.get(r["new"])
        r["new_serves_ms"] = (first - r["t"]) * 1e3 if first else None
        r["stop_ms"] = (r["t_stop"] - r["t"]) * 1e3
        r["latency_ms"] = (max(r["new_serves_ms"], r["stop_ms"])
                           if r["new_serves_ms"] is not None else None)
    res["reloads"] = reloads
    t.stop()
    return res


# ------------------------------------------------------------------ report
def sysinfo(args):
    def run(cmd, env=None):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, env=env,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    mem = proc_meminfo_mib()
    wrk = (run(["sh", "-c", "wrk -v 2>&1"]).split("\n")[0].split(" Copyright")[0]) or "?"
    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "kernel": platform.release(), "nproc": os.cpu_count(), "cpu": cpu, "mem": mem,
            "commit": run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]) or "?",
            "python": platform.python_version(), "wrk": wrk,
            "starter": run(["dpkg-query", "-W", "-f", "${Version}", "libserver-starter-perl"])
            or "?", "perl": run(["perl", "-e", "print $^V"]) or "?"}
    if "einhorn" in args.tools:
        env = einhorn_env(args.einhorn)
        src = os.path.dirname(os.path.dirname(os.path.realpath(args.einhorn)))
        info["einhorn"] = (f"einhorn {run([args.einhorn, '--version'], env) or '?'} "
                           f"(`{args.einhorn}`; git commit "
                           f"{run(['git', '-C', src, 'rev-parse', 'HEAD']) or 'unknown'}), "
                           f"{run(['ruby', '-v'], env) or 'ruby ?'}")
    if "systemd" in args.tools:
        built = "?"
        try:
            with open(os.path.join(args.systemd_rootfs, ".handoff-rootfs-ready")) as f:
                built = " ".join(f.read().split())
        except OSError:
            pass
        info["systemd"] = (f"{SYSTEMD_INFO.get('version', 'systemd ?')} in a systemd-nspawn "
                           f"container ({run(['systemd-nspawn', '--version']).split(chr(10))[0]}"
                           f" on the host), root file system `{args.systemd_rootfs}` ({built})")
    return info


def proc_meminfo_mib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 0


def f1(v, unit=" ms", nd=1):
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}{unit}"


def p5099(values, nd=1):
    vs = [v for v in values if v is not None]
    if not vs:
        return "–"
    return f"{pct(vs, 50):.{nd}f} / {pct(vs, 99):.{nd}f}"


WHAT_RELOAD = {
    "handoff": "SIGHUP to handoff: new child on the same socket; old one stopped at READY=1",
    "starter": "SIGHUP to start_server: new worker; old one stopped after `--interval` (1 s)",
    "einhorn": "SIGHUP to einhorn (its smooth `upgrade`): master re-exec, new worker; old one "
               "stopped (USR2) at its ACK",
    "systemd": "`systemctl restart` of the Type=notify service: old child stopped first, then "
               "the new one started; PID 1 holds the socket; done at READY=1",
    "naive": "SIGTERM, wait for exit, start a new child binding the port itself",
    "direct": "never reloaded",
}


def report(args, res, info):
    L = []
    add = L.append
    ph, fp, sl = res["phases"], res.get("fp"), res.get("slow", {})
    n = args.reloads
    cols = [k for k in TOOLS if k in args.tools]
    add("# handoff against its peers\n")
    add("Same child (`examples/rust/http_server.rs`, `--ready-delay-ms "
        f"{args.ready_delay_ms}`; `{args.slow_delay_ms}` in the slow-child section), same "
        "load, same machine, one run. Produced by `bench/peers.sh` (`bench/peers.py`); every "
        "figure below comes from the run described here.\n")
    add(f"- date: {info['date']}  ")
    add(f"- command: `{args.command}`{' (quick mode: smoke test, not a result)' if args.quick else ''}  ")
    add(f"- machine: Linux {info['kernel']}, nproc {info['nproc']}, CPU `{info['cpu']}`, "
        f"{info['mem']} MiB RAM  ")
    add(f"- load average {res['load_before']} at the start, {res['load_after']} at the end; "
        f"CPUs busy (other processes) {res['busy_before']:.0f} % before the run, "
        f"{res['busy_after']:.0f} % after it  ")
    add(f"- handoff commit {info['commit']} (working tree may have uncommitted changes); "
        f"Server::Starter {info['starter']} (Debian libserver-starter-perl, Perl "
        f"{info['perl']}); {info['wrk']}; Python {info['python']}  ")
    if "einhorn" in info:
        add(f"- einhorn: {info['einhorn']}  ")
    if "systemd" in info:
        add(f"- systemd: {info['systemd']}  ")
    for k, why in args.skipped.items():
        add(f"- **{NAMES[k]} left out**: {why}  ")
    add(f"- load during the reloads, concurrently: `wrk -t{args.wrk_threads} "
        f"-c{args.wrk_conns}` (keep-alive) and {args.conn_clients} Python processes opening a "
        f"new connection per request (no retries, 5 s timeout; a refused connect is retried "
        f"after 5 ms, each attempt counts), plus a probe: one more such client, paced at one "
        f"request per {args.probe_interval * 1e3:g} ms and run at nice {args.probe_nice}, "
        f"whose requests count like the others; all on 127.0.0.1; {n} reloads per tool, "
        f"{args.gap * 1e3:.0f} ms pause after each reload has completed (new generation "
        f"answering, old one exited)\n")
    add("What a reload is, per tool:\n")
    for k in cols:
        add(f"- **{NAMES[k]}**: {WHAT_RELOAD[k]}")
    add("")

    h, nv = ph.get("handoff"), ph.get("naive")
    add("## Targets\n")
    add("| Target | Measured | |")
    add("|---|---|---|")
    if h:
        hf = h["wrk"]["failed"] + sum(h["fail"].values())
        add(f"| handoff: 0 failed requests over {n} reloads, keep-alive (wrk) and new "
            f"connections | wrk {h['wrk']['failed']} ({fails(h['wrk']['errors'])}"
            f"{', non-2xx %d' % h['wrk']['non2xx'] if h['wrk']['non2xx'] else ''}), "
            f"new-connection {sum(h['fail'].values())} ({fails(h['fail'])}) | {yes(hf == 0)} |")
    if nv:
        nf = nv["wrk"]["failed"] + sum(nv["fail"].values())
        add(f"| naive restart fails requests (the contrast) | wrk {nv['wrk']['failed']} "
            f"({fails(nv['wrk']['errors'])}), new-connection {sum(nv['fail'].values())} "
            f"({fails(nv['fail'])}) | {'**yes**' if nf else '**no**'} |")
    if h and h["reloads"]:
        ov = [r.get("over_ready_ms") for r in h["reloads"]]
        add(f"| handoff reload latency within 5 ms of the child's own time to ready "
            f"(latency − `ready_ms`, per reload, p50 / p99) | {p5099(ov)} ms (latency "
            f"{p5099([r['latency_ms'] for r in h['reloads']])} ms; child ready_ms "
            f"{p5099([r['ready_ms'] for r in h['reloads']])} ms) | "
            f"{yes(pct(ov, 99) <= 5)} |")
        add(f"| (the same latency minus the nominal {args.ready_delay_ms} ms, p50 / p99) | "
            f"{p5099([r['latency_ms'] - args.ready_delay_ms for r in h['reloads'] if r['latency_ms'] is not None])} ms | |")
        ps = [r.get("spawn_ms") for r in h["reloads"]]
        add(f"| (of which SIGHUP → child spawned, fork + exec, from handoff's log, p50 / p99) "
            f"| {p5099(ps, 2)} ms | |")
    if h and "rss_kb" in h:
        add(f"| handoff parent RSS under 5 MiB (VmRSS after the {n} reloads; VmHWM) | "
            f"{h['rss_kb'] / 1024:.2f} MiB; {h['hwm_kb'] / 1024:.2f} MiB | "
            f"{yes(h['hwm_kb'] < 5 * 1024)} |")
    if fp and "handoff" in fp["ratio"]:
        r = fp["ratio"]["handoff"]
        add(f"| handoff data-path throughput ≥ 0.98 × no wrapper (median over {args.tp_rounds} "
            f"rounds of the ratio within each round) | {r:.3f} (ratio of the medians "
            f"{fp['ratio_of_medians']['handoff']:.3f}; identical setups, A/A: "
            f"{fp['ratio']['naive']:.3f}) | {yes(r >= 0.98)} |")
    hs = sl.get("handoff")
    if hs:
        c = hs["clients"].values()
        hf = sum(sum(x.get("fail", {}).values()) for x in c)
        worst = max((x.get("max_ms", 0) for x in c), default=float("nan"))
        add(f"| handoff, slow child ({args.slow_delay_ms} ms to ready): 0 failed requests and "
            f"worst latency under 100 ms over {len(hs['reloads'])} reloads (paced clients) | "
            f"{hf} failed, worst {worst:.1f} ms | {yes(hf == 0 and worst < 100)} |")
    add("")

    add(f"## Results per tool ({n} reloads under load; footprint and throughput without "
        f"reloads)\n")
    add("| | " + " | ".join(NAMES[k] for k in cols) + " |")
    add("|---|" + "---|" * len(cols))

    def row(label, fn, phase=True):
        cells = []
        for k in cols:
            try:
                cells.append(fn(k, ph.get(k)) if ph.get(k) is not None or not phase else "–")
            except (KeyError, TypeError, ValueError, ZeroDivisionError):
                cells.append("–")
        add(f"| {label} | " + " | ".join(cells) + " |")

    row("reloads / duration of the loaded phase",
        lambda k, x: f"{len(x['reloads'])} / {x['elapsed']:.1f} s" if k != "direct"
        else f"none / {x['elapsed']:.1f} s")
    row("wrk keep-alive requests (req/s)",
        lambda k, x: f"{int(x['wrk']['requests'])} ({x['wrk']['rps']:.0f}/s)")
    row("wrk failed: socket errors by kind, non-2xx",
        lambda k, x: f"**{x['wrk']['failed']}**: {fails(x['wrk']['errors'])}; "
        f"non-2xx {int(x['wrk']['non2xx'])}")
    row("wrk latency p99 / max", lambda k, x: f"{x['wrk']['p99']} / {x['wrk']['max']}")
    row("new-connection requests OK (req/s; load clients + probe)",
        lambda k, x: f"{x['ok']} ({x['ok'] / x['elapsed']:.0f}/s)")
    row("new-connection failed, by kind",
        lambda k, x: f"**{sum(x['fail'].values())}**: {fails(x['fail'])}")
    row("new-connection latency p99 / max (incl. connect)",
        lambda k, x: f"{x['p99_ms']:.1f} ms / {x['max_ms']:.1f} ms")
    row("**reload latency p50 / p99**: signal (or command) → new generation answered *and* "
        "old one told to stop", lambda k, x: f"**{p5099([r['latency_ms'] for r in x['reloads']])} ms**"
        if k != "direct" else "n/a")
    row("… signal → first response from the new pid (earliest of all clients) p50 / p99",
        lambda k, x: f"{p5099([r['new_serves_ms'] for r in x['reloads']])} ms"
        if k != "direct" else "n/a")
    row("… the same, seen by the 1 ms probe alone / by the load clients alone (p50 / p99)",
        lambda k, x: f"{p5099([r['probe_first_ms'] for r in x['reloads']])} ms; "
        f"{p5099([r['load_first_ms'] for r in x['reloads']])} ms" if k != "direct" else "n/a")
    row("… signal → old generation told to stop p50 / p99",
        lambda k, x: f"{p5099([r['stop_ms'] for r in x['reloads']], 2)} ms"
        if k != "direct" else "n/a")
    row("… signal → old pid's last response p50 / p99 (both generations answer until then; "
        "systemd, naive: the old one stops first)",
        lambda k, x: f"{p5099([r['old_last_ms'] for r in x['reloads']])} ms"
        if k != "direct" else "n/a")
    row("… the tool's own steps, p50 / p99 (see *How each figure was measured*)",
        lambda k, x: steps(k, x["reloads"]) if k != "direct" else "n/a")
    row("child's own time to ready p50 / p99 (handoff: `ready_ms`, its decision to spawn → "
        "READY=1; systemd: the unit's ExecMainStart → ActiveEnter (READY=1); naive: Popen → "
        "first response; Server::Starter, einhorn: its `starting new worker` / `Launched` "
        "line → first response)",
        lambda k, x: (f"{p5099([r['ready_ms'] for r in x['reloads']])} ms"
                      if k in ("handoff", "systemd")
                      else f"{p5099([r.get('child_ready_ms') for r in x['reloads']])} ms"
                      if k != "direct" else "n/a"))
    row("parent RSS after the reloads (VmRSS; peak VmHWM; systemd: the container's PID 1)",
        lambda k, x: f"{x['rss_kb'] / 1024:.2f} MiB; {x['hwm_kb'] / 1024:.2f} MiB"
        if "rss_kb" in x else "no parent")
    if fp:
        def idle(k, x):
            i = fp["idle"].get(k)
            if not i:
                return "no parent"
            return f"{i['ticks_pct']:.2f} % ({i['ns_pct']:.4f} % by schedstat)"
        row(f"parent CPU while idle ({args.idle_s:g} s, % of one core)", idle, False)
        row("parent CPU while its child serves wrk (% of one core, schedstat)",
            lambda k, x: (f"{statistics.median(r['parent_cpu_ns'] for r in fp['runs'][k]) / 1e9 / args.tp_secs * 100:.4f} %"
                          if "parent_cpu_ns" in fp["runs"][k][0] else "no parent"), False)
        row(f"data-path throughput: wrk req/s, median of {args.tp_rounds}",
            lambda k, x: f"{fp['median'][k]:.0f}", False)
        row("**data-path ratio** vs no wrapper (median of the per-round ratios; ratio of the "
            "medians)",
            lambda k, x: f"**{fp['ratio'][k]:.3f}**; {fp['ratio_of_medians'][k]:.3f}"
            if k != "direct" else "1 (reference)", False)
    add("")

    if fp:
        add(f"### Throughput runs (wrk -t{args.tp_threads} -c{args.tp_conns} -d{args.tp_secs:g}s "
            f"keep-alive, no reloads; the order of the targets rotates each round"
            f"{'; wrk and the targets pinned to separate CPUs' if args.pin else ''})\n")
        tcols = [k for k in cols if k in fp["runs"]]
        add("| Round | " + " | ".join(NAMES[k] for k in tcols) + " |")
        add("|---|" + "---|" * len(tcols))
        for i in range(args.tp_rounds):
            add(f"| {i + 1} | " + " | ".join(
                f"{fp['runs'][k][i]['rps']:.0f}"
                f"{' (%d failed)' % fp['runs'][k][i]['failed'] if fp['runs'][k][i]['failed'] else ''}"
                for k in tcols) + " |")
        allr = [r["rps"] for v in fp["runs"].values() for r in v]
        add("| median | " + " | ".join(f"{fp['median'][k]:.0f}" for k in tcols) + " |")
        add("| per-round ratio to no wrapper, min–max | " + " | ".join(
            f"{min(fp['paired'][k]):.3f}–{max(fp['paired'][k]):.3f}" for k in tcols) + " |")
        add("")
        add(f"All {len(allr)} runs span {min(allr):.0f}–{max(allr):.0f} req/s "
            f"({fp['spread_pct']:.1f} % of the median). The naive-restart column is the same "
            f"setup as the no-wrapper one (the child binding the port itself), so its ratio, "
            f"{fp['ratio']['naive']:.3f}, is what noise alone does to this figure.\n")

    if sl:
        slow_report(args, sl, add, cols)

    if h and h["reloads"]:
        add("### handoff, from its JSON log (same reloads)\n")
        add("| Figure | p50 | p99 | max |")
        add("|---|---|---|---|")
        for label, key, scale, unit in (
                ("`reload_requested` → `stopping` (handoff's timestamps)",
                 "log_req_to_stop_ms", 1, "ms"),
                ("`request_to_spawn_ms`: SIGHUP received → child spawned (fork + exec)",
                 "spawn_ms", 1, "ms"),
                ("`ready_ms`: decision to spawn (before fork) → READY=1: the child's own time "
                 "to ready, fork + exec included", "ready_ms", 1, "ms"),
                ("signal sent → handoff starts the generation (delivery, event loop)",
                 "before_spawn_ms", 1, "ms"),
                ("`handover_us`: READY=1 → stop signal sent", "handover_us", 1e-3, "ms"),
                ("`reload_finished.duration_ms`", "duration_ms", 1, "ms"),
                ("signal sent → `stopping` timestamp (used as “told to stop” above)",
                 "stop_ms", 1, "ms"),
                ("READY=1 (`ready` timestamp) → clients' first response from the new pid",
                 "ready_to_served_ms", 1, "ms"),
                ("… the same, when our reader got the line (pipe + wake-up)", None, 1, "ms")):
            if key is None:
                vs = [(r["t_stop_read"] - r["t"]) * 1e3 for r in h["reloads"]]
            else:
                vs = [r[key] * scale for r in h["reloads"] if r.get(key) is not None]
            add(f"| {label} | {pct(vs, 50):.3f} {unit} | {pct(vs, 99):.3f} {unit} | "
                f"{max(vs, default=float('nan')):.3f} {unit} |")
        add(f"\nWarnings/failed/exited/killed events from handoff: "
            f"{dict(h.get('odd', {})) or 'none'}; exit status of the drained generations: "
            f"{', '.join(f'{k} ×{v}' for k, v in h.get('drained', {}).items()) or '?'}.\n")

    add("## How each figure was measured\n")
    add("- **Reload latency** is defined identically for every tool: from the moment the "
        "benchmark sends the reload signal or runs the reload command (handoff, "
        "Server::Starter, einhorn: SIGHUP to the parent; systemd: `systemctl restart` started "
        "through nsenter; naive: SIGTERM to the child) until **both** (a) the new generation's "
        "pid has answered a request of the new-connection clients (the earliest "
        "response-complete time among them; they run in separate processes and share "
        "CLOCK_MONOTONIC with the benchmark; the paced higher-priority probe is there so that "
        "this moment is seen within about a millisecond while the load saturates the CPUs) and "
        "(b) the old generation has been sent its stop signal. Time (b) comes from each tool's "
        "own record: handoff's `stopping` log line (its µs timestamp, converted to our clock; "
        "the time our reader received the line is shown too), the `killing old workers` line "
        "that start_server prints right before `kill TERM` and einhorn's `Sending USR2 to "
        "[pid]` line, printed right before its `kill` (the time our reader received them), "
        "systemd's `ActiveExitTimestampMonotonic` of the service (the moment it began to stop "
        "it; CLOCK_MONOTONIC, shared with the container: nspawn makes no time namespace), "
        "and for the naive restart the benchmark's own `kill` (it stops the old child first).")
    add(f"- **Child's own time to ready**: the child sleeps {args.ready_delay_ms} ms before "
        "accepting (then it sends READY=1 if NOTIFY_SOCKET is set, and einhorn's ACK under "
        "einhorn). handoff logs it per reload "
        "(`ready_ms`: from its decision to spawn, before fork, to READY=1, so the child's "
        "fork + exec are in it); the target compares each reload's latency with its own "
        "`ready_ms`: the difference is the signal's way into handoff's event loop, the "
        "hand-over and the time the clients take to reach the new pid. systemd records it too "
        "(the unit's ExecMainStart → ActiveEnter timestamps). For the others it is estimated "
        "from outside (Popen, or the tool's `starting new worker` / `Launched` line → first "
        "response).")
    add("- **The tool's own steps** (row *… the tool's own steps*): handoff: SIGHUP → child "
        "spawned (its `request_to_spawn_ms`); Server::Starter: SIGHUP → `received HUP` line, → "
        "`starting new worker` line; einhorn: SIGHUP → `Reloading einhorn master` line, → "
        "`Starting smooth upgrade` line (two Ruby start-ups: einhorn first runs a copy of "
        "itself with `--upgrade-check`, then re-executes the master, which reads its state "
        "back), → `Launched` line, → `Received a manual ACK` line; systemd: "
        "command started → stop begins (ActiveExit: nsenter, systemctl, D-Bus to PID 1), → new "
        "child started (ExecMainStart; the old one has exited by then), → `systemctl "
        "restart` returned (the start job completes at READY=1); naive: SIGTERM → old child "
        "exited.")
    st_ = ph.get("starter")
    seen = ""
    if st_ and st_["reloads"]:
        sr = st_["reloads"]
        seen = (f"In this run the new child answered {pct([r['new_serves_ms'] for r in sr], 50):.0f}"
                f" ms after the SIGHUP (p50), the old one was told to stop after "
                f"{pct([r['stop_ms'] for r in sr], 50):.0f} ms and answered its last request at "
                f"{pct([r['old_last_ms'] for r in sr], 50):.0f} ms: both generations served side "
                f"by side for ~{pct([r['old_last_ms'] - r['new_serves_ms'] for r in sr if r['old_last_ms'] and r['new_serves_ms']], 50):.0f} ms. ")
    if "starter" in cols:
        add("- **Server::Starter** (`start_server --port=127.0.0.1:0 --signal-on-hup=TERM "
            "--signal-on-term=TERM`, default `--interval` 1 s): on SIGHUP it forks the new "
            "worker, *sleeps the interval*, and if the worker is still alive sends TERM to the "
            "old one (`--signal-on-hup=TERM` is what the old worker gets; our child drains on "
            "TERM). It never learns when the worker is ready, so a reload takes the interval "
            f"whatever the child does. {seen}A child slower than the interval (the slow-child "
            "section) is treated as started while not yet accepting: the old one is stopped "
            "and connections wait in the shared queue (start_server holds the socket) until "
            "the new one accepts. From its source (not exercised here): a child that dies "
            "within the interval is retried; a second SIGHUP during the interval cuts Perl's "
            "`sleep` short. The benchmark never overlaps reloads.")
    if "einhorn" in cols:
        add("- **einhorn** (`einhorn -m manual -n 1 -b 127.0.0.1:0`): it binds the socket and "
            "passes it as `EINHORN_FD_0` (with `EINHORN_FD_COUNT=1`); the child (the same "
            "binary: it understands einhorn's variables) sends einhorn's manual ACK once ready, "
            "the line `{\"command\":\"worker:ack\",\"pid\":PID}` on a connection to "
            "`EINHORN_SOCK_PATH`, and drains on SIGUSR2, einhorn's graceful stop. A reload is "
            "SIGHUP to the master, which is einhorn's `upgrade` (smooth: the same as "
            "`einhornsh -c upgrade`): einhorn has no worker upgrade without re-executing its "
            "own master first (the `reload` part of `upgrade`; `upgrade_fleet` re-executes "
            "too), so each reload starts a Ruby process image anew; then it launches the new "
            "worker, waits for its ACK and sends USR2 to the old one. With one worker, smooth "
            "and fleet upgrades do the same thing. einhorn launches at most one worker per "
            "`--seconds` (default 1 s) since the last launch, so the benchmark sends the next "
            "SIGHUP only once 1.05 s have passed since the last `Launched` line: that timer is "
            "not part of a reload a deployment would see (it reloads far less often). einhorn "
            "runs with its defaults otherwise; its command socket, pid file and lock file are "
            "in a temporary directory.")
    if "systemd" in cols:
        unit = ph.get("systemd", {}).get("units") or {}
        add("- **systemd** (a real systemd, PID 1 of a `systemd-nspawn --boot` container that "
            "shares the host's network namespace, so that the same load generators reach it "
            "on 127.0.0.1; `--volatile=overlay` over the cached root file system that "
            "`bash .ci/systemd` builds; the child binary is bind-mounted read-only): a socket "
            "unit listening on 127.0.0.1:PORT (a free port picked by the benchmark: a socket "
            "unit cannot take port 0) and a `Type=notify` service running the child, which "
            "takes fd 3 (LISTEN_FDS/LISTEN_PID) and sends READY=1 like under handoff. A reload "
            "is `systemctl restart` of the service (run in the container with nsenter): "
            "systemd stops the old child (SIGTERM, waits for it to exit), then starts the new "
            "one; the socket stays open in PID 1, so connections are not refused but queue "
            "until the new child accepts: the stall is the child's whole start-up. "
            "`systemctl reload` is not comparable (it signals the running process; it does "
            "not start a new one). Pids in the responses are the container's (its own pid "
            "namespace), and systemd's timestamps are read with `systemctl show`. Units: "
            + "; ".join(f"`{k}`: `{v.strip().replace(chr(10), ' ')}`" for k, v in unit.items())
            + ".")
    add("- **Naive restart**: SIGTERM to the child that bound the port itself, wait for it "
        "to exit, start a new one on the same port (Rust's std sets SO_REUSEADDR). Between the "
        "old socket's close and the new bind, connects are refused; connections queued in the "
        "old socket when it closes are reset; while the new child sleeps its ready delay, "
        "connections wait in its queue.")
    add("- **Failed requests**: wrk's own counters (`connect`, `read`, `write`, `timeout` > 5 "
        "s, non-2xx). wrk connects without blocking, so a refused connect surfaces as a `write` "
        "(or `read`) error, and wrk reconnects at once: during an outage its error count grows "
        "with its reconnect rate, it is not a count of distinct requests. The new-connection "
        "clients classify every attempt (`refused`, `reset`, `timeout` > 5 s, `eof` = closed "
        "with no response, `eof-partial`, `http-NNN`).")
    add("- **Parent RSS**: VmRSS and VmHWM (peak) of the supervisor process from "
        "/proc/PID/status after its reloads (for systemd, the container's PID 1; its other "
        "processes, journald and the like, are not counted). **Parent CPU while idle**: "
        f"utime+stime of the supervisor over {args.idle_s:g} s with no traffic and no reloads "
        f"(tick = {1000 / CLK_TCK:.0f} ms), and the same from schedstat (ns), every "
        "supervisor measured in the same window.")
    add(f"- **Data-path ratio**: keep-alive req/s with `wrk -t{args.tp_threads} "
        f"-c{args.tp_conns} -d{args.tp_secs:g}s` against each target (fresh instances, no "
        f"reloads), {args.tp_rounds} rounds, the order of the targets rotating each round"
        f"{'; wrk pinned to CPU 0 and every target (supervisor and child) to the last CPU with taskset (the systemd service with CPUAffinity=), so that the placement of threads does not differ from run to run' if args.pin else ''}; the "
        "headline is the median over rounds of each round's ratio to the no-wrapper run "
        "(paired: the runs of a round are seconds apart), the ratio of the medians is shown "
        "too. No supervisor is in the data path (the child accepts on the inherited socket), "
        "so 1 is expected and the deviation is noise.")
    add("- Percentiles are nearest-rank: with 50 reloads, p99 is the largest value.")
    add("- Commands (port 0: the kernel picks one, read back from handoff's `listening` line, "
        "from start_server's or einhorn's socket in /proc, or from the child's `listening on` "
        "line):")
    for k in cols:
        x = ph.get(k) or sl.get(k)
        if x:
            add(f"  - {NAMES[k]}: `{x['cmd']}`")
    add("")

    add("## Noise\n")
    for line in res.get("noise", []):
        add(f"- {line}")
    add("")
    add(f"_Total benchmark time: {res['total_s']:.0f} s._")
    return "\n".join(L) + "\n"


def steps(k, reloads):
    """The tool's own steps of a reload (ms after the signal), p50 / p99 each."""
    def ps(key):
        return p5099([r.get(key) for r in reloads])
    if k == "handoff":
        return f"spawned {p5099([r.get('spawn_ms') for r in reloads], 2)} ms"
    if k == "starter":
        return f"`received HUP` {ps('hup_seen_ms')}; new worker {ps('spawn_ms')} ms"
    if k == "einhorn":
        return (f"`Reloading` {ps('hup_seen_ms')}; re-exec'd {ps('reexec_ms')}; launched "
                f"{ps('spawn_ms')}; ACK {ps('ack_ms')} ms")
    if k == "systemd":
        return (f"stop begins {ps('stop_ms')}; old exited {ps('old_exit_ms')}; new started "
                f"{ps('spawn_ms')}; restart returned {ps('restart_cmd_ms')} ms")
    if k == "naive":
        return f"old exited {ps('old_exit_ms')}; new started {ps('spawn_ms')} ms"
    return "n/a"


def slow_report(args, sl, add, cols):
    scols = [k for k in cols if k in sl]
    nrel = max((len(x["reloads"]) for x in sl.values()), default=0)
    add(f"## Slow child: ready {args.slow_delay_ms} ms after its start, {nrel} reloads per "
        "tool\n")
    add(f"Two paced clients per tool, one request every {args.slow_interval * 1e3:g} ms each "
        "(latency includes connect; 8 s timeout): one opens a new connection per request, one "
        "keeps its connection alive (a request that fails with no byte on a *reused* "
        "connection, closed by a draining server between two requests, is retried once on a "
        "new one and counted as a retry, not a failure). No other load. Each reload is the "
        "same as above; the next starts 0.3 s after the new child answered and the old one "
        "exited. The clients run from 0.5 s before the first reload to 0.2 s after the last; "
        "the no-wrapper column is the child alone, never reloaded, for "
        f"{args.slow_direct_s:g} s: the floor.\n")
    add("| | " + " | ".join(NAMES[k] for k in scols) + " |")
    add("|---|" + "---|" * len(scols))

    def row(label, fn):
        cells = []
        for k in scols:
            try:
                cells.append(fn(k, sl[k], sl[k]["clients"]))
            except (KeyError, TypeError, ValueError, ZeroDivisionError):
                cells.append("–")
        add(f"| {label} | " + " | ".join(cells) + " |")

    both = (("conn", "new conn."), ("ka", "keep-alive"))
    row("what the reload waits for before stopping the old child", lambda k, x, c: {
        "handoff": "READY=1", "starter": "its 1 s interval", "einhorn": "the ACK",
        "systemd": "nothing: stops it first", "naive": "nothing: stops it first",
        "direct": "no reloads"}[k])
    row("reloads / client window", lambda k, x, c: f"{len(x['reloads'])} / "
        f"{x['window_s'] + 0.7:.1f} s")
    row("requests (new conn. / keep-alive)",
        lambda k, x, c: " / ".join(str(c[a]["n"]) for a, _ in both))
    row("**failed**, by kind", lambda k, x, c: "**%d**: %s" % (
        sum(sum(c[a]["fail"].values()) for a, _ in both),
        fails(sum((Counter(c[a]["fail"]) for a, _ in both), Counter()))))
    row("**worst latency** (new conn. / keep-alive)",
        lambda k, x, c: "**" + " / ".join(f"{c[a]['max_ms']:.0f}" for a, _ in both) + " ms**")
    row("p99 latency (new conn. / keep-alive)",
        lambda k, x, c: " / ".join(f"{c[a]['p99_ms']:.1f}" for a, _ in both) + " ms")
    row("requests over 100 ms / over 1 s (both clients)",
        lambda k, x, c: f"{sum(c[a]['over100'] for a, _ in both)} / "
        f"{sum(c[a]['over1000'] for a, _ in both)}")
    row("keep-alive retries (closed between requests by the draining child)",
        lambda k, x, c: str(c["ka"]["retries"]))
    row("reload latency p50 / max: signal → new pid answered and old one told to stop",
        lambda k, x, c: f"{p5099([r['latency_ms'] for r in x['reloads']])} ms"
        if k != "direct" else "n/a")
    row("… signal → old one told to stop p50 / max",
        lambda k, x, c: f"{p5099([r['stop_ms'] for r in x['reloads']])} ms"
        if k != "direct" else "n/a")
    add("")
    add("Reload latencies: p50 and the largest value. The slowest requests over 100 ms per "
        "tool, up to three (latency, client, failure if any, start time relative to the first "
        "reload):")
    add("")
    for k in scols:
        x = sl[k]
        t0 = min((r["t"] for r in x["reloads"]), default=None)
        sw = sorted(((s[1], s[0], a, s[2]) for a in ("conn", "ka")
                     for s in x["clients"][a].get("slowest", [])), reverse=True)[:3]
        if sw:
            add(f"- {NAMES[k]}: " + "; ".join(
                f"{lat * 1e3:.0f} ms ({a}{', ' + kind if kind else ''}"
                f"{', at %+.2f s' % (t - t0) if t0 else ''})" for lat, t, a, kind in sw))
    add("")


def noise_notes(args, res):
    out = []
    busy = max(res["busy_before"], res["busy_after"])
    out.append(f"Machine: {os.cpu_count()} CPUs shared by wrk, the Python clients, the "
               f"servers and the supervisors: the loaded phases saturate them, so under-load "
               f"latencies (p99 especially) are mostly the scheduler's. Other processes kept the "
               f"CPUs {res['busy_before']:.0f} % busy before the run and {res['busy_after']:.0f} "
               f"% after it (load average {res['load_before']} → {res['load_after']}; the load "
               f"average also counts this benchmark's own runnable threads, wrk plus one server "
               f"thread per connection, so its rise during the run is mostly ours; the busy "
               f"figures are sampled while nothing of ours runs)"
               f"{': the machine was not idle' if busy >= 20 else ''}.")
    fp = res.get("fp")
    if fp:
        tcols = list(fp["runs"])
        rm = [statistics.median(fp["runs"][k][i]["rps"] for k in tcols)
              for i in range(len(fp["runs"]["direct"]))]
        out.append(f"Throughput: the runs spread over {fp['spread_pct']:.1f} % of their "
                   f"median, single rounds' ratios from {min(fp['paired']['naive']):.3f} to "
                   f"{max(fp['paired']['naive']):.3f} even between the two identical setups "
                   f"(naive-restart and no-wrapper columns, the A/A pair), whose summary ratios "
                   f"came out {fp['ratio']['naive']:.3f} (paired) and "
                   f"{fp['ratio_of_medians']['naive']:.3f} (ratio of the medians). Differences "
                   f"of that size are noise, not the wrapper. Whole rounds move together too: "
                   f"the median of a round's {len(tcols)} runs went from {min(rm):.0f} to "
                   f"{max(rm):.0f} req/s across rounds (a VM sharing its host).")
    ph = res["phases"]
    for k in ("handoff", "starter", "einhorn", "systemd", "naive"):
        x = ph.get(k)
        if not x or not x["reloads"]:
            continue
        ls = [r["latency_ms"] for r in x["reloads"] if r["latency_ms"] is not None]
        if ls:
            out.append(f"{NAMES[k]} reload latency: p50 {pct(ls, 50):.1f} ms, p99 "
                       f"{pct(ls, 99):.1f} ms, min {min(ls):.1f} ms (spread p99 − p50 "
                       f"{pct(ls, 99) - pct(ls, 50):.1f} ms)"
                       f"{'; %d reloads where the clients never reached the new pid' % x['unseen'] if x['unseen'] else ''}.")
    if ph.get("handoff") and ph["handoff"]["reloads"]:
        hr = ph["handoff"]["reloads"]
        worst = max(hr, key=lambda r: r.get("over_ready_ms") or 0)
        if worst.get("over_ready_ms") is not None:
            out.append(f"handoff's slowest reload beyond the child's own ready time: "
                       f"{worst['over_ready_ms']:.1f} ms over `ready_ms` (signal → generation "
                       f"started {worst['before_spawn_ms']:.2f} ms, READY=1 → stop signal "
                       f"{(worst.get('handover_us') or 0) / 1e3:.2f} ms, READY=1 → clients' "
                       f"first response from the new pid {worst['ready_to_served_ms']:.2f} ms).")
    if ph.get("starter") and ph["starter"]["reloads"]:
        sr = ph["starter"]["reloads"]
        w = max(sr, key=lambda r: r["stop_ms"])
        out.append(f"Server::Starter's slowest reload: old generation told to stop after "
                   f"{w['stop_ms']:.1f} ms; start_server's `received HUP` line arrived after "
                   f"{w['hup_seen_ms'] or float('nan'):.1f} ms and `starting new worker` after "
                   f"{w['spawn_ms']:.1f} ms (then it sleeps its 1 s interval); its reaction to "
                   f"SIGHUP, p50 / p99: {p5099([r['hup_seen_ms'] for r in sr])} ms.")
    if ph.get("einhorn") and ph["einhorn"]["reloads"]:
        er = ph["einhorn"]["reloads"]
        out.append(f"einhorn: of its reload latency, the master's re-exec (SIGHUP → `Starting "
                   f"smooth upgrade`) took p50 / p99 {p5099([r.get('reexec_ms') for r in er])} "
                   f"ms: a Ruby process image started anew on every reload, on CPUs the load "
                   f"keeps busy.")
    if ph.get("systemd") and ph["systemd"]["reloads"]:
        yr = ph["systemd"]["reloads"]
        out.append(f"systemd: the command's way to PID 1 (nsenter + systemctl + D-Bus, → "
                   f"ActiveExit) took p50 / p99 {p5099([r.get('stop_ms') for r in yr])} ms of "
                   f"the reload latency; an operator's `systemctl restart` pays it too.")
    pe = {k: ph[k]["probe_errors"] for k in ph if ph[k].get("probe_errors")}
    if pe:
        out.append(f"The benchmark's own readiness probe (not counted above) saw errors: {pe}.")
    order = ", ".join(NAMES[k] for k in TOOLS if k in ph)
    out.append(f"Loaded phases run one after the other ({order}), so they see different "
               "moments of the machine's other load; the Server::Starter phase is longer "
               "because each reload takes its 1 s interval, einhorn's because each re-executes "
               "its master.")
    return out


def einhorn_missing(args):
    """Why the einhorn column cannot run, or None."""
    if not args.einhorn:
        return ("einhorn not given: pass --einhorn PATH (or EINHORN=PATH) naming an einhorn "
                "executable (an installed gem's `einhorn`, or bin/einhorn of a source "
                "checkout); this benchmark neither fetches nor installs it")
    path = shutil.which(args.einhorn) or args.einhorn
    if not os.access(path, os.X_OK):
        return f"einhorn not runnable: {args.einhorn} is not an executable file"
    args.einhorn = os.path.abspath(path)
    try:
        r = subprocess.run([args.einhorn, "--version"], capture_output=True, text=True,
                           env=einhorn_env(args.einhorn), timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"einhorn not runnable: `{args.einhorn} --version`: {e}"
    if r.returncode:
        return (f"einhorn not runnable: `{args.einhorn} --version` exited {r.returncode}: "
                f"{(r.stderr or r.stdout).strip()[:300]}")
    return None


def systemd_missing(args):
    """Why the systemd column cannot run, or None; sets args.systemd_rootfs."""
    if not args.systemd_rootfs:
        cache = os.environ.get("HANDOFF_SYSTEMD_CACHE", "/var/cache/handoff-systemd-test")
        found = sorted((d for d in (os.path.join(cache, n) for n in
                                    (os.listdir(cache) if os.path.isdir(cache) else []))
                        if os.path.basename(d).startswith("rootfs-")
                        and os.path.isfile(os.path.join(d, ".handoff-rootfs-ready"))),
                       key=os.path.getmtime)
        if not found:
            return (f"no systemd root file system in {cache} (`bash .ci/systemd` builds it "
                    f"once, or pass --systemd-rootfs DIR)")
        args.systemd_rootfs = found[-1]
    if not os.path.isfile(os.path.join(args.systemd_rootfs, "lib/systemd/systemd")):
        return f"{args.systemd_rootfs} holds no systemd (lib/systemd/systemd)"
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn, mount namespaces)"
    for tool in ("systemd-nspawn", "nsenter", "unshare"):
        if not shutil.which(tool):
            return f"{tool} not found (Debian: apt-get install systemd-container util-linux)"
    return None


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "_client":
        return client_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: 10 reloads, short runs")
    ap.add_argument("--handoff", default=os.path.join(ROOT, "target/release/handoff"))
    ap.add_argument("--server", default=os.path.join(ROOT, "target/release/examples/http-server"))
    ap.add_argument("--start-server", default="start_server")
    ap.add_argument("--out", help="markdown file to write (default bench/RESULTS.md; with "
                    "--quick, none: a smoke test must not replace the real results)")
    ap.add_argument("--reloads", type=int, help="reloads per tool (default 50, 10 with --quick)")
    ap.add_argument("--only", action="append", choices=[*TOOLS, "tp", "slow"],
                    help="run only these parts (repeatable): a tool name = its loaded reload "
                         "phase; tp = footprint and throughput; slow = the slow-child phase "
                         "(for the tools named, or every tool if none is)")
    ap.add_argument("--skip", action="append", choices=["starter", "einhorn", "systemd"],
                    default=[], help="leave this tool out entirely (repeatable)")
    ap.add_argument("--einhorn", default=os.environ.get("EINHORN"), metavar="PATH",
                    help="einhorn executable (an installed gem's `einhorn`, or a source "
                         "checkout's bin/einhorn: then RUBYLIB is set to its lib/); default "
                         "$EINHORN; without it the einhorn column is left out")
    ap.add_argument("--systemd-rootfs", metavar="DIR",
                    help="root file system with systemd for the systemd column (default: the "
                         "one tests/systemd/run.sh caches in $HANDOFF_SYSTEMD_CACHE or "
                         "/var/cache/handoff-systemd-test; `bash .ci/systemd` builds it)")
    ap.add_argument("--slow-reloads", type=int,
                    help="reloads per tool of the slow child (default 5, 2 with --quick)")
    ap.add_argument("--wait-idle", type=float, default=None, metavar="SEC",
                    help="wait up to SEC for the CPUs to be < 20 %% busy before starting "
                         "(default 30, 0 with --quick)")
    ap.add_argument("--tp-rounds", type=int, help="throughput rounds (default 12, 1 with --quick)")
    ap.add_argument("--tp-secs", type=int, help="seconds per throughput run (default 2)")
    ap.add_argument("--command", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.command = args.command or shlex.join(["bench/peers.py", *sys.argv[1:]])
    q = args.quick
    if args.out is None and not q:
        args.out = os.path.join(ROOT, "bench/RESULTS.md")
    args.reloads = args.reloads or (10 if q else 50)
    args.ready_delay_ms = READY_DELAY_MS
    args.gap = 0.1
    args.direct_s = 3.0 if q else 10.0
    args.idle_s = 3.0 if q else 10.0
    args.tp_rounds = args.tp_rounds or (1 if q else 12)
    args.tp_secs = args.tp_secs or 2
    args.tp_threads, args.tp_conns = 1, 8
    args.pin = (os.cpu_count() or 1) >= 2 and subprocess.run(
        ["sh", "-c", "command -v taskset"], capture_output=True).returncode == 0
    args.wrk_threads, args.wrk_conns = 1, 8
    args.conn_clients = 2
    args.probe_interval, args.probe_nice = 0.001, -10
    if args.wait_idle is None:
        args.wait_idle = 0 if q else 30
    args.slow_delay_ms, args.slow_interval = SLOW_DELAY_MS, 0.01
    args.slow_reloads = args.slow_reloads or (2 if q else 5)
    args.slow_direct_s = args.slow_reloads * 3.0
    only = set(args.only or [*TOOLS, "tp", "slow"])
    for tool in ("wrk", *([] if "starter" in args.skip else [args.start_server])):
        if subprocess.run(["sh", "-c", f"command -v {shlex.quote(tool)}"],
                          capture_output=True).returncode:
            sys.exit(f"peers: {tool} not found (apt-get install -y wrk libserver-starter-perl)")
    args.skipped = {k: "left out with --skip" for k in args.skip}
    if "einhorn" not in args.skipped:
        why = einhorn_missing(args)
        if why:
            args.skipped["einhorn"] = why
    if "systemd" not in args.skipped:
        why = systemd_missing(args)
        if why:
            args.skipped["systemd"] = why
    for k, why in args.skipped.items():
        log(f"{NAMES[k]} left out: {why}")
    args.tools = tuple(k for k in TOOLS if k not in args.skipped)

    # A SIGTERM (timeout, kill) unwinds like Ctrl-C, so that `finally` powers the systemd
    # container off and stops everything else started here.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    procs, res = Procs(args.server), {"phases": {}}
    t_start = time.monotonic()
    res["load_before"] = loadavg()
    deadline = time.monotonic() + args.wait_idle
    while True:
        res["busy_before"] = machine_busy(2.0)
        log(f"CPUs busy before the start: {res['busy_before']:.0f} % (load {loadavg()})")
        if res["busy_before"] < 20 or time.monotonic() >= deadline:
            break
    try:
        for tool in args.tools:
            if tool in only:
                log(f"{NAMES[tool]}: " + (f"{args.reloads} reloads under load" if tool != "direct"
                                         else f"{args.direct_s:g} s under load, no reloads"))
                res["phases"][tool] = reload_phase(tool, procs, args)
                x = res["phases"][tool]
                log(f"  wrk {int(x['wrk']['requests'])} req, failed {x['wrk']['failed']}; "
                    f"new-conn {x['ok']} ok, failed {dict(x['fail'])}; latency p50/p99 "
                    f"{p5099([r['latency_ms'] for r in x['reloads']])} ms")
        if "tp" in only:
            res["fp"] = footprint_and_throughput(procs, args)
            log(f"  ratios {', '.join(f'{k} {v:.3f}' for k, v in res['fp']['ratio'].items())}")
        if "slow" in only:
            res["slow"] = {}
            for tool in [k for k in args.tools if k in only] or args.tools:
                log(f"slow child ({args.slow_delay_ms} ms to ready), {NAMES[tool]}: "
                    + (f"{args.slow_reloads} reloads" if tool != "direct"
                       else f"{args.slow_direct_s:g} s without reloads"))
                x = res["slow"][tool] = slow_phase(tool, procs, args)
                c = x["clients"]
                log(f"  failed {dict(sum((Counter(v['fail']) for v in c.values()), Counter()))}"
                    f"; worst {max(v['max_ms'] for v in c.values()):.0f} ms")
    finally:
        procs.cleanup()
    res["load_after"] = loadavg()
    res["busy_after"] = machine_busy(2.0)
    res["total_s"] = time.monotonic() - t_start
    res["noise"] = noise_notes(args, res)
    text = report(args, res, sysinfo(args))
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        log(f"written to {os.path.relpath(args.out, os.getcwd())}")


if __name__ == "__main__":
    main()
