"""Small helpers the benchmark scripts share (standard library only). Each script stays
runnable on its own from any directory: Python puts the script's directory, bench/, first on
sys.path."""
import sys
import time


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def proc_status(pid, key):
    """A kB field of /proc/PID/status (VmRSS, VmHWM...), or None."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])  # kB
    return None


def machine_busy(seconds):
    """How busy all CPUs were over `seconds`, in % (from /proc/stat)."""
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


def yes(ok):
    return "**met**" if ok else "**MISSED**"


def fails(c):
    """Failure counts by kind, as 'refused 3, reset 2' (or 'none')."""
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items()) if v) or "none"


def interrupted(signum, frame):
    """A SIGTERM handler: unwind like Ctrl-C, so that every `finally` cleans up."""
    raise KeyboardInterrupt
