#!/usr/bin/env bash
# handoff against its peers (Server::Starter, a naive restart, no wrapper): one command.
# Builds the release binaries, installs the tools if missing (Debian/Ubuntu: wrk and
# libserver-starter-perl, which provides start_server), runs bench/peers.py, prints the table
# and writes bench/RESULTS.md (the full run only).
#
#   bench/peers.sh            # full run: 50 reloads per tool, about 4 minutes
#   bench/peers.sh --quick    # smoke test: 10 reloads, short runs, about 1 minute; prints
#                             # the table only (RESULTS.md is left alone unless --out is given)
# Other arguments go to peers.py (`bench/peers.sh --help`).
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
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null \
        || { echo "peers: install ${missing[*]} (wrk, start_server) first" >&2; exit 1; }
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
cp target/release/handoff target/release/examples/http-server "$bin/"

python3 bench/peers.py --handoff "$bin/handoff" --server "$bin/http-server" \
    --command "bench/peers.sh${*:+ $*}" "$@"
