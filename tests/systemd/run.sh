#!/usr/bin/env bash
# tests/systemd/run.sh: handoff under a real systemd (opt-in integration suite).
#
# Boots Debian bookworm's systemd 252 as PID 1 of a throw-away systemd-nspawn container,
# installs the freshly built handoff as /usr/bin/handoff, the shipped units
# packaging/systemd/app.service and app.socket unmodified in /etc/systemd/system, and
# tests/fixtures/child.py as /srv/app/bin/server (the server path the shipped unit names),
# then runs tests/systemd/checks.sh inside it with systemctl. See tests/systemd/README.md.
#
# Needs root, systemd-nspawn (Debian: systemd-container) and debootstrap; .ci/systemd installs
# them. Output: PASS/FAIL lines, then the journal of app.service/app.socket if anything
# failed, then a last line "N passed, M failed". Exit status 0 only if nothing failed.
#
# Environment:
#   HANDOFF_BIN               handoff binary to test (default: cargo build, then
#                             target/debug/handoff: the build `cargo test` already made)
#   HANDOFF_SYSTEMD_CACHE     where the root file system is cached (default
#                             /var/cache/handoff-systemd-test); rm -rf it to rebuild
#   HANDOFF_SYSTEMD_MIRROR    Debian mirror for debootstrap (default: the host's apt mirror)
#   HANDOFF_SYSTEMD_LOGS      directory for the logs (default target/systemd-test/<time>)
#   HANDOFF_SYSTEMD_TIMEOUT   seconds the checks may take in all (default 300)
#   HANDOFF_SYSTEMD_CHECKS    run this script instead of checks.sh (to debug or explore)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
SUITE=bookworm
# What the container needs: systemd as init, dbus (systemd-logind and friends), python3 for
# the server and the client, procps (pgrep) and iproute2 (ss) for the checks.
PACKAGES="systemd,systemd-sysv,dbus,python3,procps,iproute2"
# Bump when the way the rootfs is prepared changes, so that caches are rebuilt.
RECIPE=1
CACHE="${HANDOFF_SYSTEMD_CACHE:-/var/cache/handoff-systemd-test}"
CHECKS_TIMEOUT="${HANDOFF_SYSTEMD_TIMEOUT:-300}"
BOOT_TIMEOUT=60

log() { printf 'systemd-test: %s\n' "$*" >&2; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }
T_START=$(now)

# ------------------------------------------------------------------ result bookkeeping
# Every outcome is a PASS or FAIL line; the last line of the run is "N passed, M failed".
LOGS=""
NSPAWN_PID=""
LEADER=""
MACHINE=""
SUMMARY_DONE=""
HARNESS_FAILS=0
HOST_PASSES=0
harness_fail() { echo "FAIL [harness] $*"; HARNESS_FAILS=$((HARNESS_FAILS + 1)); }
harness_pass() { echo "PASS [harness] $*"; HOST_PASSES=$((HOST_PASSES + 1)); }
summary() {
  [ -z "$SUMMARY_DONE" ] || return 0
  SUMMARY_DONE=1
  local p=0 f=0
  if [ -n "$LOGS" ] && [ -f "$LOGS/checks.log" ]; then
    p=$(grep -c '^PASS ' "$LOGS/checks.log" || true)
    f=$(grep -c '^FAIL ' "$LOGS/checks.log" || true)
  fi
  p=$((p + HOST_PASSES))
  f=$((f + HARNESS_FAILS))
  [ -n "$LOGS" ] && log "logs: $LOGS"
  echo "$p passed, $f failed"
  [ "$f" = 0 ]
}

in_ct() { # run a command in the container (all its namespaces, a clean environment)
  nsenter --target "$LEADER" --mount --uts --ipc --net --pid --cgroup --root --wd -- \
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 TERM=dumb SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 "$@"
}

shutdown_container() {
  [ -n "$NSPAWN_PID" ] || return 0
  local t0 pid=$NSPAWN_PID
  NSPAWN_PID=""
  t0=$(now)
  if kill -0 "$pid" 2>/dev/null; then
    # systemd-nspawn turns SIGTERM into SIGRTMIN+4 for the container's systemd: a clean
    # poweroff (services are stopped, as on a real machine).
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  if kill -0 "$pid" 2>/dev/null; then
    log "the container did not power off in 30 s; terminating it"
    # Only registered machines are known to machinectl (not the case on a host whose PID 1
    # is not systemd, where we boot with --register=no); harmless otherwise.
    machinectl terminate "$MACHINE" >/dev/null 2>&1 || true
    [ -n "$LEADER" ] && kill -KILL "$LEADER" 2>/dev/null || true
    sleep 1
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  [ -n "${PAY:-}" ] && rm -rf "$PAY" # copies only; the logs stay
  log "container shut down in $(secs "$t0" "$(now)") s"
  # Nothing of the container may be left: neither systemd-nspawn nor the container's init
  # (once that is gone, the kernel has killed every process of its pid namespace).
  local left=""
  [ -n "$LEADER" ] && [ -d "/proc/$LEADER" ] && left="$LEADER"
  left="$left$(pgrep -f -- "--machine=$MACHINE" | paste -sd' ' || true)"
  if [ -z "$left" ]; then
    harness_pass "the container is shut down, nothing of it left running"
  else
    harness_fail "processes of the container still running: $left"
  fi
}
on_exit() {
  local rc=$?
  trap - EXIT INT TERM
  shutdown_container
  [ "$rc" = 0 ] || [ -n "$SUMMARY_DONE" ] || [ "$HARNESS_FAILS" != 0 ] || harness_fail "run.sh exited with status $rc"
  local ok=0
  summary || ok=1
  [ "$rc" = 0 ] && exit "$ok"
  exit "$rc"
}
trap on_exit EXIT
trap 'harness_fail "interrupted"; exit 130' INT TERM
die() { harness_fail "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (systemd-nspawn, mount namespaces)"
for t in systemd-nspawn debootstrap nsenter unshare flock; do
  command -v "$t" >/dev/null || die "$t is missing (Debian: apt-get install systemd-container debootstrap; .ci/systemd does it)"
done

# ------------------------------------------------------------------ README
# The README's systemd section must show the units tested here (host side, no container).
while read -r line; do
  case "$line" in
    PASS*) echo "$line"; HOST_PASSES=$((HOST_PASSES + 1)) ;;
    FAIL*) echo "$line"; HARNESS_FAILS=$((HARNESS_FAILS + 1)) ;;
    *) echo "$line" ;;
  esac
done < <(python3 "$HERE/readme_units.py" "$REPO" 2>&1 || true)

# ------------------------------------------------------------------ handoff
if [ -z "${HANDOFF_BIN:-}" ]; then
  log "building handoff (cargo build --bin handoff)"
  (cd "$REPO" && cargo build --bin handoff) >&2 || die "cargo build failed"
  HANDOFF_BIN="$REPO/target/debug/handoff"
fi
[ -x "$HANDOFF_BIN" ] || die "no handoff binary at $HANDOFF_BIN"
T_BUILT=$(now)

# ------------------------------------------------------------------ root file system (cached)
mirror() {
  local m="${HANDOFF_SYSTEMD_MIRROR:-}"
  [ -n "$m" ] && { echo "$m"; return; }
  m=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' |
    grep -v -- '-security' | grep -E '/debian/?$' | head -n1 || true)
  if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
    m=$(awk '$1=="deb" && $3 !~ /security/ && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list || true)
  fi
  echo "${m:-http://deb.debian.org/debian}"
}
KEY=$(printf '%s\n' "$SUITE" "$PACKAGES" "$RECIPE" "$(dpkg --print-architecture 2>/dev/null || uname -m)" |
  sha256sum | cut -c1-16)
ROOTFS="$CACHE/rootfs-$KEY"
READY_MARK=".handoff-rootfs-ready"
build_rootfs() {
  mkdir -p "$CACHE"
  exec 9>"$CACHE/lock"
  flock 9 # concurrent runs wait for a single builder
  if [ -f "$ROOTFS/$READY_MARK" ]; then exec 9>&-; return 0; fi
  local t0 tmp="$ROOTFS.tmp" m
  t0=$(now); m=$(mirror)
  log "building the $SUITE root file system in $ROOTFS from $m (once; about 1-2 min)"
  rm -rf "$tmp"
  if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp" "$m" >"$CACHE/build.log" 2>&1; then
    tail -n 30 "$CACHE/build.log" >&2
    rm -rf "$tmp"
    die "debootstrap failed (log: $CACHE/build.log)"
  fi
  # A quiet, fast boot: multi-user.target, no gettys, no timers that could fire mid-test.
  systemctl --root="$tmp" set-default multi-user.target >/dev/null 2>&1
  systemctl --root="$tmp" mask console-getty.service getty@.service getty.target \
    apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
    e2scrub_reap.service fstrim.timer systemd-pstore.service >/dev/null 2>&1
  echo handoff-test >"$tmp/etc/hostname"
  chroot "$tmp" apt-get clean >/dev/null 2>&1 || true
  rm -rf "$tmp"/var/lib/apt/lists/* "$tmp"/var/cache/apt/*.bin
  printf 'suite=%s\npackages=%s\nrecipe=%s\nbuilt=%s\n' "$SUITE" "$PACKAGES" "$RECIPE" "$(date -u +%FT%TZ)" >"$tmp/$READY_MARK"
  mv "$tmp" "$ROOTFS"
  # Root file systems of other package lists are stale now.
  for old in "$CACHE"/rootfs-*; do
    [ "$old" = "$ROOTFS" ] || rm -rf "$old"
  done
  log "root file system ready in $(secs "$t0" "$(now)") s ($(du -sh "$ROOTFS" | cut -f1))"
  exec 9>&-
}
ROOTFS_STATE=cached
[ -f "$ROOTFS/$READY_MARK" ] || ROOTFS_STATE=built
build_rootfs
T_ROOTFS=$(now)

# ------------------------------------------------------------------ payload
LOGS="${HANDOFF_SYSTEMD_LOGS:-$REPO/target/systemd-test/$(date +%Y%m%d-%H%M%S)-$$}"
mkdir -p "$LOGS"
LOGS="$(cd "$LOGS" && pwd)"
: >"$LOGS/checks.log"
PAY="$LOGS/payload" # copies: a concurrent build or edit cannot change them mid-run
rm -rf "$PAY"
mkdir -p "$PAY/test"
install -m 0755 "$HANDOFF_BIN" "$PAY/handoff"
install -m 0755 "$HERE/server" "$PAY/server"
install -m 0644 "$REPO/packaging/systemd/app.service" "$REPO/packaging/systemd/app.socket" "$PAY/"
install -m 0755 "$HERE/client.py" "$REPO/tests/fixtures/child.py" "$PAY/test/"
install -m 0755 "${HANDOFF_SYSTEMD_CHECKS:-$HERE/checks.sh}" "$PAY/test/checks.sh"

# ------------------------------------------------------------------ boot
MACHINE="handoff-test-$$"
NSPAWN=(systemd-nspawn -D "$ROOTFS" --boot --machine="$MACHINE"
  # No host systemd/machined to register with (PID 1 here need not be systemd).
  --register=no --keep-unit
  # The cached rootfs is the read-only lower layer; all writes go to a tmpfs.
  --volatile=overlay
  # Only a loopback: port 8080 cannot clash with the host or with a parallel run.
  --private-network
  --console=read-only --link-journal=no --resolv-conf=off --timezone=off
  --bind-ro="$PAY/handoff:/usr/bin/handoff"
  --bind-ro="$PAY/server:/srv/app/bin/server"
  --bind-ro="$PAY/app.service:/etc/systemd/system/app.service"
  --bind-ro="$PAY/app.socket:/etc/systemd/system/app.socket"
  --bind-ro="$PAY/test:/opt/handoff-test")
mkdir -p /run/systemd
T_BOOT0=$(now)
# systemd-nspawn keeps scratch state under /run/systemd/nspawn and only cleans it up on a
# tmpfs; a private mount namespace with its own tmpfs there leaves nothing on the host.
# setsid: a Ctrl-C reaches this script (which powers the container off), not nspawn.
setsid unshare --mount --propagation private -- \
  sh -c 'mount -t tmpfs -o mode=0755 tmpfs /run/systemd && exec "$@"' sh "${NSPAWN[@]}" \
  </dev/null >"$LOGS/console.log" 2>&1 &
NSPAWN_PID=$!
for _ in $(seq 1 400); do # the container's PID 1 is a child of systemd-nspawn
  for c in $(pgrep -P "$NSPAWN_PID" 2>/dev/null || true); do
    [ "$(cat /proc/"$c"/comm 2>/dev/null)" = systemd ] && LEADER=$c
  done
  [ -n "$LEADER" ] && break
  kill -0 "$NSPAWN_PID" 2>/dev/null || break
  sleep 0.05
done
[ -n "$LEADER" ] || { cat "$LOGS/console.log" >&2; die "the container did not start (console: $LOGS/console.log)"; }
deadline=$(($(date +%s) + BOOT_TIMEOUT))
while :; do
  STATE=$(in_ct systemctl is-system-running 2>/dev/null || true)
  case "$STATE" in running | degraded) break ;; esac
  kill -0 "$NSPAWN_PID" 2>/dev/null || { cat "$LOGS/console.log" >&2; die "the container exited while booting"; }
  [ "$(date +%s)" -lt "$deadline" ] || { cat "$LOGS/console.log" >&2; die "boot timed out (state: ${STATE:-unknown})"; }
  sleep 0.05
done
T_BOOTED=$(now)
log "systemd booted in $(secs "$T_BOOT0" "$T_BOOTED") s (state: $STATE; container PID 1 = host pid $LEADER)"
[ "$STATE" = running ] || in_ct systemctl --failed --no-legend >&2 || true

# ------------------------------------------------------------------ checks
# They run as a transient service of the container's systemd (not as a child of nsenter): a
# process left behind is then reaped inside the container, and RuntimeMaxSec= bounds the
# whole run by killing the unit's cgroup. Its output comes back through the pipe.
set +e
(
  timeout -k 10 $((CHECKS_TIMEOUT + 60)) \
    nsenter --target "$LEADER" --mount --uts --ipc --net --pid --cgroup --root --wd -- \
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    systemd-run --unit=handoff-checks --service-type=exec --pipe --wait --quiet \
    -p WorkingDirectory=/opt/handoff-test -p RuntimeMaxSec="${CHECKS_TIMEOUT}s" -p TimeoutStopSec=10s \
    -E HOME=/root -E LANG=C.UTF-8 -E TERM=dumb -E SYSTEMD_PAGER=cat -E SYSTEMD_COLORS=0 \
    -- /opt/handoff-test/checks.sh </dev/null 2>&1 | tee "$LOGS/checks.log"
) &
CHECKS=$!
wait "$CHECKS"
set -e
T_CHECKED=$(now)
RESULT=$(in_ct systemctl show -P Result handoff-checks.service 2>/dev/null || true)
STATUS=$(in_ct systemctl show -P ExecMainStatus handoff-checks.service 2>/dev/null || true)
case "$RESULT" in
  success) ;;
  exit-code) grep -q '^FAIL ' "$LOGS/checks.log" || harness_fail "checks.sh exited with status $STATUS" ;;
  timeout) harness_fail "the checks did not finish within ${CHECKS_TIMEOUT} s" ;;
  *) harness_fail "checks.sh ended with Result=${RESULT:-unknown} status=${STATUS:-unknown}" ;;
esac
grep -q '^PASS ' "$LOGS/checks.log" || harness_fail "no check ran"

in_ct journalctl --no-pager -b -o short-monotonic >"$LOGS/journal.txt" 2>&1 || true
if grep -q '^FAIL ' "$LOGS/checks.log" || [ "$HARNESS_FAILS" != 0 ]; then
  echo
  echo "=== journalctl -u app.service -u app.socket (full journal: $LOGS/journal.txt)"
  in_ct journalctl --no-pager -o short-monotonic -u app.service -u app.socket || true
  echo "=== end of journal"
fi
shutdown_container
T_END=$(now)
log "timings: readme+build $(secs "$T_START" "$T_BUILT") s, rootfs ($ROOTFS_STATE) $(secs "$T_BUILT" "$T_ROOTFS") s, boot $(secs "$T_BOOT0" "$T_BOOTED") s, checks $(secs "$T_BOOTED" "$T_CHECKED") s, total $(secs "$T_START" "$T_END") s"
trap - EXIT INT TERM
summary
