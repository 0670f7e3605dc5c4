#!/usr/bin/env bash
# What bind adoption costs: the data-path ratio of an unmodified Go server (it binds the port
# itself) alone vs under handoff, and the cost of syscalls under the seccomp filter. Builds
# handoff (release) and examples/go-unmodified, runs bench/adopt.py, writes
# bench/results-adopt.md. About 1 minute. Run it on an otherwise idle machine.
#
#   bench/adopt.sh                      # 4 rounds of 3 s, 1M getppid calls
#   bench/adopt.sh --rounds 8 --seconds 5
set -euo pipefail
cd "$(dirname "$0")/.."
command -v go >/dev/null || { echo "bench: go not found (apt-get install golang-go)" >&2; exit 1; }
cargo build --release --quiet --bin handoff
bin=$(mktemp -d "${TMPDIR:-/tmp}/handoff-adopt-bench.XXXXXX")
trap 'rm -rf "$bin"' EXIT
cp "${CARGO_TARGET_DIR:-target}/release/handoff" "$bin/"
(cd examples/go-unmodified && GOFLAGS=-mod=mod GOTOOLCHAIN=local GOPROXY=off CGO_ENABLED=0 \
    go build -o "$bin/go-unmodified" .)
python3 bench/adopt.py --handoff "$bin/handoff" --server "$bin/go-unmodified" \
    --command "bench/adopt.sh${*:+ $*}" "$@"
