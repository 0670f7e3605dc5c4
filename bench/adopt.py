#!/usr/bin/env python3
"""What bind adoption costs (see README "Servers that bind their own port").

1. Data path: requests/s of examples/go-unmodified binding 127.0.0.1:PORT itself, alone vs
   under handoff (its bind adopted, so it serves on handoff's socket under the seccomp
   filter). Interleaved rounds; the median of the per-round ratios.
2. Syscalls, measured inside a Python child, alone vs under handoff:
   - an unrelated syscall (os.getppid): the filter's cost only;
   - socket + bind(port 0) + close: a notified bind that handoff lets the kernel run
     (CONTINUE): the round trip through handoff's thread;
   - bind() of the held address: the adopted bind, i.e. what adoption adds to a reload
     (alone: the same bind on a free port).

Run through bench/adopt.sh, which builds what is needed. Python load clients: the ratio, not
the absolute rate, is the figure.
"""

import argparse
import http.client
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

MICRO = r"""
import json, os, socket, sys, time
port, out, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
r = {}
t = time.perf_counter_ns()
for _ in range(n):
    os.getppid()
r["getppid_ns"] = (time.perf_counter_ns() - t) / n
m = 2000
t = time.perf_counter_ns()
for _ in range(m):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.close()
r["bind_port0_us"] = (time.perf_counter_ns() - t) / m / 1e3
s = socket.socket()
t = time.perf_counter_ns()
s.bind(("127.0.0.1", port))
r["bind_held_us"] = (time.perf_counter_ns() - t) / 1e3
json.dump(r, open(out, "w"))
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_served(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"bench: nothing serves on port {port}")


def client(args):
    port, seconds = args
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    n, end = 0, time.time() + seconds
    while time.time() < end:
        c.request("GET", "/")
        r = c.getresponse()
        r.read()
        n += 1
    return n


def load(port, seconds, conns):
    with multiprocessing.Pool(conns) as pool:
        return sum(pool.map(client, [(port, seconds)] * conns)) / seconds


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def handoff_cmd(a, port, argv):
    return [a.handoff, "--log-format", "json", "--control", "none", "--restart", "never",
            "--listen", f"127.0.0.1:{port}", "--ready-after", "100ms", "--", *argv]


def data_path(a):
    ratios, alone_rates, adopted_rates = [], [], []
    for _ in range(a.rounds):
        rates = {}
        for mode in ("alone", "adopted"):
            port = free_port()
            argv = [a.server, f"127.0.0.1:{port}"]
            cmd = argv if mode == "alone" else handoff_cmd(a, port, argv)
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_served(port)
                rates[mode] = load(port, a.seconds, a.conns)
            finally:
                stop(p)
        alone_rates.append(rates["alone"])
        adopted_rates.append(rates["adopted"])
        ratios.append(rates["adopted"] / rates["alone"])
    return alone_rates, adopted_rates, ratios


def micro(a, under):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "r.json")
        port = free_port()
        argv = [sys.executable, "-c", MICRO, str(port), out, str(a.calls)]
        cmd = handoff_cmd(a, port, argv) if under else argv
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
                       timeout=300)
        with open(out) as f:
            return json.load(f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--handoff", required=True)
    ap.add_argument("--server", required=True, help="examples/go-unmodified, built")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--conns", type=int, default=2)
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--command", default="bench/adopt.sh")
    a = ap.parse_args()

    alone, adopted, ratios = data_path(a)
    micros = [(micro(a, False), micro(a, True)) for _ in range(3)]

    def med(key, i):
        return statistics.median(m[i][key] for m in micros)

    lines = [
        f"# Bind adoption cost ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"`{a.command}` on {os.cpu_count()} CPUs, Linux {os.uname().release}. "
        "Load generator, server and handoff share the machine.",
        "",
        "| figure | alone | adopted (under handoff) | ratio / delta |",
        "| --- | --- | --- | --- |",
        f"| Go net/http req/s, keep-alive, {a.conns} Python clients, median of {a.rounds} "
        f"interleaved rounds of {a.seconds:g} s | {statistics.median(alone):.0f} | "
        f"{statistics.median(adopted):.0f} | {statistics.median(ratios):.3f} "
        f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)}) |",
        f"| os.getppid() (filter only), ns/call, median of 3 | {med('getppid_ns', 0):.0f} | "
        f"{med('getppid_ns', 1):.0f} | {med('getppid_ns', 1) - med('getppid_ns', 0):+.0f} ns |",
        f"| socket+bind(port 0)+close (round trip, CONTINUE), µs | "
        f"{med('bind_port0_us', 0):.1f} | {med('bind_port0_us', 1):.1f} | "
        f"{med('bind_port0_us', 1) - med('bind_port0_us', 0):+.1f} µs |",
        f"| bind() of the held address (adopted: what a reload gains), µs | "
        f"{med('bind_held_us', 0):.0f} | {med('bind_held_us', 1):.0f} | "
        f"{med('bind_held_us', 1) - med('bind_held_us', 0):+.0f} µs |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(os.path.dirname(__file__), "results-adopt.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
