#!/usr/bin/env python3
"""Host-side check: README.md's "Under systemd" section shows the units this suite tests.

The section must point at packaging/systemd/app.service and app.socket (the files the suite
boots unmodified), and every directive in its ```ini blocks must be in one of them, under the
same [Section] (comments and blank lines aside): the README may abridge the units, never
diverge from them. Prints PASS/FAIL lines; exit status 1 on a failure.
"""
import os
import re
import sys

repo = sys.argv[1]
readme = open(os.path.join(repo, "README.md"), encoding="utf-8").read()
fails = 0


def out(ok, msg):
    global fails
    print(("PASS" if ok else "FAIL") + " [readme] " + msg)
    fails += not ok


def parse(text):
    """(section, directive line) pairs; the section is None before the first header."""
    sec, pairs = None, []
    for ln in text.splitlines():
        ln = ln.strip()
        if not ln or ln.startswith(("#", ";")):
            continue
        if ln.startswith("[") and ln.endswith("]"):
            sec = ln
            continue
        pairs.append((sec, re.sub(r"\s*=\s*", "=", ln, count=1)))
    return pairs


m = re.search(r"^## Under systemd[^\n]*\n(.*?)(?=^## |\Z)", readme, re.S | re.M)
section = m.group(1) if m else ""
out(bool(m), 'README.md has a "## Under systemd" section')
for name in ("app.service", "app.socket"):
    out(f"packaging/systemd/{name}" in section, f"the section points at packaging/systemd/{name}")
shipped = set()
for name in ("app.service", "app.socket"):
    with open(os.path.join(repo, "packaging/systemd", name), encoding="utf-8") as f:
        shipped.update(parse(f.read()))
blocks = re.findall(r"^```ini\n(.*?)^```", section, re.S | re.M)
out(bool(blocks), f"the section shows unit file contents ({len(blocks)} ini block(s))")
for i, block in enumerate(blocks, 1):
    missing = [f"{s or '(no section)'} {d}" for s, d in parse(block) if (s, d) not in shipped]
    out(not missing, f"every directive of ini block {i} is in packaging/systemd/"
        + ("" if not missing else "; not there: " + ", ".join(missing)))
sys.exit(1 if fails else 0)
