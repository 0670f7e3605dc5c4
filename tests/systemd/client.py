#!/usr/bin/env python3
"""HTTP client for the systemd checks; runs inside the container, loopback only.

  client.py get PATH [FIELD...]     one GET; prints the JSON body, or the named fields
                                    (space-separated); exit 1 on any failure
  client.py slow N MS OUT           N concurrent GET /slow?ms=MS; writes one JSON result per
                                    line to OUT when all are done
  client.py load STOPFILE MAXSEC    load until STOPFILE exists (at most MAXSEC seconds); prints
                                    a JSON summary: ok, failed, failures, refused (connections
                                    refused: ECONNREFUSED), keepalive_retries, gens, pids,
                                    latency_ms (p50, p99, max of the requests that succeeded)

Talks to the tests/fixtures/child.py server behind app.socket (127.0.0.1:8080).
"""
import http.client
import json
import os
import sys
import threading
import time

HOST, PORT = "127.0.0.1", 8080


def get_once(path, timeout=10.0):
    c = http.client.HTTPConnection(HOST, PORT, timeout=timeout)
    try:
        c.request("GET", path, headers={"Connection": "close"})
        r = c.getresponse()
        body = r.read()
        return r.status, body
    finally:
        c.close()


def cmd_get(path, fields):
    try:
        status, body = get_once(path)
    except Exception as e:  # noqa: BLE001 - report any failure
        print(f"client: GET {path}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"client: GET {path}: HTTP {status}: {body[:200]!r}", file=sys.stderr)
        return 1
    if not fields:
        print(body.decode())
        return 0
    d = json.loads(body)
    out = []
    for f in fields:
        v = d.get(f, "<absent>")
        out.append(v if isinstance(v, str) else json.dumps(v))
    print(" ".join(out))
    return 0


def cmd_slow(n, ms, out):
    results = [None] * n

    def one(i):
        t0 = time.monotonic()
        try:
            status, body = get_once(f"/slow?ms={ms}", timeout=30)
            r = {"status": status, "ms": round((time.monotonic() - t0) * 1000)}
            try:
                d = json.loads(body)
                r.update(pid=d.get("pid"), gen=d.get("gen"))
            except ValueError:
                r["body"] = body[:100].decode(errors="replace")
        except Exception as e:  # noqa: BLE001
            r = {"error": f"{type(e).__name__}: {e}", "ms": round((time.monotonic() - t0) * 1000)}
        results[i] = r

    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    with open(out + ".tmp", "w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    os.rename(out + ".tmp", out)
    return 0


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = 0
        self.failures = []
        self.retries = 0
        self.gens = set()
        self.pids = set()
        self.refused = 0
        self.latencies = []

    def record(self, status, body, err=None, ms=None):
        with self.lock:
            if err is not None and "ConnectionRefusedError" in err:
                self.refused += 1
            if err is None and status == 200:
                self.ok += 1
                if ms is not None:
                    self.latencies.append(ms)
                try:
                    d = json.loads(body)
                    self.gens.add(d.get("gen"))
                    self.pids.add(d.get("pid"))
                except ValueError:
                    pass
            else:
                self.failures.append(err or f"HTTP {status}")


def fresh_connection_client(tally, done):
    """A new connection for every request: no retry of any kind."""
    while not done():
        t0 = time.monotonic()
        try:
            status, body = get_once("/", timeout=10)
            tally.record(status, body, ms=(time.monotonic() - t0) * 1000)
        except Exception as e:  # noqa: BLE001
            tally.record(None, None, f"fresh: {type(e).__name__}: {e}")


def keepalive_client(tally, done):
    """One persistent connection, reconnecting when the server says Connection: close.

    Like every HTTP client, it retries a request once when a *reused* connection turns out
    to be closed before any byte of the response came back (the server closed it while idle);
    such retries are counted, not hidden. Every other error is a failure.
    """
    conn, reused = None, False
    while not done():
        if conn is None:
            conn, reused = http.client.HTTPConnection(HOST, PORT, timeout=10), False
        t0 = time.monotonic()
        try:
            conn.request("GET", "/")
            r = conn.getresponse()
            body = r.read()
            tally.record(r.status, body, ms=(time.monotonic() - t0) * 1000)
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
                continue  # retry on a fresh connection (next loop turn)
            tally.record(None, None, f"keepalive: {type(e).__name__}: {e}")
        except Exception as e:  # noqa: BLE001
            conn.close()
            conn = None
            tally.record(None, None, f"keepalive: {type(e).__name__}: {e}")
    if conn is not None:
        conn.close()


def cmd_load(stopfile, maxsec):
    tally = Tally()
    deadline = time.monotonic() + maxsec

    def done():
        return os.path.exists(stopfile) or time.monotonic() > deadline

    ts = [threading.Thread(target=f, args=(tally, done))
          for f in (fresh_connection_client, fresh_connection_client,
                    keepalive_client, keepalive_client)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    lat = sorted(tally.latencies) or [0.0]

    def pct(p):
        return round(lat[min(len(lat) - 1, int(len(lat) * p))], 1)

    print(json.dumps({
        "ok": tally.ok,
        "failed": len(tally.failures),
        "failures": tally.failures[:10],
        "refused": tally.refused,
        "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": round(lat[-1], 1)},
        "keepalive_retries": tally.retries,
        "gens": sorted(g for g in tally.gens if g is not None),
        "pids": sorted(p for p in tally.pids if p is not None),
        "seconds": round(time.monotonic() - t0, 2),
        "hit_time_limit": not os.path.exists(stopfile),
    }))
    return 0


def main(argv):
    if len(argv) >= 2 and argv[0] == "get":
        return cmd_get(argv[1], argv[2:])
    if len(argv) == 4 and argv[0] == "slow":
        return cmd_slow(int(argv[1]), int(argv[2]), argv[3])
    if len(argv) == 3 and argv[0] == "load":
        return cmd_load(argv[1], float(argv[2]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
