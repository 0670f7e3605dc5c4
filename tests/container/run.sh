#!/usr/bin/env bash
# tests/container/run.sh: handoff as PID 1 of a real container (podman), the way the shipped
# image runs it (packaging/docker/Dockerfile.prebuilt, same entrypoint, user, HANDOFF_CONTROL
# and HEALTHCHECK as Dockerfile).
#
# Checks: `podman exec CTR handoff status` works as the image's user with no flag; the
# healthcheck passes while serving; `podman kill --signal HUP` reloads with zero failed
# requests under load, three times; orphans are reaped (no zombie in the container);
# `podman stop` drains an in-flight request and the container exits 0.
#
# Needs root, podman and runc (.ci/container installs them) and a Debian root file system to
# import as the base image (no registry here): the real-systemd suite's cached one, or
# HANDOFF_CONTAINER_ROOTFS. Flags this kind of host needs (see ../shared/tools/podman.md):
# runc with the cgroupfs manager (crun refuses hybrid cgroups), ulimits no higher than the
# sandbox allows, host networking on loopback.
#
# Output: PASS/FAIL lines and a last line "N passed, M failed"; exit 0 only if nothing failed.
# Environment: HANDOFF_BIN (default target/debug/handoff), HANDOFF_CONTAINER_ROOTFS.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BIN="${HANDOFF_BIN:-$REPO/target/debug/handoff}"
[ -x "$BIN" ] || { echo "no handoff binary at $BIN" >&2; exit 2; }
ROOTFS="${HANDOFF_CONTAINER_ROOTFS:-$(ls -d /var/cache/handoff-systemd-test/rootfs-* 2>/dev/null | head -1)}"
[ -d "$ROOTFS" ] || { echo "no root file system to import (run .ci/systemd first, or set HANDOFF_CONTAINER_ROOTFS)" >&2; exit 2; }

P=(podman --runtime runc --cgroup-manager cgroupfs)
NAME="handoff-ct-$$"
IMAGE="localhost/handoff-example:test-$$"
CTX="$(mktemp -d)"
pass=0 fail=0
ok() { echo "PASS $*"; pass=$((pass + 1)); }
bad() { echo "FAIL $*"; fail=$((fail + 1)); }
check() { local what="$1"; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
cleanup() {
  "${P[@]}" rm -f -t 0 "$NAME" >/dev/null 2>&1 || true
  "${P[@]}" rmi -f "$IMAGE" >/dev/null 2>&1 || true
  rm -rf "$CTX"
  [ -n "${LOAD_PID:-}" ] && kill "$LOAD_PID" 2>/dev/null || true
}
trap cleanup EXIT

# Wait until "$@" succeeds, for at most $1 seconds.
within() {
  local t="$1"; shift
  local end=$(( $(date +%s) + t ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || return 1
    sleep 0.1
  done
}

# The base image, once: the cached Debian root file system (python3 included).
if ! "${P[@]}" image exists localhost/handoff-base:bookworm; then
  tar -C "$ROOTFS" -c . | "${P[@]}" import - localhost/handoff-base:bookworm >/dev/null
fi

# The image from the shipped Dockerfile.prebuilt: the context is what it copies.
mkdir -p "$CTX/target/release" "$CTX/examples/python" "$CTX/packaging/docker"
cp "$BIN" "$CTX/target/release/handoff"
cp "$REPO/examples/python/server.py" "$CTX/examples/python/server.py"
cp "$REPO/packaging/docker/Dockerfile.prebuilt" "$CTX/packaging/docker/"
cp "$REPO/.dockerignore" "$CTX/"
"${P[@]}" build -q --format docker -f "$CTX/packaging/docker/Dockerfile.prebuilt" \
  --build-arg BASE=localhost/handoff-base:bookworm -t "$IMAGE" "$CTX" >/dev/null
ok "image built from packaging/docker/Dockerfile.prebuilt"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# The image's entrypoint with the test's port, and the test fixture as the server (it has a
# /slow request); everything else (user, env, healthcheck) is the image's.
"${P[@]}" run -d --name "$NAME" --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
  --network host -v "$REPO/tests/fixtures:/fixtures:ro" \
  --entrypoint /usr/bin/handoff "$IMAGE" \
  --listen "127.0.0.1:$PORT" --drain-timeout 30s -- \
  python3 /fixtures/child.py --workers 1 --orphan-workers >/dev/null

status() { "${P[@]}" exec "$NAME" handoff status --json; }
check "handoff status answers through podman exec, as the image's user, with no flag" \
  within 30 "${P[@]}" exec "$NAME" handoff status
check "handoff is PID 1 of the container" \
  test "$("${P[@]}" exec "$NAME" sh -c 'cat /proc/1/comm')" = handoff
check "the container's user is the image's (nobody)" \
  test "$("${P[@]}" exec "$NAME" sh -c 'id -u')" = 65534
check "the healthcheck passes while serving" "${P[@]}" healthcheck run "$NAME"

# Load: new connections as fast as they go, counting failures, until told to stop.
python3 - "$PORT" "$CTX/load.out" <<'EOF' &
import socket, sys, time, os, signal
port, out = int(sys.argv[1]), sys.argv[2]
ok = failed = 0
running = True
def stop(*_):
    global running
    running = False
signal.signal(signal.SIGTERM, stop)
end = time.monotonic() + 120
while running and time.monotonic() < end:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        if data.startswith(b"HTTP/1.1 200"):
            ok += 1
        else:
            failed += 1
    except OSError:
        failed += 1
with open(out, "w") as f:
    f.write(f"{ok} {failed}\n")
EOF
LOAD_PID=$!
serving_gen() { status | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["serving"]["gen"] if s["serving"] else 0)'; }
generation_serves() { [ "$(serving_gen)" = "$1" ]; }
for n in 1 2 3; do
  "${P[@]}" kill --signal HUP "$NAME" >/dev/null
  check "SIGHUP $n: generation $((n + 1)) serves" within 30 generation_serves $((n + 1))
done
kill -TERM "$LOAD_PID"; wait "$LOAD_PID" || true; LOAD_PID=
read -r okn failn < "$CTX/load.out"
echo "load: $okn ok, $failn failed"
check "zero failed requests across 3 reloads under load ($okn answered)" test "$failn" = 0 -a "$okn" -gt 100

# Orphans: each drained generation's master exited without its worker (--orphan-workers);
# the worker was re-parented to handoff, killed with its generation, and must be reaped:
# no zombie may be left in the container, and only generation 4's two processes, handoff
# and the exec'd shell remain.
no_zombie() {
  ! "${P[@]}" exec "$NAME" sh -c 'grep -l "^[0-9]* ([^)]*) Z" /proc/[0-9]*/stat' 2>/dev/null | grep -q .
}
few_processes() {
  [ "$("${P[@]}" exec "$NAME" sh -c 'ls -d /proc/[0-9]* | wc -l')" -le 5 ]
}
reaped() { no_zombie && few_processes; }
check "orphaned workers of drained generations were killed and reaped (no zombie)" within 10 reaped

# Stop: a request in flight is answered, then the container exits 0.
python3 - "$PORT" "$CTX/slow.out" <<'EOF2' &
import socket, sys
port, out = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", port), timeout=30)
s.sendall(b"GET /slow?ms=2000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
open(out, "w").write(data.split(b"\r\n", 1)[0].decode() + "\n")
EOF2
SLOW_PID=$!
inflight() { status >/dev/null && "${P[@]}" exec "$NAME" sh -c "python3 -c \"import urllib.request,json; print(json.load(urllib.request.urlopen('http://127.0.0.1:$PORT/'))['inflight'])\"" | grep -qx 1; }
check "a slow request is in flight" within 10 inflight
"${P[@]}" stop -t 35 "$NAME" >/dev/null
wait "$SLOW_PID" || true
check "podman stop drained the in-flight request (200)" grep -q "HTTP/1.1 200" "$CTX/slow.out"
code=$("${P[@]}" inspect "$NAME" --format '{{.State.ExitCode}}')
check "the container exited 0 after a clean drain (got $code)" test "$code" = 0

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
