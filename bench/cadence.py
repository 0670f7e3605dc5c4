#!/usr/bin/env python3
"""The harshest published reload cadence, scaled to one small machine and loopback.

The one published reload benchmark with hard numbers reloaded HAProxy 1.6 every 300 ms for
600 s under `ab -c 10000` from two hosts: 3,765 failed of 2.1 M requests with a stock reload,
0 with a socket-holding sidecar. This script runs that protocol against handoff:

  reloads   handoff (release) + the bench child `http-server --ready-delay-ms 50`; a SIGHUP
            every --interval (300 ms) for --duration (300 s), on a fixed schedule whatever
            state the previous reload is in (handoff coalesces SIGHUPs that arrive during a
            reload into one more: requested vs completed come from its JSON log)
  baseline  the same handoff, the same load, the same length of time, no reloads
  naive     the contrast: the child binds the port itself; every --interval it is stopped
            (SIGTERM, wait for it to exit) and a new one is started on the same port;
            --naive-duration (60 s)

Load in every phase, both at once, on 127.0.0.1:
  - a closed-loop tool made for heavy load, a new connection per request: `ab -c 200`
    (HTTP/1.0, no -k) or `hey -c 200 -disable-keepalive` (--load hey);
  - an open-loop client (this file, `_openloop`, asyncio, one process) that schedules one
    request every 1/--rate s (500/s) on a fixed timetable, each on a new connection, and
    measures each request's latency from its *scheduled* start (no coordinated omission: a
    request that could not even be sent on time is late by that much), connect time apart; a
    connect over 1 s means a SYN was dropped and retransmitted.

Run it through bench/cadence.sh, which builds the binaries and installs the tools. Python 3.8+,
standard library only. Everything listens on 127.0.0.1 (port 0), every phase is bounded in
time, and every process started here is killed by pid in a `finally` block (Ctrl-C too).
No sysctl is changed: the kernel settings that matter are read, checked and printed.
"""
import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import re
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections import Counter

from benchlib import fails, interrupted, loadavg, log, machine_busy, yes

PHASES = ("baseline", "reloads", "direct", "naive")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQ = b"GET / HTTP/1.1\r\nHost: cadence\r\nConnection: close\r\n\r\n"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SLOW_CONNECT_S = 1.0  # a connect this slow waited for a SYN retransmission (initial RTO 1 s)
DRAIN_RE = re.compile(r"drained in (\d+) ms: (\d+) answered with Connection: close, "
                      r"(\d+) closed idle, (\d+) still open; (\d+) I/O errors")


def pct(s, p):
    """Nearest-rank percentile of a *sorted* list (nan if empty)."""
    if not s:
        return float("nan")
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def dist(values):
    """p50 / p99 / p99.9 / max (and n) of a list of numbers."""
    s = sorted(values)
    return {"n": len(s), "p50": pct(s, 50), "p99": pct(s, 99), "p999": pct(s, 99.9),
            "max": s[-1] if s else float("nan")}


# ------------------------------------------------------------------ open-loop client
def openloop_main(argv):
    """`cadence.py _openloop PORT RATE DURATION TIMEOUT START`: one request every 1/RATE s
    from the monotonic instant START for DURATION s, each on a new connection; prints one JSON
    object. Latency is measured from each request's scheduled start."""
    port, rate, duration, timeout, start = (int(argv[0]), float(argv[1]), float(argv[2]),
                                            float(argv[3]), float(argv[4]))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # up to rate × timeout connections may be in flight
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    res = asyncio.run(_openloop(port, rate, duration, timeout, start))
    json.dump(res, sys.stdout)


async def _openloop(port, rate, duration, timeout, t0):
    loop = asyncio.get_running_loop()
    n = int(round(rate * duration))
    dt = 1.0 / rate
    nan = float("nan")
    lag = array("d", [nan]) * n       # actual start − scheduled start
    conn = array("d", [nan]) * n      # connect() duration
    total = array("d", [nan]) * n     # response complete − scheduled start (OK requests only)
    service = array("d", [nan]) * n   # response complete − actual start
    fails, gens = [], Counter()       # (scheduled start, kind); generations that answered
    addr = ("127.0.0.1", port)
    has_timeout = hasattr(asyncio, "timeout")  # Python 3.11+

    async def exchange(i, s, ta, stage):
        await loop.sock_connect(s, addr)
        conn[i] = time.monotonic() - ta
        stage[0] = "request"
        await loop.sock_sendall(s, REQ)
        buf = bytearray()
        while True:  # until the server closes (Connection: close): it closes first
            d = await loop.sock_recv(s, 65536)
            if not d:
                return bytes(buf)
            buf += d

    async def one(i, ts):
        ta = time.monotonic()
        lag[i] = ta - ts
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stage, kind = ["connect"], None
        try:
            if has_timeout:
                async with asyncio.timeout(timeout):
                    data = await exchange(i, s, ta, stage)
            else:
                data = await asyncio.wait_for(exchange(i, s, ta, stage), timeout)
            t1 = time.monotonic()
            head, sep, body = data.partition(b"\r\n\r\n")
            m = re.search(rb"\r\ncontent-length:\s*(\d+)", head.lower())
            if not data:
                kind = "eof"  # closed without a byte of response
            elif not sep or (m and len(body) < int(m.group(1))):
                kind = "eof-partial"
            elif not head.startswith(b"HTTP/1.1 200"):
                kind = "http-" + head[9:12].decode(errors="replace")
            else:
                total[i], service[i] = t1 - ts, t1 - ta
                parts = body.split()
                gens[parts[1].decode(errors="replace") if len(parts) > 1 else "?"] += 1
        except (asyncio.TimeoutError, TimeoutError):
            kind = "connect-timeout" if stage[0] == "connect" else "timeout"
        except ConnectionRefusedError:
            kind = "refused"
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
            kind = "reset" if stage[0] == "request" else "connect-reset"
        except OSError as e:
            kind = f"errno-{e.errno}"
        finally:
            s.close()
        if kind is not None:
            fails.append((ts, kind))

    pending = set()
    wait = t0 - time.monotonic()
    if wait > 0:
        await asyncio.sleep(wait)
    i, t_first = 0, time.monotonic()
    while i < n:
        now = time.monotonic()
        while i < n and t0 + i * dt <= now:  # everything due (and overdue) starts now
            task = loop.create_task(one(i, t0 + i * dt))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
        if i < n:
            await asyncio.sleep(max(0.0, t0 + i * dt - time.monotonic()))
    t_last = time.monotonic()
    if pending:
        await asyncio.wait(set(pending), timeout=timeout + 2)
    ok = [j for j in range(n) if not math.isnan(total[j])]
    lat = [total[j] * 1e3 for j in ok]
    conns = [c * 1e3 for c in conn if not math.isnan(c)]
    lags = [x * 1e3 for x in lag if not math.isnan(x)]
    slowest = sorted(ok, key=lambda j: total[j], reverse=True)[:20]
    return {
        "scheduled": n, "sent": len(lags), "ok": len(ok),
        "fail": Counter(k for _, k in fails), "fail_times": sorted(fails)[:2000],
        "unfinished": n - len(ok) - len(fails),
        "latency_ms": dist(lat), "service_ms": dist([service[j] * 1e3 for j in ok]),
        "connect_ms": dist(conns), "lag_ms": dist(lags),
        "slow_connects": sum(c > SLOW_CONNECT_S * 1e3 for c in conns),
        "late_10ms": sum(x > 10 for x in lags),
        "send_rate": (len(lags) - 1) / max(1e-9, t_last - t_first) if len(lags) > 1 else 0.0,
        "send_span_s": t_last - t_first,
        "slowest": [(t0 + j * dt, total[j] * 1e3, conn[j] * 1e3, lag[j] * 1e3) for j in slowest],
        "gens": len(gens), "rate": rate, "duration": duration, "timeout": timeout,
    }


# ------------------------------------------------------------------ processes
class Procs:
    """Everything started here, so that cleanup() can kill it by pid."""

    def __init__(self, server):
        self.popens = []
        self.pids = set()  # handoff's children, learned from its `spawned` events
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
                    p.wait(timeout=10)
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


def clean_env():
    """Our environment minus anything a child could mistake for its own sockets."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("LISTEN_", "NOTIFY_SOCKET", "SERVER_STARTER_", "HANDOFF_"))}


class Handoff:
    """handoff --log-format json on 127.0.0.1:0; its stderr goes to a file (unlinked at once)
    that a thread polls, so that our reader can never block handoff."""

    def __init__(self, procs, args, child):
        self.cmd = [args.handoff, *args.control, "--log-format", "json",
                    "--listen", "127.0.0.1:0", "--", *child]
        fd, path = tempfile.mkstemp(prefix="handoff-cadence-", suffix=".log")
        os.close(fd)
        with open(path, "ab") as log_w:
            self.p = procs.start(self.cmd, stdout=subprocess.DEVNULL, stderr=log_w,
                                 env=clean_env())
        log_r = open(path, "rb")
        os.unlink(path)
        self.pid, self.procs = self.p.pid, procs
        self.events, self.other, self.cond = [], [], threading.Condition()
        threading.Thread(target=self._read, args=(log_r,), daemon=True).start()
        ev = self.wait(lambda e: e.get("event") == "listening", 10)
        self.port = int(ev["addr"].rsplit(":", 1)[1])
        self.wait(lambda e: e.get("event") == "ready", 15)

    def _lines(self, f):
        rest = b""
        while True:
            gone = self.p.poll() is not None
            data = os.read(f.fileno(), 1 << 20)
            if data:
                rest += data
                *lines, rest = rest.split(b"\n")
                yield from lines
            elif gone:
                f.close()
                return
            else:
                time.sleep(0.005)

    def _read(self, f):
        for raw in self._lines(f):
            t = time.monotonic()
            line = raw.decode(errors="replace")
            cut = line.find('{"timestamp"')  # a child's text may precede handoff's line
            prefix, js = (line[:cut], line[cut:]) if cut > 0 else ("", line)
            try:
                ev = json.loads(js)
                ev["_t"] = t
            except ValueError:
                ev = None
            with self.cond:
                if prefix:
                    self.other.append(prefix)
                if ev is None:
                    self.other.append(line)
                else:
                    self.events.append(ev)
                    if ev.get("event") == "spawned":
                        self.procs.pids.add(ev["pid"])
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
                    raise TimeoutError(f"no matching handoff event within {timeout} s")
                self.cond.wait(left)

    def mark(self):
        with self.cond:
            return len(self.events)

    def since(self, mark):
        with self.cond:
            return list(self.events[mark:])

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def start_direct(procs, args, port):
    """The child binding 127.0.0.1:PORT itself (PORT 0: the kernel picks); retried on
    EADDRINUSE. Returns (Popen, port)."""
    for attempt in range(20):
        cmd = [args.server, "--bind", f"127.0.0.1:{port}", "--ready-delay-ms",
               str(args.ready_delay_ms)]
        p = procs.start(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=clean_env())
        line = p.stderr.readline().decode()
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if m:
            threading.Thread(target=p.stderr.read, daemon=True).start()  # drain its stderr
            return p, int(m.group(1))
        p.wait()
        log(f"child could not bind 127.0.0.1:{port} ({line.strip()}), retry {attempt + 1}")
        time.sleep(0.01)
    raise RuntimeError("cannot start the directly bound child")


def proc_cpu_s(pid):
    """utime + stime of a process, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (FileNotFoundError, ProcessLookupError):
        return float("nan")


# ------------------------------------------------------------------ kernel side
SYSCTLS = ("net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog", "net.ipv4.tcp_syncookies",
           "net.ipv4.ip_local_port_range", "net.ipv4.tcp_tw_reuse", "net.ipv4.tcp_fin_timeout",
           "net.ipv4.tcp_max_tw_buckets", "net.ipv4.tcp_timestamps",
           "net.netfilter.nf_conntrack_max")
NETSTAT_KEYS = ("ListenOverflows", "ListenDrops", "TCPReqQFullDrop", "TCPReqQFullDoCookies",
                "TCPTimeWaitOverflow", "TCPSynRetrans", "TCPAbortOnData", "TCPAbortOnClose")
SNMP_KEYS = ("ActiveOpens", "PassiveOpens", "AttemptFails", "EstabResets", "OutRsts",
             "RetransSegs")


def sysctl(name):
    try:
        with open("/proc/sys/" + name.replace(".", "/")) as f:
            return " ".join(f.read().split())
    except OSError:
        return None


def kernel_counters():
    """TcpExt and Tcp counters (machine-wide; on an otherwise quiet loopback, ours)."""
    out = {}
    for path, keys in (("/proc/net/netstat", NETSTAT_KEYS), ("/proc/net/snmp", SNMP_KEYS)):
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for names, values in zip(lines[::2], lines[1::2]):
            names, values = names.split(), values.split()
            if names[0] in ("TcpExt:", "Tcp:"):
                for k, v in zip(names[1:], values[1:]):
                    if k in keys:
                        out[k] = int(v)
    return out


def sockstat():
    """(TCP sockets in use, in TIME_WAIT) from /proc/net/sockstat."""
    try:
        with open("/proc/net/sockstat") as f:
            for line in f:
                if line.startswith("TCP:"):
                    v = line.split()
                    return int(v[v.index("inuse") + 1]), int(v[v.index("tw") + 1])
    except (OSError, ValueError):
        pass
    return 0, 0


def conntrack_count():
    try:
        with open("/proc/sys/net/netfilter/nf_conntrack_count") as f:
            return int(f.read())
    except OSError:
        return None


def time_wait_by_side(port):
    """TIME_WAIT sockets on 127.0.0.1 involving PORT: (server side: local port is PORT,
    client side: remote port is PORT), from /proc/net/tcp."""
    srv = cli = 0
    hexport = f"{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                p = line.split(None, 4)
                if p[3] != "06":
                    continue
                if p[1].endswith(":" + hexport):
                    srv += 1
                elif p[2].endswith(":" + hexport):
                    cli += 1
    except OSError:
        pass
    return srv, cli


def listen_backlog(port):
    """The accept-queue limit of the listener on PORT (ss: Send-Q of a LISTEN socket)."""
    try:
        out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                             text=True, timeout=10).stdout.split()
        return int(out[2]) if len(out) >= 3 else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


class Sampler(threading.Thread):
    """Once a second: TCP sockets in use and in TIME_WAIT (maxima), conntrack entries."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop_ev = threading.Event()
        self.max_inuse = self.max_tw = 0
        self.max_ct = None

    def run(self):
        while not self.stop_ev.wait(1.0):
            inuse, tw = sockstat()
            self.max_inuse, self.max_tw = max(self.max_inuse, inuse), max(self.max_tw, tw)
            ct = conntrack_count()
            if ct is not None:
                self.max_ct = max(self.max_ct or 0, ct)

    def finish(self):
        self.stop_ev.set()
        self.join(timeout=5)
        return {"max_inuse": self.max_inuse, "max_tw": self.max_tw, "max_conntrack": self.max_ct}


def preflight(args):
    """The kernel and process limits that could make the *client* fail, checked and printed.
    Nothing is changed."""
    k = {name: sysctl(name) for name in SYSCTLS}
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    k["RLIMIT_NOFILE"] = f"{soft} (hard {hard})"
    notes = []
    try:
        lo, hi = map(int, k["net.ipv4.ip_local_port_range"].split())
        ports = hi - lo + 1
    except (AttributeError, ValueError):
        ports = None
    inflight = args.concurrency + int(args.rate * args.timeout)
    if ports:
        notes.append(
            f"client ports: {ports} ephemeral ports. The server closes each connection first "
            f"(HTTP/1.0 from ab, `Connection: close` from the open-loop client and hey), so "
            f"TIME_WAIT is kept on the server's side (local port = the server's port) and a "
            f"client port is free again as soon as its connection is closed: at most "
            f"{args.concurrency} (closed loop) + {int(args.rate * args.timeout)} (open loop, "
            f"rate × timeout, worst case) client ports are in use at once. The TIME_WAIT count "
            f"by side is checked after each phase.")
        notes.append(
            f"client port reuse: connect() takes the even ports of the range first (about "
            f"{ports // 2}), so at thousands of connections per second a client port comes back "
            f"within seconds, while the server still holds the previous connection on that pair "
            f"in TIME_WAIT; the kernel lets the new SYN take over that TIME_WAIT when TCP "
            f"timestamps are on (tcp_timestamps = {k.get('net.ipv4.tcp_timestamps')}), so the "
            f"server-side TIME_WAIT count levels off near {ports // 2} instead of growing for "
            f"60 s, and no connect fails for lack of a port (a refused take-over would show as "
            f"connects over 1 s)")
        if inflight > ports * 0.8:
            notes.append("**warning**: the worst-case number of client ports in use at once is "
                         "close to the ephemeral range")
    if args.concurrency + 50 > soft:
        notes.append(f"**warning**: RLIMIT_NOFILE {soft} is below the closed-loop "
                     f"concurrency {args.concurrency}: raise it (`ulimit -n`)")
    ol_fds = int(args.rate * args.timeout) + 50
    if hard != resource.RLIM_INFINITY and ol_fds > hard:
        notes.append(f"**warning**: the open-loop client may have up to {ol_fds} connections "
                     f"in flight, above the hard RLIMIT_NOFILE {hard} (it raises its soft "
                     f"limit to the hard one)")
    try:
        somax = int(k["net.core.somaxconn"])
        gap_s = max(0.0, (somax - args.concurrency) / args.rate)
        notes.append(
            f"accept queue: handoff's `--backlog` defaults to net.core.somaxconn = {somax} (each "
            f"phase reads the listener's limit back with `ss`). The closed loop can have "
            f"{args.concurrency} connections waiting at once; the open loop adds {args.rate:g} "
            f"for every second nobody accepts, so a queue of {somax} overflows (SYNs dropped, "
            f"connects over 1 s) only after about {gap_s:.1f} s without an accept. The child "
            f"binding the port itself (direct, naive) gets Rust std's backlog instead"
            + (" — **somaxconn is below the closed-loop concurrency**"
               if somax < args.concurrency else ""))
    except (TypeError, ValueError):
        pass
    try:
        if int(k["net.ipv4.tcp_max_syn_backlog"]) < args.concurrency:
            notes.append("**warning**: tcp_max_syn_backlog is below the concurrency")
    except (TypeError, ValueError):
        pass
    if k.get("net.ipv4.tcp_max_tw_buckets"):
        notes.append(f"tcp_max_tw_buckets = {k['net.ipv4.tcp_max_tw_buckets']}: beyond it the "
                     f"kernel frees TIME_WAIT sockets early (counter TCPTimeWaitOverflow), "
                     f"which costs the server nothing here")
    ct = conntrack_count()
    if ct is not None:
        notes.append(f"conntrack is loaded (count {ct}, max {k['net.netfilter.nf_conntrack_max']})"
                     f": a full table drops SYNs; its maximum during each phase is reported")
    return {"sysctl": k, "notes": notes}


# ------------------------------------------------------------------ closed-loop tools
class Ab:
    """ab -c C -t D, a new connection per request (HTTP/1.0, no -k); -g for every request's
    connect and total time (ms). -r: receive errors are counted, not fatal; -l: the body's
    length varies with the generation's pid. ab gives up after 10 connect errors."""
    name = "ab"

    def __init__(self, procs, args, port, duration, tmp):
        self.tsv = os.path.join(tmp, f"ab-{port}.tsv")
        self.err = open(os.path.join(tmp, f"ab-{port}.err"), "w+")
        # -n caps the run too: enough for 30 000 requests/s (ab allocates its table lazily).
        n = int(max(duration, 1) * 30000)
        self.cmd = ["ab", "-q", "-r", "-l", "-s", str(int(args.timeout)), "-c",
                    str(args.concurrency), "-t", str(int(math.ceil(duration))), "-n", str(n),
                    "-g", self.tsv, f"http://127.0.0.1:{port}/"]
        self.p = procs.start(self.cmd, stdout=subprocess.PIPE, stderr=self.err, text=True)
        self.t0 = time.monotonic()

    def finish(self, timeout):
        try:
            out = self.p.communicate(timeout=timeout)[0]
        except subprocess.TimeoutExpired:
            self.p.kill()
            out = self.p.communicate()[0]
        elapsed = time.monotonic() - self.t0
        self.err.seek(0)
        err = self.err.read()
        self.err.close()
        r = {"tool": "ab", "cmd": shlex.join(self.cmd), "elapsed": elapsed,
             "exit": self.p.returncode, "stderr_tail": err.strip().splitlines()[-3:]}

        def num(pat, default=0.0):
            m = re.search(pat, out)
            return float(m.group(1)) if m else default
        r["aborted"] = "Test aborted" in err or self.p.returncode != 0
        r["complete"] = int(num(r"Complete requests:\s+(\d+)"))
        r["failed"] = int(num(r"Failed requests:\s+(\d+)"))
        m = re.search(r"\(Connect: (\d+), Receive: (\d+), Length: (\d+), Exceptions: (\d+)\)", out)
        kinds = Counter()
        if m:
            for k, v in zip(("connect", "receive", "length", "exceptions"), map(int, m.groups())):
                if v:
                    kinds[k] = v
        non2xx = int(num(r"Non-2xx responses:\s+(\d+)"))
        if non2xx:
            kinds["non-2xx"] = non2xx
        if r["aborted"]:
            # ab stops the whole test at the 11th connect error and prints no summary.
            m = re.search(r"\n([a-z_]+\(\)): (.+)", err)
            kinds["aborted: " + (m.group(2).strip() if m else err.strip()[-80:])] += 1
        r["fail"] = kinds
        r["errors"] = r["failed"] + non2xx + (1 if r["aborted"] and not r["failed"] else 0)
        r["rps"] = num(r"Requests per second:\s+([\d.]+)")
        tot, con = array("i"), array("i")
        try:
            with open(self.tsv) as f:
                next(f, None)
                for line in f:
                    p = line.rsplit("\t", 4)  # ctime, dtime, ttime, wait (ms)
                    if len(p) == 5:
                        con.append(int(p[1]))
                        tot.append(int(p[3]))
            os.unlink(self.tsv)
        except (OSError, ValueError):
            pass
        r["rows"] = len(tot)
        r["latency_ms"] = dist(tot)
        r["connect_ms"] = dist(con)
        r["slow_connects"] = sum(c >= SLOW_CONNECT_S * 1e3 for c in con)
        r["resolution"] = "1 ms"
        return r


class Hey:
    """hey -c C -z D -disable-keepalive: errors by message; its latency distribution stops
    at p99 (no p99.9) and connect times only as average/fastest/slowest."""
    name = "hey"

    def __init__(self, procs, args, port, duration, tmp):
        self.cmd = ["hey", "-c", str(args.concurrency), "-z", f"{int(math.ceil(duration))}s",
                    "-t", str(int(args.timeout)), "-disable-keepalive",
                    f"http://127.0.0.1:{port}/"]
        self.p = procs.start(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
        self.t0 = time.monotonic()

    def finish(self, timeout):
        try:
            out = self.p.communicate(timeout=timeout)[0]
        except subprocess.TimeoutExpired:
            self.p.kill()
            out = self.p.communicate()[0]
        r = {"tool": "hey", "cmd": shlex.join(self.cmd), "elapsed": time.monotonic() - self.t0,
             "exit": self.p.returncode, "aborted": self.p.returncode != 0,
             "stderr_tail": [], "resolution": "0.1 ms"}
        ok = sum(int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)
                 if c.startswith("2"))
        non2xx = sum(int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)
                     if not c.startswith("2"))
        kinds = Counter()
        sec = out.split("Error distribution:", 1)
        for n, msg in re.findall(r"\[(\d+)\]\s+(.+)", sec[1] if len(sec) > 1 else ""):
            lo = msg.lower()
            k = ("refused" if "refused" in lo else "reset" if "reset" in lo
                 else "timeout" if ("timeout" in lo or "deadline" in lo) else
                 "eof" if "eof" in lo else msg.strip()[-60:])
            kinds[k] += int(n)
        if non2xx:
            kinds["non-2xx"] = non2xx
        r["fail"] = kinds
        r["failed"] = r["errors"] = sum(kinds.values())
        r["complete"] = ok + r["failed"]
        r["rows"] = ok + non2xx
        m = re.search(r"Requests/sec:\s+([\d.]+)", out)
        r["rps"] = float(m.group(1)) if m else 0.0
        q = {int(p): float(v) * 1e3 for p, v in re.findall(r"(\d+)% in ([\d.]+) secs", out)}
        m = re.search(r"Slowest:\s+([\d.]+)", out)
        r["latency_ms"] = {"n": ok + non2xx, "p50": q.get(50, float("nan")),
                           "p99": q.get(99, float("nan")), "p999": float("nan"),
                           "max": float(m.group(1)) * 1e3 if m else float("nan")}
        m = re.search(r"DNS\+dialup:\s+([\d.]+) secs, ([\d.]+) secs, ([\d.]+) secs", out)
        mx = float(m.group(3)) * 1e3 if m else float("nan")
        r["connect_ms"] = {"n": ok, "p50": float("nan"), "p99": float("nan"),
                           "p999": float("nan"), "max": mx}
        r["slow_connects"] = None if not m else (">= 1" if mx >= SLOW_CONNECT_S * 1e3 else 0)
        return r


# ------------------------------------------------------------------ phases
def run_phase(name, args, procs, tmp):
    """One phase: `baseline` and `reloads` under handoff; `direct` (never restarted) and
    `naive` with the child binding the port itself. Load (closed loop + open loop) for the
    phase's duration."""
    own = name in ("direct", "naive")
    duration = args.naive_duration if own else args.duration
    res = {"name": name, "duration": duration}
    h = direct = None
    if own:
        direct, port = start_direct(procs, args, 0)
        time.sleep(args.ready_delay_ms / 1e3 + 0.2)  # accepting
        res["server_cmd"] = shlex.join([args.server, "--bind", "127.0.0.1:0", "--ready-delay-ms",
                                        str(args.ready_delay_ms)])
    else:
        h = Handoff(procs, args, [args.server, "--ready-delay-ms", str(args.ready_delay_ms)])
        port = h.port
        res["server_cmd"] = shlex.join(h.cmd)
    res["backlog"] = listen_backlog(port)
    mark = h.mark() if h else 0
    cpu0 = proc_cpu_s(h.pid) if h else None
    k0, sampler = kernel_counters(), Sampler()
    sampler.start()

    start = time.monotonic() + 0.5
    me = [sys.executable, os.path.abspath(__file__), "_openloop", str(port), str(args.rate),
          str(duration), str(args.timeout), repr(start)]
    ol = procs.start(me, stdout=subprocess.PIPE, text=True)
    while time.monotonic() < start - 0.05:
        time.sleep(0.01)
    load = args.naive_load if own else args.load
    tool = (Ab if load == "ab" else Hey)(procs, args, port, duration, tmp)
    t_end = start + duration
    sent, restarts, late, restart_ms = 0, 0, 0, []
    k = 1
    try:
        while name in ("reloads", "naive"):
            t_next = start + k * args.interval
            if t_next > t_end - args.interval / 2:
                break
            now = time.monotonic()
            if now < t_next:
                time.sleep(t_next - now)
            elif now - t_next > args.interval / 2:
                late += 1  # we are behind (a naive restart took longer than the interval)
            if h:
                os.kill(h.pid, signal.SIGHUP)
                sent += 1
            else:
                t0 = time.monotonic()
                direct.send_signal(signal.SIGTERM)
                direct.wait(timeout=15)
                direct, _ = start_direct(procs, args, port)
                restart_ms.append((time.monotonic() - t0) * 1e3)
                restarts += 1
            k += 1
        while time.monotonic() < t_end:
            time.sleep(min(0.2, t_end - time.monotonic()))
    except BaseException:
        for p in (tool.p, ol):  # interrupted: no waiting for the load to end
            if p.poll() is None:
                p.kill()
        raise
    closed = tool.finish(timeout=args.timeout + 60)
    try:
        openloop = json.loads(ol.communicate(timeout=args.timeout + 30)[0])
    except (subprocess.TimeoutExpired, ValueError):
        ol.kill()
        openloop = None
    res["closed"], res["open"] = closed, openloop
    res["net"] = sampler.finish()
    k1 = kernel_counters()
    res["kernel"] = {key: k1.get(key, 0) - k0.get(key, 0) for key in k0}
    res["tw_server"], res["tw_client"] = time_wait_by_side(port)
    if h:
        res["sighups"] = sent
        settle(h, mark)
        res["handoff_cpu_s"] = proc_cpu_s(h.pid) - cpu0
        res.update(handoff_figures(h, mark, args))
        h.stop()
    else:
        res["restarts"], res["restart_late"] = restarts, late
        res["restart_ms"] = dist(restart_ms)
        direct.send_signal(signal.SIGTERM)
        direct.wait(timeout=15)
    res["slowest"] = nearest_events(openloop, h.events if h else [])
    return res


def settle(h, mark, limit=30.0):
    """Wait (bounded) until every reload started has finished and the log has been quiet for
    a moment: a SIGHUP coalesced at the end starts one more reload after the current one."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        evs = h.since(mark)
        started = sum(e.get("event") == "spawned" and e.get("reason") == "reload" for e in evs)
        done = sum(e.get("event") == "reload_finished" for e in evs)
        drains = sum(e.get("event") == "stopping" for e in evs) - sum(
            e.get("event") == "drained" for e in evs)
        quiet = not evs or time.monotonic() - evs[-1]["_t"] > 0.5
        if done >= started and drains <= 0 and quiet:
            return
        time.sleep(0.1)


def handoff_figures(h, mark, args):
    evs = h.since(mark)

    def of(ev, field):
        return [e[field] for e in evs if e.get("event") == ev and e.get(field) is not None]
    fin = [e for e in evs if e.get("event") == "reload_finished"]
    cd = [tuple(map(int, m.groups())) for ln in h.other if (m := DRAIN_RE.search(ln))]
    return {
        "requested": sum(e.get("event") == "reload_requested" for e in evs),
        "coalesced": sum(e.get("event") == "reload_coalesced" for e in evs),
        "finished_ok": sum(e.get("result") == "ok" for e in fin),
        "finished_failed": sum(e.get("result") != "ok" for e in fin),
        "spawned": sum(e.get("event") == "spawned" for e in evs),
        "ready_ms": dist(of("ready", "ready_ms")),
        "spawn_ms": dist(of("spawned", "request_to_spawn_ms")),
        "drain_ms": dist(of("drained", "drain_ms")),
        "drain_status": Counter(str(e.get("exit_status")) for e in evs
                                if e.get("event") == "drained"),
        "odd": Counter(e.get("event") for e in evs
                       if e.get("level") in ("WARN", "ERROR")
                       or e.get("event") in ("failed", "exited", "killed")),
        "child_io_errors": sum(x[4] for x in cd),
        "child_still_open": sum(x[3] for x in cd),
        "child_lines": [ln for ln in h.other if not DRAIN_RE.search(ln)][:5],
    }


def nearest_events(openloop, events):
    """The open-loop client's slowest requests, each with the handoff event nearest to its
    scheduled start: reloads cause the slow ones if they cluster around `spawned`/`ready`/
    `stopping`; the machine's noise does not."""
    if not openloop:
        return []
    evs = [e for e in events if e.get("event") in
           ("reload_requested", "reload_coalesced", "spawned", "ready", "stopping", "drained")]
    out = []
    for ts, total, conn, lag in openloop["slowest"][:5]:
        where = ""
        if evs:
            ne = min(evs, key=lambda e: abs(e["_t"] - ts))
            gen = f" gen {ne['gen']}" if "gen" in ne else ""
            where = f"{(ts - ne['_t']) * 1e3:+.0f} ms from `{ne['event']}`{gen}"
        out.append({"total_ms": total, "connect_ms": conn, "lag_ms": lag, "where": where})
    return out


# ------------------------------------------------------------------ report
def sysinfo(args):
    def run(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
        except OSError:
            return "?"
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    tools = []
    for t in sorted({args.load, args.naive_load}):
        if t == "ab":
            tools.append(run(["sh", "-c", "ab -V 2>&1 | head -1"]).replace(" <$Revision$>", "")
                         + " (apache2-utils " + (run(["dpkg-query", "-W", "-f", "${Version}",
                                                     "apache2-utils"]) or "?") + ")")
        else:
            tools.append("hey " + (run(["dpkg-query", "-W", "-f", "${Version}", "hey"]) or "?"))
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "kernel": platform.release(), "nproc": os.cpu_count(), "cpu": cpu,
            "commit": run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]) or "?",
            "python": platform.python_version(), "tools": tools,
            "handoff": run([args.handoff, "--version"])}


def ms(v, nd=1):
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def report(args, res, info):
    L = []
    add = L.append
    ph = res["phases"]
    b, r, d, n = (ph.get(k) for k in PHASES)
    add("# Reloads every 300 ms under heavy load (the harshest published cadence)\n")
    add("The protocol of the one published reload benchmark with hard numbers (HAProxy 1.6 "
        "reloaded every 300 ms for 600 s under `ab -c 10000` from two hosts: 3,765 failed of "
        "2.1 M requests for a stock reload, 0 with a socket-holding sidecar), scaled to this "
        "machine and loopback. Produced by `bench/cadence.sh` (`bench/cadence.py`).\n")
    add(f"- date: {info['date']}  ")
    add(f"- command: `{args.command}`"
        + (" (**quick mode: a smoke test, not a result**)" if args.quick else "") + "  ")
    add(f"- machine: Linux {info['kernel']}, nproc {info['nproc']}, CPU `{info['cpu']}`  ")
    add(f"- {info['handoff']}; repository commit {info['commit']}; {'; '.join(info['tools'])}; "
        f"Python {info['python']}  ")
    busy = max(res["busy_before"], res["busy_after"])
    add(f"- CPUs busy with other processes: {res['busy_before']:.0f} % before the run, "
        f"{res['busy_after']:.0f} % after it; load average {res['load_before']} at the start, "
        f"{res['load_after']} at the end"
        + (" — **the machine was not idle: expect noisy latencies**" if busy >= 20 else "")
        + "  ")
    add(f"- child: `http-server --ready-delay-ms {args.ready_delay_ms}` "
        f"(examples/rust/http_server.rs: a thread per connection, READY=1 after the delay; "
        f"with `--bind` it binds the port itself, with Rust std's backlog)  ")
    add(f"- load, every phase, both at once: a closed-loop tool, {args.concurrency} concurrent "
        f"connections, a new connection per request (`{args.load}` under handoff, "
        f"`{args.naive_load}` for the child alone: ab gives up at its 11th connect error); and "
        f"the open-loop client: {args.rate:g} requests/s on a fixed timetable, a new "
        f"connection each, latency from the *scheduled* start (coordinated omission "
        f"corrected), timeout {args.timeout:g} s, no retries  ")
    add(f"- phases, one after the other: **baseline** (handoff, no reloads, {args.duration:g} "
        f"s), **reloads** (SIGHUP every {args.interval * 1e3:.0f} ms on a fixed schedule, "
        f"{args.duration:g} s), **direct** (the child binding the port itself, never "
        f"restarted: the reference for the next one, {args.naive_duration:g} s), **naive** "
        f"(no handoff: stop the child that bound the port itself, wait for it to exit, start "
        f"a new one on the same port, every {args.interval * 1e3:.0f} ms, "
        f"{args.naive_duration:g} s)\n")

    def failed(p):
        c, o = p["closed"], p["open"] or {}
        of = sum((o.get("fail") or {}).values()) + o.get("unfinished", 0)
        return c, o, of

    add("## Targets\n")
    add("| Target | Measured | |")
    add("|---|---|---|")
    if r:
        c, o, of = failed(r)
        add(f"| 0 failed requests during the reloads | {c['tool']}: {c['errors']} of "
            f"{c['complete']} ({fails(c['fail'])}); open loop: {of} of {o.get('scheduled', 0)} "
            f"({fails(o.get('fail') or {})}) | {yes(c['errors'] == 0 and of == 0)} |")
        sc_c, sc_o = c["slow_connects"], o.get("slow_connects")
        add(f"| 0 connects over 1 s (a dropped SYN) during the reloads | {c['tool']}: {sc_c}; "
            f"open loop: {sc_o} | {yes(sc_c == 0 and sc_o == 0)} |")
    if r and b:
        for key in ("open", "closed"):
            x, y = (r[key] or {}).get("latency_ms", {}), (b[key] or {}).get("latency_ms", {})
            xv, yv = x.get("p999", float("nan")), y.get("p999", float("nan"))
            label = "open loop" if key == "open" else r["closed"]["tool"]
            if math.isnan(xv) or math.isnan(yv):
                add(f"| {label}: p99.9 during reloads within 2× of without | not measured "
                    f"({label} reports no p99.9) | – |")
                continue
            add(f"| {label}: p99.9 during reloads within 2× of without | {ms(xv)} ms vs "
                f"{ms(yv)} ms ({xv / yv if yv else float('inf'):.2f}×) | {yes(xv <= 2 * yv)} |")
    if r:
        add(f"| every reload requested is completed (none failed) | {r['sighups']} SIGHUPs "
            f"sent; handoff logged {r['requested']} `reload_requested` + {r['coalesced']} "
            f"`reload_coalesced`; {r['finished_ok']} reloads completed, "
            f"{r['finished_failed']} failed | {yes(r['finished_failed'] == 0)} |")
    if n:
        c, o, of = failed(n)
        ref = ""
        if d:
            dc, do, dof = failed(d)
            ref = (f" (never restarted, same length: {dc['tool']} {dc['errors']}, open loop "
                   f"{dof}, {do.get('slow_connects')} connects over 1 s)")
        add(f"| (contrast) the naive restart fails requests | {c['tool']}: {c['errors']} "
            f"({fails(c['fail'])}); open loop: {of} of {o.get('scheduled', 0)} "
            f"({fails(o.get('fail') or {})}), {o.get('slow_connects')} connects over 1 s{ref} "
            f"| {'**yes**' if c['errors'] + of else '**no**'} |")
    add("")

    order = [p for p in (b, r, d, n) if p]
    title = {"baseline": "baseline (no reloads)", "reloads": "reloads every "
             f"{args.interval * 1e3:.0f} ms", "direct": "child alone, never restarted",
             "naive": f"naive restart every {args.interval * 1e3:.0f} ms"}
    add("## Requests\n")
    add("Latency in ms: closed loop from the tool's own timing (connect to response; ab: "
        "1 ms resolution, every request; hey: 0.1 ms, no p99.9, connect times only as the "
        "slowest); open loop from the scheduled start (so it includes any delay the client "
        "itself had in sending it).\n")
    add("| Phase | Client | Requests | Failed (by kind) | Connects > 1 s | p50 | p99 | p99.9 | "
        "max | Rate |")
    add("|---|---|---|---|---|---|---|---|---|---|")
    for p in order:
        c = p["closed"]
        lat = c["latency_ms"]
        add(f"| {title[p['name']]} ({p['duration']:g} s) | {c['tool']} -c {args.concurrency} | "
            f"{c['complete']} | {c['errors']} ({fails(c['fail'])}) | {c['slow_connects']} | "
            f"{ms(lat['p50'])} | {ms(lat['p99'])} | {ms(lat['p999'])} | {ms(lat['max'])} | "
            f"{c['rps']:.0f}/s |")
        o = p["open"]
        if o:
            lat = o["latency_ms"]
            f = Counter(o["fail"])
            if o["unfinished"]:
                f["unfinished"] = o["unfinished"]
            add(f"| | open loop {o['rate']:g}/s | {o['scheduled']} | {sum(f.values())} "
                f"({fails(f)}) | {o['slow_connects']} | {ms(lat['p50'], 2)} | "
                f"{ms(lat['p99'], 2)} | {ms(lat['p999'], 2)} | {ms(lat['max'], 2)} | "
                f"{o['scheduled'] / o['duration']:.0f}/s, "
                f"{100 * (1 - o['late_10ms'] / max(1, o['sent'])):.1f} % sent on time |")
        else:
            add("| | open loop | – | client produced no result | | | | | | |")
    add("")
    add("Open-loop client, in more detail (ms; *lag* = how late the client itself started a "
        "request: its own CPU starvation, not the server's; *on time* = started within 10 ms "
        "of its scheduled time):\n")
    add("| Phase | connect p50 / p99 / max | service (from send) p99.9 | lag p50 / p99 / max | "
        "sent > 10 ms late | generations answering |")
    add("|---|---|---|---|---|---|")
    for p in order:
        o = p["open"]
        if not o:
            continue
        cn, lg = o["connect_ms"], o["lag_ms"]
        add(f"| {title[p['name']]} | {ms(cn['p50'], 2)} / {ms(cn['p99'], 2)} / "
            f"{ms(cn['max'], 2)} | {ms(o['service_ms']['p999'], 2)} | {ms(lg['p50'], 2)} / "
            f"{ms(lg['p99'], 2)} / {ms(lg['max'], 2)} | {o['late_10ms']} | {o['gens']} |")
    add("")
    if r and r.get("slowest"):
        add("Slowest open-loop requests during the reloads (scheduled start relative to the "
            "nearest handoff event): " + "; ".join(
                f"{s['total_ms']:.1f} ms (connect {s['connect_ms']:.1f}, lag {s['lag_ms']:.1f}; "
                f"{s['where']})" for s in r["slowest"]) + "\n")

    if r:
        add("## Reloads (from handoff's JSON log)\n")
        add(f"- SIGHUPs sent: {r['sighups']} (one every {args.interval * 1e3:.0f} ms, whatever "
            f"the state of the previous reload); `reload_requested`: {r['requested']}; "
            f"`reload_coalesced` (arrived during a reload, folded into one more): "
            f"{r['coalesced']}; signals merged by the kernel before handoff read them: "
            f"{max(0, r['sighups'] - r['requested'] - r['coalesced'])}  ")
        add(f"- reloads completed: **{r['finished_ok']}**, failed: {r['finished_failed']}; "
            f"generations spawned: {r['spawned']}  ")
        add("- per reload, p50 / p99 / max: " + "; ".join(
            f"{label} {ms(r[k]['p50'])} / {ms(r[k]['p99'])} / {ms(r[k]['max'])} ms"
            for label, k in (("SIGHUP → spawned (`request_to_spawn_ms`)", "spawn_ms"),
                             ("spawned → READY=1 (`ready_ms`; `reload_finished` follows at "
                              "once)", "ready_ms"),
                             ("the old generation's drain (`drain_ms`)", "drain_ms"))) + "  ")
        add(f"- drained generations' exit statuses: "
            f"{', '.join(f'{k} ×{v}' for k, v in r['drain_status'].items()) or 'none'}; "
            f"warnings/errors/failed/exited/killed events: {dict(r['odd']) or 'none'}; the "
            f"children's own drain reports: {r['child_io_errors']} connections ended with an "
            f"I/O error, {r['child_still_open']} still open at the child's 5 s limit  ")
        add(f"- handoff's own CPU during the phase: {r['handoff_cpu_s']:.2f} s over "
            f"{r['duration']:g} s ({r['handoff_cpu_s'] / r['duration'] * 100:.1f} % of one core)"
            f"; during the baseline: {b['handoff_cpu_s']:.2f} s\n" if b else "\n")
    if n:
        add(f"Naive restarts: {n['restarts']} (p50 / max {ms(n['restart_ms']['p50'])} / "
            f"{ms(n['restart_ms']['max'])} ms from SIGTERM to the new child bound; "
            f"{n['restart_late']} started more than half an interval late)\n")

    add("## Kernel side\n")
    add("Settings (read, not changed): " + ", ".join(
        f"`{k}` = {v}" for k, v in res["preflight"]["sysctl"].items() if v is not None) + "\n")
    for note in res["preflight"]["notes"]:
        add(f"- {note}")
    add("")
    add("Per phase: counters from /proc/net/netstat and /proc/net/snmp (machine-wide deltas), "
        "TIME_WAIT sockets (the most seen in /proc/net/sockstat; and, right after the load, on "
        "the server's side vs the client's side of our port), the listener's accept-queue "
        "limit (`ss`).\n")
    keys = [k for k in (*NETSTAT_KEYS, *SNMP_KEYS)]
    add("| Phase | backlog | max TIME_WAIT | TW server / client side | " + " | ".join(keys)
        + " |")
    add("|---|---|---|---|" + "---|" * len(keys))
    for p in order:
        add(f"| {p['name']} | {p['backlog']} | {p['net']['max_tw']} | {p['tw_server']} / "
            f"{p['tw_client']} | " + " | ".join(str(p["kernel"].get(k, "–")) for k in keys) + " |")
    add("")
    add("`ListenOverflows`/`ListenDrops`: SYNs or handshake ACKs dropped because an accept queue "
        "was full (a client then waits ≥ 1 s for the retransmission); `AttemptFails`: "
        "connects refused or reset before they were established; `EstabResets`: established "
        "connections reset.")
    if any(p["net"]["max_conntrack"] is not None for p in order):
        add(" Most conntrack entries seen: " + ", ".join(
            f"{p['name']} {p['net']['max_conntrack']}" for p in order) + ".")
    add("\n## Commands\n")
    for p in order:
        add(f"- {p['name']}: server `{p['server_cmd']}`; load `{p['closed']['cmd']}`"
            + (f" (exit status {p['closed']['exit']}; last stderr lines: "
               f"{p['closed']['stderr_tail']})" if p["closed"]["exit"] else ""))
    add("")
    return "\n".join(L)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "_openloop":
        return openloop_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke test, 60 s of load in all: 25 s per handoff phase, 5 s for "
                    "each of the two without handoff")
    ap.add_argument("--duration", type=float, help="seconds of the baseline and of the reloads "
                    "phase (default 300, 25 with --quick)")
    ap.add_argument("--naive-duration", type=float,
                    help="seconds of the direct and naive phases (default 60, 5 with --quick)")
    ap.add_argument("--interval", type=float, default=0.3, help="seconds between reloads (0.3)")
    ap.add_argument("--concurrency", type=int, default=200, help="closed-loop connections (200)")
    ap.add_argument("--rate", type=float, default=500, help="open-loop requests/s (500)")
    ap.add_argument("--timeout", type=float, default=10, help="request timeout, s (10)")
    ap.add_argument("--ready-delay-ms", type=int, default=50, help="child start-up time (50)")
    ap.add_argument("--load", choices=["ab", "hey"], default="ab",
                    help="closed-loop tool under handoff (default ab: per-request data, "
                    "p99.9)")
    ap.add_argument("--naive-load", choices=["ab", "hey"], default=None,
                    help="closed-loop tool for the child alone (default hey if installed: ab "
                    "aborts at its 11th connect error, which a naive restart gives it)")
    ap.add_argument("--only", action="append", choices=list(PHASES),
                    help="run only these phases (repeatable)")
    ap.add_argument("--handoff", default=os.path.join(ROOT, "target/release/handoff"))
    ap.add_argument("--server", default=os.path.join(ROOT, "target/release/examples/http-server"))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results-cadence.md"),
                    help="markdown results (default bench/results-cadence.md)")
    ap.add_argument("--wait-idle", type=float, default=None, metavar="SEC",
                    help="wait up to SEC for the CPUs to be < 20 %% busy first "
                         "(default 60, 0 with --quick)")
    ap.add_argument("--command", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.command = args.command or shlex.join(["bench/cadence.py", *sys.argv[1:]])
    q = args.quick
    args.duration = args.duration or (25.0 if q else 300.0)
    args.naive_duration = args.naive_duration or (5.0 if q else 60.0)
    if args.wait_idle is None:
        args.wait_idle = 0 if q else 60

    def have(tool):
        return subprocess.run(["sh", "-c", f"command -v {tool}"],
                              capture_output=True).returncode == 0
    if args.naive_load is None:
        args.naive_load = "hey" if have("hey") else args.load
    for tool in {args.load, args.naive_load}:
        if not have(tool):
            sys.exit(f"cadence: {tool} not found (apt-get install -y "
                     f"{'apache2-utils' if tool == 'ab' else 'hey'})")
    if not have("ss"):
        log("ss not found (iproute2): the listeners' backlog is not read back")
    helptext = subprocess.run([args.handoff, "--help"], capture_output=True, text=True).stdout
    args.control = ["--control", "none"] if "--control" in helptext else []
    only = args.only or list(PHASES)

    res = {"phases": {}, "preflight": preflight(args)}
    for note in res["preflight"]["notes"]:
        log(note.replace("**", ""))
    res["load_before"] = loadavg()
    deadline = time.monotonic() + args.wait_idle
    while True:
        res["busy_before"] = machine_busy(2.0)
        log(f"CPUs busy before the start: {res['busy_before']:.0f} % (load {loadavg()})")
        if res["busy_before"] < 20 or time.monotonic() >= deadline:
            break
    t_start = time.monotonic()
    procs = Procs(args.server)
    # Ctrl-C or SIGTERM: stop what we started (finally below), then exit.
    signal.signal(signal.SIGTERM, interrupted)
    try:
        with tempfile.TemporaryDirectory(prefix="handoff-cadence-") as tmp:
            for name in PHASES:
                if name not in only:
                    continue
                d = args.naive_duration if name in ("direct", "naive") else args.duration
                log(f"phase {name}: {d:g} s of load" + (
                    f", a restart every {args.interval:g} s" if name in ("reloads", "naive")
                    else ""))
                p = res["phases"][name] = run_phase(name, args, procs, tmp)
                o = p["open"] or {}
                log(f"  {p['closed']['tool']}: {p['closed']['complete']} requests, "
                    f"{p['closed']['errors']} failed ({fails(p['closed']['fail'])}), p99.9 "
                    f"{ms(p['closed']['latency_ms']['p999'])} ms; open loop: {o.get('ok')} ok, "
                    f"failed {fails(o.get('fail') or {})}, p99.9 "
                    f"{ms((o.get('latency_ms') or {}).get('p999'))} ms, slow connects "
                    f"{o.get('slow_connects')}")
                time.sleep(2.0)
    except KeyboardInterrupt:
        log("interrupted: stopping everything started here")
        procs.cleanup()
        sys.exit(130)
    finally:
        procs.cleanup()
    res["load_after"] = loadavg()
    res["busy_after"] = machine_busy(2.0)
    text = report(args, res, sysinfo(args))
    text += f"\n_Total benchmark time: {time.monotonic() - t_start:.0f} s._\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        log(f"written to {os.path.relpath(args.out, os.getcwd())}")


if __name__ == "__main__":
    main()
