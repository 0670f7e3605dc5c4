#!/usr/bin/env python3
"""Reload benchmark for handoff (Python 3 standard library only; wrk is used when installed).

Run it through bench/run.sh, which builds the binaries first. See bench/README.md for what
each figure means. Everything runs on 127.0.0.1, every listener is bound to port 0 (the port is
read back from handoff's `listening` event or the child's stderr), and every process started
here is killed by pid at the end.
"""
import argparse
import datetime
import json
import math
import os
import platform
import re
import shlex
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

from benchlib import loadavg, log, proc_status, yes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQ_KA = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
REQ_CLOSE = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
# Abortive close (RST) for one-shot connections: leaves no TIME_WAIT behind, so thousands of
# connections per second cannot exhaust the client's ephemeral ports (a client-side failure).
LINGER0 = struct.pack("ii", 1, 0)
CLK_TCK = os.sysconf("SC_CLK_TCK")
CHILD_EXTRA = []  # --child-args
# The summary line http-server prints when it has drained.
DRAIN_RE = re.compile(r"drained in (\d+) ms: (\d+) answered with Connection: close, "
                      r"(\d+) closed idle, (\d+) still open; (\d+) I/O errors")


def pct(values, p):
    """Nearest-rank percentile (p99 of 50 samples is the largest one)."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


# --------------------------------------------------------------------------- processes
class Procs:
    """Every process we start, so that `cleanup()` can kill them all by pid."""

    def __init__(self):
        self.popens = []
        self.child_pids = set()  # children of handoff, learned from `spawned` events

    def start(self, cmd, **kw):
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, **kw)
        self.popens.append(p)
        return p

    def cleanup(self):
        for p in self.popens:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                    p.wait(timeout=8)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for pid in self.child_pids:  # only if it still is our http-server (pids get reused)
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"http-server" in f.read():
                        os.kill(pid, signal.SIGKILL)
                        log(f"killed leftover child {pid}")
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                pass


class Handoff:
    """handoff --log-format json on port 0, with its stderr parsed into events."""

    # stderr goes to a file that a thread polls rather than to a pipe, so that the benchmark's
    # reader can neither block handoff (full pipe) nor be woken by each line in the middle of
    # what handoff is timing. `--log-sink pipe` for comparison (no clear difference seen).
    sink = "file"
    # Newer handoff builds open a control socket at a shared default path; the benchmark's
    # instances must not compete for it (nor with anyone else's): `--control none`.
    common = []

    def __init__(self, procs, binary, child_cmd, extra=()):
        self.procs = procs
        self.cmd = [binary, *self.common, "--log-format", "json", "--listen", "127.0.0.1:0",
                    *extra, "--"]
        self.cmd += child_cmd
        if self.sink == "pipe":
            self.p = procs.start(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            lines = self.p.stderr
        else:
            # Two open file descriptions: handoff appends, we read with our own offset.
            fd, path = tempfile.mkstemp(prefix="handoff-bench-", suffix=".log")
            os.close(fd)
            with open(path, "ab") as log_w:
                self.p = procs.start(self.cmd, stdout=subprocess.DEVNULL, stderr=log_w)
            log_r = open(path, "rb")
            os.unlink(path)  # nothing left behind, whatever happens
            lines = self._follow(log_r)
        self.pid = self.p.pid
        self.events, self.other = [], []  # other: stderr lines that are not JSON (the child's)
        self.cond = threading.Condition()
        threading.Thread(target=self._read, args=(lines,), daemon=True).start()
        ev = self.wait(lambda e: e.get("event") == "listening", 10)
        self.port = int(ev["addr"].rsplit(":", 1)[1])

    def _follow(self, f):
        """The lines of a file being written, polled every 2 ms, until handoff has exited."""
        rest = b""
        while True:
            exited = self.p.poll() is not None
            data = os.read(f.fileno(), 1 << 20)
            if data:
                rest += data
                *lines, rest = rest.split(b"\n")
                yield from lines
            elif exited:
                f.close()
                return
            else:
                time.sleep(0.002)

    def _read(self, lines):
        for raw in lines:
            line = raw.decode(errors="replace").rstrip("\n")
            # The children share handoff's stderr: a child writing a line in pieces can put
            # text in front of one of handoff's JSON lines. Keep both parts.
            cut = line.find('{"timestamp"')
            prefix, line = (line[:cut], line[cut:]) if cut > 0 else ("", line)
            try:
                ev = json.loads(line)
                ev["_t"] = time.monotonic()
            except ValueError:
                ev = None
            with self.cond:
                if prefix:
                    self.other.append(prefix + " [cut: a handoff log line followed]")
                if ev is None:
                    self.other.append(line)
                else:
                    self.events.append(ev)
                    if ev.get("event") == "spawned":
                        self.procs.child_pids.add(ev["pid"])
                self.cond.notify_all()
        with self.cond:
            self.events.append({"event": "_eof", "_t": time.monotonic()})
            self.cond.notify_all()

    def wait(self, pred, timeout, start=0):
        deadline = time.monotonic() + timeout
        with self.cond:
            i = start
            while True:
                while i < len(self.events):
                    if pred(self.events[i]):
                        return self.events[i]
                    if self.events[i]["event"] == "_eof":
                        raise RuntimeError(f"handoff exited; stderr: {self.other[-5:]}")
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = [e.get("message", e["event"]) for e in self.events[-8:]]
                    raise TimeoutError(f"no matching handoff event in {timeout} s; last events: "
                                       f"{tail}; last child lines: {self.other[-3:]}")
                self.cond.wait(left)

    def reload(self, timeout=30):
        """SIGHUP, then wait for the next reload_finished. Returns (event, t_sighup)."""
        with self.cond:
            start = len(self.events)
        t = time.monotonic()
        os.kill(self.pid, signal.SIGHUP)
        return self.wait(lambda e: e.get("event") == "reload_finished", timeout, start), t

    def of(self, name):
        with self.cond:
            return [e for e in self.events if e.get("event") == name]

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def start_direct(procs, server, port, ready_delay_ms=0):
    """The child binding the port itself (no handoff). Port 0: the OS picks one. A fixed port
    is retried a few times (EADDRINUSE)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_"))}
    for attempt in range(5):
        cmd = [server, "--bind", f"127.0.0.1:{port}", "--ready-delay-ms", str(ready_delay_ms),
               *CHILD_EXTRA]
        p = procs.start(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        line = p.stderr.readline().decode()
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if m:
            threading.Thread(target=lambda: p.stderr.read(), daemon=True).start()  # drain
            return p, int(m.group(1))
        p.wait()
        log(f"direct child could not bind 127.0.0.1:{port} ({line.strip()}), retry {attempt + 1}")
        time.sleep(0.2)
    raise RuntimeError("cannot start the directly bound child")


def proc_times(pid):
    """(utime+stime in seconds, on-CPU ns summed over all threads from schedstat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    ns = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return ticks / CLK_TCK, ns


def sched(pid):
    """handoff's scheduling: [on-CPU ns, run-queue wait ns, timeslices, involuntary switches]."""
    tot = [0, 0, 0, 0]
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                for i, v in enumerate(f.read().split()[:3]):
                    tot[i] += int(v)
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                tot[3] += next(int(ln.split()[1]) for ln in f
                               if ln.startswith("nonvoluntary_ctxt_switches"))
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            pass
    return tot


def sched_delta(a, b):
    d = [y - x for x, y in zip(a, b)]
    return {"wait_ms": d[1] / 1e6, "slices": d[2], "avg_wait_us": d[1] / 1e3 / max(1, d[2]),
            "involuntary": d[3]}


# --------------------------------------------------------------------------- HTTP clients
class ReqError(Exception):
    def __init__(self, kind, nbytes):
        super().__init__(kind)
        self.kind, self.nbytes = kind, nbytes


def kind_of(e):
    if isinstance(e, ReqError):
        return e.kind
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timeout"
    return f"oserror:{getattr(e, 'errno', '?')}"


def connect(port, timeout):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
    try:
        s.connect(("127.0.0.1", port))
    except OSError:
        s.close()
        raise
    return s


def request(sock, req):
    """One request/response. Returns (status, server_closes, body); raises ReqError."""
    buf = b""
    try:
        sock.sendall(req)
        while b"\r\n\r\n" not in buf:
            d = sock.recv(65536)
            if not d:
                raise ReqError("eof" if not buf else "eof-partial", len(buf))
            buf += d
        head, body = buf.split(b"\r\n\r\n", 1)
        lower = head.lower()
        m = re.search(rb"\r\ncontent-length:\s*(\d+)", lower)
        need = int(m.group(1)) if m else 0
        while len(body) < need:
            d = sock.recv(65536)
            if not d:
                raise ReqError("eof-partial", len(buf) + len(body))
            body += d
        return int(head[9:12]), b"\r\nconnection: close" in lower, body
    except ReqError:
        raise
    except OSError as e:
        raise ReqError(kind_of(e), len(buf)) from e


class Client(threading.Thread):
    """A load or latency client. keepalive=False: a new connection for every request.

    interval: pace requests (seconds between starts); 0 = as fast as possible.
    A request failing with zero bytes received on a *reused* keep-alive connection (the server
    closed it between requests) is retried once on a new connection and counted in `retries`.
    """

    def __init__(self, port, keepalive, stop, interval=0.0, timeout=5.0, record=False):
        super().__init__(daemon=True)
        self.port, self.keepalive, self.stop_ev = port, keepalive, stop
        self.interval, self.timeout, self.record = interval, timeout, record
        self.ok, self.retries, self.fail = 0, 0, Counter()
        self.max_lat, self.gens = 0.0, set()
        self.samples = []  # (start monotonic, latency s, kind or None) when record=True
        self.sock = None

    def _once(self):
        """Returns None or the failure kind."""
        req = REQ_KA if self.keepalive else REQ_CLOSE
        reused = self.sock is not None
        try:
            if self.sock is None:
                self.sock = connect(self.port, self.timeout)
            status, closes, body = request(self.sock, req)
        except (ReqError, OSError) as e:
            if self.sock is not None:
                self.sock.close()
                self.sock = None
            kind = kind_of(e)
            if not (reused and isinstance(e, ReqError) and e.nbytes == 0
                    and kind in ("eof", "reset")):
                return kind
            self.retries += 1  # the server closed an idle keep-alive connection: retry once
            try:
                self.sock = connect(self.port, self.timeout)
                status, closes, body = request(self.sock, req)
            except (ReqError, OSError) as e2:
                if self.sock is not None:
                    self.sock.close()
                    self.sock = None
                return kind_of(e2)
        if closes or not self.keepalive:
            self.sock.close()
            self.sock = None
        if status != 200:
            return f"http-{status}"
        parts = body.split()
        if len(parts) >= 2:
            self.gens.add(parts[1].decode(errors="replace"))
        return None

    def run(self):
        next_t = time.monotonic()
        while not self.stop_ev.is_set():
            t0 = time.monotonic()
            kind = self._once()
            lat = time.monotonic() - t0
            if kind is None:
                self.ok += 1
            else:
                self.fail[kind] += 1
                if kind == "refused":
                    time.sleep(0.005)  # do not spin on a closed port
            self.max_lat = max(self.max_lat, lat)
            if self.record:
                self.samples.append((t0, lat, kind))
            if self.interval:
                next_t = max(next_t + self.interval, time.monotonic() - self.interval)
                time.sleep(max(0.0, next_t - time.monotonic()))
        if self.sock is not None:
            self.sock.close()


def merge(clients):
    ok = sum(c.ok for c in clients)
    fail = sum((c.fail for c in clients), Counter())
    return {"ok": ok, "fail": fail, "failed": sum(fail.values()),
            "retries": sum(c.retries for c in clients),
            "max_ms": max((c.max_lat for c in clients), default=0) * 1e3,
            "gens": set().union(*(c.gens for c in clients))}


def fmt_fail(fail):
    return ", ".join(f"{k} {v}" for k, v in sorted(fail.items())) or "-"


# --------------------------------------------------------------------------- wrk
WRK_RE = {
    "rps": r"Requests/sec:\s+([\d.]+)",
    "requests": r"(\d+) requests in",
    "non2xx": r"Non-2xx or 3xx responses:\s+(\d+)",
}


def parse_wrk(out):
    r = {k: float(m.group(1)) if (m := re.search(p, out)) else 0.0 for k, p in WRK_RE.items()}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["errors"] = dict(zip(("connect", "read", "write", "timeout"),
                           map(int, m.groups()))) if m else {}
    m = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out)
    r["max_lat"] = m.group(1) if m else "?"
    return r


def wrk_cmd(args, port, duration):
    return ["wrk", f"-t{args.wrk_threads}", f"-c{args.wrk_conns}", f"-d{duration}s",
            "--timeout", "5s", f"http://127.0.0.1:{port}/"]


def py_throughput(port, seconds, threads):
    """Fallback when wrk is missing: keep-alive Python clients, requests per second."""
    stop = threading.Event()
    cs = [Client(port, True, stop) for _ in range(threads)]
    for c in cs:
        c.start()
    time.sleep(seconds)
    stop.set()
    for c in cs:
        c.join()
    m = merge(cs)
    return {"rps": m["ok"] / seconds, "errors": dict(m["fail"]), "non2xx": 0, "max_lat": "?"}


# --------------------------------------------------------------------------- scenarios
def overhead(h, start):
    """Figures from handoff's JSON log, for the events from index `start` on."""
    with h.cond:
        evs = h.events[start:]

    def of(name, field):
        return [e[field] for e in evs if e.get("event") == name and e.get(field) is not None]

    return {"handover_us": of("stopping", "handover_us"),
            "spawn_ms": of("spawned", "request_to_spawn_ms"),
            "ready_ms": of("ready", "ready_ms"),
            "reload_ms": of("reload_finished", "duration_ms"),
            "drain_ms": of("drained", "drain_ms"),
            "drain_status": Counter(e.get("exit_status") for e in evs if e.get("event") == "drained")}


def scenario_a(args, procs, res):
    """50 reloads under load; handover / spawn figures from the JSON log; RSS; idle CPU."""
    log(f"scenario A: {args.reloads} reloads under load (child --ready-delay-ms 200)")
    h = Handoff(procs, args.handoff, [args.server, "--ready-delay-ms", "200", *args.child_extra])
    h.wait(lambda e: e.get("event") == "ready", 15)
    # A0: a few reloads without load first, to tell handoff's own overhead from CPU contention.
    log(f"scenario A0: {args.idle_reloads} reloads without load")
    sch0 = sched(h.pid)
    # The reference under the same conditions: one posix_spawn of the same binary between
    # two reloads, after the same pause (an idle machine wakes up for each, as for a SIGHUP).
    spaced = []
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for i in range(args.idle_reloads):
            h.reload()
            h.wait(lambda e, g=i + 1: e.get("event") == "drained" and e.get("gen") == g, 10)
            time.sleep(args.gap)
            t = time.monotonic()
            pid = os.posix_spawn(args.server, [args.server, "--no-such-flag"], dict(os.environ),
                                 file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 2)])
            spaced.append((time.monotonic() - t) * 1e3)
            os.waitpid(pid, 0)
            time.sleep(args.gap)
    finally:
        os.close(devnull)
    res["a0"] = overhead(h, 0)
    res["a0"]["posix_spawn_spaced_ms"] = spaced
    res["a0"]["sched"] = sched_delta(sch0, sched(h.pid))
    # Reference for SIGHUP → spawn: glibc's posix_spawn (clone(CLONE_VM|CLONE_VFORK) + exec,
    # returning once the child has exec'd) of the same binary, through os.posix_spawn, and
    # Python's subprocess.Popen for comparison with earlier runs.
    ref, popen = [], []
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for _ in range(50):
            t = time.monotonic()
            pid = os.posix_spawn(args.server, [args.server, "--no-such-flag"], dict(os.environ),
                                 file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 2)])
            ref.append((time.monotonic() - t) * 1e3)
            os.waitpid(pid, 0)
        for _ in range(20):
            t = time.monotonic()
            p = subprocess.Popen([args.server, "--no-such-flag"], stderr=subprocess.DEVNULL)
            popen.append((time.monotonic() - t) * 1e3)
            p.wait()
    finally:
        os.close(devnull)
    res["a0"]["posix_spawn_ref_ms"] = ref
    res["a0"]["popen_ref_ms"] = statistics.median(popen)
    res["a_cmd"] = shlex.join(h.cmd)
    first_loaded_gen = args.idle_reloads + 2
    mark = len(h.events)
    stop = threading.Event()
    clients = [Client(h.port, True, stop) for _ in range(args.ka_clients)]
    clients += [Client(h.port, False, stop) for _ in range(args.conn_clients)]
    for c in clients:
        c.start()
    wrk = None
    if args.wrk:
        wrk = procs.start(wrk_cmd(args, h.port, 3600), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)
    t0, failed_reloads, sch0 = time.monotonic(), [], sched(h.pid)
    for i in range(args.reloads):
        ev, _ = h.reload()
        if ev.get("result") != "ok" or ev.get("gen") != first_loaded_gen + i:
            failed_reloads.append(ev)
        time.sleep(args.gap)
    # Let the last old generation drain while the load is still running.
    last_old = first_loaded_gen + args.reloads - 2
    try:
        h.wait(lambda e: e.get("event") == "drained" and e.get("gen") == last_old, 10)
    except TimeoutError:
        pass
    time.sleep(0.5)
    stop.set()
    wrk_out = None
    if wrk is not None:
        wrk.send_signal(signal.SIGINT)  # wrk prints its summary on SIGINT
        wrk_out = parse_wrk(wrk.communicate(timeout=15)[0])
    for c in clients:
        c.join(timeout=10)
    elapsed = time.monotonic() - t0
    res["a"] = {
        "sched": sched_delta(sch0, sched(h.pid)),
        "elapsed": elapsed,
        "ka": merge(clients[: args.ka_clients]),
        "conn": merge(clients[args.ka_clients:]),
        "wrk": wrk_out,
        "failed_reloads": failed_reloads,
        **overhead(h, mark),
        "odd_events": Counter(e["event"] for e in h.events
                              if e.get("level") in ("WARN", "ERROR")
                              or e["event"] in ("failed", "exited", "leftovers_killed")),
        "child_lines": [ln for ln in h.other if not DRAIN_RE.search(ln)],
        "child_drains": [tuple(map(int, m.groups())) for ln in h.other
                         if (m := DRAIN_RE.search(ln))],
    }
    res["rss_kb"] = proc_status(h.pid, "VmRSS")
    res["hwm_kb"] = proc_status(h.pid, "VmHWM")
    log(f"idle CPU of handoff over {args.idle_s:g} s (no load, no reloads)")
    time.sleep(1.0)
    (s0, n0), w0 = proc_times(h.pid), time.monotonic()
    time.sleep(args.idle_s)
    (s1, n1), w1 = proc_times(h.pid), time.monotonic()
    res["idle_cpu_pct"] = (s1 - s0) / (w1 - w0) * 100
    res["idle_cpu_sched_pct"] = (n1 - n0) / 1e9 / (w1 - w0) * 100
    res["rss_idle_kb"] = proc_status(h.pid, "VmRSS")
    h.stop()


def scenario_throughput(args, procs, res):
    """Keep-alive throughput through handoff vs the same child binding the port itself."""
    tool = "wrk" if args.wrk else f"python ({args.ka_clients * 2} keep-alive threads)"
    log(f"throughput: {args.tp_runs} x {args.tp_secs:g} s per target with {tool}, interleaved")
    h = Handoff(procs, args.handoff, [args.server, *args.child_extra])
    h.wait(lambda e: e.get("event") == "ready", 15)
    direct, dport = start_direct(procs, args.server, 0)
    runs = {"handoff": [], "direct": []}
    cpu0 = proc_times(h.pid)[1]
    for i in range(args.tp_runs):
        order = [("handoff", h.port), ("direct", dport)]
        for name, port in (order if i % 2 == 0 else order[::-1]):  # alternate who goes first
            if args.wrk:
                out = subprocess.run(wrk_cmd(args, port, args.tp_secs), capture_output=True,
                                     text=True, timeout=args.tp_secs + 30).stdout
                runs[name].append(parse_wrk(out))
            else:
                runs[name].append(py_throughput(port, args.tp_secs, args.ka_clients * 2))
    cpu_ms = (proc_times(h.pid)[1] - cpu0) / 1e6
    h.stop()
    direct.send_signal(signal.SIGTERM)
    direct.wait(timeout=10)
    res["tp"] = {"tool": tool, "runs": runs, "handoff_cpu_ms": cpu_ms,
                 "handoff": statistics.median(r["rps"] for r in runs["handoff"]),
                 "direct": statistics.median(r["rps"] for r in runs["direct"])}


def latency_window(clients, t0, t1):
    s = [x for c in clients for x in c.samples if t0 <= x[0] < t1]
    lats = [x[1] * 1e3 for x in s]
    fail = Counter(x[2] for x in s if x[2] is not None)
    return {"n": len(s), "failed": sum(fail.values()), "fail": fail,
            "max_ms": max(lats, default=float("nan")), "p99_ms": pct(lats, 99),
            "over100": sum(v > 100 for v in lats), "over1000": sum(v > 1000 for v in lats)}


def start_latency_clients(port, stop, timeout=8.0):
    cs = {"conn": Client(port, False, stop, interval=0.01, timeout=timeout, record=True),
          "ka": Client(port, True, stop, interval=0.01, timeout=timeout, record=True)}
    for c in cs.values():
        c.start()
    return cs


def windows(cs, t0, t1):
    return {k: latency_window([c], t0, t1) for k, c in cs.items()}


def scenario_b(args, procs, res):
    """Worst latency during reloads with a child that needs 2.5 s to get ready."""
    slow = [args.server, "--ready-delay-ms", "2500", *args.child_extra]
    res["b"] = {}
    # 1. handoff, waiting for READY=1.
    log(f"scenario B: {args.slow_reloads} reloads of a 2.5 s child under handoff")
    h = Handoff(procs, args.handoff, slow)
    h.wait(lambda e: e.get("event") == "ready", 15)
    stop = threading.Event()
    cs = start_latency_clients(h.port, stop)
    time.sleep(0.5)
    t0 = time.monotonic()
    for i in range(args.slow_reloads):
        h.reload()
        h.wait(lambda e, g=i + 1: e.get("event") == "drained" and e.get("gen") == g, 15)
        time.sleep(0.3)
    t1 = time.monotonic()
    log(f"scenario B: same length ({t1 - t0:.1f} s) without reloads")
    time.sleep(t1 - t0 + 0.2)
    t2 = time.monotonic()
    stop.set()
    for c in cs.values():
        c.join(timeout=10)
    res["b"]["handoff_reloads"] = windows(cs, t0, t1)
    res["b"]["handoff_idle"] = windows(cs, t1 + 0.2, t2)
    # The slowest requests of each window, and the handoff event nearest to each: if reloads
    # caused them, they cluster around `stopping`/`ready`; noise from the machine does not.
    evs = [e for e in h.events if e.get("event") in
           ("reload_requested", "spawned", "ready", "stopping", "drained")]
    slowest = {}
    for name, (a, z) in (("reloads", (t0, t1)), ("no reloads", (t1 + 0.2, t2))):
        xs = sorted(((x[1], x[0], k) for k, c in cs.items() for x in c.samples
                     if a <= x[0] < z), reverse=True)[:3]
        slowest[name] = []
        for lat, t, k in xs:
            ne = min(evs, key=lambda e: abs(e["_t"] - t)) if evs else None
            where = (f"{(t - ne['_t']) * 1e3:+.0f} ms from `{ne['event']}` gen {ne.get('gen')}"
                     if ne else "")
            slowest[name].append((lat * 1e3, k, where))
    res["b"]["slowest"] = slowest
    res["b"]["window_s"] = t1 - t0
    h.stop()

    # 2. A tool that waits a fixed interval: handoff --ready-after 1s ignores the real
    #    readiness, stops the old child 1 s after the spawn, 1.5 s before the new one accepts.
    log(f"scenario B: {args.slow_reloads} reloads with a fixed 1 s wait (--ready-after 1s)")
    h = Handoff(procs, args.handoff, slow, extra=["--ready-after", "1s"])
    h.wait(lambda e: e.get("event") == "ready", 15)
    time.sleep(2.0)  # the first child really starts accepting at 2.5 s
    stop = threading.Event()
    cs = start_latency_clients(h.port, stop)
    time.sleep(0.5)
    t0 = time.monotonic()
    for _ in range(args.slow_reloads):
        h.reload()
        time.sleep(2.0)  # the new child accepts 2.5 s after its spawn; then let it settle
    t1 = time.monotonic()
    stop.set()
    for c in cs.values():
        c.join(timeout=10)
    res["b"]["fixed_wait"] = windows(cs, t0, t1)
    h.stop()

    # 3. Naive restart: stop the directly bound child, then start a new one on the same port.
    log(f"scenario B: {args.slow_reloads} naive stop-then-start restarts (no handoff)")
    p, port = start_direct(procs, args.server, 0, 2500)
    time.sleep(2.7)
    stop = threading.Event()
    cs = start_latency_clients(port, stop)
    time.sleep(0.5)
    t0 = time.monotonic()
    for _ in range(args.slow_reloads):
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=10)
        p, _ = start_direct(procs, args.server, port, 2500)
        time.sleep(3.0)
    t1 = time.monotonic()
    stop.set()
    for c in cs.values():
        c.join(timeout=10)
    res["b"]["naive"] = windows(cs, t0, t1)
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=10)


def machine_busy(seconds=1.0):
    """% of all CPUs busy over `seconds`, from /proc/stat (before we start anything)."""
    def sample():
        with open("/proc/stat") as f:
            v = list(map(int, f.readline().split()[1:]))
        return sum(v), v[3] + v[4]  # total, idle + iowait
    (t0, i0) = sample()
    time.sleep(seconds)
    (t1, i1) = sample()
    return 100 * (1 - (i1 - i0) / max(1, t1 - t0))


# --------------------------------------------------------------------------- report
def sysinfo():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       "?")
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip() or "?"
    except OSError:
        commit = "?"
    wrk = "not installed"
    try:
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
        wrk = (out.stdout + out.stderr).split("\n")[0].split(" Copyright")[0]
    except OSError:
        pass
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "kernel": platform.release(), "nproc": os.cpu_count(), "cpu": cpu,
            "commit": commit, "python": platform.python_version(), "wrk": wrk}


def report(args, res, info):
    L = []
    add = L.append
    a, tp, b = res.get("a"), res.get("tp"), res.get("b")
    add("# handoff reload benchmark\n")
    add(f"- date: {info['date']}  ")
    add(f"- command: `{args.command}`{' (quick mode)' if args.quick else ''}  ")
    add(f"- kernel {info['kernel']}, nproc {info['nproc']}, CPU: {info['cpu']}  ")
    add(f"- handoff commit {info['commit']} (working tree may contain uncommitted changes), "
        f"Python {info['python']}, {info['wrk']}  ")
    add(f"- machine busy before the run (other processes): {res['busy_before']:.0f} % of all "
        f"CPUs over 2 s, {res['busy_after']:.0f} % after it; load average {res['load_before']} at "
        f"start, {res['load_after']} at the end"
        + ("  " if max(res["busy_before"], res["busy_after"]) < 20
           else " — **the machine was not idle: expect noisy figures**  "))
    add("- load generators and servers share the same cores: every throughput figure is noisy\n")

    if a:
        all_failed = a["ka"]["failed"] + a["conn"]["failed"]
        wrk_err = sum(a["wrk"]["errors"].values()) + int(a["wrk"]["non2xx"]) if a["wrk"] else 0
        ho, sp = a["handover_us"], a["spawn_ms"]
    add("## Targets\n")
    add("| Figure | Value | Target | |")
    add("|---|---|---|---|")
    if a:
        add(f"| failed requests during {args.reloads} reloads (Python clients) | {all_failed} | 0 "
            f"| {yes(all_failed == 0)} |")
        if a["wrk"]:
            add(f"| wrk socket errors + non-2xx during the reloads | {wrk_err} | 0 "
                f"| {yes(wrk_err == 0)} |")
        add(f"| handover p99: READY=1 received → stop signal sent | {pct(ho, 99) / 1e3:.3f} ms "
            f"| < 1 ms | {yes(pct(ho, 99) < 1000)} |")
        if res.get("a0"):
            h0, s0 = res["a0"]["handover_us"], res["a0"]["spawn_ms"]
            ref = res["a0"].get("posix_spawn_spaced_ms")
            if ref:
                r50 = pct(ref, 50)
                add(f"| SIGHUP → child exec'd p50, {args.idle_reloads} reloads without load, "
                    f"against glibc posix_spawn of the same binary, one between each two "
                    f"reloads after the same pause (p50 of {len(ref)}) "
                    f"| {pct(s0, 50):.3f} ms vs {r50:.3f} ms ({pct(s0, 50) / r50:.2f}×) "
                    f"| ≤ 1.2× | {yes(pct(s0, 50) <= 1.2 * r50)} |")
            b2b = res["a0"].get("posix_spawn_ref_ms")
            if b2b:
                add(f"| (the same posix_spawn 50 times back to back: warm caches, CPUs awake) "
                    f"| {pct(b2b, 50):.3f} ms p50 ({pct(s0, 50) / pct(b2b, 50):.2f}×) | | |")
            add(f"| SIGHUP → child exec'd p99 without load | {pct(s0, 99):.3f} ms | < 1 ms "
                f"| {yes(pct(s0, 99) < 1)} |")
            add(f"| (handover p99 without load) | {pct(h0, 99) / 1e3:.3f} ms | < 1 ms "
                f"| {yes(pct(h0, 99) < 1000)} |")
        add(f"| (SIGHUP → child exec'd under load, p50 / p99: includes waiting for a CPU) "
            f"| {pct(sp, 50):.3f} / {pct(sp, 99):.3f} ms | | |")
        add(f"| parent RSS (VmRSS) after the run | {res['rss_kb'] / 1024:.2f} MiB | < 5 MiB "
            f"| {yes(res['rss_kb'] < 5 * 1024)} |")
        add(f"| parent idle CPU ({args.idle_s:g} s, utime+stime) | {res['idle_cpu_pct']:.2f} % "
            f"of one core | ≈ 0 | {yes(res['idle_cpu_pct'] < 0.5)} |")
    if tp:
        ratio = tp["handoff"] / tp["direct"]
        add(f"| throughput ratio handoff / direct (median) | {ratio:.3f} | ≥ 0.98 "
            f"| {yes(ratio >= 0.98)} |")
    if b:
        hr = b["handoff_reloads"]
        worst = max(hr["conn"]["max_ms"], hr["ka"]["max_ms"])
        fails = hr["conn"]["failed"] + hr["ka"]["failed"]
        hi = b["handoff_idle"]
        base = max(hi["conn"]["max_ms"], hi["ka"]["max_ms"])
        fx, nv = b["fixed_wait"], b["naive"]
        add(f"| worst latency during {args.slow_reloads} reloads of a 2.5 s child | "
            f"{worst:.1f} ms, {fails} failed (same period without reloads: {base:.1f} ms; "
            f"fixed 1 s wait: {max(fx['conn']['max_ms'], fx['ka']['max_ms']):.0f} ms; naive "
            f"restart: {max(nv['conn']['max_ms'], nv['ka']['max_ms']):.0f} ms, "
            f"{nv['conn']['failed'] + nv['ka']['failed']} failed) | < 100 ms, 0 failed "
            f"| {yes(worst < 100 and fails == 0)} |")
    add("")

    if a:
        add(f"## A. {args.reloads} reloads under load ({a['elapsed']:.1f} s, child "
            f"`--ready-delay-ms 200`)\n")
        add("| Load generator | OK requests | Failed (by kind) | Keep-alive retries | "
            "Max latency | Generations seen |")
        add("|---|---|---|---|---|---|")
        for key, name in (("ka", f"{args.ka_clients} Python keep-alive clients"),
                          ("conn", f"{args.conn_clients} Python new-connection clients")):
            m = a[key]
            add(f"| {name} | {m['ok']} | {m['failed']} ({fmt_fail(m['fail'])}) | "
                f"{m['retries']} | {m['max_ms']:.1f} ms | {len(m['gens'])} |")
        if a["wrk"]:
            w = a["wrk"]
            errs = ", ".join(f"{k} {v}" for k, v in w["errors"].items()) or "none"
            add(f"| wrk -t{args.wrk_threads} -c{args.wrk_conns} keep-alive | {int(w['requests'])} "
                f"({w['rps']:.0f}/s) | socket errors: {errs}; non-2xx {int(w['non2xx'])} | "
                f"n/a | {w['max_lat']} | n/a |")
        add("")
        add("| From the JSON log | Load | p50 | p99 | max | n |")
        add("|---|---|---|---|---|---|")
        for name, key, unit in (
                ("handover_us: READY=1 received → SIGTERM sent", "handover_us", "µs"),
                ("request_to_spawn_ms: SIGHUP → child spawned (includes fork+exec)",
                 "spawn_ms", "ms"),
                ("ready_ms: spawn → READY=1 (child sleeps 200 ms)", "ready_ms", "ms"),
                ("reload duration_ms", "reload_ms", "ms"),
                ("drain_ms of the old generation", "drain_ms", "ms")):
            for label, src in (("under load", a), ("none (A0)", res.get("a0"))):
                if src is None:
                    continue
                v = src[key]
                add(f"| {name} | {label} | {pct(v, 50):.3f} {unit} | {pct(v, 99):.3f} {unit} "
                    f"| {max(v, default=float('nan')):.3f} {unit} | {len(v)} |")
        add("")
        if res.get("a0"):
            ref = res["a0"].get("posix_spawn_ref_ms") or [float("nan")]
            sp = res["a0"].get("posix_spawn_spaced_ms") or [float("nan")]
            add(f"- reference for SIGHUP → spawn, no load: glibc `posix_spawn` (clone with "
                f"CLONE_VM|CLONE_VFORK, then exec; called through Python's os.posix_spawn) of "
                f"the same binary returns in {pct(sp, 50):.3f} ms p50, {pct(sp, 99):.3f} ms "
                f"p99 when run once between each two reloads (n={len(sp)}), "
                f"{pct(ref, 50):.3f} ms p50, {pct(ref, 99):.3f} ms "
                f"p99 back to back (n={len(ref)}); Python `subprocess.Popen` in "
                f"{res['a0']['popen_ref_ms']:.3f} ms (median of 20). handoff's spawn returns "
                f"once the child has exec'd, so request_to_spawn_ms (from the reload request "
                f"taken off handoff's event loop to the spawn's return) includes clone + exec "
                f"and, under load, the time the new process waits for a CPU")
        for label, src in (("without load (A0)", res.get("a0")), ("under load", a)):
            if src and "sched" in src:
                sc = src["sched"]
                add(f"- handoff's own scheduling {label}: {sc['slices']} timeslices, "
                    f"{sc['involuntary']} involuntary context switches (preempted), "
                    f"{sc['wait_ms']:.1f} ms waiting in the run queue in total, "
                    f"{sc['avg_wait_us']:.0f} µs per timeslice on average")
        add(f"- handoff command: `{res.get('a_cmd', '?')}`")
        add(f"- reloads not ending in `result: ok` for the expected generation: "
            f"{len(a['failed_reloads'])}")
        add(f"- exit statuses of drained generations: "
            f"{', '.join(f'{k} ×{v}' for k, v in a['drain_status'].items())}")
        cd = a["child_drains"]
        if cd:
            add(f"- the children's own drain reports (A0 and A, {len(cd)} lines): "
                f"{sum(x[1] for x in cd)} connections answered with `Connection: close`, "
                f"{sum(x[2] for x in cd)} closed while idle (≥ the child's --drain-idle-ms), "
                f"{sum(x[3] for x in cd)} still open at the 5 s limit, {sum(x[4] for x in cd)} "
                f"connections ended with an I/O error (whole life); longest drain "
                f"{max(x[0] for x in cd)} ms")
        add(f"- warnings/errors/failed/exited events from handoff: "
            f"{dict(a['odd_events']) or 'none'}; non-JSON stderr lines (the child's): "
            f"{len(a['child_lines'])}")
        for line in a["child_lines"][:5]:
            add(f"  - `{line[:150]}`")
        add(f"- parent VmRSS {res['rss_kb']} kB after the reloads, {res['rss_idle_kb']} kB after "
            f"the idle period, VmHWM (peak) {res['hwm_kb']} kB")
        add(f"- parent idle CPU over {args.idle_s:g} s: {res['idle_cpu_pct']:.3f} % "
            f"(utime+stime, {1000 / CLK_TCK:.0f} ms ticks), "
            f"{res['idle_cpu_sched_pct']:.4f} % (schedstat, ns)\n")

    if tp:
        add(f"## Throughput: keep-alive, {args.tp_runs} × {args.tp_secs:g} s per target, "
            f"interleaved, alternating which goes first ({tp['tool']}"
            f"{f' -t{args.wrk_threads} -c{args.wrk_conns}' if args.wrk else ''})\n")
        add("| Run | Through handoff (req/s) | Direct `--bind` (req/s) |")
        add("|---|---|---|")
        for i, (x, y) in enumerate(zip(tp["runs"]["handoff"], tp["runs"]["direct"])):
            add(f"| {i + 1} | {x['rps']:.0f} | {y['rps']:.0f} |")
        add(f"| **median** | **{tp['handoff']:.0f}** | **{tp['direct']:.0f}** |")
        spread = [r["rps"] for rs in tp["runs"].values() for r in rs]
        pairs = list(zip(tp["runs"]["handoff"], tp["runs"]["direct"]))
        lower = sum(x["rps"] < y["rps"] for x, y in pairs)
        add(f"\nRatio {tp['handoff'] / tp['direct']:.3f}. handoff is not in the data path (the "
            f"child accepts on the inherited socket; handoff used {tp['handoff_cpu_ms']:.1f} ms "
            f"of CPU during all its runs), so the ratio measures run-to-run noise: all runs span "
            f"{min(spread):.0f}–{max(spread):.0f} req/s "
            f"({(max(spread) - min(spread)) / statistics.median(spread) * 100:.1f} % of the "
            f"median); handoff was lower in {lower} of {len(pairs)} pairs. Errors: " + ", ".join(
                f"{k}: {sum(sum(r['errors'].values()) + int(r['non2xx']) for r in rs)}"
                for k, rs in tp["runs"].items()) + "\n")

    if b:
        add(f"## B. Worst latency with a child that needs 2.5 s to get ready "
            f"({args.slow_reloads} reloads per variant)\n")
        add("Two paced clients, one request every 10 ms each: one opens a new connection per "
            "request, one reuses a keep-alive connection (reconnecting when the server closes "
            "it). Latency includes connect. Client timeout 8 s.\n")
        add("| Variant | Client | Requests | Failed (by kind) | Worst | p99 | > 100 ms | > 1 s |")
        add("|---|---|---|---|---|---|---|---|")
        names = (("handoff_reloads", f"handoff, {args.slow_reloads} reloads "
                  f"({b['window_s']:.1f} s)"),
                 ("handoff_idle", "handoff, same length without reloads"),
                 ("fixed_wait", "fixed 1 s wait (`--ready-after 1s`)"),
                 ("naive", "naive restart (stop, then start on the same port)"))
        for key, name in names:
            for ck, cn in (("conn", "new conn"), ("ka", "keep-alive")):
                w = b[key][ck]
                add(f"| {name} | {cn} | {w['n']} | {w['failed']} ({fmt_fail(w['fail'])}) | "
                    f"{w['max_ms']:.1f} ms | {w['p99_ms']:.1f} ms | {w['over100']} | "
                    f"{w['over1000']} |")
        add("")
        for name, xs in b.get("slowest", {}).items():
            add(f"Slowest requests under handoff, {name} (start time relative to the nearest "
                f"handoff event): " + "; ".join(f"{lat:.1f} ms ({k}, {where})"
                                                for lat, k, where in xs) + "  ")
        add("")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: fewer reloads, short runs")
    ap.add_argument("--handoff", default=os.path.join(ROOT, "target/release/handoff"),
                    help="handoff binary (default: target/release/handoff)")
    ap.add_argument("--server", default=os.path.join(ROOT, "target/release/examples/http-server"),
                    help="child binary (default: target/release/examples/http-server)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results-latest.md"),
                    help="markdown results file (default: bench/results-latest.md)")
    ap.add_argument("--no-wrk", dest="wrk", action="store_false", help="Python clients only")
    ap.add_argument("--only", choices=["a", "tp", "b"], action="append",
                    help="run only these parts (repeatable)")
    ap.add_argument("--log-sink", choices=["file", "pipe"], default="file",
                    help="where handoff's stderr goes (default: a file polled by the bench)")
    ap.add_argument("--child-args", default="", metavar="ARGS",
                    help="extra arguments for every http-server child, e.g. '--drain-idle-ms 0'")
    ap.add_argument("--wait-idle", type=float, default=None, metavar="SEC",
                    help="wait up to SEC for the machine to be < 20 %% busy before starting "
                         "(default 60, 0 with --quick)")
    ap.add_argument("--command", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    Handoff.sink = args.log_sink
    args.child_extra = CHILD_EXTRA[:] = shlex.split(args.child_args)
    helptext = subprocess.run([args.handoff, "--help"], capture_output=True, text=True).stdout
    if "--control" in helptext:
        Handoff.common = ["--control", "none"]
    args.command = args.command or shlex.join([sys.argv[0], *sys.argv[1:]])
    if args.wrk and subprocess.run(["sh", "-c", "command -v wrk"],
                                   capture_output=True).returncode != 0:
        log("wrk not found: using Python keep-alive clients for throughput")
        args.wrk = False
    q = args.quick
    if args.wait_idle is None:
        args.wait_idle = 0 if q else 60
    args.reloads = 10 if q else 50
    args.idle_reloads = 5 if q else 20
    args.gap = 0.1
    args.idle_s = 3.0 if q else 10.0
    args.tp_runs, args.tp_secs = (2, 2) if q else (5, 4)
    args.slow_reloads = 2 if q else 5
    args.ka_clients, args.conn_clients = 2, 2
    args.wrk_threads, args.wrk_conns = 2, 16
    only = set(args.only or ["a", "tp", "b"])

    procs, res = Procs(), {}
    t_start = time.monotonic()
    res["load_before"] = loadavg()
    deadline = time.monotonic() + args.wait_idle
    while True:  # a shared machine: wait (bounded) for other processes to calm down
        res["busy_before"] = machine_busy(2.0)
        log(f"machine busy before start: {res['busy_before']:.0f} % (load {loadavg()})")
        if res["busy_before"] < 20 or time.monotonic() >= deadline:
            break
    try:
        if "a" in only:
            scenario_a(args, procs, res)
        if "tp" in only:
            scenario_throughput(args, procs, res)
        if "b" in only:
            scenario_b(args, procs, res)
    finally:
        procs.cleanup()
    res["load_after"] = loadavg()
    res["busy_after"] = machine_busy(2.0)  # everything of ours is stopped: others' load
    text = report(args, res, sysinfo())
    text += f"\n_Total benchmark time: {time.monotonic() - t_start:.0f} s._\n"
    print(text)
    with open(args.out, "w") as f:
        f.write(text)
    # The raw figures (every reload's spawn/ready/handover/drain time, ...) for a closer look.
    raw = os.path.splitext(args.out)[0] + ".json"
    with open(raw, "w") as f:
        json.dump({"info": sysinfo(), "command": args.command, "results": res}, f, indent=1,
                  default=lambda o: sorted(o) if isinstance(o, set) else str(o))
    log(f"written to {os.path.relpath(args.out, os.getcwd())} and {os.path.relpath(raw)}")


if __name__ == "__main__":
    main()
