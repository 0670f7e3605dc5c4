#!/usr/bin/env python3
"""handoff against its peers: same child, same load, same machine, one run.

Targets, each serving examples/rust/http_server.rs (`http-server`) on 127.0.0.1:
  handoff         handoff --listen, child takes fd 3 and sends READY=1 after --ready-delay-ms
  Server::Starter start_server (libserver-starter-perl), child takes SERVER_STARTER_PORT's fd;
                  SIGHUP = spawn, sleep --interval (default 1 s), SIGTERM the old worker
  naive restart   SIGTERM the child that bound the port itself, wait for it to exit, start a
                  new one on the same port (ready after --ready-delay-ms)
  no wrapper      the child binding the port itself, never reloaded: the reference

Under load (wrk keep-alive + Python clients opening a new connection per request, running
concurrently) each reloadable target is reloaded N times; then footprint (parent RSS, parent
CPU while idle) and keep-alive throughput (wrk, interleaved rounds) relative to the no-wrapper
child. Run it through bench/peers.sh, which builds the binaries and checks the tools.
Python 3.8+, standard library only. Everything listens on 127.0.0.1 (port 0: the kernel picks),
every run is bounded in count and time, and every process started here is killed by pid in a
`finally` block.
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
import threading
import time
from array import array
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQ_CLOSE = b"GET / HTTP/1.1\r\nHost: peers\r\nConnection: close\r\n\r\n"
# Abortive close once the response is read: no TIME_WAIT, so thousands of connections per
# second cannot exhaust the client's ephemeral ports (which would be a client-side failure).
LINGER0 = struct.pack("ii", 1, 0)
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_DELAY_MS = 200
TOOLS = ("handoff", "starter", "naive", "direct")
NAMES = {"handoff": "handoff", "starter": "Server::Starter", "naive": "naive restart",
         "direct": "no wrapper"}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


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
    """`peers.py _client PORT MAX_S [INTERVAL_S NICE]`: new connection per request, as fast as
    it can (or one every INTERVAL_S), until stdin closes (or MAX_S). Prints one JSON object: counts, failures by kind with their
    times, and for each server pid the first and last time it answered (CLOCK_MONOTONIC,
    shared by every process on the machine)."""
    port, max_s = int(argv[0]), float(argv[1])
    interval = float(argv[2]) if len(argv) > 2 else 0.0
    if len(argv) > 3:
        try:
            os.nice(int(argv[3]))
        except OSError:
            pass  # not allowed to raise our priority: measure at the default one
    stop = threading.Event()

    def watch_stdin():
        sys.stdin.buffer.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    ok, fail, fail_times, pids, lats = 0, Counter(), [], {}, array("d")
    end = time.monotonic() + max_s
    next_t = time.monotonic()
    while not stop.is_set() and time.monotonic() < end:
        if interval:
            next_t = max(next_t + interval, time.monotonic() - interval)
            time.sleep(max(0.0, next_t - time.monotonic()))
        t0 = time.monotonic()
        try:
            status, body = http_get(port, 5.0)
            kind = None if 200 <= status < 300 else f"http-{status}"
        except (OSError, EOFError, ValueError) as e:
            kind = kind_of(e)
        t1 = time.monotonic()
        lats.append(t1 - t0)
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
    s = sorted(lats)
    q = (lambda p: s[max(0, math.ceil(p / 100 * len(s)) - 1)] * 1e3) if s else (lambda p: 0.0)
    json.dump({"ok": ok, "fail": fail, "fail_times": fail_times, "pids": pids, "n": len(s),
               "p50_ms": q(50), "p99_ms": q(99), "max_ms": q(100)}, sys.stdout)


# ------------------------------------------------------------------ processes
class Procs:
    """Everything started here, so that cleanup() can kill it by pid."""

    def __init__(self, server):
        self.popens = []
        self.pids = set()  # supervisors' children, learned from their logs
        self.server_name = os.path.basename(server).encode()

    def start(self, cmd, **kw):
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(cmd, **kw)
        self.popens.append(p)
        return p

    def cleanup(self):
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
            if not k.startswith(("LISTEN_", "NOTIFY_SOCKET", "SERVER_STARTER_", "HANDOFF_"))}


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


def proc_status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])  # kB
    return None


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


def make(tool, procs, args, pin=()):
    if tool == "handoff":
        return Handoff(procs, args, pin)
    if tool == "starter":
        return Starter(procs, args, pin)
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
    budget = args.reloads * (2.0 if tool == "starter" else 1.0) + 60
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
                wait_exit(r["old"], 15)  # ... and the old one is gone: next reload
                reloads.append(r)
                time.sleep(args.gap)
            time.sleep(0.5)
    finally:
        out = load.finish()
    res.update(out)
    res["reloads"], res["probe_errors"] = reloads, probe_errors
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
        if r.get("ready_ms") is not None and r["latency_ms"] is not None:
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
    # With 2+ CPUs: every target (supervisor and child, which inherits it) on the last CPU,
    # wrk on the others, so that run-to-run placement of wrk's and the server's threads
    # does not decide the figure.
    ncpu = os.cpu_count() or 1
    pin_srv = ["taskset", "-c", str(ncpu - 1)] if args.pin else []
    pin_wrk = ["taskset", "-c", f"0-{ncpu - 2}" if ncpu > 2 else "0"] if args.pin else []
    ts = {tool: make(tool, procs, args, pin_srv) for tool in TOOLS}
    res = {"idle": {}, "busy_parent": {}, "runs": {tool: [] for tool in TOOLS}}
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
    log(f"throughput: {args.tp_rounds} rounds x {len(TOOLS)} targets x {args.tp_secs:g} s, "
        f"wrk -t{args.tp_threads} -c{args.tp_conns}, order rotated each round")
    for rnd in range(args.tp_rounds):
        order = TOOLS[rnd % len(TOOLS):] + TOOLS[:rnd % len(TOOLS)]
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


# ------------------------------------------------------------------ report
def machine_busy(seconds):
    def sample():
        with open("/proc/stat") as f:
            v = list(map(int, f.readline().split()[1:]))
        return sum(v), v[3] + v[4]
    t0, i0 = sample()
    time.sleep(seconds)
    t1, i1 = sample()
    return 100 * (1 - (i1 - i0) / max(1, t1 - t0))


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def sysinfo(args):
    def run(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
        except OSError:
            return "?"
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    mem = proc_meminfo_mib()
    wrk = (run(["sh", "-c", "wrk -v 2>&1"]).split("\n")[0].split(" Copyright")[0]) or "?"
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "kernel": platform.release(), "nproc": os.cpu_count(), "cpu": cpu, "mem": mem,
            "commit": run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]) or "?",
            "python": platform.python_version(), "wrk": wrk,
            "starter": run(["dpkg-query", "-W", "-f", "${Version}", "libserver-starter-perl"])
            or "?", "perl": run(["perl", "-e", "print $^V"]) or "?"}


def proc_meminfo_mib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 0


def yes(ok):
    return "**met**" if ok else "**MISSED**"


def f1(v, unit=" ms", nd=1):
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}{unit}"


def fails(c):
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items()) if v) or "none"


def p5099(values, nd=1):
    vs = [v for v in values if v is not None]
    if not vs:
        return "–"
    return f"{pct(vs, 50):.{nd}f} / {pct(vs, 99):.{nd}f}"


def report(args, res, info):
    L = []
    add = L.append
    ph, fp = res["phases"], res.get("fp")
    n = args.reloads
    add("# handoff against its peers\n")
    add("Same child (`examples/rust/http_server.rs`, `--ready-delay-ms "
        f"{args.ready_delay_ms}`), same load, same machine, one run. Produced by "
        "`bench/peers.sh` (`bench/peers.py`); every figure below comes from the run described "
        "here.\n")
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
    add(f"- load during the reloads, concurrently: `wrk -t{args.wrk_threads} "
        f"-c{args.wrk_conns}` (keep-alive) and {args.conn_clients} Python processes opening a "
        f"new connection per request (no retries, 5 s timeout; a refused connect is retried "
        f"after 5 ms, each attempt counts), plus a probe: one more such client, paced at one "
        f"request per {args.probe_interval * 1e3:g} ms and run at nice {args.probe_nice}, "
        f"whose requests count like the others; all on 127.0.0.1; {n} reloads per tool, "
        f"{args.gap * 1e3:.0f} ms pause after each reload has completed (new generation "
        f"answering, old one exited)\n")

    h, s, nv, d = (ph.get(k) for k in TOOLS)
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
    if h:
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
    if fp:
        r = fp["ratio"]["handoff"]
        add(f"| handoff data-path throughput ≥ 0.98 × no wrapper (median over {args.tp_rounds} "
            f"rounds of the ratio within each round) | {r:.3f} (ratio of the medians "
            f"{fp['ratio_of_medians']['handoff']:.3f}; identical setups, A/A: "
            f"{fp['ratio']['naive']:.3f}) | {yes(r >= 0.98)} |")
    add("")

    add(f"## Results per tool ({n} reloads under load; footprint and throughput without "
        f"reloads)\n")
    add("| | handoff | Server::Starter | naive restart | no wrapper |")
    add("|---|---|---|---|---|")

    def row(label, fn, phase=True):
        cells = []
        for k in TOOLS:
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
    row("**reload latency p50 / p99**: signal → new generation answered *and* old one told to "
        "stop", lambda k, x: f"**{p5099([r['latency_ms'] for r in x['reloads']])} ms**"
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
    row("… signal → old pid's last response p50 / p99 (both generations answer until then)",
        lambda k, x: f"{p5099([r['old_last_ms'] for r in x['reloads']])} ms"
        if k != "direct" else "n/a")
    row("child's own time to ready p50 / p99 (handoff: `ready_ms`, its decision to spawn → "
        "READY=1; naive: Popen → first response; Server::Starter: its `starting new worker` "
        "line → first response)",
        lambda k, x: (f"{p5099([r['ready_ms'] for r in x['reloads']])} ms" if k == "handoff"
                      else f"{p5099([r.get('child_ready_ms') for r in x['reloads']])} ms"
                      if k != "direct" else "n/a"))
    row("parent RSS after the reloads (VmRSS; peak VmHWM)",
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
        add("| Round | " + " | ".join(NAMES[k] for k in TOOLS) + " |")
        add("|---|" + "---|" * len(TOOLS))
        for i in range(args.tp_rounds):
            add(f"| {i + 1} | " + " | ".join(
                f"{fp['runs'][k][i]['rps']:.0f}"
                f"{' (%d failed)' % fp['runs'][k][i]['failed'] if fp['runs'][k][i]['failed'] else ''}"
                for k in TOOLS) + " |")
        allr = [r["rps"] for v in fp["runs"].values() for r in v]
        add("| median | " + " | ".join(f"{fp['median'][k]:.0f}" for k in TOOLS) + " |")
        add("| per-round ratio to no wrapper, min–max | " + " | ".join(
            f"{min(fp['paired'][k]):.3f}–{max(fp['paired'][k]):.3f}" for k in TOOLS) + " |")
        add("")
        add(f"All {len(allr)} runs span {min(allr):.0f}–{max(allr):.0f} req/s "
            f"({fp['spread_pct']:.1f} % of the median). The naive-restart column is the same "
            f"setup as the no-wrapper one (the child binding the port itself), so its ratio, "
            f"{fp['ratio']['naive']:.3f}, is what noise alone does to this figure.\n")

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
        "benchmark sends the reload signal (handoff, Server::Starter: SIGHUP to the parent; "
        "naive: SIGTERM to the child) until **both** (a) the new generation's pid has answered "
        "a request of the new-connection clients (the earliest response-complete time among "
        "them; they run in separate processes and share CLOCK_MONOTONIC with the benchmark; the "
        "paced higher-priority probe is there so that this moment is seen within about a "
        "millisecond while the load saturates the CPUs) and (b) the old "
        "generation has been sent its stop signal. Time (b) comes from each tool's own record: "
        "handoff's `stopping` log line (its µs timestamp, converted to our clock; the time our "
        "reader received the line is shown too), the `killing old workers` line that "
        "start_server prints right before `kill TERM` (the time our reader received it), and "
        "for the naive restart the benchmark's own `kill` (it stops the old child first).")
    add(f"- **Child's own time to ready**: the child sleeps {args.ready_delay_ms} ms before "
        "accepting (under handoff it then sends READY=1). handoff logs it per reload "
        "(`ready_ms`: from its decision to spawn, before fork, to READY=1, so the child's "
        "fork + exec are in it); the target compares each reload's latency with its own "
        "`ready_ms`: the difference is the signal's way into handoff's event loop, the "
        "hand-over and the time the clients take to reach the new pid. For the naive "
        "restart and Server::Starter the same thing is estimated from outside (Popen, or "
        "start_server's `starting new worker` line → first response).")
    st_ = ph.get("starter")
    seen = ""
    if st_ and st_["reloads"]:
        sr = st_["reloads"]
        seen = (f"In this run the new child answered {pct([r['new_serves_ms'] for r in sr], 50):.0f}"
                f" ms after the SIGHUP (p50), the old one was told to stop after "
                f"{pct([r['stop_ms'] for r in sr], 50):.0f} ms and answered its last request at "
                f"{pct([r['old_last_ms'] for r in sr], 50):.0f} ms: both generations served side "
                f"by side for ~{pct([r['old_last_ms'] - r['new_serves_ms'] for r in sr if r['old_last_ms'] and r['new_serves_ms']], 50):.0f} ms. ")
    add("- **Server::Starter** (`start_server --port=127.0.0.1:0 --signal-on-hup=TERM "
        "--signal-on-term=TERM`, default `--interval` 1 s): on SIGHUP it forks the new worker, "
        "*sleeps the interval*, and if the worker is still alive sends TERM to the old one "
        "(`--signal-on-hup=TERM` is what the old worker gets; our child drains on TERM). It "
        "never learns when the worker is ready, so a reload takes the interval whatever the "
        f"child does. {seen}From its source (not exercised here): a child slower than the "
        "interval would be treated as started while not yet accepting (connections would then "
        "wait in the shared queue, not be refused, since start_server holds the socket); a "
        "child that dies within the interval is retried; a second SIGHUP during the interval "
        "cuts Perl's `sleep` short. The benchmark never overlaps reloads.")
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
        "/proc/PID/status after its reloads. **Parent CPU while idle**: utime+stime of the "
        f"supervisor over {args.idle_s:g} s with no traffic and no reloads (tick = "
        f"{1000 / CLK_TCK:.0f} ms), and the same from schedstat (ns), both supervisors "
        "measured in the same window.")
    add(f"- **Data-path ratio**: keep-alive req/s with `wrk -t{args.tp_threads} "
        f"-c{args.tp_conns} -d{args.tp_secs:g}s` against each target (fresh instances, no "
        f"reloads), {args.tp_rounds} rounds, the order of the targets rotating each round"
        f"{'; wrk pinned to CPU 0 and every target (supervisor and child) to the last CPU with taskset, so that the placement of threads does not differ from run to run' if args.pin else ''}; the "
        "headline is the median over rounds of each round's ratio to the no-wrapper run "
        "(paired: the runs of a round are seconds apart), the ratio of the medians is shown "
        "too. Neither handoff nor start_server is in the data path (the child "
        "accepts on the inherited socket), so 1 is expected and the deviation is noise.")
    add("- Percentiles are nearest-rank: with 50 reloads, p99 is the largest value.")
    add("- Commands (port 0: the kernel picks one, read back from handoff's `listening` line, "
        "from start_server's socket in /proc, or from the child's `listening on` line):")
    for k in TOOLS:
        if ph.get(k):
            add(f"  - {NAMES[k]}: `{ph[k]['cmd']}`")
    add("")

    add("## Noise\n")
    for line in res.get("noise", []):
        add(f"- {line}")
    add("")
    add(f"_Total benchmark time: {res['total_s']:.0f} s._")
    return "\n".join(L) + "\n"


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
        rm = [statistics.median(fp["runs"][k][i]["rps"] for k in TOOLS)
              for i in range(len(fp["runs"]["direct"]))]
        out.append(f"Throughput: the runs spread over {fp['spread_pct']:.1f} % of their "
                   f"median, single rounds' ratios from {min(fp['paired']['naive']):.3f} to "
                   f"{max(fp['paired']['naive']):.3f} even between the two identical setups "
                   f"(naive-restart and no-wrapper columns, the A/A pair), whose summary ratios "
                   f"came out {fp['ratio']['naive']:.3f} (paired) and "
                   f"{fp['ratio_of_medians']['naive']:.3f} (ratio of the medians). Differences "
                   f"of that size are noise, not the wrapper. Whole rounds move together too: "
                   f"the median of a round's {len(TOOLS)} runs went from {min(rm):.0f} to "
                   f"{max(rm):.0f} req/s across rounds (a VM sharing its host).")
    ph = res["phases"]
    for k in ("handoff", "starter", "naive"):
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
    pe = {k: ph[k]["probe_errors"] for k in ph if ph[k].get("probe_errors")}
    if pe:
        out.append(f"The benchmark's own readiness probe (not counted above) saw errors: {pe}.")
    out.append("Loaded phases run one after the other (handoff, Server::Starter, naive, no "
               "wrapper), so they see different moments of the machine's other load; the "
               "Server::Starter phase is ~5× longer because each reload takes its 1 s interval.")
    return out


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
    ap.add_argument("--only", action="append", choices=[*TOOLS, "tp"],
                    help="run only these parts (repeatable; tp = footprint and throughput)")
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
    only = set(args.only or [*TOOLS, "tp"])
    for tool in ("wrk", args.start_server):
        if subprocess.run(["sh", "-c", f"command -v {shlex.quote(tool)}"],
                          capture_output=True).returncode:
            sys.exit(f"peers: {tool} not found (apt-get install -y wrk libserver-starter-perl)")

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
        for tool in TOOLS:
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
