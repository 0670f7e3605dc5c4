#!/bin/sh
# An HTTP server in shell, for handoff. It cannot send READY=1, so run it with --ready-after:
#
#     handoff --listen 127.0.0.1:8080 --ready-after 500ms -- sh examples/shell/server.sh
#
# systemd-socket-activate (Debian package `systemd`) does the accepting: it takes the
# listening socket from LISTEN_FDS, the same socket activation protocol handoff speaks, and
# with --accept --inetd runs handler.sh once per connection, with the connection as its
# stdin and stdout, as inetd does.
#
# On SIGTERM (or SIGINT) it stops accepting, lets the requests in flight finish and exits 0.
# This script stays the generation's main process for that: handoff signals it, and kills
# whatever is left of its process group once it exits.
set -eu
here=$(cd "$(dirname "$0")" && pwd)

if [ "${LISTEN_FDS:-0}" -lt 1 ] || [ "${LISTEN_PID:-}" != "$$" ]; then
    echo "server.sh: no socket passed (LISTEN_FDS, LISTEN_PID): run me under handoff" >&2
    exit 1
fi
export SERVER_PID=$$ # for the responses

draining=
trap 'draining=1' TERM INT

# LISTEN_PID must name the process that reads LISTEN_FDS (sd_listen_fds() checks it): the
# inner sh sets it to its own pid, $$, then becomes systemd-socket-activate, keeping that pid.
# Its children get only the variables named with -E. Handlers that hang are stopped after 10 s
# (--foreground: they stay in this process group, which handoff can kill).
SYSTEMD_LOG_LEVEL=warning SYSTEMD_LOG_TARGET=console sh -c 'LISTEN_PID=$$ exec "$@"' sh \
    systemd-socket-activate --accept --inetd -E HANDOFF_GENERATION -E SERVER_PID \
    timeout --foreground 10 sh "$here/handler.sh" &
acceptor=$!

# The state letter of process $1 (R, S, T, Z, ...), empty if it is gone.
state() {
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    s=${s##*) }
    echo "${s%% *}"
}

# The sockets process $1 holds besides stdin, stdout and stderr.
sockets() {
    n=0
    for fd in /proc/"$1"/fd/*; do
        case ${fd##*/} in 0 | 1 | 2) continue ;; esac
        case $(readlink "$fd" 2>/dev/null) in socket:*) n=$((n + 1)) ;; esac
    done
    echo "$n"
}

wait "$acceptor" 2>/dev/null || : # returns early when SIGTERM runs the trap
if [ -z "$draining" ]; then      # the acceptor died on its own: fail, handoff restarts us
    echo "server.sh: systemd-socket-activate exited" >&2
    exit 1
fi

# Stop accepting, without losing a connection. systemd-socket-activate has no graceful
# stop: SIGTERM ends it at once, a connection it has just accepted but not yet handed to a
# handler would be closed unanswered, and its handlers get SIGTERM when it dies (it sets
# PR_SET_PDEATHSIG in them). So freeze it (SIGSTOP) at a moment it holds no socket but the
# listeners, keep it frozen while the handlers it started (its children) finish the
# requests in flight, and only then end it.
while :; do
    kill -STOP "$acceptor" 2>/dev/null || break
    while [ "$(state "$acceptor")" != T ] && [ -n "$(state "$acceptor")" ]; do :; done
    [ "$(sockets "$acceptor")" -le "$LISTEN_FDS" ] && break
    kill -CONT "$acceptor" 2>/dev/null || : # caught between accept() and fork(): retry
done
for pid in $(cat "/proc/$acceptor/task/$acceptor/children" 2>/dev/null || :); do
    while s=$(state "$pid") && [ -n "$s" ] && [ "$s" != Z ]; do # gone, or a zombie: done
        sleep 0.02
    done
done
kill -TERM "$acceptor" 2>/dev/null || :
kill -CONT "$acceptor" 2>/dev/null || :
wait "$acceptor" 2>/dev/null || :
exit 0
