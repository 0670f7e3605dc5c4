#!/usr/bin/env bash
# handoff's footprint at fleet density (issue 14): builds the release binaries, installs
# Server::Starter if missing (Debian/Ubuntu: libserver-starter-perl), runs bench/fleet.py,
# prints the tables and writes bench/results-fleet.md.
#
#   bench/fleet.sh            # full run: 50 handoffs, 50 start_servers, feature variants;
#                             # about 2 minutes, nearly all of it idle processes
#   bench/fleet.sh --quick    # smoke test: 10 of each, short windows, under a minute
# Other arguments go to fleet.py (`bench/fleet.sh --help`): --count, --idle, --only, --out, ...
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(uname -s)" = Linux ] || { echo "fleet: Linux only (/proc is read)" >&2; exit 1; }
command -v cargo >/dev/null || { echo "fleet: cargo not found" >&2; exit 1; }
command -v python3 >/dev/null || { echo "fleet: python3 not found" >&2; exit 1; }
python3 -c 'import sys; sys.exit(sys.version_info < (3, 8))' \
    || { echo "fleet: python3 >= 3.8 needed" >&2; exit 1; }
[ -r /proc/self/smaps_rollup ] || { echo "fleet: /proc/PID/smaps_rollup needed (Linux 4.14+)" >&2; exit 1; }

if ! command -v start_server >/dev/null; then
    if command -v apt-get >/dev/null; then
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        echo "fleet: apt-get install -y libserver-starter-perl" >&2
        $sudo apt-get install -y libserver-starter-perl >/dev/null \
            || { $sudo apt-get update >/dev/null && $sudo apt-get install -y libserver-starter-perl >/dev/null; }
    else
        echo "fleet: start_server not found: the Server::Starter comparison is skipped" >&2
    fi
fi

echo "fleet: cargo build --release --bin handoff --example http-server" >&2
cargo build --release --quiet --bin handoff --example http-server
target=${CARGO_TARGET_DIR:-target}

# Run copies: a concurrent `cargo build` must not replace the binaries halfway through.
bin=$(mktemp -d "${TMPDIR:-/tmp}/handoff-fleet.XXXXXX")
trap 'rm -rf "$bin"' EXIT
cp "$target/release/handoff" "$target/release/examples/http-server" "$bin/"

python3 bench/fleet.py --handoff "$bin/handoff" --server "$bin/http-server" \
    --command "bench/fleet.sh${*:+ $*}" "$@"
