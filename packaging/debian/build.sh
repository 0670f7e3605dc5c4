#!/usr/bin/env bash
# Build the Debian package: release binary, man page and completions generated from the
# clap definition, then cargo-deb. Output: target/debian/handoff_*.deb
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --quiet
cargo build --release --locked
# cargo-deb finds the binary under CARGO_TARGET_DIR too (its target/release/ asset prefix).
BIN="${CARGO_TARGET_DIR:-target}/release/handoff"
rm -rf target/assets
mkdir -p target/assets/man
# handoff.1 and one page per subcommand (handoff-reload.1, ...), which handoff.1 names.
"$BIN" man --dir target/assets/man >/dev/null
gzip -9n target/assets/man/*.1
"$BIN" completions bash > target/assets/handoff.bash
"$BIN" completions zsh > target/assets/_handoff
"$BIN" completions fish > target/assets/handoff.fish
cargo deb --no-build --no-strip -o target/debian/
ls -l target/debian/*.deb
