#!/usr/bin/env bash
# handoff against its peers (Server::Starter, einhorn, systemd's restart, a naive restart, no
# wrapper): one command. Builds the release binaries, installs the tools if missing
# (Debian/Ubuntu: wrk and libserver-starter-perl, which provides start_server; ruby when einhorn
# is given), runs bench/peers.py, prints the table and writes bench/RESULTS.md (the full run
# only).
#
#   EINHORN=/path/to/einhorn bench/peers.sh   # full run: 50 reloads per tool under load, then
#                             # 5 per tool with a child that needs 2.5 s; about 9 minutes
#   bench/peers.sh --quick    # smoke test: 10 + 2 reloads, short runs, about 3 minutes; prints
#                             # the table only (RESULTS.md is left alone unless --out is given)
# Other arguments go to peers.py (`bench/peers.sh --help`).
#
# Two columns need what this script does not provide; without it they are left out and the
# output says why:
#   einhorn  EINHORN=PATH (or --einhorn PATH): an einhorn executable, e.g. an installed gem's
#            `einhorn` or bin/einhorn of a checkout of github.com/contribsys/einhorn. It is not
#            fetched, built or installed here.
#   systemd  root, systemd-nspawn (systemd-container) and the Debian root file system that
#            `bash .ci/systemd` builds once into /var/cache/handoff-systemd-test.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(uname -s)" = Linux ] || { echo "peers: Linux only (/proc is read)" >&2; exit 1; }
command -v cargo >/dev/null || { echo "peers: cargo not found" >&2; exit 1; }
command -v python3 >/dev/null || { echo "peers: python3 not found" >&2; exit 1; }
python3 -c 'import sys; sys.exit(sys.version_info < (3, 8))' \
    || { echo "peers: python3 >= 3.8 needed" >&2; exit 1; }

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v start_server >/dev/null || missing+=(libserver-starter-perl)
if [ -n "${EINHORN:-}" ] || [[ " $* " == *" --einhorn "* ]]; then
    command -v ruby >/dev/null || missing+=(ruby)
fi
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null \
        || { echo "peers: install ${missing[*]} first" >&2; exit 1; }
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "peers: apt-get install -y ${missing[*]}" >&2
    $sudo apt-get install -y "${missing[@]}" >/dev/null \
        || { $sudo apt-get update >/dev/null && $sudo apt-get install -y "${missing[@]}" >/dev/null; }
fi

echo "peers: cargo build --release --bin handoff --example http-server" >&2
cargo build --release --quiet --bin handoff --example http-server

# Run copies: a concurrent `cargo build` must not replace the binaries halfway through.
bin=$(mktemp -d "${TMPDIR:-/tmp}/handoff-peers.XXXXXX")
trap 'rm -rf "$bin"' EXIT
tgt=${CARGO_TARGET_DIR:-target}
cp "$tgt/release/handoff" "$tgt/release/examples/http-server" "$bin/"

python3 bench/peers.py --handoff "$bin/handoff" --server "$bin/http-server" \
    --command "bench/peers.sh${*:+ $*}" "$@"
