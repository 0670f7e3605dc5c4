#!/usr/bin/env python3
"""Reloads and `handoff upgrade`s interleaved under load (Python 3 standard library only).

    python3 bench/upgrade_bench.py --handoff target/release/handoff [--reloads 20] [--upgrades 5]

Runs handoff on 127.0.0.1:0 with the test fixture (tests/fixtures/child.py) as the server,
two keep-alive clients and two new-connection-per-request clients on loopback, and
interleaves `handoff reload` and `handoff upgrade --binary <a fresh copy of the binary>`
(one upgrade after every reloads/upgrades reloads). Reports: failed requests (by kind),
each upgrade's duration (the `handoff upgrade` client's wall time: request sent → the new
image serves the control socket with the same pid and generations, checked by the client),
each reload's duration, and handoff's RSS and fd count before and after. Writes a JSON
summary to stdout and bench/upgrade-results-latest.md. Every process it starts is stopped
(`handoff stop`, then SIGKILL by pid) at the end.
"""
import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def proc_status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return line.split()[1]
    return None


def rss_kib(pid):
    return int(proc_status(pid, "VmRSS") or 0)


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = 0
        self.failures = []
        self.retries = 0
        self.lat = []

    def record(self, err=None, ms=None):
        with self.lock:
            if err is None:
                self.ok += 1
                self.lat.append(ms)
            else:
                self.failures.append(err)


def fresh_client(port, tally, stop):
    while not stop.is_set():
        t0 = time.monotonic()
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            c.request("GET", "/", headers={"Connection": "close"})
            r = c.getresponse()
            r.read()
            tally.record(None if r.status == 200 else f"HTTP {r.status}",
                         (time.monotonic() - t0) * 1000)
        except Exception as e:  # noqa: BLE001
            tally.record(f"fresh: {type(e).__name__}: {e}")
        finally:
            c.close()


def keepalive_client(port, tally, stop):
    """Retries once a request on a *reused* connection closed before any byte came back
    (what every HTTP client does; counted as a retry, not hidden)."""
    conn, reused = None, False
    while not stop.is_set():
        if conn is None:
            conn, reused = http.client.HTTPConnection("127.0.0.1", port, timeout=10), False
        t0 = time.monotonic()
        try:
            conn.request("GET", "/")
            r = conn.getresponse()
            r.read()
            tally.record(None if r.status == 200 else f"HTTP {r.status}",
                         (time.monotonic() - t0) * 1000)
            if r.will_close:
                conn.close()
                conn = None
            else:
                reused = True
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
            conn.close()
            conn = None
            if reused:
                with tally.lock:
                    tally.retries += 1
                continue
            tally.record(f"keepalive: {type(e).__name__}: {e}")
        except Exception as e:  # noqa: BLE001
            conn.close()
            conn = None
            tally.record(f"keepalive: {type(e).__name__}: {e}")
    if conn is not None:
        conn.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--handoff", default=os.path.join(ROOT, "target/release/handoff"))
    ap.add_argument("--reloads", type=int, default=20)
    ap.add_argument("--upgrades", type=int, default=5)
    ap.add_argument("--ready-delay", type=float, default=0.1,
                    help="the fixture's time to READY=1 (s)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/upgrade-results-latest.md"))
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="handoff-upgrade-bench.")
    # Run a copy: a concurrent build must not replace the binary halfway through.
    first = os.path.join(tmp, "v0", "handoff")
    os.makedirs(os.path.dirname(first))
    shutil.copy2(args.handoff, first)
    ctl = os.path.join(tmp, "control.sock")
    env = dict(os.environ, HANDOFF_CONTROL=ctl)
    h = subprocess.Popen(
        [first, "--log-format", "json", "--listen", "127.0.0.1:0", "--",
         sys.executable, os.path.join(ROOT, "tests/fixtures/child.py"),
         "--ready-delay", str(args.ready_delay)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True)
    port = None
    events = []

    def reader():
        nonlocal port
        for line in h.stderr:
            try:
                v = json.loads(line)
            except ValueError:
                continue
            events.append(v)
            if v.get("event") == "listening" and port is None:
                port = int(v["addr"].rsplit(":", 1)[1])

    threading.Thread(target=reader, daemon=True).start()
    stop = threading.Event()
    clients = []
    try:
        end = time.monotonic() + 20
        while not any(e.get("event") == "ready" for e in list(events)):
            if time.monotonic() > end or h.poll() is not None:
                raise SystemExit("handoff did not become ready")
            time.sleep(0.02)
        tally = Tally()
        for f in (fresh_client, fresh_client, keepalive_client, keepalive_client):
            t = threading.Thread(target=f, args=(port, tally, stop))
            t.start()
            clients.append(t)
        time.sleep(1)
        before = {"rss_kib": rss_kib(h.pid), "fds": fd_count(h.pid)}
        every = max(1, args.reloads // max(1, args.upgrades))
        reloads, upgrades, errors = [], [], []
        r = u = 0
        while r < args.reloads or u < args.upgrades:
            if u < args.upgrades and (r >= args.reloads or (r > 0 and r % every == 0 and r // every > u)):
                u += 1
                new = os.path.join(tmp, f"v{u}", "handoff")
                os.makedirs(os.path.dirname(new))
                shutil.copy2(args.handoff, new)
                t0 = time.monotonic()
                p = subprocess.run([first, "upgrade", "--binary", new], env=env,
                                   capture_output=True, text=True, timeout=120)
                upgrades.append(round((time.monotonic() - t0) * 1000, 1))
                if p.returncode != 0:
                    errors.append(f"upgrade {u}: {p.stderr.strip()}")
            else:
                r += 1
                t0 = time.monotonic()
                p = subprocess.run([first, "reload"], env=env, capture_output=True,
                                   text=True, timeout=120)
                reloads.append(round((time.monotonic() - t0) * 1000, 1))
                if p.returncode != 0:
                    errors.append(f"reload {r}: {p.stderr.strip()}")
        time.sleep(1)
        after = {"rss_kib": rss_kib(h.pid), "fds": fd_count(h.pid),
                 "exe": os.readlink(f"/proc/{h.pid}/exe")}
        stop.set()
        for t in clients:
            t.join()
        lat = sorted(tally.lat) or [0.0]
        res = {
            "requests_ok": tally.ok,
            "requests_failed": len(tally.failures),
            "failures": tally.failures[:10],
            "keepalive_retries": tally.retries,
            "latency_ms": {"p50": round(lat[len(lat) // 2], 2),
                           "p99": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2),
                           "max": round(lat[-1], 2)},
            "reloads": len(reloads),
            "reload_ms": {"median": statistics.median(reloads) if reloads else None,
                          "max": max(reloads, default=None)},
            "upgrades": len(upgrades),
            "upgrade_ms": upgrades,
            "upgrade_ms_median": statistics.median(upgrades) if upgrades else None,
            "errors": errors,
            "handoff_pid": h.pid,
            "before": before,
            "after": after,
            "loadavg": open("/proc/loadavg").read().split()[:3],
            "cpus": os.cpu_count(),
        }
        print(json.dumps(res, indent=1))
        with open(args.out, "w") as f:
            f.write("# handoff upgrade benchmark (bench/upgrade_bench.py)\n\n")
            version = subprocess.run([first, "--version"], capture_output=True,
                                     text=True).stdout.strip()
            f.write(f"Command: `python3 bench/upgrade_bench.py --handoff {args.handoff} "
                    f"--reloads {args.reloads} --upgrades {args.upgrades}` ({version}); "
                    f"{os.cpu_count()} CPUs, load average "
                    f"{' '.join(res['loadavg'])} at the end (the machine may be shared).\n\n")
            f.write("| figure | value |\n| --- | --- |\n")
            f.write(f"| requests ok / failed (2 keep-alive + 2 new-connection clients) | "
                    f"{tally.ok} / {len(tally.failures)} ({tally.retries} keep-alive retries) |\n")
            f.write(f"| client latency p50 / p99 / max | {res['latency_ms']['p50']} / "
                    f"{res['latency_ms']['p99']} / {res['latency_ms']['max']} ms |\n")
            f.write(f"| reloads, duration median / max | {len(reloads)}, "
                    f"{res['reload_ms']['median']} / {res['reload_ms']['max']} ms |\n")
            f.write(f"| upgrades, duration each (request → new image serving control) | "
                    f"{len(upgrades)}: {', '.join(str(x) for x in upgrades)} ms |\n")
            f.write(f"| handoff RSS before → after | {before['rss_kib']} → {after['rss_kib']} KiB |\n")
            f.write(f"| handoff fds before → after | {before['fds']} → {after['fds']} |\n")
            f.write(f"| errors | {len(errors)} {'; '.join(errors)} |\n")
        return 0 if not errors and not tally.failures else 1
    finally:
        stop.set()
        for t in clients:
            t.join(timeout=15)
        subprocess.run([first, "stop", "--timeout", "40s"], env=env, capture_output=True)
        if h.poll() is None:
            os.kill(h.pid, signal.SIGKILL)
            h.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
