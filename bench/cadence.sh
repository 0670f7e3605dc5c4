#!/usr/bin/env bash
# Reloads every 300 ms under heavy load, the harshest published cadence (issue 14): builds the
# release binaries, installs the load tools if missing (Debian/Ubuntu: apache2-utils for ab,
# hey), runs bench/cadence.py, prints the tables and writes bench/results-cadence.md.
#
#   bench/cadence.sh            # full run: 300 s baseline + 300 s reloads + 60 s + 60 s
#                               # without handoff; about 12.5 minutes (+ up to 60 s waiting
#                               # for an idle machine)
#   bench/cadence.sh --quick    # smoke test: 60 s of load in all, about 1.5 minutes
# Other arguments go to cadence.py (`bench/cadence.sh --help`): --duration, --interval,
# --concurrency, --rate, --load hey, --only PHASE, --out FILE, ...
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(uname -s)" = Linux ] || { echo "cadence: Linux only (/proc is read)" >&2; exit 1; }
command -v cargo >/dev/null || { echo "cadence: cargo not found" >&2; exit 1; }
command -v python3 >/dev/null || { echo "cadence: python3 not found" >&2; exit 1; }
python3 -c 'import sys; sys.exit(sys.version_info < (3, 8))' \
    || { echo "cadence: python3 >= 3.8 needed" >&2; exit 1; }

missing=()
command -v ab >/dev/null || missing+=(apache2-utils)
command -v hey >/dev/null || missing+=(hey)
command -v ss >/dev/null || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null \
        || { echo "cadence: install ${missing[*]} (ab, hey, ss) first" >&2; exit 1; }
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "cadence: apt-get install -y ${missing[*]}" >&2
    $sudo apt-get install -y "${missing[@]}" >/dev/null \
        || { $sudo apt-get update >/dev/null && $sudo apt-get install -y "${missing[@]}" >/dev/null; }
fi

echo "cadence: cargo build --release --bin handoff --example http-server" >&2
cargo build --release --quiet --bin handoff --example http-server
target=${CARGO_TARGET_DIR:-target}

# Run copies: a concurrent `cargo build` must not replace the binaries halfway through.
bin=$(mktemp -d "${TMPDIR:-/tmp}/handoff-cadence.XXXXXX")
trap 'rm -rf "$bin"' EXIT
cp "$target/release/handoff" "$target/release/examples/http-server" "$bin/"

python3 bench/cadence.py --handoff "$bin/handoff" --server "$bin/http-server" \
    --command "bench/cadence.sh${*:+ $*}" "$@"
