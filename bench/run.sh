#!/usr/bin/env bash
# One-command reload benchmark for handoff: builds the release binaries, checks the tools,
# runs bench/reload_bench.py, prints the results and writes them to bench/results-latest.md.
#
#   bench/run.sh            # full run, ~4 minutes
#   bench/run.sh --quick    # smoke test, ~1 minute
#   bench/run.sh --no-wrk   # Python load generators only
# Any other argument is passed to reload_bench.py (see `bench/run.sh --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "bench: cargo not found" >&2; exit 1; }
command -v python3 >/dev/null || { echo "bench: python3 not found" >&2; exit 1; }
python3 -c 'import sys; sys.exit(sys.version_info < (3, 8))' \
    || { echo "bench: python3 >= 3.8 needed" >&2; exit 1; }
if ! command -v wrk >/dev/null; then
    echo "bench: wrk not found (Debian/Ubuntu: apt-get install -y wrk);" \
         "falling back to Python keep-alive clients, which are much slower" >&2
fi
[ "$(uname -s)" = Linux ] || { echo "bench: Linux only (/proc is read)" >&2; exit 1; }

echo "bench: cargo build --release --bin handoff --example http-server" >&2
cargo build --release --quiet --bin handoff --example http-server

# Run copies: a concurrent `cargo build` must not replace the binaries halfway through.
bin=$(mktemp -d "${TMPDIR:-/tmp}/handoff-bench.XXXXXX")
trap 'rm -rf "$bin"' EXIT
cp target/release/handoff target/release/examples/http-server "$bin/"

python3 bench/reload_bench.py \
    --handoff "$bin/handoff" \
    --server "$bin/http-server" \
    --command "bench/run.sh${*:+ $*}" "$@"
