#!/usr/bin/env python3
"""handoff's footprint at fleet density: 50 handoffs on one host, each with a small child.

  fleet     --count (50) handoffs, each `handoff --control PRIVATE --log-format json --listen
            127.0.0.1:0 -- http-server` (the bench child, ready at once), all running at once.
            Per handoff process (not its child): PSS and RSS from /proc/PID/smaps_rollup (Pss,
            Pss_Anon, Pss_File, Rss), CPU while idle over --idle (10) s, fds, threads; mean
            and max over the fleet; and where the PSS goes (/proc/PID/smaps, by mapping).
  starter   the same with Server::Starter: --count `start_server --port=127.0.0.1:0 --
            http-server` (its own figure: the start_server process, not its worker).
  features  one handoff per variant, three of each, all at once: defaults, --control none,
            --metrics 127.0.0.1:0 (idle, then after one scrape), --watch FILE, both, --adopt
            off, defaults after 20 reloads: what each feature costs when it is on, and that it
            costs nothing when it is off.

PSS divides each shared page among the processes that map it: in a fleet, handoff's own code
is shared by all of them, so the per-instance PSS is its private memory plus 1/count of the
code. A lone handoff (the feature variants run alone... three at a time) pays for more of its
code; RSS counts every page mapped, shared or not.

Run it through bench/fleet.sh, which builds the binaries first. Python 3.8+, standard library
only. Everything listens on 127.0.0.1 (port 0), every control socket is private (in a
temporary directory), and every process started here is killed by pid in a `finally` block.
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
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter

from benchlib import interrupted, loadavg, log, yes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
ROLLUP = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Private_Clean", "Private_Dirty",
          "Shared_Clean")


def clean_env(extra=None):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LISTEN_", "NOTIFY_SOCKET", "SERVER_STARTER_", "HANDOFF_"))}
    env.update(extra or {})
    return env


# ------------------------------------------------------------------ processes
class Procs:
    """Everything started here, so that cleanup() can kill it by pid."""

    def __init__(self, server):
        self.popens = []
        self.pids = set()  # the supervisors' children, learned from their logs
        self.server_name = os.path.basename(server).encode()

    def start(self, cmd, **kw):
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(cmd, **kw)
        self.popens.append(p)
        return p

    def stop(self, popens):
        for p in popens:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in popens:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def cleanup(self):
        self.stop(self.popens)
        for pid in self.pids:  # only if it still is our server (pids get reused)
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if self.server_name in f.read():
                        os.kill(pid, signal.SIGKILL)
                        log(f"killed leftover child {pid}")
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                pass


class Instance:
    """One supervisor (handoff or start_server) whose stderr goes to a file in `tmp`."""

    def __init__(self, procs, cmd, tmp, tag, env=None):
        self.cmd, self.tag, self.procs = cmd, tag, procs
        self.log_path = os.path.join(tmp, f"{tag}.log")
        with open(self.log_path, "wb") as f:
            self.p = procs.start(cmd, stdout=subprocess.DEVNULL, stderr=f,
                                 env=clean_env(env))
        self.pid = self.p.pid
        self.child = None

    def lines(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace").splitlines()

    def events(self):
        out = []
        for line in self.lines():
            cut = line.find('{"timestamp"')
            if cut < 0:
                continue
            try:
                out.append(json.loads(line[cut:]))
            except ValueError:
                pass
        return out

    def wait(self, pred, timeout, what):
        """Poll the log until pred(lines) gives something true."""
        deadline = time.monotonic() + timeout
        while True:
            v = pred(self)
            if v:
                return v
            if self.p.poll() is not None:
                raise RuntimeError(f"{self.tag} exited ({self.p.returncode}) waiting for {what}: "
                                   f"{self.lines()[-3:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.tag}: no {what} within {timeout} s: "
                                   f"{self.lines()[-3:]}")
            time.sleep(0.02)


def handoff_ready(inst):
    evs = inst.events()
    sp = [e for e in evs if e.get("event") == "spawned"]
    for e in sp:
        inst.procs.pids.add(e["pid"])
    rd = [e for e in evs if e.get("event") == "ready"]
    if rd:
        inst.child = rd[-1]["pid"]
        return evs
    return None


STARTER_WORKER = re.compile(r"^starting new worker (\d+)")


def starter_ready(inst):
    for line in inst.lines():
        m = STARTER_WORKER.match(line)
        if m:
            inst.child = int(m.group(1))
            inst.procs.pids.add(inst.child)
            return True
    return False


def start_handoff(procs, args, tmp, tag, extra=(), env=None):
    cmd = [args.handoff, "--control", os.path.join(tmp, f"{tag}.sock"), "--log-format", "json",
           "--listen", "127.0.0.1:0", *extra, "--", args.server]
    inst = Instance(procs, cmd, tmp, tag, env)
    inst.kind = "handoff"
    return inst


def start_starter(procs, args, tmp, tag):
    cmd = [args.start_server, "--port=127.0.0.1:0", "--signal-on-hup=TERM",
           "--signal-on-term=TERM", "--", args.server]
    inst = Instance(procs, cmd, tmp, tag)
    inst.kind = "starter"
    return inst


# ------------------------------------------------------------------ measurements
def rollup(pid):
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ROLLUP:
                out[k] = int(v.split()[0])  # kB
    return out


def status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "VmSize", "Threads", "voluntary_ctxt_switches",
                     "nonvoluntary_ctxt_switches"):
                out[k] = int(v.split()[0])
    return out


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu(pid):
    """(utime+stime s, on-CPU ns over all threads (schedstat), voluntary switches summed over
    all threads: each is a wake-up)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ns = wakes = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns += int(f.read().split()[0])
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                wakes += next(int(ln.split()[1]) for ln in f
                              if ln.startswith("voluntary_ctxt_switches"))
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            pass
    return (int(fields[11]) + int(fields[12])) / CLK_TCK, ns, wakes


def threads(pid):
    names = Counter()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                names[f.read().strip()] += 1
        except (FileNotFoundError, ProcessLookupError):
            pass
    return names


CATEGORIES = ("program file (code, read-only data)",
              "program's written data (relocations, .data, .bss)",
              "shared libraries' code (libc, libm, ...)",
              "shared libraries' written data",
              "[heap] (malloc's main arena)",
              "malloc arenas of other threads",
              "main thread's stack",
              "other threads' stacks (and signal stacks)",
              "other anonymous memory (mmap'd allocations)",
              "kernel-provided ([vdso], [vvar])")


def breakdown(pid, program):
    """kB of Pss and Rss per category of mapping, from /proc/PID/smaps."""
    maps = []
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                p = line.split(None, 5)
                a, b = (int(x, 16) for x in p[0].split("-"))
                maps.append({"size": (b - a) // 1024, "perm": p[1],
                             "path": p[5].strip() if len(p) > 5 else "", "Pss": 0, "Rss": 0,
                             "Anonymous": 0})
            else:
                k, _, v = line.partition(":")
                if k in ("Pss", "Rss", "Anonymous") and maps:
                    maps[-1][k] = int(v.split()[0])
    out = {c: {"Pss": 0, "Rss": 0} for c in CATEGORIES}
    real = os.path.realpath(program)
    for i, m in enumerate(maps):
        path, perm = m["path"], m["perm"]
        prev = maps[i - 1] if i else None
        nxt = maps[i + 1] if i + 1 < len(maps) else None
        anon_prev_guard = (prev is not None and prev["path"] == "" and prev["perm"] == "---p"
                           and prev["size"] <= 64)
        if path.startswith("/"):
            mine = os.path.realpath(path) == real
            written = m["Anonymous"] > 0  # private copies of file pages: relocated or .data
            c = CATEGORIES[(0 if mine else 2) + (1 if written else 0)]
        elif path == "[heap]":
            c = CATEGORIES[4]
        elif path == "[stack]":
            c = CATEGORIES[6]
        elif path.startswith("[v"):
            c = CATEGORIES[9]
        elif path:
            c = CATEGORIES[8]
        elif perm == "rw-p" and nxt is not None and nxt["path"] == "" \
                and nxt["perm"] == "---p" and (m["size"] + nxt["size"]) % 65536 == 0:
            c = CATEGORIES[5]  # glibc reserves 64 MiB per arena, makes the used part rw
        elif perm == "rw-p" and anon_prev_guard:
            c = CATEGORIES[7]  # a guard page below: a thread's stack or a signal stack
        else:
            c = CATEGORIES[8]
        out[c]["Pss"] += m["Pss"]
        out[c]["Rss"] += m["Rss"]
    return out


def measure(insts, idle_s):
    """Memory, fds, threads of each instance's own process; then CPU over idle_s, all at
    once."""
    rows = []
    for inst in insts:
        r = {"pid": inst.pid, **rollup(inst.pid), **status(inst.pid), "fds": fds(inst.pid),
             "thread_names": threads(inst.pid)}
        if inst.child:
            try:
                r["child_pss"] = rollup(inst.child)["Pss"]
            except (FileNotFoundError, ProcessLookupError):
                pass
        rows.append(r)
    a, t0 = [cpu(i.pid) for i in insts], time.monotonic()
    time.sleep(idle_s)
    b, t1 = [cpu(i.pid) for i in insts], time.monotonic()
    for r, x, y in zip(rows, a, b):
        r["cpu_ticks_pct"] = (y[0] - x[0]) / (t1 - t0) * 100
        r["cpu_ns_pct"] = (y[1] - x[1]) / 1e9 / (t1 - t0) * 100
        r["wakeups_s"] = (y[2] - x[2]) / (t1 - t0)
    return rows


def summary(rows, key):
    vs = [r[key] for r in rows if r.get(key) is not None]
    if not vs:
        return {"mean": float("nan"), "max": float("nan"), "min": float("nan"),
                "median": float("nan")}
    return {"mean": statistics.fmean(vs), "max": max(vs), "min": min(vs),
            "median": statistics.median(vs)}


def mean_breakdown(insts, program):
    tot = {c: {"Pss": 0.0, "Rss": 0.0} for c in CATEGORIES}
    for inst in insts:
        for c, v in breakdown(inst.pid, program).items():
            tot[c]["Pss"] += v["Pss"] / len(insts)
            tot[c]["Rss"] += v["Rss"] / len(insts)
    return tot


def start_all(insts, ready, timeout=30):
    for inst in insts:
        inst.wait(ready, timeout, "readiness")


# ------------------------------------------------------------------ phases
def fleet_phase(procs, args, tmp, kind, n):
    log(f"{kind}: starting {n} instance(s)")
    if kind == "handoff":
        insts = [start_handoff(procs, args, tmp, f"h{n}-{i}") for i in range(n)]
        start_all(insts, handoff_ready)
    else:
        insts = [start_starter(procs, args, tmp, f"s{n}-{i}") for i in range(n)]
        start_all(insts, starter_ready)
    program = os.readlink(f"/proc/{insts[0].pid}/exe")  # start_server: the perl interpreter
    time.sleep(args.settle)
    log(f"{kind}: measuring {n} process(es), idle CPU over {args.idle:g} s")
    rows = measure(insts, args.idle)
    res = {"rows": rows, "cmd": shlex.join(insts[0].cmd), "program": program,
           "breakdown": mean_breakdown(insts, program),
           "threads": sum((r["thread_names"] for r in rows), Counter())}
    procs.stop([i.p for i in insts])
    return res


def features_phase(procs, args, tmp):
    watched = os.path.join(tmp, "watched.conf")
    with open(watched, "w") as f:
        f.write("x = 1\n")
    variants = [
        ("defaults", []),
        ("--control none", None),  # built below: it replaces the private control path
        ("--metrics 127.0.0.1:0", ["--metrics", "127.0.0.1:0"]),
        ("--metrics, after one scrape of /metrics", ["--metrics", "127.0.0.1:0"]),
        ("--watch FILE", ["--watch", watched]),
        ("--metrics and --watch", ["--metrics", "127.0.0.1:0", "--watch", watched]),
        ("--adopt off", ["--adopt", "off"]),
        *((f"defaults, after {n} reloads", []) for n in args.reloads),
    ]
    groups = []
    for vi, (name, extra) in enumerate(variants):
        insts = []
        for k in range(args.per_variant):
            tag = f"f{vi}-{k}"
            if extra is None:
                cmd = [args.handoff, "--control", "none", "--log-format", "json", "--listen",
                       "127.0.0.1:0", "--", args.server]
                inst = Instance(procs, cmd, tmp, tag)
            else:
                inst = start_handoff(procs, args, tmp, tag, extra)
            insts.append(inst)
        groups.append((name, insts))
    log(f"features: {len(variants)} variants × {args.per_variant} handoffs")
    for _, insts in groups:
        start_all(insts, handoff_ready)
    for name, insts in groups:
        if "scrape" in name:
            for inst in insts:
                ev = next(e for e in inst.events() if e.get("event") == "metrics")
                with urllib.request.urlopen(f"http://{ev['addr']}/metrics", timeout=10) as r:
                    r.read()
        if "reloads" in name:
            count = int(name.split("after ")[1].split()[0])
            for inst in insts:
                for i in range(count):
                    n0 = sum(e.get("event") == "reload_finished" for e in inst.events())
                    os.kill(inst.pid, signal.SIGHUP)
                    inst.wait(lambda x, n0=n0: sum(e.get("event") == "reload_finished"
                                                   for e in x.events()) > n0, 30, "a reload")
                inst.wait(lambda x: sum(e.get("event") == "drained" for e in x.events())
                          >= count, 30, "the last drain")
                handoff_ready(inst)  # the serving child's pid
    time.sleep(args.settle)
    all_insts = [i for _, g in groups for i in g]
    log(f"features: measuring, idle CPU over {args.idle:g} s")
    rows = measure(all_insts, args.idle)
    out = []
    for name, insts in groups:
        rs = rows[:len(insts)]
        rows = rows[len(insts):]
        out.append({"name": name, "cmd": shlex.join(insts[0].cmd).replace(tmp, "$TMP"),
                    "rows": rs, "threads": rs[0]["thread_names"]})
    procs.stop([i.p for i in all_insts])
    return out


# ------------------------------------------------------------------ report
def sysinfo(args):
    def run(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
        except OSError:
            return "?"
    with open("/proc/cpuinfo") as f:
        cpu_name = next((ln.split(":", 1)[1].strip() for ln in f
                         if ln.startswith("model name")), "?")
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "kernel": platform.release(), "nproc": os.cpu_count(), "cpu": cpu_name,
            "commit": run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]) or "?",
            "python": platform.python_version(), "handoff": run([args.handoff, "--version"]),
            "binary_kib": os.path.getsize(args.handoff) / 1024,
            "starter": run(["dpkg-query", "-W", "-f", "${Version}", "libserver-starter-perl"])
            or "?", "perl": run(["perl", "-e", "print $^V"]) or "?"}


def mib(kb, nd=2):
    return "–" if kb is None or (isinstance(kb, float) and math.isnan(kb)) \
        else f"{kb / 1024:.{nd}f}"


def report(args, res, info):
    L = []
    add = L.append
    add("# Footprint at fleet density\n")
    add(f"{args.count} supervisors on one host, each with the bench child "
        f"(`examples/rust/http_server.rs`, ready at once) on its own port 0, all running at "
        f"once. Produced by `bench/fleet.sh` (`bench/fleet.py`).\n")
    add(f"- date: {info['date']}  ")
    add(f"- command: `{args.command}`"
        + (" (**quick mode: a smoke test, not a result**)" if args.quick else "") + "  ")
    add(f"- machine: Linux {info['kernel']}, nproc {info['nproc']}, CPU `{info['cpu']}`  ")
    add(f"- {info['handoff']} (binary {info['binary_kib']:.0f} KiB); repository commit "
        f"{info['commit']}; Server::Starter {info['starter']} (Debian libserver-starter-perl, "
        f"Perl {info['perl']}); Python {info['python']}  ")
    add(f"- load average {res['load_before']} at the start, {res['load_after']} at the end "
        f"(idle CPU is the process's own: utime+stime and schedstat, not the machine's)\n")
    add("Per supervisor process only (not its child). PSS shares each page among the processes "
        "mapping it, so in a fleet the program's code costs each instance 1/count of it; RSS "
        "counts every page mapped. MiB = 1024 KiB.\n")
    h, s = res.get("handoff"), res.get("starter")
    ha, sa = res.get("handoff_alone"), res.get("starter_alone")
    fts = res.get("features")
    f = {x["name"]: x for x in fts or []}

    def fm(name, key):
        return summary(f[name]["rows"], key)["mean"]
    add("## Targets\n")
    add("| Target | Measured | |")
    add("|---|---|---|")
    if h:
        pss = summary(h["rows"], "Pss")
        add(f"| PSS under 2 MiB per handoff in a fleet of {args.count} (mean / max) | "
            f"{mib(pss['mean'])} / {mib(pss['max'])} MiB"
            + (f" (a handoff alone on the host: {mib(ha['rows'][0]['Pss'])} MiB, its code not "
               f"shared with another)" if ha else "") + f" | {yes(pss['max'] < 2048)} |")
    if "defaults" in f and "--metrics and --watch" in f:
        on = {k: (fm(k, "Pss_Anon") - fm("defaults", "Pss_Anon"),
                  fm(k, "Threads") - fm("defaults", "Threads"),
                  fm(k, "fds") - fm("defaults", "fds"),
                  fm(k, "wakeups_s") - fm("defaults", "wakeups_s"))
              for k in ("--metrics 127.0.0.1:0", "--watch FILE")}
        free = all(v[0] > -32 and v[1] >= 0 and v[2] >= 0 for v in on.values())
        add(f"| --metrics and --watch cost nothing when off: the defaults have none of their "
            f"threads, sockets or memory (what turning each on adds: Pss_Anon KiB, threads, "
            f"fds, idle wake-ups/s; off is never dearer than on) | --metrics "
            + ", ".join(f"{v:+.0f}" for v in on["--metrics 127.0.0.1:0"]) + "; --watch "
            + ", ".join(f"{v:+.0f}" for v in on["--watch FILE"])
            + f" | {yes(free)} |")
    add("")
    add("## Per instance: mean (max) over the fleet\n")
    add("| Supervisor | PSS | Pss_Anon | Pss_File | RSS | VmHWM | idle CPU (schedstat) | "
        "wake-ups | fds | threads |")
    add("|---|---|---|---|---|---|---|---|---|---|")
    for label, x in (("handoff", h), ("Server::Starter (start_server)", s),
                     ("handoff alone on the host", ha), ("start_server alone on the host", sa)):
        if not x:
            continue
        rows = x["rows"]

        def cell(key, fmt=mib):
            v = summary(rows, key)
            if len(rows) == 1:
                return fmt(v["mean"])
            return f"{fmt(v['mean'])} ({fmt(v['max'])})"
        add(f"| {label} × {len(rows)} | {cell('Pss')} MiB | {cell('Pss_Anon')} MiB | "
            f"{cell('Pss_File')} MiB | {cell('Rss')} MiB | {cell('VmHWM')} MiB | "
            f"{cell('cpu_ns_pct', lambda v: f'{v:.4f}')} % | "
            f"{cell('wakeups_s', lambda v: f'{v:.2f}')}/s | "
            f"{cell('fds', lambda v: f'{v:.0f}')} | {cell('Threads', lambda v: f'{v:.0f}')} |")
    add("")
    for label, x in (("handoff", h), ("Server::Starter", s)):
        if not x:
            continue
        tk = summary(x["rows"], "cpu_ticks_pct")
        cp = summary(x["rows"], "child_pss")
        add(f"- {label}: `{x['cmd']}`; idle CPU from utime+stime ({1000 / CLK_TCK:.0f} ms "
            f"ticks): mean {tk['mean']:.3f} %, max {tk['max']:.3f} % of one core; threads: "
            f"{', '.join(f'{k} ×{v}' for k, v in sorted(x['threads'].items()))}; its child "
            f"(http-server) for comparison: PSS {mib(cp['mean'])} MiB mean")
    add("")
    for label, x in ((f"a handoff in the fleet of {args.count}", h),
                     ("a handoff alone on the host", ha),
                     (f"a start_server in the fleet of {args.count} (program: "
                      + (s or {}).get("program", "?") + ")", s)):
        if not x:
            continue
        add(f"### Where the PSS of {label} goes (mean, KiB)\n")
        add("| Mappings | PSS | RSS |")
        add("|---|---|---|")
        tot_p = tot_r = 0.0
        for c in CATEGORIES:
            v = x["breakdown"][c]
            tot_p += v["Pss"]
            tot_r += v["Rss"]
            if v["Rss"] or v["Pss"]:
                add(f"| {c} | {v['Pss']:.0f} | {v['Rss']:.0f} |")
        add(f"| **total** | **{tot_p:.0f}** | **{tot_r:.0f}** |")
        add("")
    fts = res.get("features")
    if fts:
        add(f"## Features on and off ({args.per_variant} handoffs per variant, all variants at "
            f"once; mean)\n")
        add("Pss_Anon (the process's own memory) does not depend on how many processes share "
            "the code; PSS does (here the program's pages are shared by all the variants "
            "running at once); RSS counts the program's pages that happen to be mapped (the kernel "
            "maps up to 64 KiB of cached file around each page touched), so its differences "
            "are noise of that order. Δ = the variant minus `defaults`.\n")
        add("| Variant | Pss_Anon KiB | Δ Pss_Anon | RSS KiB | PSS KiB | threads | fds | "
            "idle CPU % (schedstat) | wake-ups/s |")
        add("|---|---|---|---|---|---|---|---|---|")
        base = fts[0]["rows"]
        for ft in fts:
            rows = ft["rows"]

            def m(key):
                return summary(rows, key)["mean"]

            def dm(key):
                return m(key) - summary(base, key)["mean"]
            add(f"| {ft['name']} | {m('Pss_Anon'):.0f} | {dm('Pss_Anon'):+.0f} | "
                f"{m('Rss'):.0f} | {m('Pss'):.0f} | {m('Threads'):.0f} | {m('fds'):.0f} | "
                f"{m('cpu_ns_pct'):.4f} | {m('wakeups_s'):.2f} |")
        add("")
        for ft in fts:
            add(f"- {ft['name']}: `{ft['cmd']}`; threads "
                f"{', '.join(f'{k} ×{v}' for k, v in sorted(ft['threads'].items()))}")
        add("")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 10 instances, 3 s idle window, 1 per variant")
    ap.add_argument("--count", type=int, help="instances per fleet (default 50, 10 with --quick)")
    ap.add_argument("--idle", type=float, help="idle-CPU window, s (default 10, 3 with --quick)")
    ap.add_argument("--per-variant", type=int, help="handoffs per feature variant (default 3)")
    ap.add_argument("--reloads", type=int, action="append",
                    help="a variant measured after this many reloads (repeatable; default "
                    "20 and 200: a step that stays is not a leak, one that grows is)")
    ap.add_argument("--only", action="append",
                    choices=["alone", "handoff", "starter", "features"],
                    help="run only these parts (repeatable)")
    ap.add_argument("--handoff", default=os.path.join(ROOT, "target/release/handoff"))
    ap.add_argument("--server", default=os.path.join(ROOT, "target/release/examples/http-server"))
    ap.add_argument("--start-server", default="start_server")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results-fleet.md"),
                    help="markdown results (default bench/results-fleet.md)")
    ap.add_argument("--command", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.command = args.command or shlex.join(["bench/fleet.py", *sys.argv[1:]])
    q = args.quick
    args.count = args.count or (10 if q else 50)
    args.idle = args.idle or (3.0 if q else 10.0)
    args.per_variant = args.per_variant or (1 if q else 3)
    args.settle = 1.0 if q else 2.0
    args.reloads = args.reloads or [20, 200]
    only = args.only or ["alone", "handoff", "starter", "features"]
    args.start_server_path = subprocess.run(["sh", "-c", f"command -v {args.start_server}"],
                                            capture_output=True, text=True).stdout.strip()
    if "starter" in only and not args.start_server_path:
        log("start_server not found (apt-get install -y libserver-starter-perl): the "
            "Server::Starter comparison is skipped")
        only.remove("starter")

    res = {"load_before": loadavg()}
    t_start = time.monotonic()
    procs = Procs(args.server)
    signal.signal(signal.SIGTERM, interrupted)
    try:
        with tempfile.TemporaryDirectory(prefix="handoff-fleet-") as tmp:
            if "alone" in only:  # one of each, nothing else of the same program running
                res["handoff_alone"] = fleet_phase(procs, args, tmp, "handoff", 1)
                if args.start_server_path:
                    res["starter_alone"] = fleet_phase(procs, args, tmp, "starter", 1)
            if "handoff" in only:
                res["handoff"] = fleet_phase(procs, args, tmp, "handoff", args.count)
            if "starter" in only:
                res["starter"] = fleet_phase(procs, args, tmp, "starter", args.count)
            if "features" in only:
                res["features"] = features_phase(procs, args, tmp)
    except KeyboardInterrupt:
        log("interrupted: stopping everything started here")
        procs.cleanup()
        sys.exit(130)
    finally:
        procs.cleanup()
    res["load_after"] = loadavg()
    text = report(args, res, sysinfo(args))
    text += f"\n_Total benchmark time: {time.monotonic() - t_start:.0f} s._\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        log(f"written to {os.path.relpath(args.out, os.getcwd())}")


if __name__ == "__main__":
    main()
